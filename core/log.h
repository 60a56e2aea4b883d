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

#include <stdarg.h>

enum { GR_LOG_LEVEL_ERROR = 0, GR_LOG_LEVEL_WARN = 1, GR_LOG_LEVEL_INFO = 2, GR_LOG_LEVEL_DEBUG = 3 };

void gr_log_set_level(int level);
int gr_log_level(void);
/* "error", "warn", "info", "debug" -> level, or -1. */
int gr_log_level_parse(const char *name);

void gr_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, tagged with handler=<name> (for plugins). */
void gr_log_handler(int level, const char *handler, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#define gr_error(...) gr_log(GR_LOG_LEVEL_ERROR, __VA_ARGS__)
#define gr_warn(...) gr_log(GR_LOG_LEVEL_WARN, __VA_ARGS__)
#define gr_info(...) gr_log(GR_LOG_LEVEL_INFO, __VA_ARGS__)
#define gr_debug(...) gr_log(GR_LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
