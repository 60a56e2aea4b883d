/*
 * A validating JSON scanner for the request path: it accepts exactly the
 * texts that jansson's json_loadb(text, len, 0) accepts (same grammar, UTF-8
 * checks, escapes, surrogate pairs, no \u0000, integers that fit in a long
 * long, reals that do not overflow, nesting up to JSON_PARSER_MAX_DEPTH
 * values, an object or array at the top), but builds nothing: it walks the
 * text and hands out spans. Ingest uses it to find a POST's items and the
 * few members it reads without allocating a tree per POST, and stores each
 * item's own text. tests/fuzz/fuzz_ingest.c checks the agreement with
 * jansson on every input it generates. One difference, on purpose: jansson
 * 2.14 skips a NUL byte right after a number or a literal ("[7\0]" loads);
 * the scanner refuses it, as JSON does.
 *
 * Usage: gr_jscan_init, then the calls below in the order the grammar
 * allows; each returns false at the first error, with s->error_at set.
 */
#ifndef GR_JSONSCAN_H
#define GR_JSONSCAN_H

#include <stdbool.h>
#include <stddef.h>

struct gr_jscan {
    const char *start, *p, *end;
    unsigned depth;       /* values open, as jansson counts them */
    const char *error_at; /* set by the first error */
};

/* A string token: the bytes between its quotes, escapes not decoded. */
struct gr_jstr {
    const char *raw;
    size_t len;
    bool escaped; /* has a backslash: decode before comparing */
};

void gr_jscan_init(struct gr_jscan *s, const char *text, size_t len);
void gr_jscan_ws(struct gr_jscan *s);
/* The next byte is c (after whitespace): consume it. No error is set. */
bool gr_jscan_take(struct gr_jscan *s, char c);
/* Check and skip one value of any kind at s->p (no leading whitespace). */
bool gr_jscan_value(struct gr_jscan *s);
/* Check and skip a string at s->p, giving its span. */
bool gr_jscan_string(struct gr_jscan *s, struct gr_jstr *out);
/* Entering and leaving an object or array value: the depth jansson limits. */
bool gr_jscan_enter(struct gr_jscan *s);
void gr_jscan_leave(struct gr_jscan *s);
/* Fail at the current position. */
bool gr_jscan_fail(struct gr_jscan *s);
/* Line and column (in characters, from 1) of s->error_at. */
void gr_jscan_where(const struct gr_jscan *s, int *line, int *col);

/* A checked string's value, decoded (NUL-terminated, malloc'd). */
char *gr_jstr_decode(const struct gr_jstr *str, size_t *len);
/* Is the string's value `lit`? Case-insensitively (ASCII) if ci. */
bool gr_jstr_is(const struct gr_jstr *str, const char *lit, bool ci);

#endif
