/* A validating JSON scanner that agrees with jansson (see jsonscan.h). */
#define _GNU_SOURCE
#include "http/jsonscan.h"

#include <errno.h>
#include <jansson.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

void gr_jscan_init(struct gr_jscan *s, const char *text, size_t len)
{
    *s = (struct gr_jscan){.start = text, .p = text, .end = text + len};
}

static bool fail_at(struct gr_jscan *s, const char *at)
{
    if (!s->error_at)
        s->error_at = at;
    return false;
}

bool gr_jscan_fail(struct gr_jscan *s)
{
    return fail_at(s, s->p);
}

void gr_jscan_ws(struct gr_jscan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

bool gr_jscan_take(struct gr_jscan *s, char c)
{
    gr_jscan_ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return true;
    }
    return false;
}

/* jansson counts every value it parses, scalars too, against JSON_PARSER_MAX_DEPTH. */
bool gr_jscan_enter(struct gr_jscan *s)
{
    if (++s->depth > JSON_PARSER_MAX_DEPTH)
        return gr_jscan_fail(s);
    return true;
}

void gr_jscan_leave(struct gr_jscan *s)
{
    s->depth--;
}

/* The length of the UTF-8 sequence at p (first byte >= 0x80) if jansson
 * takes it: no overlong forms, no surrogates, nothing past U+10FFFF; else 0. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n;
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        v = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        v = c & 0x07;
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (p[i] & 0x3F);
    }
    if (n == 3 && (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF)))
        return 0;
    if (n == 4 && (v < 0x10000 || v > 0x10FFFF))
        return 0;
    return n;
}

/* The four hex digits at p (p + 4 <= end checked here). */
static bool hex4(const char *p, const char *end, unsigned *v)
{
    if (end - p < 4)
        return false;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int d = gr_hex_digit(p[i]);
        if (d < 0)
            return false;
        *v = *v << 4 | (unsigned)d;
    }
    return true;
}

bool gr_jscan_string(struct gr_jscan *s, struct gr_jstr *out)
{
    if (s->p >= s->end || *s->p != '"')
        return gr_jscan_fail(s);
    const char *q = s->p + 1;
    bool escaped = false;
    for (;;) {
        if (q >= s->end)
            return fail_at(s, q); /* premature end of input */
        unsigned char c = (unsigned char)*q;
        if (c == '"')
            break;
        if (c < 0x20)
            return fail_at(s, q); /* control character */
        if (c >= 0x80) {
            size_t n = utf8_len((const unsigned char *)q, (const unsigned char *)s->end);
            if (!n)
                return fail_at(s, q);
            q += n;
            continue;
        }
        if (c != '\\') {
            q++;
            continue;
        }
        escaped = true;
        if (q + 1 >= s->end)
            return fail_at(s, q);
        char e = q[1];
        if (e != 'u') {
            if (!e || !strchr("\"\\/bfnrt", e))
                return fail_at(s, q);
            q += 2;
            continue;
        }
        unsigned v, lo;
        if (!hex4(q + 2, s->end, &v) || v == 0 || (v >= 0xDC00 && v <= 0xDFFF))
            return fail_at(s, q); /* \u0000 is refused, as jansson does without JSON_ALLOW_NUL */
        const char *at = q;
        q += 6;
        if (v >= 0xD800 && v <= 0xDBFF) { /* a high surrogate: its low half must follow */
            if (s->end - q < 6 || q[0] != '\\' || q[1] != 'u' || !hex4(q + 2, s->end, &lo) ||
                lo < 0xDC00 || lo > 0xDFFF)
                return fail_at(s, at);
            q += 6;
        }
    }
    out->raw = s->p + 1;
    out->len = (size_t)(q - out->raw);
    out->escaped = escaped;
    s->p = q + 1;
    return true;
}

/* Numbers are read in the C locale whatever a plugin may have set, as jansson
 * reads them (it swaps '.' for the locale's decimal point first). */
static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;

static void make_c_locale(void)
{
    c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (!c_locale)
        abort();
}

