/*
 * Metrics storage and Prometheus rendering (see metrics.h). Fixed series are
 * atomics in `m`; named series are append-only lists under `registry_lock`.
 */
#define _GNU_SOURCE
#include "metrics.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/jwt.h"
#include "http/head.h"
#include "store/store.h"


static const unsigned tracked_status[] = {200, 202, 400, 403, 404, 405, 408,
                                          411, 413, 429, 500, 501, 503};
#define N_STATUS (GR_ARRAY_LEN(tracked_status) + 1) /* + "other" */

/* Graph's answers counted by status; the rest are "other" (and "none": no answer). */
static const long graph_status[] = {200, 201, 204, 400, 401, 403, 404, 409, 429, 500, 503};
_Static_assert(GR_ARRAY_LEN(graph_status) + 2 == GR_GRAPH_STATUS_SLOTS, "graph status slots");
static const char *const lifecycle_names[] = {"reauthorizationRequired", "subscriptionRemoved",
                                              "missed"};
static const char *const resync_names[] = {"missed", "subscriptionRemoved", "renewal_not_found",
                                           "expired"};
static const char *const sub_op_names[GR_SUB_OP_COUNT] = {"creates", "renewals", "deletes"};

/* Ack latency buckets, in seconds. */
static const double buckets[] = {0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
                                 0.001,   0.0025,   0.005,   0.01,   0.025,   0.05,
                                 0.1,     0.25,     0.5,     1,      2.5,     5};
#define N_BUCKETS GR_ARRAY_LEN(buckets)

static const char *const endpoint_names[GR_EP_COUNT] = {"notifications", "lifecycle", "healthz",
                                                        "metrics", "other"};
static const char *const drop_names[GR_DROP_COUNT] = {
    "malformed_item",         "missing_client_state",    "bad_client_state",
    "no_secret",              "validation_message",      "rich_not_configured",
    "token_missing",          "token_invalid",           "token_uncovered",
    "decrypt_malformed",      "decrypt_unknown_key",     "decrypt_bad_key",
    "decrypt_bad_signature",  "decrypt_bad_padding",     "decrypt_not_json"};

/* A histogram of durations, in the buckets above (+Inf last). */
struct seconds_hist {
    atomic_uint_fast64_t buckets[N_BUCKETS + 1], count, sum_ns;
};

static struct {
    atomic_uint_fast64_t requests[GR_EP_COUNT][N_STATUS];
    struct seconds_hist ack, commit;
    atomic_uint_fast64_t received, accepted, routed, unrouted;
    atomic_uint_fast64_t dropped[GR_DROP_COUNT];
    atomic_uint_fast64_t batch_buckets[8], batch_sum, store_failures, duplicates;
    atomic_uint_fast64_t rejected_full, rejected_error;
    atomic_uint_fast64_t conn_refused[GR_REFUSED_COUNT];
    atomic_uint_fast64_t head_refused[GR_HEAD_ERROR_COUNT];
    atomic_uint_fast64_t timeouts[3];
    atomic_uint_fast64_t reload_ok, reload_failed;
    atomic_uint_fast64_t stuck_init, stuck_reopen, stuck_fini; /* plugin_job.c */
    atomic_uint_fast64_t tokens[GR_TOKEN_RESULT_COUNT];
    atomic_uint_fast64_t rsa_private_ops, content_key_hits, content_key_misses;
    atomic_uint_fast64_t jwks_ok, jwks_failed, jwks_keys;
    atomic_int_fast64_t jwks_loaded_ms;
    atomic_int_fast64_t tls_not_after_s;
    atomic_uint_fast64_t graph_requests[GR_GRAPH_STATUS_SLOTS];
    atomic_uint_fast64_t graph_tokens_ok, graph_tokens_failed;
    atomic_uint_fast64_t sub_ops[GR_SUB_OP_COUNT][2]; /* [op][ok] */
    atomic_uint_fast64_t lifecycle[4];                /* + other */
    atomic_uint_fast64_t resyncs[4];
    atomic_uint_fast64_t subs[3];
    atomic_int_fast64_t next_expiry_ms;
} m = {.next_expiry_ms = -1};

