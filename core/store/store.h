/*
 * The store: where accepted items and their deliveries wait, durably.
 *
 * An item is a change notification exactly as Graph sent it (rich content
 * still encrypted), stored before the POST is answered 202. A worker routes
 * it against the configuration current at that moment, and most often
 * delivers it to its target handlers at once, itself, and hands the store
 * one completion for the lot (completed()): taking the item recorded the
 * attempt. Where a delivery needs a record of its own (the item was taken
 * before and graphrouter stopped meanwhile, a target runs one at a time or
 * a bounded number at once, a delivery is retried, given up, or emitted
 * events), it is a delivery unit: routing turns the item into one unit per
 * target (routed()), a unit runs the handler (delivered()), and what the
 * handler emits becomes new units in the same step that completes its
 * parent. Units end done, or dead (a dead letter: kept with its handler,
 * attempts and last error until replayed or purged).
 *
 * Promises, whatever the backend:
 *   - an append is all-or-nothing and durable when its callback reports OK;
 *   - taking an item or a unit records the attempt before the handler runs,
 *     so a handler that kills the process still uses up attempts;
 *   - completing a unit and storing the units it emitted is one step;
 *   - work that was running when the process died is taken again.
 *
 * Thread-safety: every function may be called from any thread. Backends run
 * their own I/O threads; callbacks arrive on them and must be short.
 */
#ifndef GR_STORE_H
#define GR_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/jwt.h"

/* ---- appending (the request path) --------------------------------------- */

struct gr_store_item {
    char *body; /* the item's JSON, as received (owned) */
    size_t len;
    bool rich;  /* has encryptedContent: keeps its POST's tokens */
    bool has_dedupe;
    unsigned char dedupe[32]; /* SHA-256 of what identifies a change (see ingest.c) */
};

enum gr_append_result {
    GR_APPEND_OK,    /* stored durably */
    GR_APPEND_FULL,  /* over store.max_pending / max_pending_bytes: nothing stored */
    GR_APPEND_ERROR  /* could not write (disk full, I/O error): nothing stored */
};

struct gr_append {
    struct gr_store_item *items; /* owned */
    size_t n;
    struct gr_token_list *tokens; /* the POST's validationTokens, for its rich items (ref) */
    int64_t received_ms;
    /* Called once, on a store thread, when the outcome is known. (Duplicate
     * items are stored too; the store recognises them when it routes them.) */
    void (*done)(void *ctx, enum gr_append_result result);
    void *ctx;
};

/* ---- working (the workers) ---------------------------------------------- */

enum gr_work_kind { GR_WORK_ROUTE = 1, GR_WORK_DELIVER = 2 };

struct gr_work {
    enum gr_work_kind kind;
    int64_t id;      /* ROUTE: the item's id; DELIVER: the unit's id */
    int64_t item_id;
    char *body;      /* the item as received */
    size_t len;
    int64_t received_ms;
    struct gr_token_list *tokens; /* ROUTE, rich items */
    unsigned attempts;            /* ROUTE: waits for keys so far; DELIVER: this attempt's number */
    char *handler;                /* DELIVER */
    char *event;                  /* DELIVER: an emitted event's JSON, or NULL: the notification */
    size_t event_len;
    struct gr_work *next; /* take() hands out work in chains */
    bool has_dedupe;      /* ROUTE: the item's duplicate key (see gr_store_item) */
    unsigned char dedupe[32];
    /* ROUTE: taken for delivery before, and graphrouter stopped meanwhile:
     * to be routed into units (routed()), which carry that attempt, and
     * never delivered at once */
    bool tried;
    /* ROUTE: the same change was accepted within the window by another item
     * (store.dedupe_window_s): routed, it is not delivered again */
    bool duplicate;
};
void gr_work_free(struct gr_work *w); /* this one, not its chain */

/* What a handler may be given: its name, how many units may run at once
 * (0: any number; 1: one at a time, in order) and its retry limit. */
struct gr_store_handler {
    const char *name;
    unsigned concurrency;
    unsigned max_attempts;
};