static bool is_digit(const char *p, const char *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

/* A number as jansson's lexer reads it, then converted as jansson does:
 * an integer must fit in a long long, a real must not overflow. */
static bool scan_number(struct gr_jscan *s)
{
    const char *q = s->p, *end = s->end;
    bool real = false;
    if (q < end && *q == '-')
        q++;
    if (!is_digit(q, end))
        return fail_at(s, q);
    if (*q == '0') {
        q++;
        if (is_digit(q, end))
            return fail_at(s, q);
    } else {
        while (is_digit(q, end))
            q++;
    }
    if (q < end && *q == '.') {
        real = true;
        q++;
        if (!is_digit(q, end))
            return fail_at(s, q);
        while (is_digit(q, end))
            q++;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        real = true;
        q++;
        if (q < end && (*q == '+' || *q == '-'))
            q++;
        if (!is_digit(q, end))
            return fail_at(s, q);
        while (is_digit(q, end))
            q++;
    }
    size_t n = (size_t)(q - s->p);
    char small[64];
    char *text = n < sizeof small ? small : gr_xmalloc(n + 1);
    memcpy(text, s->p, n);
    text[n] = '\0';
    errno = 0;
    bool ok;
    if (real) {
        pthread_once(&c_locale_once, make_c_locale);
        double v = strtod_l(text, NULL, c_locale);
        ok = !((v == HUGE_VAL || v == -HUGE_VAL) && errno == ERANGE);
    } else {
        (void)strtoll(text, NULL, 10);
        ok = errno != ERANGE;
    }
    if (text != small)
        free(text);
    if (!ok)
        return gr_jscan_fail(s);
    s->p = q;
    return true;
}

static bool scan_word(struct gr_jscan *s, const char *word, size_t len)
{
    if ((size_t)(s->end - s->p) < len || memcmp(s->p, word, len) != 0)
        return gr_jscan_fail(s);
    s->p += len;
    return true;
}

static bool scan_object(struct gr_jscan *s)
{
    s->p++; /* '{' */
    if (gr_jscan_take(s, '}'))
        return true;
    for (;;) {
        struct gr_jstr key;
        gr_jscan_ws(s);
        if (!gr_jscan_string(s, &key))
            return false;
        if (!gr_jscan_take(s, ':'))
            return gr_jscan_fail(s);
        gr_jscan_ws(s);
        if (!gr_jscan_value(s))
            return false;
        if (gr_jscan_take(s, '}'))
            return true;
        if (!gr_jscan_take(s, ','))
            return gr_jscan_fail(s);
    }
}

static bool scan_array(struct gr_jscan *s)
{
    s->p++; /* '[' */
    if (gr_jscan_take(s, ']'))
        return true;
    for (;;) {
        gr_jscan_ws(s);
        if (!gr_jscan_value(s))
            return false;
        if (gr_jscan_take(s, ']'))
            return true;
        if (!gr_jscan_take(s, ','))
            return gr_jscan_fail(s);
    }
}

bool gr_jscan_value(struct gr_jscan *s)
{
    if (!gr_jscan_enter(s))
        return false;
    bool ok;
    struct gr_jstr str;
    switch (s->p < s->end ? *s->p : '\0') {
    case '{': ok = scan_object(s); break;
    case '[': ok = scan_array(s); break;
    case '"': ok = gr_jscan_string(s, &str); break;
    case 't': ok = scan_word(s, "true", 4); break;
    case 'f': ok = scan_word(s, "false", 5); break;
    case 'n': ok = scan_word(s, "null", 4); break;
    default: ok = scan_number(s); break;
    }
    gr_jscan_leave(s);
    return ok;
}

void gr_jscan_where(const struct gr_jscan *s, int *line, int *col)
{
    const char *at = s->error_at ? s->error_at : s->p;
    *line = 1;
    *col = 1;
    for (const char *q = s->start; q < at && q < s->end; q++) {
        if (*q == '\n') {
            ++*line;
            *col = 1;
        } else if (((unsigned char)*q & 0xC0) != 0x80) {
            ++*col; /* characters, not bytes: continuation bytes do not count */
        }
    }
}

static char *put_utf8(char *o, uint32_t v)
{
    if (v < 0x80) {
        *o++ = (char)v;
    } else if (v < 0x800) {
        *o++ = (char)(0xC0 | v >> 6);
        *o++ = (char)(0x80 | (v & 0x3F));
    } else if (v < 0x10000) {
        *o++ = (char)(0xE0 | v >> 12);
        *o++ = (char)(0x80 | (v >> 6 & 0x3F));
        *o++ = (char)(0x80 | (v & 0x3F));
    } else {
        *o++ = (char)(0xF0 | v >> 18);
        *o++ = (char)(0x80 | (v >> 12 & 0x3F));
        *o++ = (char)(0x80 | (v >> 6 & 0x3F));
        *o++ = (char)(0x80 | (v & 0x3F));
    }
    return o;
}

char *gr_jstr_decode(const struct gr_jstr *str, size_t *len)
{
    /* decoding never lengthens: \uXXXX (6 bytes) is at most 3, a pair (12) is 4 */
    char *out = gr_xmalloc(str->len + 1), *o = out;
    const char *p = str->raw, *end = str->raw + str->len;
    while (p < end) {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        char e = p[1];
        p += 2;
        switch (e) {
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned v = 0, lo = 0;
            hex4(p, end, &v);
            p += 4;
            if (v >= 0xD800 && v <= 0xDBFF) { /* checked by the scan: "\uDCxx" follows */
                hex4(p + 2, end, &lo);
                p += 6;
                v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
            }
            o = put_utf8(o, v);
            break;
        }
        default: *o++ = e; break; /* " \ / */
        }
    }
    *o = '\0';
    *len = (size_t)(o - out);
    return out;
}

bool gr_jstr_is(const struct gr_jstr *str, const char *lit, bool ci)
{
    size_t n = strlen(lit);
    if (!str->escaped)
        return str->len == n &&
               (ci ? strncasecmp(str->raw, lit, n) : memcmp(str->raw, lit, n)) == 0;
    size_t len;
    char *text = gr_jstr_decode(str, &len);
    bool same = len == n && (ci ? strncasecmp(text, lit, n) : memcmp(text, lit, n)) == 0;
    free(text);
    return same;
}
