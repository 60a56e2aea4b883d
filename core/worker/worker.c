/* The worker pool (see worker.h). Workers share nothing but the store and
 * the generation pointer; all per-work state is on the stack. */
#define _GNU_SOURCE
#include "worker/worker.h"

#include <errno.h>
#include <graphrouter/plugin.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "plugin/callwatch.h"
#include "generation.h"
#include "graph/managed.h"
#include "graph/manager.h"
#include "log.h"
#include "metrics.h"
#include "store/outcome_log.h"
#include "worker/msgcache.h"
#include "route/notification.h"
#include "crypto/keycache.h"
#include "crypto/rich.h"
#include "util.h"

#define GR_WORKER_NICE 10
/* Notifications kept from routing to delivery (msgcache.h): enough slots for
 * the items between a route and its deliveries (chains of 32 per take, two
 * takes in flight per worker), each at most 64 KiB: 64 MiB at the very
 * worst, about 1.5 MiB for Graph's usual notifications. */
#define GR_MSGCACHE_SLOTS 1024
#define GR_MSGCACHE_MAX_LEN (64 * 1024)
/* Rich items' content keys kept from routing to the deliveries that rebuild
 * the notification (crypto/keycache.h): a direct delivery's retry, every
 * delivery of an item with a target of concurrency 1, or of an item taken
 * before; so that an item costs one RSA operation at any fan-out. An item
 * delivered at once to all its targets keeps nothing (its key is forgotten
 * as soon as they all returned GR_OK). An entry is 88 bytes (an id, a key,
 * list links, a count and a time) plus 4 of hash bucket: 16,384 entries take
 * 1.4 MiB, locked in memory when RLIMIT_MEMLOCK allows. That holds the keys
 * of 16,384 items waiting for retries or for a handler of concurrency 1: a
 * burst of 15,000 rich items to such a handler (bench/rich.sh, CONFIGS=file2s
 * POSTS=150) costs one RSA operation each; beyond, each item past the first
 * 16,384 costs one more (about 0.25 to 0.45 ms of a core on the 2-core
 * development machine), nothing else. Keys whose deliveries have been
 * expected for 10 minutes (past the default max_backoff_ms, or never coming:
 * a handler removed, a dead letter) may be evicted like the others. */
#define GR_KEYCACHE_ENTRIES 16384
#define GR_KEYCACHE_PENDING_TTL_MS (10 * 60 * 1000)

struct worker {
    struct gr_workers *ws;
    pthread_t thread;
    struct gr_callwatch call; /* its handle() call, for gr_workers_overdue */
};

struct gr_workers {
    struct gr_store *store;
    struct gr_msgcache cache;
    struct gr_keycache *keys;
    struct worker *workers;
    unsigned n;
};

int64_t gr_backoff_ms(const struct gr_retry_policy *p, unsigned attempts)
{
    int64_t cap = p->initial_backoff_ms;
    for (unsigned i = 1; i < attempts && cap < p->max_backoff_ms; i++)
        cap *= 2;
    if (cap > p->max_backoff_ms)
        cap = p->max_backoff_ms;
    if (cap <= 0)
        return 0;
    return (int64_t)arc4random_uniform((uint32_t)cap + 1);
}

/* A lifecycle event of a subscription graphrouter manages goes to the
 * manager too: routing the item keeps it in the store (o's lifecycle
 * fields), and the manager acts on it from there. Returns true if it did. */
static bool lifecycle_action(const json_t *n, struct gr_route_outcome *o)
{
    static const char *const acted_on[] = {"reauthorizationRequired", "subscriptionRemoved",
                                           "missed"};
    const char *id = json_string_value(json_object_get(n, "subscription_id"));
    const char *event = json_string_value(json_object_get(n, "lifecycle_event"));
    struct gr_managed *managed = gr_managed_pin();
    bool ours = gr_managed_find(managed, id) != NULL;
    gr_managed_unpin(managed);
    if (!ours || !event)
        return false;
    for (size_t i = 0; i < GR_ARRAY_LEN(acted_on); i++)
        if (strcmp(event, acted_on[i]) == 0) {
            o->lifecycle_subscription = id;
            o->lifecycle_event = acted_on[i];
            return true;
        }
    gr_metrics_lifecycle_event(event); /* counted as "other" */
    gr_warn_limited("subscription %.80s: lifecycle event \"%.40s\" is not one graphrouter knows; "
                    "routed, not acted on",
                    id, event);
    return false;
}

