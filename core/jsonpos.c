/* Position index for parsed JSON (see jsonpos.h). Built once, then read-only. */
#include "jsonpos.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

struct entry {
    const json_t *parent; /* NULL for the root */
    const char *key;      /* member key (jansson's copy), or NULL for elements */
    size_t index;
    const json_t *value;
    struct gr_textpos at; /* key for members, value for elements and the root */
};

struct gr_jsonpos {
    struct entry *v;
    size_t n, cap;
};

struct scan {
    const char *p;
    size_t i, n;
    struct gr_textpos at;
    struct gr_jsonpos *out;
};

static void add(struct scan *s, const json_t *parent, const char *key, size_t index,
                const json_t *value, struct gr_textpos at)
{
    struct gr_jsonpos *o = s->out;
    if (o->n == o->cap) {
        o->cap = o->cap ? o->cap * 2 : 64;
        o->v = gr_xrealloc(o->v, o->cap * sizeof *o->v);
    }
    o->v[o->n++] = (struct entry){parent, key, index, value, at};
}

static int peek(const struct scan *s)
{
    return s->i < s->n ? (unsigned char)s->p[s->i] : -1;
}

static void adv(struct scan *s)
{
    if (s->i >= s->n)
        return;
    unsigned char c = (unsigned char)s->p[s->i++];
    if (c == '\n') {
        s->at.line++;
        s->at.col = 1;
    } else if ((c & 0xC0) != 0x80) {
        s->at.col++;
    }
}

static void skip_ws(struct scan *s)
{
    for (int c = peek(s); c == ' ' || c == '\t' || c == '\n' || c == '\r'; c = peek(s))
        adv(s);
}

static unsigned read_hex4(struct scan *s)
{
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int h = gr_hex_digit(peek(s));
        v = v * 16 + (unsigned)(h < 0 ? 0 : h);
        adv(s);
    }
    return v;
}

static void put_utf8(struct gr_buf *b, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    gr_buf_append(b, u, n);
}

