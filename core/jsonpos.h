/*
 * Where each value of a parsed JSON document sits in its text.
 *
 * jansson keeps no positions, so after a successful json_loadb() we scan the
 * same text once more, walking the jansson tree in step, and record the line
 * and column of every object member (its key) and array element. Config
 * errors use this to say "file:line:col". Lookups are by (parent, key) or
 * (parent, index), because jansson shares one instance of true, false and
 * null, so those values have no identity of their own.
 *
 * Columns count characters (UTF-8 code points), starting at 1. Immutable
 * after build; safe to read from any thread.
 */
#ifndef GR_JSONPOS_H
#define GR_JSONPOS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct gr_jsonpos;

struct gr_textpos {
    int line;
    int col;
};

/* `root` must be the result of parsing exactly `text` (with duplicate keys
 * rejected). Never fails on such input. */
struct gr_jsonpos *gr_jsonpos_build(const char *text, size_t len, const json_t *root);
void gr_jsonpos_free(struct gr_jsonpos *pos);

/* Position of the key of obj[key], of arr[index], or of an object/array
 * value itself (the root included). Return false if unknown. */
bool gr_jsonpos_member(const struct gr_jsonpos *pos, const json_t *obj, const char *key,
                       struct gr_textpos *out);
bool gr_jsonpos_element(const struct gr_jsonpos *pos, const json_t *arr, size_t index,
                        struct gr_textpos *out);
bool gr_jsonpos_value(const struct gr_jsonpos *pos, const json_t *value, struct gr_textpos *out);

#endif