static unsigned deliver_direct(struct worker *me, struct gr_generation *g, struct gr_work *w,
                               const struct gr_route_outcome *o, const char *text, size_t len);

static void route(struct worker *me, struct gr_work *w)
{
    struct gr_workers *ws = me->ws;
    struct gr_store *store = ws->store;
    struct gr_route_outcome o = {.result = GR_ROUTE_DROPPED};
    json_t *item = json_loadb(w->body, w->len, 0, NULL);
    if (!item) { /* cannot happen for what ingest stored; never lose it silently */
        gr_error("stored item %lld is not JSON; dropping it", (long long)w->id);
        o.note = "not JSON";
        gr_metrics_item_routed(false);
        gr_store_routed(store, w, &o);
        return;
    }
    struct gr_generation *g = gr_generation_pin();
    json_t *content = NULL;
    enum gr_drop_reason why;
    struct gr_keycache_ref key; /* a rich item's content key, kept for its deliveries */
    switch (gr_rich_open(g, ws->keys, item, w->tokens, w->received_ms, &content, &why, &key)) {
    case GR_RICH_WAIT:
        /* A kid not yet known while keys are refreshed: again in 1, 2, 4 ... 60 s. */
        o.result = GR_ROUTE_WAIT;
        o.delay_ms = w->attempts < 6 ? INT64_C(1000) << w->attempts : 60000;
        gr_debug("rich item waits %lld ms for validation-token keys", (long long)o.delay_ms);
        json_decref(item);
        gr_generation_unpin(g);
        gr_store_routed(store, w, &o);
        return;
    case GR_RICH_DROP:
        gr_keycache_forget(ws->keys, &key); /* its MAC verified, its content did not */
        gr_metrics_item_dropped(why);
        o.note = gr_drop_reason_name(why);
        json_decref(item);
        gr_generation_unpin(g);
        gr_store_routed(store, w, &o);
        return;
    default:
        break;
    }
    struct gr_classification cls;
    bool rich = content != NULL;
    json_t *n = gr_notification_build(item, w->received_ms, content, &cls);
    json_decref(item);
    struct gr_route_input in;
    gr_notification_route_input(n, cls.type, &in);

    bool *targets = gr_xcalloc(g->nhandlers ? g->nhandlers : 1, sizeof *targets);
    bool *fired = gr_xcalloc(g->cfg->routes.n ? g->cfg->routes.n : 1, sizeof *fired);
    size_t nfired = gr_router_match(&g->cfg->routes, &in, targets, fired);
    for (size_t r = 0; r < g->cfg->routes.n; r++)
        if (fired[r])
            atomic_fetch_add_explicit(&g->route_stats[r]->fired, 1, memory_order_relaxed);
    gr_metrics_item_routed(nfired > 0);
    const char **names = gr_xcalloc(g->nhandlers ? g->nhandlers : 1, sizeof *names);
    for (size_t i = 0; i < g->nhandlers; i++)
        if (targets[i])
            names[o.nhandlers++] = g->handlers[i].name;
    o.result = GR_ROUTED;
    o.handlers = names;
    bool poke = cls.type == GR_RT_LIFECYCLE && lifecycle_action(n, &o);
    /* Delivered at once, unless a delivery needs a unit of its own from the
     * start (store.h): the item was taken before, or a target limits how
     * many of its deliveries run at once. A duplicate is not delivered. */
    bool direct = o.nhandlers && !w->tried && !w->duplicate;
    for (size_t i = 0; i < g->nhandlers && direct; i++)
        direct = !targets[i] || g->handlers[i].conf->concurrency == 0;
    if (!nfired)
        gr_info("item not routed: no route matched; resource_type=%s subscription=%.80s",
                gr_rtype_name(cls.type), in.subscription_id ? in.subscription_id : "(none)");
    /* The key stays for the deliveries that will rebuild the notification:
     * a direct delivery's retry, or every delivery through a unit. */
    unsigned rebuilds = o.nhandlers && !w->duplicate ? (unsigned)o.nhandlers : 0;
    if (direct) {
        char *text = json_dumps(n, JSON_COMPACT);
        rebuilds = deliver_direct(me, g, w, &o, text, strlen(text));
        if (rich) /* decrypted content is held no longer than its deliveries */
            OPENSSL_cleanse(text, strlen(text));
        free(text);
    } else {
        /* For the deliveries, before they can exist; or, keeping nothing,
         * empty the slot, so that no delivery of this item finds an older
         * item's text. */
        char *text = o.nhandlers && !rich && !w->duplicate ? json_dumps(n, JSON_COMPACT) : NULL;
        gr_msgcache_put(&ws->cache, w->item_id, w->received_ms, text, text ? strlen(text) : 0,
                        (unsigned)o.nhandlers);
        gr_store_routed(store, w, &o); /* copies the names: the generation may go */
    }
    if (rebuilds)
        gr_keycache_expect(ws->keys, &key, rebuilds);
    else
        gr_keycache_forget(ws->keys, &key);
    if (poke) /* after the record that carries the event is queued */
        gr_manager_poke();
    gr_generation_unpin(g);
    gr_classification_free(&cls);
    json_decref(n);
    free(names);
    free(fired);
    free(targets);
}

