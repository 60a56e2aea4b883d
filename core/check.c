/* The strict-check helpers (see check.h). */
#define _GNU_SOURCE
#include "check.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

__attribute__((format(printf, 4, 0))) static int fail_at(struct gr_check *c, bool have,
                                                         struct gr_textpos at, const char *fmt,
                                                         va_list ap)
{
    if (c->err)
        return -1;
    char *msg = gr_xvprintf(fmt, ap);
    if (have)
        c->err = gr_xprintf("%s:%d:%d: %s", c->file, at.line, at.col, msg);
    else
        c->err = gr_xprintf("%s: %s", c->file, msg);
    free(msg);
    return -1;
}

int gr_check_fail_member(struct gr_check *c, const json_t *obj, const char *key, const char *fmt,
                         ...)
{
    struct gr_textpos at;
    bool have = gr_jsonpos_member(c->pos, obj, key, &at) || gr_jsonpos_value(c->pos, obj, &at);
    va_list ap;
    va_start(ap, fmt);
    fail_at(c, have, at, fmt, ap);
    va_end(ap);
    return -1;
}

int gr_check_fail_element(struct gr_check *c, const json_t *arr, size_t i, const char *fmt, ...)
{
    struct gr_textpos at;
    bool have = gr_jsonpos_element(c->pos, arr, i, &at) || gr_jsonpos_value(c->pos, arr, &at);
    va_list ap;
    va_start(ap, fmt);
    fail_at(c, have, at, fmt, ap);
    va_end(ap);
    return -1;
}

int gr_check_fail_value(struct gr_check *c, const json_t *value, const char *fmt, ...)
{
    struct gr_textpos at;
    bool have = gr_jsonpos_value(c->pos, value, &at);
    va_list ap;
    va_start(ap, fmt);
    fail_at(c, have, at, fmt, ap);
    va_end(ap);
    return -1;
}

bool gr_check_is_comment(const char *key)
{
    return strncmp(key, "//", 2) == 0;
}

/* Edit distance, for "did you mean". Small strings only. */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return 99;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            size_t best = diag + cost;
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

int gr_check_keys(struct gr_check *c, const json_t *obj, const char *what,
                  const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        if (gr_check_is_comment(key))
            continue;
        bool ok = false;
        const char *near = NULL;
        for (const char *const *a = allowed; *a; a++) {
            if (strcmp(key, *a) == 0)
                ok = true;
            else if (!near && distance(key, *a) <= 2)
                near = *a;
        }
        if (ok)
            continue;
        struct gr_buf list = {0};
        for (const char *const *a = allowed; *a; a++)
            gr_buf_printf(&list, "%s%s", a == allowed ? "" : ", ", *a);
        if (near)
            gr_check_fail_member(c, obj, key, "unknown key \"%s\" in %s; did you mean \"%s\"?",
                                 key, what, near);
        else
            gr_check_fail_member(c, obj, key, "unknown key \"%s\" in %s (known keys: %s)", key,
                                 what, list.data ? list.data : "none");
        gr_buf_free(&list);
        return -1;
    }
    return 0;
}

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

int gr_check_string(struct gr_check *c, const json_t *obj, const char *key, bool required,
                    const char **out)
{
    const json_t *v = json_object_get(obj, key);
    if (!v || (json_is_null(v) && !required)) {
        if (required)
            return gr_check_fail_value(c, obj, "missing required key \"%s\"", key);
        return 0;
    }
    if (!json_is_string(v))
        return gr_check_fail_member(c, obj, key, "\"%s\" must be a string, not %s", key,
                                    json_type_name(v));
    *out = json_string_value(v);
    return 0;
}

int gr_check_uint(struct gr_check *c, const json_t *obj, const char *key, uint64_t min,
                  uint64_t max, uint64_t *out)
{
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return gr_check_fail_member(c, obj, key, "\"%s\" must be an integer, not %s", key,
                                    json_type_name(v));
    json_int_t n = json_integer_value(v);
    if (n < 0 || (uint64_t)n < min || (uint64_t)n > max)
        return gr_check_fail_member(c, obj, key,
                                    "\"%s\" is %lld; it must be between %llu and %llu", key,
                                    (long long)n, (unsigned long long)min,
                                    (unsigned long long)max);
    *out = (uint64_t)n;
    return 0;
}

int gr_check_bool(struct gr_check *c, const json_t *obj, const char *key, bool *out)
{
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return gr_check_fail_member(c, obj, key, "\"%s\" must be true or false, not %s", key,
                                    json_type_name(v));
    *out = json_is_true(v);
    return 0;
}

int gr_check_object(struct gr_check *c, const json_t *obj, const char *key, bool required,
                    json_t **out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || (json_is_null(v) && !required)) {
        if (required)
            return gr_check_fail_value(c, obj, "missing required key \"%s\"", key);
        return 0;
    }
    if (!json_is_object(v))
        return gr_check_fail_member(c, obj, key, "\"%s\" must be an object, not %s", key,
                                    json_type_name(v));
    *out = v;
    return 0;
}

int gr_check_string_list(struct gr_check *c, const json_t *obj, const char *key,
                         const char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        *out = gr_xmalloc(sizeof **out);
        (*out)[0] = json_string_value(v);
        *n = 1;
        return 0;
    }
    if (!json_is_array(v))
        return gr_check_fail_member(c, obj, key,
                                    "\"%s\" must be a string or a list of strings, not %s", key,
                                    json_type_name(v));
    if (json_array_size(v) == 0)
        return gr_check_fail_member(c, obj, key,
                                    "\"%s\" is an empty list, which would match nothing; remove "
                                    "the key instead",
                                    key);
    *out = gr_xcalloc(json_array_size(v), sizeof **out);
    for (size_t i = 0; i < json_array_size(v); i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_string(e)) {
            free(*out);
            *out = NULL;
            return gr_check_fail_element(c, v, i, "entries of \"%s\" must be strings, not %s",
                                         key, json_type_name(e));
        }
        (*out)[i] = json_string_value(e);
    }
    *n = json_array_size(v);
    return 0;
}

