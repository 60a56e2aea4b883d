/*
 * A test plugin that misbehaves on purpose, configurably:
 *
 *   fail_times  the first N calls return `result` (default 0)
 *   result      "retry" or "fail" (default "retry")
 *   sleep_ms    every call sleeps this long first (default 0)
 *   init_sleep_ms  init() sleeps this long (a slow reload)
 *   emit_to     on success, emit the message itself plus {"flaky_calls": n}
 *   emit_always emit on every call, even those that fail (the router must
 *               drop what a failed call emitted)
 *   tag         a string copied into emitted events as "flaky_tag"
 *   crash_on    a message whose JSON contains this string crashes the process
 *               with SIGSEGV (a plugin bug taking the router down)
 *   hang_on     a message whose JSON contains this string never returns from
 *               handle() (a plugin stuck on a lock or a dead peer)
 *   hang_in     "init", "reopen" or "fini": that call never returns
 *   reopen_sleep_ms  reopen() sleeps this long (slow, but it returns)
 *
 * Emitted events also carry "flaky_max_inflight": the most handle() calls
 * that ran at the same time on this handler so far.
 *
 * It counts calls per handler state and logs each one.
 */
#define _GNU_SOURCE
#include <graphrouter/plugin.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef FLAKY_BUILD_TAG
#define FLAKY_BUILD_TAG "default"
#endif

static const struct gr_host *host;

struct flaky {
    struct gr_handler *h;
    atomic_long calls;
    atomic_long inflight, max_inflight;
    const char *crash_on, *hang_on, *hang_in;
    long reopen_sleep_ms;
    long fail_times;
    int fail_result;
    long sleep_ms;
    int emit, emit_always;
    const char *tag;
};

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (ms > 0 && nanosleep(&ts, &ts) != 0) {
    }
}

static void hang_if(const struct flaky *f, const char *call)
{
    if (!f->hang_in || strcmp(f->hang_in, call) != 0)
        return;
    host->log(f->h, GR_LOG_WARN, "%s: hanging on purpose", call);
    for (;;)
        sleep_ms(1000);
}

static int flaky_init(struct gr_handler *h, void **state)
{
    struct flaky *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->h = h;
    f->fail_times = (long)host->config_int(h, "fail_times", 0);
    const char *result = host->config_string(h, "result");
    if (result && strcmp(result, "retry") != 0 && strcmp(result, "fail") != 0) {
        host->init_error(h, "\"result\" must be \"retry\" or \"fail\", not \"%s\"", result);
        free(f);
        return -1;
    }
    f->fail_result = result && strcmp(result, "fail") == 0 ? GR_FAIL : GR_RETRY;
    f->sleep_ms = (long)host->config_int(h, "sleep_ms", 0);
    f->emit = host->config_list_size(h, "emit_to") > 0;
    f->emit_always = host->config_bool(h, "emit_always", 0);
    f->tag = host->config_string(h, "tag");
    f->crash_on = host->config_string(h, "crash_on");
    f->hang_on = host->config_string(h, "hang_on");
    f->hang_in = host->config_string(h, "hang_in");
    f->reopen_sleep_ms = (long)host->config_int(h, "reopen_sleep_ms", 0);
    sleep_ms((long)host->config_int(h, "init_sleep_ms", 0));
    hang_if(f, "init");
    *state = f;
    return 0;
}

static void emit(struct flaky *f, struct gr_msg *msg, long n)
{
    size_t len;
    const char *json = host->msg_json(msg, &len);
    /* {"flaky_calls": n, "flaky_max_inflight": m, "flaky_tag": "...", "flaky_build": "...",
     *  <the message's members>} */
    char head[320];
    int hl = snprintf(head, sizeof head,
                      "{\"flaky_calls\":%ld,\"flaky_max_inflight\":%ld,\"flaky_tag\":\"%s\","
                      "\"flaky_build\":\"%s\"%s",
                      n, atomic_load(&f->max_inflight), f->tag ? f->tag : "", FLAKY_BUILD_TAG,
                      len > 2 ? "," : "");
    char *out = malloc((size_t)hl + len);
    if (!out)
        return;
    memcpy(out, head, (size_t)hl);
    memcpy(out + hl, json + 1, len - 1); /* the message without its '{' */
    host->emit(msg, "emit_to", out, (size_t)hl + len - 1);
    free(out);
}

