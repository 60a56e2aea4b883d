/*
 * The subscription manager's thread, its records and its schedule (see
 * manager.h); what it asks Graph is in graph/actions.c.
 *
 * Threads: one manager thread owns the records (`v`). Others only set the
 * flags under `lock` and signal `wake`: a reload asks for a reconcile, a
 * worker that routed a lifecycle event pokes. The thread pins the current
 * generation for each round of work, so a reload applies from the next one.
 */
#define _GNU_SOURCE
#include "graph/manager.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "generation.h"
#include "graph/manager_int.h"
#include "graph/managed.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define GR_BACKOFF_CAP_MS (5 * 60000)
#define GR_LEASE_TTL_MS 30000
#define GR_IDLE_WAIT_MS 60000 /* nothing due: look again after this long anyway */

static pthread_mutex_t running_lock = PTHREAD_MUTEX_INITIALIZER;
static struct gr_manager *running;

int64_t gr_manager_renewal_due(int64_t renewed_ms, int64_t expires_ms, double jitter,
                               int64_t now_ms)
{
    int64_t life = expires_ms - renewed_ms;
    int64_t due = renewed_ms + life * 2 / 3 - (int64_t)((double)life * 0.05 * jitter);
    return due < now_ms + 1000 ? now_ms + 1000 : due;
}

int64_t gr_manager_backoff_ms(unsigned failures, double jitter)
{
    int64_t cap = 1000;
    for (unsigned i = 1; i < failures && cap < GR_BACKOFF_CAP_MS; i++)
        cap *= 2;
    if (cap > GR_BACKOFF_CAP_MS)
        cap = GR_BACKOFF_CAP_MS;
    return cap / 2 + (int64_t)((double)(cap / 2) * jitter);
}

double gr_mgr_jitter(void)
{
    return (double)arc4random_uniform(1000001) / 1e6;
}

/* ---- records ------------------------------------------------------------ */

struct gr_mgr_sub *gr_mgr_find_key(struct gr_manager *m, const char *key)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->v[i].r.key, key) == 0)
            return &m->v[i];
    return NULL;
}

struct gr_mgr_sub *gr_mgr_find_id(struct gr_manager *m, const char *id)
{
    for (size_t i = 0; id && i < m->n; i++)
        if (m->v[i].r.id && strcasecmp(m->v[i].r.id, id) == 0)
            return &m->v[i];
    return NULL;
}

struct gr_mgr_sub *gr_mgr_add(struct gr_manager *m, const struct gr_sub_record *r)
{
    m->v = gr_xrealloc(m->v, (m->n + 1) * sizeof *m->v);
    struct gr_mgr_sub *s = &m->v[m->n++];
    *s = (struct gr_mgr_sub){0};
    gr_sub_record_copy(&s->r, r);
    return s;
}

void gr_mgr_forget_secret(struct gr_mgr_sub *s)
{
    if (s->client_state) {
        OPENSSL_cleanse(s->client_state, strlen(s->client_state));
        free(s->client_state);
        s->client_state = NULL;
    }
}

static void sub_free(struct gr_mgr_sub *s)
{
    gr_mgr_forget_secret(s);
    gr_sub_record_clear(&s->r);
}

int gr_mgr_save(struct gr_manager *m, struct gr_mgr_sub *s, const int64_t *consumed,
                size_t nconsumed, const struct gr_store_item *resync)
{
    m->changed = true;
    if (gr_store_subs_put(m->store, &s->r, consumed, nconsumed, resync) == 0)
        return 0;
    gr_error("subscription %s (tenant %s, resource %s): its record could not be written to the "
             "store; the next start repairs it from what Graph lists",
             s->r.id ? s->r.id : "(not created)", s->r.tenant, s->r.resource);
    return -1;
}

void gr_mgr_drop(struct gr_manager *m, struct gr_mgr_sub *s)
{
    if (gr_store_subs_delete(m->store, s->r.key) != 0)
        gr_error("subscription %s (tenant %s, resource %s): its record could not be removed "
                 "from the store",
                 s->r.id ? s->r.id : "(not created)", s->r.tenant, s->r.resource);
    size_t i = (size_t)(s - m->v);
    sub_free(s);
    m->v[i] = m->v[--m->n];
    m->changed = true;
}