struct named {
    struct named *next;
    char *name;
    union {
        struct gr_handler_stats handler;
        struct gr_route_stats route;
    } u;
};

struct gr_metric {
    struct gr_metric *next;
    char *handler, *name, *help;
    bool gauge;
    atomic_int_fast64_t value;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct named *handlers, *routes;
static struct gr_metric *plugin_metrics;

#define INC(x) atomic_fetch_add_explicit(&(x), 1, memory_order_relaxed)
#define ADD(x, n) atomic_fetch_add_explicit(&(x), (n), memory_order_relaxed)
#define GET(x) ((unsigned long long)atomic_load_explicit(&(x), memory_order_relaxed))

const char *gr_drop_reason_name(enum gr_drop_reason r)
{
    return (unsigned)r < GR_DROP_COUNT ? drop_names[r] : "unknown";
}

void gr_metrics_request(enum gr_endpoint ep, unsigned status)
{
    size_t i = 0;
    while (i < GR_ARRAY_LEN(tracked_status) && tracked_status[i] != status)
        i++;
    INC(m.requests[ep < GR_EP_COUNT ? ep : GR_EP_OTHER][i]);
}

static void observe(struct seconds_hist *h, int64_t ns)
{
    double s = (double)ns / 1e9;
    size_t i = 0;
    while (i < N_BUCKETS && s > buckets[i])
        i++;
    INC(h->buckets[i]);
    INC(h->count);
    ADD(h->sum_ns, (uint_fast64_t)(ns > 0 ? ns : 0));
}

void gr_metrics_ack_latency(int64_t ns) { observe(&m.ack, ns); }

void gr_metrics_items_received(size_t n) { ADD(m.received, n); }
void gr_metrics_items_accepted(size_t n) { ADD(m.accepted, n); }
void gr_metrics_item_dropped(enum gr_drop_reason r) { INC(m.dropped[r]); }
void gr_metrics_item_routed(bool routed) { routed ? INC(m.routed) : INC(m.unrouted); }
static const unsigned batch_bounds[] = {1, 2, 4, 8, 16, 32, 64}; /* + Inf */

void gr_metrics_store_commit(int64_t ns, size_t requests)
{
    observe(&m.commit, ns);
    size_t b = 0;
    while (b < GR_ARRAY_LEN(batch_bounds) && requests > batch_bounds[b])
        b++;
    INC(m.batch_buckets[b]);
    ADD(m.batch_sum, requests);
}

void gr_metrics_store_failure(void) { INC(m.store_failures); }
void gr_metrics_conn_refused(enum gr_conn_refusal r) { INC(m.conn_refused[r]); }
void gr_metrics_head_refused(int e)
{
    if (e > 0 && e < GR_HEAD_ERROR_COUNT)
        INC(m.head_refused[e]);
}
void gr_metrics_http_timeout(int phase)
{
    if (phase >= 0 && phase < 3)
        INC(m.timeouts[phase]);
}
void gr_metrics_duplicates(size_t n) { ADD(m.duplicates, n); }
void gr_metrics_store_rejected(bool full) { full ? INC(m.rejected_full) : INC(m.rejected_error); }
void gr_metrics_reload(bool ok) { ok ? INC(m.reload_ok) : INC(m.reload_failed); }
void gr_metrics_plugin_call_stuck(const char *what)
{
    switch (what[0]) {
    case 'i': INC(m.stuck_init); break;
    case 'r': INC(m.stuck_reopen); break;
    default: INC(m.stuck_fini); break;
    }
}
void gr_metrics_jwks_refresh(bool ok) { ok ? INC(m.jwks_ok) : INC(m.jwks_failed); }

void gr_metrics_tls_expiry(int64_t not_after_s)
{
    atomic_store_explicit(&m.tls_not_after_s, not_after_s, memory_order_relaxed);
}

void gr_metrics_token(int result)
{
    if (result >= 0 && result < GR_TOKEN_RESULT_COUNT)
        INC(m.tokens[result]);
}

void gr_metrics_rsa_private_op(void) { INC(m.rsa_private_ops); }
void gr_metrics_content_key_cache(bool hit)
{
    hit ? INC(m.content_key_hits) : INC(m.content_key_misses);
}

static size_t graph_slot(long status)
{
    size_t i = 0;
    while (i < GR_ARRAY_LEN(graph_status) && graph_status[i] != status)
        i++;
    return status == 0 ? GR_ARRAY_LEN(graph_status) + 1 : i;
}

void gr_metrics_graph_request(long status) { INC(m.graph_requests[graph_slot(status)]); }
void gr_metrics_handler_graph(struct gr_handler_stats *h, long status)
{
    INC(h->graph[graph_slot(status)]);
}

static void graph_code(struct gr_buf *o, const char *series, const char *label, size_t slot,
                       unsigned long long v)
{
    if (slot < GR_ARRAY_LEN(graph_status))
        gr_buf_printf(o, "%s{%scode=\"%ld\"} %llu\n", series, label, graph_status[slot], v);
    else
        gr_buf_printf(o, "%s{%scode=\"%s\"} %llu\n", series, label,
                      slot == GR_ARRAY_LEN(graph_status) ? "other" : "none", v);
}

void gr_metrics_graph_token(bool ok) { ok ? INC(m.graph_tokens_ok) : INC(m.graph_tokens_failed); }
void gr_metrics_sub_op(enum gr_sub_op op, bool ok) { INC(m.sub_ops[op][ok]); }

static size_t name_index(const char *const *names, size_t n, const char *name)
{
    size_t i = 0;
    while (i < n && (!name || strcmp(names[i], name) != 0))
        i++;
    return i;
}

void gr_metrics_lifecycle_event(const char *event)
{
    INC(m.lifecycle[name_index(lifecycle_names, GR_ARRAY_LEN(lifecycle_names), event)]);
}

void gr_metrics_resync(const char *reason)
{
    size_t i = name_index(resync_names, GR_ARRAY_LEN(resync_names), reason);
    if (i < GR_ARRAY_LEN(resync_names))
        INC(m.resyncs[i]);
}

void gr_metrics_subscriptions(const uint64_t by_state[3], int64_t next_expiry_ms)
{
    for (size_t i = 0; i < 3; i++)
        atomic_store_explicit(&m.subs[i], by_state[i], memory_order_relaxed);
    atomic_store_explicit(&m.next_expiry_ms, next_expiry_ms, memory_order_relaxed);
}

void gr_metrics_jwks(size_t keys, int64_t loaded_wall_ms)
{
    atomic_store_explicit(&m.jwks_keys, keys, memory_order_relaxed);
    atomic_store_explicit(&m.jwks_loaded_ms, loaded_wall_ms, memory_order_relaxed);
}

static struct named *named_get(struct named **list, const char *name)
{
    pthread_mutex_lock(&registry_lock);
    struct named **p = list;
    while (*p && strcmp((*p)->name, name) != 0)
        p = &(*p)->next;
    if (!*p) {
        *p = gr_xcalloc(1, sizeof **p);
        (*p)->name = gr_xstrdup(name);
    }
    struct named *n = *p;
    pthread_mutex_unlock(&registry_lock);
    return n;
}

struct gr_handler_stats *gr_metrics_handler(const char *name)
{
    return &named_get(&handlers, name)->u.handler;
}

struct gr_route_stats *gr_metrics_route(const char *name)
{
    return &named_get(&routes, name)->u.route;
}

struct gr_metric *gr_metrics_plugin(const char *handler, const char *name, const char *help,
                                    bool gauge)
{
    if (!name || !*name || strlen(name) > 100)
        return NULL;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || *p == '_' || (p != name && *p >= '0' && *p <= '9')))
            return NULL;
    pthread_mutex_lock(&registry_lock);
    struct gr_metric **p = &plugin_metrics, *found = NULL;
    bool type_clash = false;
    for (; *p; p = &(*p)->next) {
        if (strcmp((*p)->name, name) != 0)
            continue;
        type_clash |= (*p)->gauge != gauge; /* one family, one type */
        if (strcmp((*p)->handler, handler) == 0)
            found = *p;
    }
    if (!found && !type_clash) {
        found = *p = gr_xcalloc(1, sizeof **p);
        found->handler = gr_xstrdup(handler);
        found->name = gr_xstrdup(name);
        found->help = gr_xstrdup(help ? help : "");
        found->gauge = gauge;
    }
    pthread_mutex_unlock(&registry_lock);
    return type_clash ? NULL : found;
}