struct gr_route_outcome {
    enum { GR_ROUTED, GR_ROUTE_DROPPED, GR_ROUTE_WAIT } result;
    const char *const *handlers; /* GR_ROUTED: targets (none: unrouted) */
    size_t nhandlers;
    const char *note;   /* GR_ROUTE_DROPPED: why, kept with the item */
    int64_t delay_ms;   /* GR_ROUTE_WAIT */
    /* GR_ROUTED, a lifecycle event of a subscription graphrouter manages:
     * kept (gr_sub_event) in the same step, for the manager to act on */
    const char *lifecycle_subscription, *lifecycle_event;
};

struct gr_emitted_event {
    const char *handler;
    const char *json;
    size_t len;
};

/* One key of a handler's durable state, as a delivery that returned GR_OK
 * left it (plugin.h: state_put, state_delete). */
struct gr_state_write {
    char *key;
    char *value; /* NULL: deleted */
    size_t len;
};

struct gr_delivery_outcome {
    enum { GR_DELIVERED, GR_DELIVERY_RETRY, GR_DELIVERY_DEAD } result;
    int64_t delay_ms;                     /* GR_DELIVERY_RETRY */
    const char *error;                    /* RETRY, DEAD: kept as last_error */
    const struct gr_emitted_event *events; /* GR_DELIVERED: stored with the completion */
    size_t nevents;
    /* GR_DELIVERED: the handler's state it changed, written with the
     * completion and visible to state_get from the moment delivered() is
     * called (before the completion is committed) */
    const struct gr_state_write *state;
    size_t nstate;
};

/* An item delivered to one target as it was routed (completed()). */
struct gr_direct_delivery {
    const char *handler;
    struct gr_delivery_outcome outcome;
    /* the call ran past its timeout_s and note_running() was given it: the
     * store may hold a running unit for it, which this outcome finishes */
    bool noted;
    const char *kind;      /* what it delivered, for log lines: "message", "event" ... */
    unsigned max_attempts; /* the handler's retry.max_attempts */
    uint64_t state_seq;    /* its state writes were staged (stage_state): that number */
};

/* ---- the control plane's records (graph/manager.c) ----------------------
 * The subscriptions graphrouter manages, and the lifecycle events it has
 * yet to act on. Only the manager writes records; routing a lifecycle item
 * adds its event in the step that routes it, so an event that got a 202 is
 * acted on even after a crash. */

enum gr_sub_state {
    GR_SUB_CREATING = 0, /* to create (again): no live subscription */
    GR_SUB_ACTIVE = 1,   /* created; renewed before it expires */
    GR_SUB_DELETING = 2, /* no longer declared, or replaced: to delete in Graph */
};

struct gr_sub_record {
    char *key;            /* a declaration's (graph_conf.h); "delete\n<id>" while deleting */
    char *id;             /* Graph's subscription id; NULL while creating */
    char *tenant, *resource, *change_type;
    bool rich;
    char *cert_id, *cert_thumbprint; /* rich: the certificate Graph encrypts to */
    unsigned char secret[32];        /* SHA-256 of its clientState (never the secret) */
    enum gr_sub_state state;
    char *resync;         /* a resync to send once it is active again: its reason */
    int64_t expires_ms;   /* the expiry Graph granted; 0: none */
    int64_t renewed_ms;   /* when it was created or last renewed */
    int64_t due_ms;       /* when the manager acts on it next (renewal or retry) */
    unsigned failures;    /* failed attempts in a row (backoff) */
    char *last_error;     /* the last failure, NULL after a success */
    int64_t created_ms;   /* when the record was made */
    char *replaced_by;    /* deleting: the key of the record that replaces it, which is
                           * to be live first (its URL moved); NULL: delete at once */
};
void gr_sub_record_clear(struct gr_sub_record *r); /* frees its strings */
void gr_sub_record_copy(struct gr_sub_record *dst, const struct gr_sub_record *src);

struct gr_sub_event {
    int64_t seq;
    char *subscription_id;
    char *event; /* reauthorizationRequired, subscriptionRemoved, missed */
};

/* ---- the interface ------------------------------------------------------- */