/* What a delivery was, for log lines (parses the message only when one is written). */
static const char *delivery_kind(struct gr_msg *msg)
{
    const char *type = json_string_value(json_object_get(gr_msg_root(msg), "resource_type"));
    return type ? type : msg->kind == GR_MSG_EVENT ? "event" : "notification";
}

/* The notification a stored item stands for, as JSON text; NULL with *why
 * when its content no longer decrypts (a key removed since it was routed).
 * A rich item's content is decrypted again, with the content key kept from
 * its routing when it is still in `keys` (else one more RSA operation). */
static char *rebuild(struct gr_generation *g, struct gr_keycache *keys, const struct gr_work *w,
                     const char **why)
{
    json_t *item = json_loadb(w->body, w->len, 0, NULL), *content;
    enum gr_decrypt_result d =
        item ? gr_rich_content(g, keys, item, &content) : GR_DECRYPT_MALFORMED;
    if (d != GR_DECRYPT_OK) {
        *why = gr_decrypt_result_name(d);
        json_decref(item);
        return NULL;
    }
    struct gr_classification cls;
    json_t *n = gr_notification_build(item, w->received_ms, content, &cls);
    char *text = json_dumps(n, JSON_COMPACT);
    gr_classification_free(&cls);
    json_decref(n);
    json_decref(item);
    return text;
}

/* One handle() call and its outcome. The outcome's events and state point
 * into the call, valid until call_free(). */
struct call {
    struct gr_msg msg;
    struct gr_delivery_outcome o;
    struct gr_emitted_event *events;
    struct gr_state_write *state; /* taken from the message (call_release) */
    size_t nstate;
    char *error;
    const char *kind; /* delivery_kind(), unless it returned GR_OK */
    bool noted;       /* it ran past timeout_s (the watchdog noted it) */
};

/* Call h's handle() with the message (attempt number `attempts`; unit: the
 * delivery's id, or 0 for a direct delivery of `item`) and judge what it
 * returned. A unit's retry and dead letter are logged here; a direct
 * delivery's are logged by the store, which gives it its unit. */