void gr_metric_add(struct gr_metric *metric, int64_t delta)
{
    if (metric && (metric->gauge || delta > 0))
        atomic_fetch_add_explicit(&metric->value, delta, memory_order_relaxed);
}

void gr_metric_set(struct gr_metric *metric, int64_t value)
{
    if (metric && metric->gauge)
        atomic_store_explicit(&metric->value, value, memory_order_relaxed);
}

/* Names in labels are limited by the config check to [A-Za-z0-9_.-], so
 * they need no escaping; help texts from plugins do. */
static void help_line(struct gr_buf *o, const char *name, const char *type, const char *help)
{
    gr_buf_printf(o, "# HELP %s ", name);
    for (const char *p = help; *p; p++) {
        if (*p == '\\')
            gr_buf_puts(o, "\\\\");
        else if (*p == '\n')
            gr_buf_puts(o, "\\n");
        else
            gr_buf_append(o, p, 1);
    }
    gr_buf_printf(o, "\n# TYPE %s %s\n", name, type);
}

static void render_seconds(struct gr_buf *o, const char *name, const char *help,
                           struct seconds_hist *h)
{
    help_line(o, name, "histogram", help);
    unsigned long long cum = 0;
    for (size_t i = 0; i <= N_BUCKETS; i++) {
        cum += GET(h->buckets[i]);
        if (i < N_BUCKETS)
            gr_buf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, buckets[i], cum);
        else
            gr_buf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, cum);
    }
    gr_buf_printf(o, "%s_sum %.9f\n", name, (double)GET(h->sum_ns) / 1e9);
    gr_buf_printf(o, "%s_count %llu\n", name, GET(h->count));
}