struct gr_store_stats_handler {
    char name[65];
    uint64_t pending, running, dead;
    int64_t oldest_pending_ms; /* wall clock; 0: none */
};

struct gr_store_stats {
    uint64_t items_pending, bytes_pending; /* not yet done: what the limits count */
    uint64_t items_to_route;
    struct gr_store_stats_handler *handlers; /* as of the last refresh */
    size_t nhandlers;
};

struct gr_store;

struct gr_store_ops {
    void (*append)(struct gr_store *s, struct gr_append *a);
    /* The next work, preferring deliveries or routing; blocks up to wait_ms.
     * Returns 1 with *out set, 0 if nothing came, -1 once the store is
     * closing. A chain (through ->next) of DELIVER works for one handler,
     * each to be completed with delivered(), or of ROUTE works, each to be
     * completed with routed(). Every delivery in the chain has its attempt
     * recorded already. Completions may be written a little later, together
     * (within milliseconds, or with the next take or append). */
    int (*take)(struct gr_store *s, const struct gr_store_handler *h, size_t nh,
                bool prefer_delivery, int64_t wait_ms, struct gr_work **out);
    void (*routed)(struct gr_store *s, struct gr_work *w, const struct gr_route_outcome *o);
    void (*delivered)(struct gr_store *s, struct gr_work *w, const struct gr_delivery_outcome *o);
    /* A ROUTE work (not tried, not a duplicate) routed (o->result GR_ROUTED,
     * o->nhandlers targets, each running any number of deliveries at once)
     * and delivered to each target by the worker: d[i] is target i's
     * outcome. One step: the item is done, or what needs a record (a retry,
     * a dead letter, emitted events) becomes units in it. */
    void (*completed)(struct gr_store *s, struct gr_work *w, const struct gr_route_outcome *o,
                      const struct gr_direct_delivery *d);
    /* Make a direct delivery's state writes visible to state_get now, ahead
     * of its completed() (which writes them): returns their number for
     * gr_direct_delivery.state_seq. */
    uint64_t (*stage_state)(struct gr_store *s, const char *handler,
                            const struct gr_state_write *w, size_t n);
    /* The handlers the configuration has now (after a reload): pending units
     * of any other become dead letters. */
    void (*set_handlers)(struct gr_store *s, const struct gr_store_handler *h, size_t nh);
    /* Keep `note` as the last error of a delivery that is running now (its
     * handler is stuck): what the delivery shows once graphrouter restarted
     * and charged that attempt. unit 0: the delivery of `item` to `handler`
     * as it was routed, which gets a unit of its own now (running, one
     * attempt). Returns the unit's id once it is written, or 0 after a few
     * seconds if the store cannot write it. */
    int64_t (*note_running)(struct gr_store *s, int64_t unit, int64_t item, const char *handler,
                            const char *note);
    /* Returns once what was handed to the store before is written (or after
     * a few seconds): before an exit that cannot close it (a handler stuck). */
    void (*flush)(struct gr_store *s);
    void (*stats)(struct gr_store *s, struct gr_store_stats *out);
    /* Stop handing out work; take() returns -1 once nothing runs. */
    void (*stop_taking)(struct gr_store *s);
    /* The control plane's records: each call is written (or read) at once,
     * after what was handed to the store before it, and returns 0 once it
     * is durable, or -1. */
    int (*subs_load)(struct gr_store *s, struct gr_sub_record **out, size_t *n,
                     struct gr_sub_event **events, size_t *nevents);
    /* Insert or replace `r` (by key; NULL: none); in the same step, forget
     * the events `consumed` (acted on) and store `resync`, an item to route,
     * if given. */
    int (*subs_put)(struct gr_store *s, const struct gr_sub_record *r, const int64_t *consumed,
                    size_t nconsumed, const struct gr_store_item *resync);
    int (*subs_delete)(struct gr_store *s, const char *key);
    /* A handler's state: the value of `key` as the completions handed to
     * delivered() so far left it, committed or not. 1 with *value (malloc'd,
     * NUL-terminated after *len bytes), 0 if absent, -1 on a read error. Any
     * thread; no request is queued. */
    int (*state_get)(struct gr_store *s, const char *handler, const char *key, char **value,
                     size_t *len);
    /* Whether this process may run the control plane now, for ttl_ms (a
     * store shared by several instances gives it to one of them). */
    bool (*lease)(struct gr_store *s, int64_t ttl_ms);
    void (*close)(struct gr_store *s);
};

