/*
 * Strict checking of JSON configuration, shared by the configuration file
 * (config.c), the routes (route/router.c), the decryption keys and the
 * plugins' own config schemas (plugin/plugin_host.c).
 *
 * Each failure records the first error (later ones are ignored) as
 * "FILE:LINE:COL: message" at the position of the member or element named,
 * and returns -1. Single-threaded: one check runs on one thread.
 */
#ifndef GR_CHECK_H
#define GR_CHECK_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jsonpos.h"

struct gr_check {
    const char *file;
    const struct gr_jsonpos *pos;
    char *err; /* first error, malloc'd */
};

int gr_check_fail_member(struct gr_check *c, const json_t *obj, const char *key, const char *fmt,
                         ...) __attribute__((format(printf, 4, 5)));
int gr_check_fail_element(struct gr_check *c, const json_t *arr, size_t i, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int gr_check_fail_value(struct gr_check *c, const json_t *value, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Every key of `obj` must be in `allowed` (NULL-terminated) or start with "//".
 * `what` names the object in the message ("route \"outlook\""). */
int gr_check_keys(struct gr_check *c, const json_t *obj, const char *what,
                  const char *const *allowed);
bool gr_check_is_comment(const char *key);

/* Typed members. Absent (or, for optional keys, null) leaves the default;
 * a wrong type or range is an error. */
int gr_check_string(struct gr_check *c, const json_t *obj, const char *key, bool required,
                    const char **out);
int gr_check_uint(struct gr_check *c, const json_t *obj, const char *key, uint64_t min,
                  uint64_t max, uint64_t *out);
int gr_check_bool(struct gr_check *c, const json_t *obj, const char *key, bool *out);
int gr_check_object(struct gr_check *c, const json_t *obj, const char *key, bool required,
                    json_t **out);
/* A string, or an array of strings (a lone string is a one-element list);
 * an empty list is an error. *out is malloc'd (free it), entries borrowed. */
int gr_check_string_list(struct gr_check *c, const json_t *obj, const char *key,
                         const char ***out, size_t *n);

#endif
