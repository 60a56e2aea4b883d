/*
 * Small helpers shared by the core: allocation, growable buffers, time and
 * ASCII case-insensitive comparison.
 *
 * Allocation policy: the gr_x* functions abort the process with a log line
 * when memory runs out. A router that cannot allocate cannot keep any promise
 * it makes, and systemd restarts it; threading ENOMEM through every call
 * would buy nothing but untested error paths.
 */
#ifndef GR_UTIL_H
#define GR_UTIL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GR_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

void *gr_xmalloc(size_t n);
void *gr_xcalloc(size_t n, size_t size);
void *gr_xrealloc(void *p, size_t n);
char *gr_xstrdup(const char *s);
char *gr_xstrndup(const char *s, size_t n);
/* n bytes (NUL bytes included) and a NUL after them. */
char *gr_xmemdup(const void *p, size_t n);
char *gr_xprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *gr_xvprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

/* A growable byte buffer, always NUL-terminated when len > 0 or after append. */
struct gr_buf {
    char *data;
    size_t len;
    size_t cap;
};
void gr_buf_reserve(struct gr_buf *b, size_t extra);
void gr_buf_append(struct gr_buf *b, const void *data, size_t len);
void gr_buf_puts(struct gr_buf *b, const char *s);
void gr_buf_printf(struct gr_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void gr_buf_free(struct gr_buf *b);

/* Milliseconds / nanoseconds on the monotonic clock, and wall-clock ms since the epoch. */
/* SHA-256, fetched from the default provider once per process: an implicit
 * fetch (EVP_sha256() passed to EVP_Digest) costs more than hashing a
 * clientState. Never NULL (aborts if libcrypto has no SHA-256). */
const struct evp_md_st *gr_sha256(void);

int64_t gr_mono_ms(void);
int64_t gr_mono_ns(void);
int64_t gr_wall_ms(void);
/* A condition variable whose timed waits take monotonic deadlines (gr_mono_ms). */
void gr_cond_init_mono(pthread_cond_t *c);
/* RFC 3339 UTC with milliseconds: "2026-11-23T20:45:00.123Z". */
#define GR_RFC3339_LEN 64
void gr_rfc3339(int64_t wall_ms, char out[GR_RFC3339_LEN]);

/* The value of a hexadecimal digit (either case), or -1. */
int gr_hex_digit(int c);
bool gr_streq_ci(const char *a, const char *b);
bool gr_strneq_ci(const char *a, const char *b, size_t n);
bool gr_has_prefix_ci(const char *s, const char *prefix);

#endif
