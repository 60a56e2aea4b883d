/*
 * Process-wide metrics, exported on GET /metrics in the Prometheus text
 * format (README "Metrics" lists every series).
 *
 * Counters are relaxed atomics, bumped from any thread without locks.
 * Per-handler, per-route and plugin series live in an append-only registry
 * keyed by name, so a series survives reloads that keep the name; lookups
 * take a mutex and happen while a generation is built, never per item.
 */
#ifndef GR_METRICS_H
#define GR_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

enum gr_endpoint { GR_EP_NOTIFICATIONS, GR_EP_LIFECYCLE, GR_EP_HEALTHZ, GR_EP_METRICS, GR_EP_OTHER, GR_EP_COUNT };

/* Why an item of an accepted batch is not stored. */
enum gr_drop_reason {
    GR_DROP_MALFORMED_ITEM,       /* not an object, or no string subscriptionId */
    GR_DROP_MISSING_CLIENT_STATE, /* clientState absent, null or not a string */
    GR_DROP_BAD_CLIENT_STATE,     /* clientState does not match the secret */
    GR_DROP_NO_SECRET,            /* subscription not listed and no fallback client_state */
    GR_DROP_VALIDATION_MESSAGE,   /* Event Hubs' reachability test item */
    /* Rich items (with encryptedContent), judged by the worker: */
    GR_DROP_RICH_NOT_CONFIGURED,  /* no validation_tokens or no decryption_keys configured */
    GR_DROP_TOKEN_MISSING,        /* the POST carried no validationTokens (absent, null, []) */
    GR_DROP_TOKEN_INVALID,        /* none of its tokens is valid */
    GR_DROP_TOKEN_UNCOVERED,      /* valid tokens, none for the item's tenant */
    GR_DROP_DECRYPT_MALFORMED,    /* encryptedContent lacks a field or is not base64 */
    GR_DROP_DECRYPT_UNKNOWN_KEY,  /* no decryption key by certificate id or thumbprint */
    GR_DROP_DECRYPT_BAD_KEY,      /* dataKey does not decrypt (RSA-OAEP) to an AES key */
    GR_DROP_DECRYPT_BAD_SIGNATURE,/* dataSignature (HMAC) does not match: tampered */
    GR_DROP_DECRYPT_BAD_PADDING,  /* AES-CBC decryption failed */
    GR_DROP_DECRYPT_NOT_JSON,     /* the plaintext is not a JSON object */
    GR_DROP_COUNT
};
const char *gr_drop_reason_name(enum gr_drop_reason r);


/* Graph's answers counted by status (metrics.c has the list), + other, none. */
#define GR_GRAPH_STATUS_SLOTS 13

struct gr_handler_stats {
    atomic_uint_fast64_t handled, retried, failed;
    atomic_uint_fast64_t graph[GR_GRAPH_STATUS_SLOTS]; /* the handler's Graph calls */
    /* deliveries found taken but not finished at this start: graphrouter
     * stopped (a crash, a kill, a call past timeout_s) while a worker held them */
    atomic_uint_fast64_t interrupted;
    /* deliveries running now that workers make as they route (worker.c):
     * the store counts the others */
    atomic_uint_fast64_t direct_running;
};

struct gr_route_stats {
    atomic_uint_fast64_t fired;
};

struct gr_metric; /* plugin series (include/graphrouter/plugin.h) */

void gr_metrics_request(enum gr_endpoint ep, unsigned status);

/* Connections the gate refused at accept (http/gate.h). */
enum gr_conn_refusal {
    GR_REFUSED_ALLOW_FROM,      /* not in limits.allow_from: closed */
    GR_REFUSED_MAX_CONNECTIONS, /* 503 */
    GR_REFUSED_PER_IP,          /* 429 (also a forwarded client over its cap) */
    GR_REFUSED_COUNT
};
void gr_metrics_conn_refused(enum gr_conn_refusal r);
/* A request refused for its head or framing (enum gr_head_error, http/head.h). */
void gr_metrics_head_refused(int head_error);
/* A request past a deadline (enum gr_gate_phase, http/gate.h). */
void gr_metrics_http_timeout(int phase);
void gr_metrics_ack_latency(int64_t ns);
void gr_metrics_items_received(size_t n);
void gr_metrics_items_accepted(size_t n);
void gr_metrics_item_dropped(enum gr_drop_reason r);
void gr_metrics_item_routed(bool routed);
void gr_metrics_reload(bool ok);
/* A plugin's "init", "reopen" or "fini" given up on (plugin_job.c). */
void gr_metrics_plugin_call_stuck(const char *what);
/* Validation tokens, counted once per distinct token when first verified. */
void gr_metrics_token(int result);
/* An RSA private-key operation (a rich item's dataKey unwrapped), and a
 * lookup of a content key kept in memory (crypto/keycache.h). */
void gr_metrics_rsa_private_op(void);
void gr_metrics_content_key_cache(bool hit);
/* The key set in force: how many keys, and when it was last loaded. */
void gr_metrics_jwks(size_t keys, int64_t loaded_wall_ms);
void gr_metrics_jwks_refresh(bool ok);
/* The listener's TLS certificate in force: its notAfter (0: plain HTTP). */
void gr_metrics_tls_expiry(int64_t not_after_s);
/* The store: a committed transaction (its time and how many requests it
 * carried), a transaction that failed, duplicates skipped, POSTs refused. */
void gr_metrics_store_commit(int64_t ns, size_t requests);
void gr_metrics_store_failure(void);
void gr_metrics_duplicates(size_t n);
void gr_metrics_store_rejected(bool full);

/* The control plane (graph/): calls to Graph by HTTP status (0: no
 * answer), token requests, subscription operations and their results,
 * lifecycle events acted on, resyncs sent. */
void gr_metrics_graph_request(long status);
/* A Graph call a handler made (host->graph_request), by status. */
void gr_metrics_handler_graph(struct gr_handler_stats *h, long status);
void gr_metrics_graph_token(bool ok);
enum gr_sub_op { GR_SUB_OP_CREATE, GR_SUB_OP_RENEW, GR_SUB_OP_DELETE, GR_SUB_OP_COUNT };
void gr_metrics_sub_op(enum gr_sub_op op, bool ok);
void gr_metrics_lifecycle_event(const char *event);
void gr_metrics_resync(const char *reason);
/* Managed subscriptions by state (creating, active, deleting), and when the
 * soonest declared one expires (wall ms; 0: a declared one has none live;
 * -1: nothing is declared). */
void gr_metrics_subscriptions(const uint64_t by_state[3], int64_t next_expiry_ms);

/* Get-or-create by name; never freed. */
struct gr_handler_stats *gr_metrics_handler(const char *name);
struct gr_route_stats *gr_metrics_route(const char *name);
struct gr_metric *gr_metrics_plugin(const char *handler, const char *name, const char *help,
                                    bool gauge);
void gr_metric_add(struct gr_metric *m, int64_t delta);
void gr_metric_set(struct gr_metric *m, int64_t value);

struct gr_store_stats;

/* Values read when /metrics is rendered. */
struct gr_metrics_gauges {
    const struct gr_store_stats *store;
    uint64_t generation; /* id of the current configuration generation */
    unsigned conns_held;   /* connections the gate holds until their first head */
    unsigned conns_server; /* connections in libmicrohttpd */
};
void gr_metrics_render(struct gr_buf *out, const struct gr_metrics_gauges *g);

#endif