struct gr_store {
    const struct gr_store_ops *ops;
};

static inline void gr_store_append(struct gr_store *s, struct gr_append *a) { s->ops->append(s, a); }
static inline int gr_store_take(struct gr_store *s, const struct gr_store_handler *h, size_t nh,
                                bool prefer_delivery, int64_t wait_ms, struct gr_work **out)
{
    return s->ops->take(s, h, nh, prefer_delivery, wait_ms, out);
}
static inline void gr_store_routed(struct gr_store *s, struct gr_work *w,
                                   const struct gr_route_outcome *o) { s->ops->routed(s, w, o); }
static inline void gr_store_delivered(struct gr_store *s, struct gr_work *w,
                                      const struct gr_delivery_outcome *o) { s->ops->delivered(s, w, o); }
static inline void gr_store_set_handlers(struct gr_store *s, const struct gr_store_handler *h,
                                         size_t nh) { s->ops->set_handlers(s, h, nh); }
static inline void gr_store_completed(struct gr_store *s, struct gr_work *w,
                                      const struct gr_route_outcome *o,
                                      const struct gr_direct_delivery *d)
{
    s->ops->completed(s, w, o, d);
}
static inline uint64_t gr_store_stage_state(struct gr_store *s, const char *handler,
                                            const struct gr_state_write *w, size_t n)
{
    return s->ops->stage_state(s, handler, w, n);
}
static inline int64_t gr_store_note_running(struct gr_store *s, int64_t unit, int64_t item,
                                            const char *handler, const char *note)
{
    return s->ops->note_running(s, unit, item, handler, note);
}
static inline void gr_store_flush(struct gr_store *s) { s->ops->flush(s); }
static inline void gr_store_stats(struct gr_store *s, struct gr_store_stats *out) { s->ops->stats(s, out); }
static inline void gr_store_stop_taking(struct gr_store *s) { s->ops->stop_taking(s); }
static inline void gr_store_close(struct gr_store *s) { s->ops->close(s); }
static inline int gr_store_subs_load(struct gr_store *s, struct gr_sub_record **out, size_t *n,
                                     struct gr_sub_event **events, size_t *nevents)
{
    return s->ops->subs_load(s, out, n, events, nevents);
}
static inline int gr_store_subs_put(struct gr_store *s, const struct gr_sub_record *r,
                                    const int64_t *consumed, size_t nconsumed,
                                    const struct gr_store_item *resync)
{
    return s->ops->subs_put(s, r, consumed, nconsumed, resync);
}
static inline int gr_store_subs_delete(struct gr_store *s, const char *key)
{
    return s->ops->subs_delete(s, key);
}
static inline bool gr_store_lease(struct gr_store *s, int64_t ttl_ms) { return s->ops->lease(s, ttl_ms); }
static inline int gr_store_state_get(struct gr_store *s, const char *handler, const char *key,
                                     char **value, size_t *len)
{
    return s->ops->state_get(s, handler, key, value, len);
}
void gr_sub_events_free(struct gr_sub_event *e, size_t n);

void gr_store_stats_free(struct gr_store_stats *st);

/* ---- the SQLite backend -------------------------------------------------- */

struct gr_store_config {
    const char *path;
    uint64_t max_pending, max_pending_bytes, max_db_bytes; /* 0: no db size cap */
    bool synchronous_full; /* false: "normal", documented as weaker */
    int64_t dedupe_window_ms, retention_ms;
};

/* Open (creating it, mode 0600) and recover: running work is pending again,
 * or dead once its handler's attempts are used up. */
struct gr_store *gr_store_sqlite_open(const struct gr_store_config *c,
                                      const struct gr_store_handler *h, size_t nh, char **err);

#endif
