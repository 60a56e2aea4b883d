/*
 * Secrets in the configuration: the one resolver every secret goes through
 * (the top-level and the listed subscriptions' "client_state", the Graph
 * client secret, and plugin config keys declared GR_CONFIG_SECRET, such as
 * the http plugin's "secret").
 *
 * A secret is written as one of
 *     "the secret itself"
 *     {"file": "/path"}   the file's content, one trailing "\n" (or "\r\n")
 *                         stripped; the file must not be readable or
 *                         writable by group or others; a relative path is
 *                         relative to the working directory, like every
 *                         path in the configuration
 *     {"env": "NAME"}     the environment variable's value
 * Resolution happens while a configuration is checked (start, SIGHUP,
 * --check), so a reload reads the file again. An empty secret, a file that
 * cannot be read, a file of more than one line, an unset variable or
 * another shape is an error at the member's position; no message ever holds
 * the secret or its length.
 *
 * Resolved secrets are malloc'd and wiped (OPENSSL_cleanse) before they are
 * freed. Secrets that stay in a configuration's JSON (written inline, or
 * put there for a plugin) are listed in a struct gr_secret_nodes and wiped
 * when the configuration is freed. Control thread only, like the checks.
 */
#ifndef GR_SECRET_H
#define GR_SECRET_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "check.h"

/* The longest secret graphrouter reads from a file or a variable. */
#define GR_SECRET_MAX (64u * 1024)

/* obj[key] as above. `what` (may be NULL) starts each message, e.g.
 * "graph tenant \"t1\"". Absent or null: 0 with *out NULL, unless
 * `required`. On success *out is malloc'd and NUL-terminated, *len its
 * length: release it with gr_secret_wipe. -1 after recording an error. */
int gr_secret_resolve(struct gr_check *c, const json_t *obj, const char *key, bool required,
                      const char *what, char **out, size_t *len);
/* The same, for the two sources alone. `obj` and `key` name the member the
 * error points at; `path` or `name` is its value. */
int gr_secret_from_file(struct gr_check *c, const json_t *obj, const char *key,
                        const char *what, const char *path, char **out, size_t *len);
int gr_secret_from_env(struct gr_check *c, const json_t *obj, const char *key, const char *what,
                       const char *name, char **out, size_t *len);
/* Wipe and free a resolved secret (NULL is fine). */
void gr_secret_wipe(char *s, size_t len);

/* JSON strings holding secrets, wiped in place before the JSON is freed. */
struct gr_secret_nodes {
    json_t **v; /* each holds a reference */
    size_t n;
};

/* Note obj[key] if it is a string. */
void gr_secret_nodes_add(struct gr_secret_nodes *l, const json_t *obj, const char *key);
/* Wipe every noted string, drop the references, empty the list. */
void gr_secret_nodes_wipe(struct gr_secret_nodes *l);

#endif