/* What ingest and the workers see, and the gauges. */
void gr_mgr_publish(struct gr_manager *m, const struct gr_config *cfg)
{
    struct gr_managed *snap = gr_managed_new();
    uint64_t by_state[3] = {0};
    for (size_t i = 0; i < m->n; i++) {
        const struct gr_sub_record *r = &m->v[i].r;
        if (r->state <= GR_SUB_DELETING)
            by_state[r->state]++;
        static const unsigned char none[sizeof r->secret];
        bool secret = memcmp(r->secret, none, sizeof none) != 0; /* an orphan's is unknown */
        if ((r->state == GR_SUB_ACTIVE || r->state == GR_SUB_DELETING) && r->id && secret)
            gr_managed_add(snap, r->id, r->secret, r->key, r->tenant, r->resource);
        else if (r->state == GR_SUB_CREATING)
            gr_managed_add_pending(snap, r->secret);
    }
    gr_managed_publish(snap);
    int64_t next = cfg && cfg->ndeclarations ? INT64_MAX : -1;
    for (size_t i = 0; cfg && i < cfg->ndeclarations; i++) {
        const struct gr_mgr_sub *s = gr_mgr_find_key(m, cfg->declarations[i].key);
        int64_t e = s && s->r.state == GR_SUB_ACTIVE ? s->r.expires_ms : 0;
        if (e < next)
            next = e;
    }
    gr_metrics_subscriptions(by_state, next);
    m->changed = false;
}

/* ---- lifecycle events ------------------------------------------------------ */

/* Act on the events routed since the last look (from the store: an event
 * that got its 202 is there even if graphrouter died right after). */
static void take_events(struct gr_manager *m)
{
    struct gr_sub_record *recs = NULL;
    struct gr_sub_event *events = NULL;
    size_t nrecs = 0, nevents = 0;
    if (gr_store_subs_load(m->store, &recs, &nrecs, &events, &nevents) != 0) {
        gr_error("subscriptions: the lifecycle events in the store cannot be read; trying again");
        m->poked = true;
        return;
    }
    for (size_t i = 0; i < nrecs; i++)
        gr_sub_record_clear(&recs[i]);
    free(recs);
    int64_t now = gr_wall_ms();
    for (size_t i = 0; i < nevents; i++) {
        const struct gr_sub_event *e = &events[i];
        struct gr_mgr_sub *s = gr_mgr_find_id(m, e->subscription_id);
        if (!s || s->r.state != GR_SUB_ACTIVE) { /* an old subscription's: nothing to do */
            gr_info("subscription %s: lifecycle event %s ignored: graphrouter no longer keeps "
                    "that subscription",
                    e->subscription_id, e->event);
            gr_store_subs_put(m->store, NULL, &e->seq, 1, NULL);
            continue;
        }
        gr_metrics_lifecycle_event(e->event);
        struct gr_store_item resync = {0};
        if (strcmp(e->event, "reauthorizationRequired") == 0) {
            gr_info("subscription %s (tenant %s, resource %s): reauthorizationRequired: renewing "
                    "now",
                    s->r.id, s->r.tenant, s->r.resource);
            s->r.due_ms = now;
        } else if (strcmp(e->event, "subscriptionRemoved") == 0) {
            gr_warn("subscription %s (tenant %s, resource %s): subscriptionRemoved: creating it "
                    "again, then a resync",
                    s->r.id, s->r.tenant, s->r.resource);
            gr_mgr_recreate(s, "subscriptionRemoved", now);
        } else { /* missed */
            gr_warn("subscription %s (tenant %s, resource %s): missed: notifications were lost; "
                    "routing a resync",
                    s->r.id, s->r.tenant, s->r.resource);
            gr_mgr_resync_item(&s->r, "missed", &resync);
        }
        /* the event is forgotten with what it caused, or stays for the next look */
        if (gr_mgr_save(m, s, &e->seq, 1, resync.body ? &resync : NULL) == 0 && resync.body)
            gr_metrics_resync("missed");
        free(resync.body);
    }
    gr_sub_events_free(events, nevents);
}