static void render_graph(struct gr_buf *o)
{
    help_line(o, "graphrouter_graph_requests_total", "counter",
              "Calls to Microsoft Graph, by the HTTP status of the answer (none: no answer).");
    for (size_t i = 0; i < GR_ARRAY_LEN(graph_status) + 2; i++)
        if (GET(m.graph_requests[i]))
            graph_code(o, "graphrouter_graph_requests_total", "", i, GET(m.graph_requests[i]));
    help_line(o, "graphrouter_graph_token_requests_total", "counter",
              "App-only token requests to the identity platform, by result.");
    gr_buf_printf(o, "graphrouter_graph_token_requests_total{result=\"success\"} %llu\n",
                  GET(m.graph_tokens_ok));
    gr_buf_printf(o, "graphrouter_graph_token_requests_total{result=\"failure\"} %llu\n",
                  GET(m.graph_tokens_failed));
    for (int op = 0; op < GR_SUB_OP_COUNT; op++) {
        char *name = gr_xprintf("graphrouter_subscription_%s_total", sub_op_names[op]);
        char *help = gr_xprintf("Subscription %s graphrouter made in Graph, by result.",
                                sub_op_names[op]);
        help_line(o, name, "counter", help);
        gr_buf_printf(o, "%s{result=\"success\"} %llu\n", name, GET(m.sub_ops[op][1]));
        gr_buf_printf(o, "%s{result=\"failure\"} %llu\n", name, GET(m.sub_ops[op][0]));
        free(name);
        free(help);
    }
    help_line(o, "graphrouter_subscriptions", "gauge",
              "Subscriptions graphrouter manages, by state.");
    static const char *const states[] = {"creating", "active", "deleting"};
    for (size_t i = 0; i < 3; i++)
        gr_buf_printf(o, "graphrouter_subscriptions{state=\"%s\"} %llu\n", states[i],
                      GET(m.subs[i]));
    help_line(o, "graphrouter_lifecycle_events_total", "counter",
              "Lifecycle events of managed subscriptions acted on, by event (other: ignored).");
    for (size_t i = 0; i < 4; i++)
        gr_buf_printf(o, "graphrouter_lifecycle_events_total{event=\"%s\"} %llu\n",
                      i < 3 ? lifecycle_names[i] : "other", GET(m.lifecycle[i]));
    help_line(o, "graphrouter_resyncs_total", "counter",
              "Resync notifications graphrouter routed, by reason.");
    for (size_t i = 0; i < 4; i++)
        gr_buf_printf(o, "graphrouter_resyncs_total{reason=\"%s\"} %llu\n", resync_names[i],
                      GET(m.resyncs[i]));
    int64_t next = atomic_load_explicit(&m.next_expiry_ms, memory_order_relaxed);
    help_line(o, "graphrouter_subscription_next_expiry_seconds", "gauge",
              "Seconds until the soonest declared subscription expires (0: one has no live "
              "subscription); absent when none is declared.");
    if (next >= 0) {
        double left = next ? (double)(next - gr_wall_ms()) / 1000 : 0.0;
        gr_buf_printf(o, "graphrouter_subscription_next_expiry_seconds %.3f\n",
                      left > 0 ? left : 0.0);
    }
}