static void call_handler(struct worker *me, struct gr_generation *g, struct gr_handler *h,
                         struct call *c, int kind, const char *json, size_t len,
                         unsigned attempts, int64_t unit, int64_t item)
{
    c->msg = (struct gr_msg){.kind = kind, .json = json, .len = len, .handler = h,
                             .store = me->ws->store};
    c->o = (struct gr_delivery_outcome){.result = GR_DELIVERY_DEAD};
    if (h->serial)
        pthread_mutex_lock(&h->serial_lock);
    atomic_fetch_add_explicit(&h->stats->direct_running, unit ? 0 : 1, memory_order_relaxed);
    gr_callwatch_begin(&me->call, h, "handle", unit, item); /* once the call may run */
    c->msg.started_mono = gr_mono_ms();
    int rc = h->lib->desc.handle(h->state, &c->msg);
    c->noted = gr_callwatch_end(&me->call);
    atomic_fetch_sub_explicit(&h->stats->direct_running, unit ? 0 : 1, memory_order_relaxed);

    struct gr_msg *msg = &c->msg;
    unsigned max = h->conf->retry.max_attempts;
    /* parsing the message for its kind costs as much as routing it: only
     * for the log lines of a retry or a dead letter */
    c->kind = rc == GR_OK ? NULL : delivery_kind(msg);
    if (rc == GR_OK) {
        atomic_fetch_add_explicit(&h->stats->handled, 1, memory_order_relaxed);
        c->events = gr_xcalloc(msg->nemitted ? msg->nemitted : 1, sizeof *c->events);
        for (size_t i = 0; i < msg->nemitted; i++)
            c->events[i] = (struct gr_emitted_event){g->handlers[msg->emitted[i].target].name,
                                                     msg->emitted[i].json, msg->emitted[i].len};
        c->o = (struct gr_delivery_outcome){.result = GR_DELIVERED, .events = c->events,
                                            .nevents = msg->nemitted, .state = msg->writes,
                                            .nstate = msg->nwrites};
    } else if (rc == GR_RETRY && attempts < max) {
        atomic_fetch_add_explicit(&h->stats->retried, 1, memory_order_relaxed);
        c->o.result = GR_DELIVERY_RETRY;
        c->o.delay_ms = gr_backoff_ms(&h->conf->retry, attempts);
        if (msg->retry_after_ms > c->o.delay_ms) /* the receiver's Retry-After */
            c->o.delay_ms = msg->retry_after_ms;
        c->o.error = msg->error ? msg->error : "GR_RETRY";
        if (unit)
            gr_log_retry(h->name, unit, c->kind, attempts, max, c->o.error, c->o.delay_ms);
    } else {
        atomic_fetch_add_explicit(&h->stats->failed, 1, memory_order_relaxed);
        if (rc == GR_RETRY)
            c->error = gr_xprintf("gave up after %u attempts: %s", attempts,
                                  msg->error ? msg->error : "GR_RETRY");
        else if (rc == GR_FAIL)
            c->error = gr_xstrdup(msg->error ? msg->error : "GR_FAIL");
        else
            c->error = gr_xprintf("handle() returned %d, not GR_OK, GR_RETRY or GR_FAIL", rc);
        c->o.error = c->error;
        if (unit)
            gr_log_dead_letter(h->name, unit, c->kind, c->error);
    }
}

/* Once the store has the call's outcome (its puts are visible then): free
 * what the services gave the call, and release its state and serial locks. */
static void call_release(struct gr_handler *h, struct call *c)
{
    gr_msg_finish(&c->msg);
    if (h->serial)
        pthread_mutex_unlock(&h->serial_lock);
}

static void call_free(struct call *c)
{
    for (size_t i = 0; i < c->msg.nemitted; i++)
        free(c->msg.emitted[i].json);
    free(c->msg.emitted);
    free(c->msg.error);
    json_decref(c->msg.root);
    for (size_t i = 0; i < c->nstate; i++) {
        free(c->state[i].key);
        free(c->state[i].value);
    }
    free(c->state);
    free(c->events);
    free(c->error);
}