/* ---- the thread ------------------------------------------------------------ */

/* Records whose time has come, deletions first (Graph answers 409 to a
 * second subscription for the same resource and URL, so an orphan goes
 * before its replacement comes). */
static struct gr_mgr_sub *next_due(struct gr_manager *m, int64_t now)
{
    struct gr_mgr_sub *best = NULL;
    for (size_t i = 0; i < m->n; i++) {
        struct gr_mgr_sub *s = &m->v[i];
        if (s->r.due_ms > now)
            continue;
        if (!best || (s->r.state == GR_SUB_DELETING) > (best->r.state == GR_SUB_DELETING) ||
            ((s->r.state == GR_SUB_DELETING) == (best->r.state == GR_SUB_DELETING) &&
             s->r.due_ms < best->r.due_ms))
            best = s;
    }
    return best;
}

static int64_t soonest(const struct gr_manager *m)
{
    int64_t due = INT64_MAX;
    for (size_t i = 0; i < m->n; i++)
        if (m->v[i].r.due_ms < due)
            due = m->v[i].r.due_ms;
    if (m->reconcile_due && m->reconcile_due < due)
        due = m->reconcile_due;
    return due;
}

static bool stop_asked(struct gr_manager *m)
{
    return atomic_load(&m->stopping);
}

/* A poke or a reconcile came in: they go before the next action. */
static bool interrupted(struct gr_manager *m)
{
    pthread_mutex_lock(&m->lock);
    bool yes = m->poke_flag || m->reconcile_flag;
    pthread_mutex_unlock(&m->lock);
    return yes || stop_asked(m);
}

/* Wait for the next due time, a poke, a reconcile or the stop. */
static void wait_for_work(struct gr_manager *m)
{
    int64_t now = gr_wall_ms(), due = soonest(m);
    int64_t wait = due == INT64_MAX ? GR_IDLE_WAIT_MS : due - now;
    if (wait > GR_IDLE_WAIT_MS)
        wait = GR_IDLE_WAIT_MS;
    pthread_mutex_lock(&m->lock);
    if (wait > 0 && !m->poke_flag && !m->reconcile_flag && !stop_asked(m)) {
        int64_t until = gr_mono_ms() + wait;
        struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (until % 1000) * 1000000};
        pthread_cond_timedwait(&m->wake, &m->lock, &ts);
    }
    m->poked |= m->poke_flag;
    m->poke_flag = false;
    if (m->reconcile_flag)
        m->reconcile_due = gr_wall_ms();
    m->reconcile_flag = false;
    pthread_mutex_unlock(&m->lock);
}

static void pause_for(struct gr_manager *m, int64_t ms)
{
    pthread_mutex_lock(&m->lock);
    if (!stop_asked(m)) {
        int64_t until = gr_mono_ms() + ms;
        struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (until % 1000) * 1000000};
        pthread_cond_timedwait(&m->wake, &m->lock, &ts);
    }
    pthread_mutex_unlock(&m->lock);
}