static int flaky_handle(void *state, struct gr_msg *msg)
{
    struct flaky *f = state;
    long n = atomic_fetch_add(&f->calls, 1) + 1;
    long now = atomic_fetch_add(&f->inflight, 1) + 1, max = atomic_load(&f->max_inflight);
    while (now > max && !atomic_compare_exchange_weak(&f->max_inflight, &max, now)) {
    }
    if (f->sleep_ms)
        sleep_ms(f->sleep_ms);
    size_t len;
    const char *json = host->msg_json(msg, &len);
    if (f->crash_on && memmem(json, len, f->crash_on, strlen(f->crash_on))) {
        host->log(f->h, GR_LOG_WARN, "call %ld: crashing on purpose", n);
        raise(SIGSEGV);
    }
    if (f->hang_on && memmem(json, len, f->hang_on, strlen(f->hang_on))) {
        host->log(f->h, GR_LOG_WARN, "call %ld: hanging on purpose", n);
        for (;;)
            sleep_ms(1000);
    }
    atomic_fetch_sub(&f->inflight, 1);
    int rc = n <= f->fail_times ? f->fail_result : GR_OK;
    host->log(f->h, GR_LOG_INFO, "call %ld -> %s", n,
              rc == GR_OK ? "ok" : rc == GR_RETRY ? "retry" : "fail");
    if (f->emit && (rc == GR_OK || f->emit_always))
        emit(f, msg, n);
    return rc;
}

static void flaky_reopen(void *state)
{
    struct flaky *f = state;
    sleep_ms(f->reopen_sleep_ms);
    hang_if(f, "reopen");
}

static void flaky_fini(void *state)
{
    hang_if(state, "fini");
    free(state);
}

static const struct gr_config_key keys[] = {
    {"fail_times", GR_CONFIG_INT, 0, "calls that fail before the first success"},
    {"result", GR_CONFIG_STRING, 0, "\"retry\" or \"fail\""},
    {"sleep_ms", GR_CONFIG_INT, 0, "sleep per call"},
    {"init_sleep_ms", GR_CONFIG_INT, 0, "sleep in init"},
    {"emit_to", GR_CONFIG_HANDLER_LIST, 0, "handlers that receive a copy"},
    {"emit_always", GR_CONFIG_BOOL, 0, "emit on failing calls too"},
    {"tag", GR_CONFIG_STRING, 0, "copied into emitted events"},
    {"crash_on", GR_CONFIG_STRING, 0, "crash (SIGSEGV) on messages containing this"},
    {"hang_on", GR_CONFIG_STRING, 0, "never return on messages containing this"},
    {"reopen_sleep_ms", GR_CONFIG_INT, 0, "sleep in reopen"},
    {"hang_in", GR_CONFIG_STRING, 0, "\"init\", \"reopen\" or \"fini\": never return from it"},
    {NULL, 0, 0, NULL},
};

static const struct gr_plugin plugin = {
    .abi_major = GR_PLUGIN_ABI_MAJOR,
    .abi_minor = GR_PLUGIN_ABI_MINOR,
    .size = sizeof(struct gr_plugin),
    .name = "flaky",
    .version = FLAKY_BUILD_TAG,
    .description = "fails, retries, sleeps and emits on purpose (tests)",
    .config_keys = keys,
    .init = flaky_init,
    .handle = flaky_handle,
    .reopen = flaky_reopen,
    .fini = flaky_fini,
};

GR_PLUGIN_EXPORT const struct gr_plugin *gr_plugin_entry(const struct gr_host *h)
{
    host = h;
    return &plugin;
}
