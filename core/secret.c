/* The configuration's secrets: one resolver for every one (see secret.h).
 * Runs on the control thread while a configuration is checked. */
#define _GNU_SOURCE
#include "secret.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/keyfile.h"
#include "util.h"

void gr_secret_wipe(char *s, size_t len)
{
    if (s) {
        OPENSSL_cleanse(s, len);
        free(s);
    }
}

/* "graph tenant \"t\": " or "" */
static char *prefix(const char *what)
{
    return what ? gr_xprintf("%s: ", what) : gr_xstrdup("");
}

/* A secret must be text on one line: no NUL, CR or LF inside it. */
static bool one_line(const char *s, size_t len)
{
    return !memchr(s, '\0', len) && !memchr(s, '\n', len) && !memchr(s, '\r', len);
}

int gr_secret_from_file(struct gr_check *c, const json_t *obj, const char *key,
                        const char *what, const char *path, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    char *pre = prefix(what);
    int rc = -1;
    if (!*path) {
        gr_check_fail_member(c, obj, key, "%s\"%s\" names no file", pre, key);
        goto out;
    }
    char *why = NULL;
    size_t n = 0;
    unsigned char *buf = gr_keyfile_read(path, true, &n, &why);
    if (!buf) {
        /* why names the file and the reason (errno text or its mode), never
         * what it holds */
        gr_check_fail_member(c, obj, key, "%s%s", pre, why);
        free(why);
        goto out;
    }
    size_t keep = n;
    if (keep && buf[keep - 1] == '\n') /* a file written by echo */
        keep -= keep >= 2 && buf[keep - 2] == '\r' ? 2 : 1;
    if (keep == 0)
        gr_check_fail_member(c, obj, key, "%sthe secret file %s is empty", pre, path);
    else if (keep > GR_SECRET_MAX)
        gr_check_fail_member(c, obj, key, "%sthe secret file %s is larger than %u bytes", pre,
                             path, GR_SECRET_MAX);
    else if (!one_line((const char *)buf, keep))
        gr_check_fail_member(c, obj, key,
                             "%sthe secret file %s must hold the secret on one line (one "
                             "trailing newline is allowed)",
                             pre, path);
    else {
        *out = gr_xstrndup((const char *)buf, keep);
        *len = keep;
        rc = 0;
    }
    gr_keyfile_free(buf, n);
out:
    free(pre);
    return rc;
}

int gr_secret_from_env(struct gr_check *c, const json_t *obj, const char *key, const char *what,
                       const char *name, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    char *pre = prefix(what);
    int rc = -1;
    const char *v = *name ? getenv(name) : NULL;
    size_t n = v ? strlen(v) : 0;
    if (!*name)
        gr_check_fail_member(c, obj, key, "%s\"%s\" names no environment variable", pre, key);
    else if (!v)
        gr_check_fail_member(c, obj, key, "%sthe environment variable %s is not set", pre, name);
    else if (n == 0)
        gr_check_fail_member(c, obj, key, "%sthe environment variable %s is empty", pre, name);
    else if (n > GR_SECRET_MAX || !one_line(v, n))
        gr_check_fail_member(c, obj, key,
                             "%sthe environment variable %s must hold the secret on one line "
                             "of at most %u bytes",
                             pre, name, GR_SECRET_MAX);
    else {
        *out = gr_xstrndup(v, n);
        *len = n;
        rc = 0;
    }
    free(pre);
    return rc;
}

static const char *shape_text(const json_t *v)
{
    return json_is_object(v)   ? "an object without \"file\" or \"env\""
           : json_is_array(v)  ? "an array"
           : json_is_null(v)   ? "null"
           : json_is_boolean(v) ? "a boolean"
                               : "a number";
}

int gr_secret_resolve(struct gr_check *c, const json_t *obj, const char *key, bool required,
                      const char *what, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    const json_t *v = json_object_get(obj, key);
    if (!v || (json_is_null(v) && !required)) {
        if (!required)
            return 0;
        char *pre = prefix(what);
        gr_check_fail_value(c, obj, "%smissing required key \"%s\"", pre, key);
        free(pre);
        return -1;
    }
    if (json_is_string(v)) {
        size_t n = json_string_length(v);
        char *pre = prefix(what);
        int rc = -1;
        if (n == 0)
            gr_check_fail_member(c, obj, key, "%s\"%s\" is empty", pre, key);
        else if (memchr(json_string_value(v), '\0', n))
            gr_check_fail_member(c, obj, key, "%s\"%s\" holds a NUL character", pre, key);
        else {
            *out = gr_xstrndup(json_string_value(v), n);
            *len = n;
            rc = 0;
        }
        free(pre);
        return rc;
    }
    const json_t *file = json_object_get(v, "file"), *env = json_object_get(v, "env");
    size_t members = 0;
    const char *k;
    json_t *m;
    json_object_foreach((json_t *)v, k, m)
        members += !gr_check_is_comment(k);
    if (json_is_object(v) && (!file != !env) && members == 1) {
        const char *src = file ? "file" : "env";
        const json_t *name = file ? file : env;
        if (!json_is_string(name)) {
            char *pre = prefix(what);
            gr_check_fail_member(c, v, src, "%s\"%s\" of \"%s\" must be a string", pre, src,
                                 key);
            free(pre);
            return -1;
        }
        return file ? gr_secret_from_file(c, v, src, what, json_string_value(name), out, len)
                    : gr_secret_from_env(c, v, src, what, json_string_value(name), out, len);
    }
    char *pre = prefix(what);
    gr_check_fail_member(c, obj, key,
                         "%s\"%s\" must be the secret as a string, {\"file\": \"/path\"} or "
                         "{\"env\": \"NAME\"}, not %s",
                         pre, key,
                         json_is_object(v) && members > 1 ? "an object with more than one key"
                                                          : shape_text(v));
    free(pre);
    return -1;
}

void gr_secret_nodes_add(struct gr_secret_nodes *l, const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key); /* the node is the config's, wiped with it */
    if (!json_is_string(v))
        return;
    l->v = gr_xrealloc(l->v, (l->n + 1) * sizeof *l->v);
    l->v[l->n++] = json_incref(v);
}

void gr_secret_nodes_wipe(struct gr_secret_nodes *l)
{
    for (size_t i = 0; i < l->n; i++) {
        /* jansson keeps a string's bytes in its own allocation, which ends
         * with the node: overwriting them in place is what wipes them */
        OPENSSL_cleanse((char *)json_string_value(l->v[i]), json_string_length(l->v[i]));
        json_decref(l->v[i]);
    }
    free(l->v);
    *l = (struct gr_secret_nodes){0};
}
