/*
 * Logging: one line per call on stderr, in logfmt so both people and machines
 * can read it:
 *
 *   ts=2026-11-23T20:45:00.123Z level=warn msg="item dropped: wrong clientState" handler=mail
 *
 * The message is escaped (quotes, backslashes, control characters), so values
 * that come from the network cannot break a line or forge another. Each line
 * is written with a single write(2), so lines from different threads never
 * interleave. Never pass secrets, clientState values, keys or decrypted
 * content to these functions.
 */
#ifndef GR_LOG_H
#define GR_LOG_H

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>

enum { GR_LOG_LEVEL_ERROR = 0, GR_LOG_LEVEL_WARN = 1, GR_LOG_LEVEL_INFO = 2, GR_LOG_LEVEL_DEBUG = 3 };

void gr_log_set_level(int level);
int gr_log_level(void);
/* "error", "warn", "info", "debug" -> level, or -1. */
int gr_log_level_parse(const char *name);

void gr_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, tagged with handler=<name> (for plugins). */
void gr_log_handler(int level, const char *handler, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/*
 * Lines that the network can trigger at will (a POST with a wrong
 * clientState, malformed JSON, a store that refuses with 503 under a flood)
 * are rate-limited per call site, as the kernel's printk_ratelimited is: at
 * most `burst` lines per `window_ms`; the rest are counted, and the next line
 * written carries suppressed=N, how many like it were left out since the last
 * one. Metrics still count every occurrence. Formatting is skipped for a line
 * that is left out, so a flood costs a mutex and a counter per line.
 */
#define GR_LOG_LIMIT_BURST 10
#define GR_LOG_LIMIT_WINDOW_MS 10000
struct gr_log_limit {
    pthread_mutex_t lock;
    unsigned burst;
    int64_t window_ms;
    int64_t window_start_ms; /* monotonic */
    unsigned written;        /* in this window */
    uint64_t suppressed;     /* since the last line written */
};
#define GR_LOG_LIMIT_INIT                                                                     \
    {PTHREAD_MUTEX_INITIALIZER, GR_LOG_LIMIT_BURST, GR_LOG_LIMIT_WINDOW_MS, 0, 0, 0}
void gr_log_limit_init(struct gr_log_limit *l); /* as GR_LOG_LIMIT_INIT */
void gr_log_limited(struct gr_log_limit *l, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* gr_warn, limited per call site. */
#define gr_warn_limited(...)                                                                  \
    do {                                                                                      \
        static struct gr_log_limit gr_log_limit_ = GR_LOG_LIMIT_INIT;                         \
        gr_log_limited(&gr_log_limit_, GR_LOG_LEVEL_WARN, __VA_ARGS__);                       \
    } while (0)
/* gr_info, limited per call site (lines a client can cause at will, such as
 * an answered validation handshake). */
#define gr_info_limited(...)                                                                  \
    do {                                                                                      \
        static struct gr_log_limit gr_log_limit_ = GR_LOG_LIMIT_INIT;                         \
        gr_log_limited(&gr_log_limit_, GR_LOG_LEVEL_INFO, __VA_ARGS__);                       \
    } while (0)

#define gr_error(...) gr_log(GR_LOG_LEVEL_ERROR, __VA_ARGS__)
#define gr_warn(...) gr_log(GR_LOG_LEVEL_WARN, __VA_ARGS__)
#define gr_info(...) gr_log(GR_LOG_LEVEL_INFO, __VA_ARGS__)
#define gr_debug(...) gr_log(GR_LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