/* Returns how many deliveries are to be retried (they will rebuild the
 * notification from the stored item).
 *
 * An item routed to targets that all run any number of deliveries at once,
 * delivered to each of them now, by this worker, with the text it was
 * routed from (no rebuild, no second decryption): the store records one
 * completion for the lot (store.h: completed()). Each call's state writes
 * enter the store's overlay (stage_state) before its locks are released,
 * so a call to the same handler that starts next sees them, and no call
 * holds a lock while the next target runs. */
static unsigned deliver_direct(struct worker *me, struct gr_generation *g, struct gr_work *w,
                               const struct gr_route_outcome *o, const char *text, size_t len)
{
    unsigned retries = 0;
    struct gr_store *store = me->ws->store;
    struct call *calls = gr_xcalloc(o->nhandlers, sizeof *calls);
    struct gr_direct_delivery *d = gr_xcalloc(o->nhandlers, sizeof *d);
    for (size_t i = 0; i < o->nhandlers; i++) {
        struct gr_handler *h = gr_generation_handler(g, o->handlers[i]);
        struct call *c = &calls[i];
        call_handler(me, g, h, c, GR_MSG_NOTIFICATION, text, len, 1, 0, w->id);
        uint64_t seq = 0;
        if (c->o.nstate) { /* the writes stay with the call until the store copied them */
            seq = gr_store_stage_state(store, h->name, c->o.state, c->o.nstate);
            c->state = c->msg.writes;
            c->nstate = c->msg.nwrites;
            c->msg.writes = NULL;
            c->msg.nwrites = 0;
        }
        call_release(h, c);
        retries += c->o.result == GR_DELIVERY_RETRY;
        d[i] = (struct gr_direct_delivery){.handler = h->name, .outcome = c->o,
                                           .noted = c->noted, .kind = c->kind,
                                           .max_attempts = h->conf->retry.max_attempts,
                                           .state_seq = seq};
    }
    gr_store_completed(store, w, o, d); /* copies what it keeps */
    for (size_t i = 0; i < o->nhandlers; i++)
        call_free(&calls[i]);
    free(calls);
    free(d);
    return retries;
}

static void deliver(struct worker *me, struct gr_work *w)
{
    struct gr_workers *ws = me->ws;
    struct gr_store *store = ws->store;
    struct gr_generation *g = gr_generation_pin();
    struct gr_delivery_outcome o = {.result = GR_DELIVERY_DEAD};
    struct gr_handler *h = gr_generation_handler(g, w->handler);
    if (!h) {
        gr_warn("delivery to handler \"%s\" is a dead letter: the configuration has no such "
                "handler now",
                w->handler);
        o.error = "the handler is no longer configured";
        gr_generation_unpin(g);
        gr_store_delivered(store, w, &o);
        return;
    }
    const char *why = NULL;
    char *text = NULL;
    size_t len = 0;
    if (!w->event) {
        text = gr_msgcache_take(&ws->cache, w->item_id, w->received_ms, &len);
        if (!text && (text = rebuild(g, ws->keys, w, &why)) != NULL)
            len = strlen(text);
    }
    if (!w->event && !text) {
        char *error = gr_xprintf("the content no longer decrypts: %s", why);
        gr_warn("delivery to handler \"%s\" is a dead letter: %s", h->name, error);
        atomic_fetch_add_explicit(&h->stats->failed, 1, memory_order_relaxed);
        o.error = error;
        gr_generation_unpin(g);
        gr_store_delivered(store, w, &o);
        free(error);
        return;
    }
    struct call c = {0};
    call_handler(me, g, h, &c, w->event ? GR_MSG_EVENT : GR_MSG_NOTIFICATION,
                 w->event ? w->event : text, w->event ? w->event_len : len, w->attempts, w->id,
                 0);
    gr_store_delivered(store, w, &c.o); /* copies events, error and state */
    /* Only now are the call's state puts visible: its state lock, and the
     * serial lock, are released after that, so the next call sees them. */
    call_release(h, &c);
    call_free(&c);
    free(text);
    gr_generation_unpin(g);
}