/* At an opening quote; decodes into `out` when it is not NULL. */
static void scan_string(struct scan *s, struct gr_buf *out)
{
    adv(s);
    for (int c = peek(s); c >= 0 && c != '"'; c = peek(s)) {
        if (c != '\\') {
            if (out)
                gr_buf_append(out, &s->p[s->i], 1);
            adv(s);
            continue;
        }
        adv(s);
        int e = peek(s);
        adv(s);
        if (!out) {
            if (e == 'u')
                read_hex4(s);
            continue;
        }
        switch (e) {
        case 'b': gr_buf_append(out, "\b", 1); break;
        case 'f': gr_buf_append(out, "\f", 1); break;
        case 'n': gr_buf_append(out, "\n", 1); break;
        case 'r': gr_buf_append(out, "\r", 1); break;
        case 't': gr_buf_append(out, "\t", 1); break;
        case 'u': {
            unsigned cp = read_hex4(s);
            if (cp >= 0xD800 && cp < 0xDC00 && peek(s) == '\\') {
                adv(s);
                adv(s); /* 'u' */
                unsigned lo = read_hex4(s);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(out, cp);
            break;
        }
        default: {
            char ch = (char)e;
            gr_buf_append(out, &ch, 1);
        }
        }
    }
    adv(s); /* closing quote */
}

static void scan_value(struct scan *s, const json_t *v);

/* Not strchr(): it would also find the string's terminating NUL, and jansson
 * lets a NUL byte through after a number ("[9\0]" parses as [9]). */
static bool is_delimiter(int c)
{
    return c == ',' || c == ']' || c == '}' || c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Every pass of a container loop must consume input; whatever jansson
 * tolerated that this scanner does not expect is skipped a byte at a time. */
static void ensure_progress(struct scan *s, size_t before)
{
    if (s->i == before)
        adv(s);
}

static void scan_object(struct scan *s, const json_t *obj)
{
    struct gr_buf key = {0};
    adv(s); /* { */
    skip_ws(s);
    while (peek(s) >= 0 && peek(s) != '}') {
        size_t before = s->i;
        skip_ws(s);
        struct gr_textpos at = s->at;
        key.len = 0;
        gr_buf_reserve(&key, 0);
        key.data[0] = '\0';
        scan_string(s, &key);
        skip_ws(s);
        adv(s); /* : */
        skip_ws(s);
        const json_t *child = NULL;
        const char *stored = NULL;
        if (json_is_object(obj)) {
            void *it = json_object_iter_at((json_t *)obj, key.data);
            if (it) {
                stored = json_object_iter_key(it);
                child = json_object_iter_value(it);
            }
        }
        if (stored)
            add(s, obj, stored, 0, child, at);
        scan_value(s, child);
        skip_ws(s);
        if (peek(s) == ',')
            adv(s);
        skip_ws(s);
        ensure_progress(s, before);
    }
    adv(s); /* } */
    gr_buf_free(&key);
}

static void scan_array(struct scan *s, const json_t *arr)
{
    adv(s); /* [ */
    skip_ws(s);
    size_t index = 0;
    while (peek(s) >= 0 && peek(s) != ']') {
        size_t before = s->i;
        skip_ws(s);
        const json_t *child = json_is_array(arr) ? json_array_get(arr, index) : NULL;
        if (child)
            add(s, arr, NULL, index, child, s->at);
        scan_value(s, child);
        index++;
        skip_ws(s);
        if (peek(s) == ',')
            adv(s);
        skip_ws(s);
        ensure_progress(s, before);
    }
    adv(s); /* ] */
}

static void scan_value(struct scan *s, const json_t *v)
{
    skip_ws(s);
    switch (peek(s)) {
    case '{': scan_object(s, v); break;
    case '[': scan_array(s, v); break;
    case '"': scan_string(s, NULL); break;
    default: /* a number, true, false or null: up to the next delimiter */
        for (int c = peek(s); c >= 0 && !is_delimiter(c); c = peek(s))
            adv(s);
    }
}

struct gr_jsonpos *gr_jsonpos_build(const char *text, size_t len, const json_t *root)
{
    struct gr_jsonpos *pos = gr_xcalloc(1, sizeof *pos);
    struct scan s = {.p = text, .n = len, .at = {1, 1}, .out = pos};
    skip_ws(&s);
    add(&s, NULL, NULL, 0, root, s.at);
    scan_value(&s, root);
    return pos;
}

void gr_jsonpos_free(struct gr_jsonpos *pos)
{
    if (!pos)
        return;
    free(pos->v);
    free(pos);
}

bool gr_jsonpos_member(const struct gr_jsonpos *pos, const json_t *obj, const char *key,
                       struct gr_textpos *out)
{
    for (size_t i = 0; pos && i < pos->n; i++) {
        const struct entry *e = &pos->v[i];
        if (e->parent == obj && e->key && strcmp(e->key, key) == 0) {
            *out = e->at;
            return true;
        }
    }
    return false;
}

bool gr_jsonpos_element(const struct gr_jsonpos *pos, const json_t *arr, size_t index,
                        struct gr_textpos *out)
{
    for (size_t i = 0; pos && i < pos->n; i++) {
        const struct entry *e = &pos->v[i];
        if (e->parent == arr && !e->key && e->index == index) {
            *out = e->at;
            return true;
        }
    }
    return false;
}

bool gr_jsonpos_value(const struct gr_jsonpos *pos, const json_t *value, struct gr_textpos *out)
{
    if (!json_is_object(value) && !json_is_array(value))
        return false; /* strings and numbers could also work, but nothing needs them */
    for (size_t i = 0; pos && i < pos->n; i++) {
        if (pos->v[i].value == value) {
            *out = pos->v[i].at;
            return true;
        }
    }
    return false;
}