void gr_metrics_render(struct gr_buf *o, const struct gr_metrics_gauges *g)
{
    help_line(o, "graphrouter_build_info", "gauge", "Version of the running graphrouter.");
    gr_buf_printf(o, "graphrouter_build_info{version=\"%s\"} 1\n", GR_VERSION);

    help_line(o, "graphrouter_http_requests_total", "counter",
              "HTTP requests answered, by endpoint and status code.");
    for (int ep = 0; ep < GR_EP_COUNT; ep++) {
        for (size_t s = 0; s < N_STATUS; s++) {
            unsigned long long v = GET(m.requests[ep][s]);
            if (!v)
                continue;
            if (s < GR_ARRAY_LEN(tracked_status))
                gr_buf_printf(o, "graphrouter_http_requests_total{endpoint=\"%s\",code=\"%u\"} %llu\n",
                              endpoint_names[ep], tracked_status[s], v);
            else
                gr_buf_printf(o, "graphrouter_http_requests_total{endpoint=\"%s\",code=\"other\"} %llu\n",
                              endpoint_names[ep], v);
        }
    }

    static const char *const refusal_names[GR_REFUSED_COUNT] = {
        "allow_from", "max_connections", "max_connections_per_ip"};
    help_line(o, "graphrouter_connections_refused_total", "counter",
              "Connections refused at accept (closed, 503 or 429), or forwarded clients refused "
              "per address, by limit.");
    for (int r = 0; r < GR_REFUSED_COUNT; r++)
        gr_buf_printf(o, "graphrouter_connections_refused_total{reason=\"%s\"} %llu\n",
                      refusal_names[r], GET(m.conn_refused[r]));
    help_line(o, "graphrouter_connections", "gauge",
              "Open connections: held until their first request head, or being served.");
    gr_buf_printf(o, "graphrouter_connections{state=\"head\"} %u\n", g->conns_held);
    gr_buf_printf(o, "graphrouter_connections{state=\"served\"} %u\n", g->conns_server);
    help_line(o, "graphrouter_http_refused_total", "counter",
              "Requests refused for their head or message framing (strict HTTP/1.1), by reason.");
    for (int e = 1; e < GR_HEAD_ERROR_COUNT; e++)
        gr_buf_printf(o, "graphrouter_http_refused_total{reason=\"%s\"} %llu\n",
                      gr_head_error_name((enum gr_head_error)e), GET(m.head_refused[e]));
    help_line(o, "graphrouter_http_timeouts_total", "counter",
              "Requests answered 408 and closed: head or body not complete in time.");
    gr_buf_printf(o, "graphrouter_http_timeouts_total{phase=\"head\"} %llu\n", GET(m.timeouts[0]));
    gr_buf_printf(o, "graphrouter_http_timeouts_total{phase=\"body\"} %llu\n", GET(m.timeouts[1]));

    render_seconds(o, "graphrouter_ack_latency_seconds",
                   "Time from a notification POST's headers to its 202 (the store commit included).",
                   &m.ack);

    help_line(o, "graphrouter_items_received_total", "counter",
              "Items found in the value arrays of notification POSTs.");
    gr_buf_printf(o, "graphrouter_items_received_total %llu\n", GET(m.received));
    help_line(o, "graphrouter_items_accepted_total", "counter",
              "Items that passed the clientState check and were stored.");
    gr_buf_printf(o, "graphrouter_items_accepted_total %llu\n", GET(m.accepted));
    help_line(o, "graphrouter_items_dropped_total", "counter",
              "Items not routed, by reason (the POST is still answered 202).");
    for (int r = 0; r < GR_DROP_COUNT; r++)
        gr_buf_printf(o, "graphrouter_items_dropped_total{reason=\"%s\"} %llu\n", drop_names[r],
                      GET(m.dropped[r]));
    help_line(o, "graphrouter_items_routed_total", "counter",
              "Items that at least one route sent to a handler.");
    gr_buf_printf(o, "graphrouter_items_routed_total %llu\n", GET(m.routed));
    help_line(o, "graphrouter_items_unrouted_total", "counter",
              "Items that no route (not even a default route) matched.");
    gr_buf_printf(o, "graphrouter_items_unrouted_total %llu\n", GET(m.unrouted));

    help_line(o, "graphrouter_items_duplicate_total", "counter",
              "Stored items not delivered: the same change was accepted within store.dedupe_window_s.");
    gr_buf_printf(o, "graphrouter_items_duplicate_total %llu\n", GET(m.duplicates));
    help_line(o, "graphrouter_store_rejected_total", "counter",
              "POSTs answered 503 because the store was full or could not write.");
    gr_buf_printf(o, "graphrouter_store_rejected_total{reason=\"full\"} %llu\n", GET(m.rejected_full));
    gr_buf_printf(o, "graphrouter_store_rejected_total{reason=\"error\"} %llu\n",
                  GET(m.rejected_error));
    help_line(o, "graphrouter_store_failures_total", "counter",
              "Store transactions that failed (their appends were answered 503).");
    gr_buf_printf(o, "graphrouter_store_failures_total %llu\n", GET(m.store_failures));
    render_seconds(o, "graphrouter_store_commit_seconds",
                   "Time of one store transaction, fsync included (group commit).", &m.commit);
    help_line(o, "graphrouter_store_commit_batch", "histogram",
              "Requests (appends, takes, completions) grouped into one store transaction.");
    unsigned long long cum = 0;
    for (size_t i = 0; i <= GR_ARRAY_LEN(batch_bounds); i++) {
        cum += GET(m.batch_buckets[i]);
        if (i < GR_ARRAY_LEN(batch_bounds))
            gr_buf_printf(o, "graphrouter_store_commit_batch_bucket{le=\"%u\"} %llu\n", batch_bounds[i], cum);
        else
            gr_buf_printf(o, "graphrouter_store_commit_batch_bucket{le=\"+Inf\"} %llu\n", cum);
    }
    gr_buf_printf(o, "graphrouter_store_commit_batch_sum %llu\n", GET(m.batch_sum));
    gr_buf_printf(o, "graphrouter_store_commit_batch_count %llu\n", GET(m.commit.count));

    help_line(o, "graphrouter_reloads_total", "counter", "Configuration reloads, by result.");
    gr_buf_printf(o, "graphrouter_reloads_total{result=\"success\"} %llu\n", GET(m.reload_ok));
    gr_buf_printf(o, "graphrouter_reloads_total{result=\"failure\"} %llu\n", GET(m.reload_failed));
    help_line(o, "graphrouter_plugin_calls_stuck_total", "counter",
              "Plugin init, reopen or fini calls given up on past their handler's timeout_s.");
    gr_buf_printf(o, "graphrouter_plugin_calls_stuck_total{call=\"init\"} %llu\n",
                  GET(m.stuck_init));
    gr_buf_printf(o, "graphrouter_plugin_calls_stuck_total{call=\"reopen\"} %llu\n",
                  GET(m.stuck_reopen));
    gr_buf_printf(o, "graphrouter_plugin_calls_stuck_total{call=\"fini\"} %llu\n",
                  GET(m.stuck_fini));
    help_line(o, "graphrouter_validation_tokens_total", "counter",
              "Distinct validation tokens, by the result of their first verification.");
    for (int r = 0; r < GR_TOKEN_RESULT_COUNT; r++)
        gr_buf_printf(o, "graphrouter_validation_tokens_total{result=\"%s\"} %llu\n",
                      gr_token_result_name((enum gr_token_result)r), GET(m.tokens[r]));
    help_line(o, "graphrouter_rsa_private_operations_total", "counter",
              "RSA private-key operations: rich items' content keys (dataKey) unwrapped.");
    gr_buf_printf(o, "graphrouter_rsa_private_operations_total %llu\n", GET(m.rsa_private_ops));
    help_line(o, "graphrouter_content_key_cache_total", "counter",
              "Rich items' content keys looked up in memory, by result (miss: unwrapped with "
              "RSA).");
    gr_buf_printf(o, "graphrouter_content_key_cache_total{result=\"hit\"} %llu\n",
                  GET(m.content_key_hits));
    gr_buf_printf(o, "graphrouter_content_key_cache_total{result=\"miss\"} %llu\n",
                  GET(m.content_key_misses));
    help_line(o, "graphrouter_jwks_refreshes_total", "counter",
              "Loads of the validation-token signing keys, by result.");
    gr_buf_printf(o, "graphrouter_jwks_refreshes_total{result=\"success\"} %llu\n", GET(m.jwks_ok));
    gr_buf_printf(o, "graphrouter_jwks_refreshes_total{result=\"failure\"} %llu\n",
                  GET(m.jwks_failed));
    help_line(o, "graphrouter_jwks_keys", "gauge", "Signing keys in force.");
    gr_buf_printf(o, "graphrouter_jwks_keys %llu\n", GET(m.jwks_keys));
    help_line(o, "graphrouter_jwks_loaded_timestamp_seconds", "gauge",
              "When the signing keys in force were loaded (0: never).");
    gr_buf_printf(o, "graphrouter_jwks_loaded_timestamp_seconds %.3f\n",
                  (double)atomic_load_explicit(&m.jwks_loaded_ms, memory_order_relaxed) / 1000);

    help_line(o, "graphrouter_tls_certificate_expiry_timestamp_seconds", "gauge",
              "When the listener's TLS certificate in force expires (0: plain HTTP).");
    gr_buf_printf(o, "graphrouter_tls_certificate_expiry_timestamp_seconds %lld\n",
                  (long long)atomic_load_explicit(&m.tls_not_after_s, memory_order_relaxed));

    render_graph(o);

    help_line(o, "graphrouter_config_generation", "gauge",
              "Id of the configuration generation now serving (1 at start, +1 per reload).");
    gr_buf_printf(o, "graphrouter_config_generation %llu\n", (unsigned long long)g->generation);

    const struct gr_store_stats *st = g->store;
    help_line(o, "graphrouter_store_items_pending", "gauge",
              "Stored items not yet done (what store.max_pending counts).");
    gr_buf_printf(o, "graphrouter_store_items_pending %llu\n", (unsigned long long)st->items_pending);
    help_line(o, "graphrouter_store_bytes_pending", "gauge",
              "Bytes of those items (what store.max_pending_bytes counts).");
    gr_buf_printf(o, "graphrouter_store_bytes_pending %llu\n", (unsigned long long)st->bytes_pending);
    help_line(o, "graphrouter_store_items_to_route", "gauge", "Stored items not yet routed.");
    gr_buf_printf(o, "graphrouter_store_items_to_route %llu\n", (unsigned long long)st->items_to_route);
    static const char *const unit_series[][2] = {
        {"graphrouter_deliveries_pending", "Deliveries waiting for their handler (due or delayed)."},
        {"graphrouter_deliveries_running", "Deliveries their handler is working on."},
        {"graphrouter_dead_letters", "Deliveries given up on, kept for graphrouter dlq."}};
    for (size_t k = 0; k < 3; k++) {
        help_line(o, unit_series[k][0], "gauge", unit_series[k][1]);
        for (size_t i = 0; i < st->nhandlers; i++)
            gr_buf_printf(o, "%s{handler=\"%s\"} %llu\n", unit_series[k][0], st->handlers[i].name,
                          (unsigned long long)(k == 0   ? st->handlers[i].pending
                                               : k == 1 ? st->handlers[i].running
                                                        : st->handlers[i].dead));
    }
    help_line(o, "graphrouter_oldest_pending_seconds", "gauge",
              "Age of the oldest delivery each handler has not finished, pending or in progress (0: none).");
    int64_t now_ms = gr_wall_ms();
    for (size_t i = 0; i < st->nhandlers; i++)
        gr_buf_printf(o, "graphrouter_oldest_pending_seconds{handler=\"%s\"} %.3f\n", st->handlers[i].name,
                      st->handlers[i].oldest_pending_ms
                          ? (double)(now_ms - st->handlers[i].oldest_pending_ms) / 1000
                          : 0.0);

    pthread_mutex_lock(&registry_lock);
    static const char *const handler_series[][2] = {
        {"graphrouter_handler_handled_total", "Deliveries a handler completed (GR_OK)."},
        {"graphrouter_handler_retried_total", "Deliveries a handler asked to retry (GR_RETRY)."},
        {"graphrouter_handler_failed_total",
         "Deliveries that failed (GR_FAIL, or retries exhausted)."},
        {"graphrouter_deliveries_interrupted",
         "Deliveries found taken (attempt recorded) but not finished at this start, each charged "
         "an attempt: graphrouter stopped by a crash, a kill, or a call past timeout_s."}};
    for (size_t k = 0; k < 4; k++) {
        help_line(o, handler_series[k][0], k < 3 ? "counter" : "gauge", handler_series[k][1]);
        for (struct named *n = handlers; n; n = n->next) {
            atomic_uint_fast64_t *v = k == 0   ? &n->u.handler.handled
                                      : k == 1 ? &n->u.handler.retried
                                      : k == 2 ? &n->u.handler.failed
                                               : &n->u.handler.interrupted;
            gr_buf_printf(o, "%s{handler=\"%s\"} %llu\n", handler_series[k][0], n->name, GET(*v));
        }
    }
    help_line(o, "graphrouter_handler_graph_requests_total", "counter",
              "Graph calls a handler made (host->graph_request), by status (none: no answer).");
    for (struct named *n = handlers; n; n = n->next)
        for (size_t i = 0; i < GR_GRAPH_STATUS_SLOTS; i++)
            if (GET(n->u.handler.graph[i])) {
                char *label = gr_xprintf("handler=\"%s\",", n->name);
                graph_code(o, "graphrouter_handler_graph_requests_total", label, i,
                           GET(n->u.handler.graph[i]));
                free(label);
            }
    help_line(o, "graphrouter_route_fired_total", "counter", "Items each route fired for.");
    for (struct named *n = routes; n; n = n->next)
        gr_buf_printf(o, "graphrouter_route_fired_total{route=\"%s\"} %llu\n", n->name,
                      GET(n->u.route.fired));
    /* Plugin series, grouped by family as the text format requires. */
    for (struct gr_metric *p = plugin_metrics; p; p = p->next) {
        bool seen = false;
        for (struct gr_metric *q = plugin_metrics; q != p && !seen; q = q->next)
            seen = strcmp(q->name, p->name) == 0;
        if (seen)
            continue;
        char *full = gr_xprintf("graphrouter_plugin_%s", p->name);
        help_line(o, full, p->gauge ? "gauge" : "counter", p->help);
        for (struct gr_metric *q = p; q; q = q->next)
            if (strcmp(q->name, p->name) == 0)
                gr_buf_printf(o, "%s{handler=\"%s\"} %lld\n", full, q->handler,
                              (long long)atomic_load_explicit(&q->value, memory_order_relaxed));
        free(full);
    }
    pthread_mutex_unlock(&registry_lock);
}