static void *worker_main(void *arg)
{
    struct worker *me = arg;
    struct gr_workers *w = me->ws;
    /* Workers yield the CPU to the HTTP threads: Graph times the 202, while
     * stored work can wait (the store's limits turn lasting overload into
     * 503s). Measured with bench/ingest.sh on 2 cores at half load: ack p99
     * fell from 5-11 ms to 1-3 ms. Raising one's nice value needs no privilege. */
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), GR_WORKER_NICE) != 0)
        gr_debug("worker priority unchanged: %s", strerror(errno));
    bool prefer_delivery = true; /* alternate, so neither starves the other */
    for (;;) {
        struct gr_generation *g = gr_generation_pin();
        struct gr_work *work;
        int rc = gr_store_take(w->store, g->store_handlers, g->nhandlers, prefer_delivery, 1000,
                               &work);
        gr_generation_unpin(g);
        if (rc < 0)
            break;
        if (rc == 0)
            continue;
        prefer_delivery = !prefer_delivery;
        while (work) { /* a chain of deliveries, or of items to route */
            struct gr_work *next = work->next;
            work->next = NULL;
            if (work->kind == GR_WORK_ROUTE)
                route(me, work);
            else
                deliver(me, work);
            work = next;
        }
    }
    return NULL;
}

struct gr_workers *gr_workers_start(struct gr_store *store, unsigned n)
{
    struct gr_workers *w = gr_xcalloc(1, sizeof *w);
    w->store = store;
    gr_msgcache_init(&w->cache, GR_MSGCACHE_SLOTS, GR_MSGCACHE_MAX_LEN);
    w->keys = gr_keycache_new(GR_KEYCACHE_ENTRIES, GR_KEYCACHE_PENDING_TTL_MS);
    w->workers = gr_xcalloc(n ? n : 1, sizeof *w->workers);
    for (unsigned i = 0; i < n; i++) {
        struct worker *me = &w->workers[i];
        me->ws = w;
        gr_callwatch_init(&me->call);
        if (pthread_create(&me->thread, NULL, worker_main, me) != 0) {
            gr_error("cannot start worker thread %u", i);
            gr_callwatch_destroy(&me->call);
            break;
        }
        pthread_setname_np(me->thread, "gr-worker");
        w->n++;
    }
    return w;
}

bool gr_workers_overdue(struct gr_workers *w, struct gr_late_call *out)
{
    for (unsigned i = 0; i < w->n; i++)
        if (gr_callwatch_late(&w->workers[i].call, out))
            return true;
    return false;
}

bool gr_workers_join(struct gr_workers *w, int64_t deadline_wall_ms)
{
    /* An idle worker needs a moment to see that taking stopped, even when
     * shutdown_timeout_s is 0. */
    int64_t soonest = gr_wall_ms() + 500;
    if (deadline_wall_ms < soonest)
        deadline_wall_ms = soonest;
    struct timespec until = {.tv_sec = deadline_wall_ms / 1000,
                             .tv_nsec = (deadline_wall_ms % 1000) * 1000000};
    /* Every worker is joined, each by the same deadline: one stuck in a
     * handler must not leave those that finished unjoined. A stuck one is
     * detached, left to run until the process exits; what it uses (its
     * struct worker, the cache) is then never freed. */
    bool all = true;
    for (unsigned i = 0; i < w->n; i++) {
        if (pthread_timedjoin_np(w->workers[i].thread, NULL, &until) != 0) {
            gr_error("worker %u did not finish by the shutdown deadline: a handler is stuck", i);
            pthread_detach(w->workers[i].thread);
            all = false;
            continue;
        }
        gr_callwatch_destroy(&w->workers[i].call);
    }
    if (!all) { /* the content keys are wiped all the same; the table stays */
        gr_keycache_clear(w->keys);
        return false;
    }
    gr_keycache_free(w->keys);
    gr_msgcache_destroy(&w->cache);
    free(w->workers);
    free(w);
    return true;
}
