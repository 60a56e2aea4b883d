/*
 * A test plugin for the ABI 1.2 services, configurable:
 *
 *   target       GET this Graph target on each call (path or absolute URL)
 *   state_key    read this key as a counter, put it back plus one
 *   lock         take the state lock on state_key first (1; GR_RETRY if it
 *                stays busy), or not (0)
 *   sleep_ms     sleep this long between the read and the put (a race window)
 *   retry_times  the first N calls answer GR_RETRY after their put
 *   emit_to      handlers that get {"status", "refused", "error", "len",
 *                "retry_after_ms", "seen", "counter"} on every call, OK or not
 *
 * Used by tests/e2e/test_enrich.py.
 */
#define _GNU_SOURCE
#include <graphrouter/plugin.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const struct gr_host *host;

struct probe {
    struct gr_handler *h;
    const char *target, *key;
    int lock;
    long sleep_ms, retry_times;
    atomic_long calls;
};

static int probe_init(struct gr_handler *h, void **state)
{
    struct probe *p = calloc(1, sizeof *p);
    if (!p)
        return -1;
    p->h = h;
    p->target = host->config_string(h, "target");
    p->key = host->config_string(h, "state_key");
    p->lock = (int)host->config_int(h, "lock", 0);
    p->sleep_ms = (long)host->config_int(h, "sleep_ms", 0);
    p->retry_times = (long)host->config_int(h, "retry_times", 0);
    *state = p;
    return 0;
}

static void probe_fini(void *state)
{
    free(state);
}

/* A JSON string of `s` (escaping quotes, backslashes and control characters). */
static void quoted(char *out, size_t n, const char *s)
{
    size_t o = 0;
    out[o++] = '"';
    for (; s && *s && o + 8 < n; s++) {
        if (*s == '"' || *s == '\\')
            o += (size_t)snprintf(out + o, n - o, "\\%c", *s);
        else if ((unsigned char)*s < ' ')
            o += (size_t)snprintf(out + o, n - o, "\\u%04x", (unsigned char)*s);
        else
            out[o++] = *s;
    }
    out[o++] = '"';
    out[o] = '\0';
}

static int probe_handle(void *state, struct gr_msg *msg)
{
    struct probe *p = state;
    long call = atomic_fetch_add(&p->calls, 1) + 1;
    struct gr_graph_answer a = {0};
    int rc = 0;
    if (p->target)
        rc = host->graph_request(msg, "GET", p->target, NULL, &a);
    long seen = -1, counter = -1;
    if (p->key) {
        if (p->lock && host->state_lock(msg, p->key, 1) != 1) {
            host->set_error(msg, "the state lock stayed busy");
            return GR_RETRY;
        }
        size_t len;
        const char *v = host->state_get(msg, p->key, &len);
        seen = v ? strtol(v, NULL, 10) : 0;
        if (p->sleep_ms) {
            struct timespec ts = {p->sleep_ms / 1000, (p->sleep_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        counter = seen + 1;
        char text[32];
        snprintf(text, sizeof text, "%ld", counter);
        host->state_put(msg, p->key, text, strlen(text));
    }
    char error[600];
    quoted(error, sizeof error, a.error ? a.error : "");
    char event[900];
    snprintf(event, sizeof event,
             "{\"call\": %ld, \"rc\": %d, \"status\": %d, \"refused\": %d, \"error\": %s, "
             "\"len\": %zu, \"retry_after_ms\": %lld, \"seen\": %ld, \"counter\": %ld}",
             call, rc, a.status, a.refused, error, a.len, (long long)a.retry_after_ms, seen,
             counter);
    host->emit(msg, "emit_to", event, strlen(event));
    if (call <= p->retry_times) {
        host->set_error(msg, "retry %ld of %ld on purpose", call, p->retry_times);
        return GR_RETRY;
    }
    return GR_OK;
}

static const struct gr_config_key probe_keys[] = {
    {"target", GR_CONFIG_STRING, 0, "a Graph target to GET"},
    {"state_key", GR_CONFIG_STRING, 0, "a counter kept in state"},
    {"lock", GR_CONFIG_INT, 0, "take the state lock first"},
    {"sleep_ms", GR_CONFIG_INT, 0, "between the read and the put"},
    {"retry_times", GR_CONFIG_INT, 0, "the first N calls answer GR_RETRY"},
    {"emit_to", GR_CONFIG_HANDLER_LIST, 0, "who hears about each call"},
    {NULL, 0, 0, NULL},
};

static const struct gr_plugin probe = {
    .abi_major = GR_PLUGIN_ABI_MAJOR,
    .abi_minor = GR_PLUGIN_ABI_MINOR,
    .size = sizeof(struct gr_plugin),
    .name = "graph_probe",
    .version = "1.0",
    .description = "exercises Graph requests and handler state",
    .config_keys = probe_keys,
    .init = probe_init,
    .handle = probe_handle,
    .fini = probe_fini,
};

GR_PLUGIN_EXPORT const struct gr_plugin *gr_plugin_entry(const struct gr_host *h)
{
    host = h;
    return &probe;
}
