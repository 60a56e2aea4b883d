/* logfmt lines on stderr (see log.h). The level is a relaxed atomic; the
 * rate limits are shared behind their own mutexes; nothing else is shared. */
#define _GNU_SOURCE
#include "log.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

/* Longest message kept; longer ones are cut and marked, so one bad value
 * cannot produce a multi-megabyte log line. */
#define GR_LOG_MAX_MSG 4096

static atomic_int log_level = GR_LOG_LEVEL_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void gr_log_set_level(int level)
{
    atomic_store_explicit(&log_level, level, memory_order_relaxed);
}

int gr_log_level(void)
{
    return atomic_load_explicit(&log_level, memory_order_relaxed);
}

int gr_log_level_parse(const char *name)
{
    for (size_t i = 0; i < GR_ARRAY_LEN(level_names); i++)
        if (strcmp(name, level_names[i]) == 0)
            return (int)i;
    return -1;
}

static void append_escaped(struct gr_buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': gr_buf_append(out, "\\\"", 2); break;
        case '\\': gr_buf_append(out, "\\\\", 2); break;
        case '\n': gr_buf_append(out, "\\n", 2); break;
        case '\r': gr_buf_append(out, "\\r", 2); break;
        case '\t': gr_buf_append(out, "\\t", 2); break;
        default:
            if (c < 0x20 || c == 0x7f) {
                char esc[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
                gr_buf_append(out, esc, 4);
            } else {
                gr_buf_append(out, &s[i], 1);
            }
        }
    }
}

__attribute__((format(printf, 4, 0))) static void emit_line(int level, const char *handler,
                                                          uint64_t suppressed, const char *fmt,
                                                          va_list ap)
{
    if (level > gr_log_level())
        return;
    char *msg = gr_xvprintf(fmt, ap);
    size_t len = strlen(msg);
    int cut = len > GR_LOG_MAX_MSG;
    if (cut)
        len = GR_LOG_MAX_MSG;

    char ts[GR_RFC3339_LEN];
    gr_rfc3339(gr_wall_ms(), ts);
    struct gr_buf line = {0};
    gr_buf_printf(&line, "ts=%s level=%s msg=\"", ts, level_names[level < 0 ? 0 : level > 3 ? 3 : level]);
    append_escaped(&line, msg, len);
    if (cut)
        gr_buf_puts(&line, "...(cut)");
    gr_buf_puts(&line, "\"");
    if (handler) {
        gr_buf_puts(&line, " handler=\"");
        append_escaped(&line, handler, strlen(handler));
        gr_buf_puts(&line, "\"");
    }
    if (suppressed)
        gr_buf_printf(&line, " suppressed=%llu", (unsigned long long)suppressed);
    gr_buf_puts(&line, "\n");
    size_t off = 0;
    while (off < line.len) {
        ssize_t n = write(STDERR_FILENO, line.data + off, line.len - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    gr_buf_free(&line);
    free(msg);
}

void gr_log(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit_line(level, NULL, 0, fmt, ap);
    va_end(ap);
}

void gr_log_limit_init(struct gr_log_limit *l)
{
    *l = (struct gr_log_limit){.burst = GR_LOG_LIMIT_BURST, .window_ms = GR_LOG_LIMIT_WINDOW_MS};
    pthread_mutex_init(&l->lock, NULL);
}

void gr_log_limited(struct gr_log_limit *l, int level, const char *fmt, ...)
{
    if (level > gr_log_level())
        return;
    int64_t now = gr_mono_ms();
    pthread_mutex_lock(&l->lock);
    if (!l->written || now - l->window_start_ms >= l->window_ms) {
        l->window_start_ms = now;
        l->written = 0;
    }
    bool write_it = l->written < l->burst;
    uint64_t suppressed = 0;
    if (write_it) {
        l->written++;
        suppressed = l->suppressed;
        l->suppressed = 0;
    } else {
        l->suppressed++;
    }
    pthread_mutex_unlock(&l->lock);
    if (!write_it)
        return;
    va_list ap;
    va_start(ap, fmt);
    emit_line(level, NULL, suppressed, fmt, ap);
    va_end(ap);
}

void gr_log_handler(int level, const char *handler, const char *fmt, va_list ap)
{
    emit_line(level, handler, 0, fmt, ap);
}