static void *manager_main(void *arg)
{
    struct gr_manager *m = arg;
    bool leased = false;
    while (!stop_asked(m)) {
        wait_for_work(m);
        if (stop_asked(m))
            break;
        bool lease = gr_store_lease(m->store, GR_LEASE_TTL_MS);
        if (lease != leased)
            gr_info(lease ? "subscriptions: this instance manages them"
                          : "subscriptions: another instance manages them");
        leased = lease;
        if (!lease) { /* asked again a third of the lease's time later */
            pause_for(m, GR_LEASE_TTL_MS / 3);
            continue;
        }
        struct gr_generation *g = gr_generation_pin();
        struct gr_mgr_ctx ctx;
        gr_mgr_ctx_init(&ctx, m, g);
        if (g->id != m->generation) {
            m->generation = g->id;
            m->reconcile_due = gr_wall_ms();
        }
        if (m->poked) {
            m->poked = false;
            take_events(m);
        }
        if (m->reconcile_due && m->reconcile_due <= gr_wall_ms())
            gr_mgr_reconcile(&ctx);
        struct gr_mgr_sub *s;
        if (m->changed)
            gr_mgr_publish(m, g->cfg);
        /* At least one action per round, so that a stream of pokes cannot starve
         * the renewals; then on until a poke or a reconcile comes in. */
        for (bool first = true; (first || !interrupted(m)) && !stop_asked(m) &&
                                (s = next_due(m, gr_wall_ms()));
             first = false) {
            if (!first && !gr_store_lease(m->store, GR_LEASE_TTL_MS))
                break; /* the lease is kept up for as long as the round lasts */
            gr_mgr_act(&ctx, s);
            if (m->changed) /* ingest and the workers see each change at once */
                gr_mgr_publish(m, g->cfg);
        }
        gr_mgr_ctx_free(&ctx);
        gr_generation_unpin(g);
    }
    return NULL;
}

struct gr_manager *gr_manager_new(struct gr_store *store, char **err)
{
    struct gr_sub_record *recs = NULL;
    struct gr_sub_event *events = NULL;
    size_t nrecs = 0, nevents = 0;
    if (gr_store_subs_load(store, &recs, &nrecs, &events, &nevents) != 0) {
        *err = gr_xstrdup("the managed subscriptions in the store cannot be read");
        return NULL;
    }
    struct gr_manager *m = gr_xcalloc(1, sizeof *m);
    m->store = store;
    pthread_mutex_init(&m->lock, NULL);
    gr_cond_init_mono(&m->wake);
    atomic_init(&m->stopping, false);
    for (size_t i = 0; i < nrecs; i++) {
        gr_mgr_add(m, &recs[i]);
        gr_sub_record_clear(&recs[i]);
    }
    free(recs);
    m->poked = true; /* events a crash left, or routed before the thread starts: first */
    m->reconcile_due = gr_wall_ms(); /* the first thing the thread does */
    gr_sub_events_free(events, nevents);
    struct gr_generation *g = gr_generation_pin();
    gr_mgr_publish(m, g ? g->cfg : NULL);
    gr_generation_unpin(g);
    if (m->n)
        gr_info("subscriptions: %zu records in the store", m->n);
    /* Workers may route a lifecycle event before the thread starts: their
     * pokes set its flag meanwhile. */
    pthread_mutex_lock(&running_lock);
    running = m;
    pthread_mutex_unlock(&running_lock);
    return m;
}

void gr_manager_start(struct gr_manager *m)
{
    m->started = pthread_create(&m->thread, NULL, manager_main, m) == 0;
    if (m->started)
        pthread_setname_np(m->thread, "gr-manager");
    if (!m->started)
        gr_error("subscriptions: cannot start the manager's thread");
}

static void signal_flag(struct gr_manager *m, bool reconcile)
{
    pthread_mutex_lock(&m->lock);
    if (reconcile)
        m->reconcile_flag = true;
    else
        m->poke_flag = true;
    pthread_cond_signal(&m->wake);
    pthread_mutex_unlock(&m->lock);
}

void gr_manager_reconcile(struct gr_manager *m)
{
    if (m)
        signal_flag(m, true);
}

void gr_manager_poke(void)
{
    pthread_mutex_lock(&running_lock);
    if (running)
        signal_flag(running, false);
    pthread_mutex_unlock(&running_lock);
}

void gr_manager_stop(struct gr_manager *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&running_lock);
    running = NULL;
    pthread_mutex_unlock(&running_lock);
    atomic_store(&m->stopping, true);
    pthread_mutex_lock(&m->lock);
    pthread_cond_signal(&m->wake);
    pthread_mutex_unlock(&m->lock);
    if (m->started)
        pthread_join(m->thread, NULL);
    for (size_t i = 0; i < m->n; i++)
        sub_free(&m->v[i]);
    free(m->v);
    pthread_cond_destroy(&m->wake);
    pthread_mutex_destroy(&m->lock);
    free(m);
}
