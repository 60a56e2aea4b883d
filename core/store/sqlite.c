/*
 * The SQLite store (see sqlite.h): its layout and migrations, opening and
 * recovery at start, and the store interface, whose calls queue requests
 * for the writer thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/sqlite.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define GR_STR_(x) #x
#define GR_STR(x) GR_STR_(x)

/* Layout 3 added these: the control plane's records (sqlite_subs.c) and the
 * handlers' durable state (sqlite_state.c). */
#define LAYOUT3_TABLES                                                                   \
    "CREATE TABLE IF NOT EXISTS subscriptions("                                              \
    "  key TEXT PRIMARY KEY, id TEXT, tenant TEXT NOT NULL, resource TEXT NOT NULL,"          \
    "  change_type TEXT NOT NULL, rich INTEGER NOT NULL, cert_id TEXT, cert_thumbprint TEXT," \
    "  secret BLOB NOT NULL, state INTEGER NOT NULL, resync TEXT, expires_ms INTEGER,"        \
    "  renewed_ms INTEGER, due_ms INTEGER, failures INTEGER NOT NULL DEFAULT 0,"              \
    "  last_error TEXT, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,"          \
    "  replaced_by TEXT);"                                                                   \
    "CREATE TABLE IF NOT EXISTS subscription_events(seq INTEGER PRIMARY KEY,"                \
    "  subscription_id TEXT NOT NULL, event TEXT NOT NULL, item_id INTEGER,"                 \
    "  received_ms INTEGER NOT NULL);"                                                       \
    "CREATE TABLE IF NOT EXISTS handler_state(handler TEXT NOT NULL, key TEXT NOT NULL,"     \
    "  value BLOB NOT NULL, updated_ms INTEGER NOT NULL, PRIMARY KEY(handler, key))"         \
    "  WITHOUT ROWID;"

/* Layout 4's items: small records (some 70 bytes, about 50 to a page)
 * whose state changes keep their width (sqlite.h); the bodies, written once,
 * in a table of their own (same id), so that marking an item taken or done
 * rewrites a page of item records, not a page of bodies. */
#define LAYOUT4_ITEMS(name)                                                                \
    "CREATE TABLE IF NOT EXISTS " name "("                                                 \
    "  id INTEGER PRIMARY KEY, state INTEGER NOT NULL, due_ms INTEGER NOT NULL,"           \
    "  done_ms INTEGER NOT NULL, tries INTEGER NOT NULL DEFAULT 0,"                        \
    "  waits INTEGER NOT NULL DEFAULT 0, received_ms INTEGER NOT NULL, len INTEGER NOT NULL," \
    "  batch_id INTEGER, dedupe BLOB, note TEXT);"                                         \
    "CREATE TABLE IF NOT EXISTS bodies(id INTEGER PRIMARY KEY, body TEXT NOT NULL);"

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS batches(id INTEGER PRIMARY KEY, tokens TEXT NOT NULL,"
    "  received_ms INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS batches_age ON batches(received_ms);"
    LAYOUT4_ITEMS("items")
    /* Partial indexes, each holding only the rows its queries look for, so
     * that every query the writer runs is a lookup, never a scan of the
     * backlog or of the retained history (see the INDEXED BY clauses, and
     * test_store_plans). items_due holds only the items whose routing was
     * put off (waiting for keys, or taken before a restart): an item is due
     * at once when it is stored, so the insert adds nothing to it. */
    "CREATE INDEX IF NOT EXISTS items_open ON items(id) WHERE state IN (2, 3);"
    "CREATE INDEX IF NOT EXISTS items_due ON items(due_ms) WHERE state = 2 AND "
    "  due_ms <> received_ms;"
    "CREATE INDEX IF NOT EXISTS items_routed ON items(id) WHERE state = 4;"
    "CREATE INDEX IF NOT EXISTS items_done ON items(done_ms) WHERE state = 5;"
    "CREATE INDEX IF NOT EXISTS items_batch ON items(batch_id) WHERE batch_id IS NOT NULL;"
    "CREATE TABLE IF NOT EXISTS units("
    "  id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL, handler TEXT NOT NULL, event TEXT,"
    "  state INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, due_ms INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL, finished_ms INTEGER, last_error TEXT);"
    "CREATE INDEX IF NOT EXISTS units_ready ON units(handler, due_ms, id) WHERE state = 0;"
    "CREATE INDEX IF NOT EXISTS units_due ON units(due_ms) WHERE state = 0;"
    "CREATE INDEX IF NOT EXISTS units_item ON units(item_id, state);"
    "CREATE INDEX IF NOT EXISTS units_order ON units(handler, item_id, id) WHERE state IN (0, 1);"
    LAYOUT3_TABLES
    "PRAGMA user_version = " GR_STR(SCHEMA_VERSION) ";";

/* Layout 3 to 4, in one transaction: items get layout 4's columns and
 * states (3's were 0 to route, 3 routing, 1 routed, 2 done with done_ms
 * NULL while it had dead letters); a waiting item's waits were its attempts.
 * Units keep their layout. */
static const char upgrade_3_to_4[] =
    "BEGIN IMMEDIATE; " LAYOUT4_ITEMS("items_4")
    "INSERT INTO items_4(id, state, due_ms, done_ms, tries, waits, received_ms, len, batch_id,"
    "  dedupe, note) "
    "SELECT id, CASE WHEN state IN (0, 3) THEN 2 WHEN state = 1 THEN 4 "
    "  WHEN done_ms IS NULL THEN 6 ELSE 5 END, due_ms, coalesce(done_ms, received_ms), 0,"
    "  attempts, received_ms, len, batch_id, dedupe, note FROM items ORDER BY id;"
    "INSERT INTO bodies(id, body) SELECT id, body FROM items ORDER BY id;"
    "DROP TABLE items; ALTER TABLE items_4 RENAME TO items; PRAGMA user_version = 4; COMMIT";

const char sq_close_finished_items[] =
    "UPDATE items INDEXED BY items_routed SET state = CASE WHEN EXISTS (SELECT 1 FROM units WHERE item_id = items.id "
    "AND state = 3) THEN 6 ELSE 5 END, done_ms = strftime('%s') * 1000 "
    "WHERE state = 4 AND NOT EXISTS (SELECT 1 FROM units WHERE item_id = items.id AND "
    "state IN (0, 1))";

static const char *const stmt_sql[S_COUNT] = {
    [S_INS_BATCH] = "INSERT INTO batches(tokens, received_ms) VALUES(?1, ?2)",
    [S_INS_ITEM] = "INSERT INTO items(state, due_ms, done_ms, received_ms, len, batch_id, "
                   "dedupe) VALUES(2, ?1, ?1, ?1, ?4, ?3, ?5)",
    [S_INS_BODY] = "INSERT INTO bodies(id, body) VALUES(?1, ?2)",
    [S_ROUTE_NEXT] = "SELECT i.id, bd.body, i.received_ms, i.waits, b.tokens, i.batch_id, "
                     "i.dedupe, i.tries FROM items i "
                     "INDEXED BY items_open JOIN bodies bd ON bd.id = i.id "
                     "LEFT JOIN batches b ON b.id = i.batch_id "
                     "WHERE i.state IN (2, 3) AND i.state = 2 AND "
                     "i.due_ms <= ?1 ORDER BY i.id LIMIT ?2",
    [S_ITEM_STATE] = "UPDATE items SET state = ?2 WHERE id = ?1",
    /* taken: the attempt counts from now (tries 0 to 1: the same width) */
    [S_ITEM_TAKE] = "UPDATE items SET state = 3, tries = 1 WHERE id = ?1",
    [S_ITEM_WAIT] = "UPDATE items SET state = 2, due_ms = ?2, waits = waits + 1 WHERE id = ?1",
    /* finished without a delivery (dropped, unrouted, a duplicate) */
    [S_ITEM_DONE] = "UPDATE items SET state = CASE WHEN EXISTS (SELECT 1 FROM units WHERE "
                    "item_id = ?1 AND state = 3) THEN 6 ELSE 5 END, note = coalesce(?3, note), "
                    "done_ms = ?2 WHERE id = ?1",
    /* a direct completion: done, held (dead letters) or routed (units open) */
    [S_ITEM_COMPLETE] = "UPDATE items SET state = ?2, done_ms = ?3 WHERE id = ?1",
    [S_INS_UNIT] = "INSERT INTO units(item_id, handler, event, state, attempts, due_ms, "
                   "created_ms, finished_ms, last_error) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, "
                   "?9)",
    [S_UNIT_NEXT] = "SELECT id, attempts FROM units INDEXED BY units_ready WHERE handler = ?1 "
                    "AND state = 0 AND due_ms <= ?2 ORDER BY due_ms, id LIMIT ?3",
    [S_UNIT_HEAD] = "SELECT id, state, due_ms, item_id FROM units INDEXED BY units_order WHERE "
                    "handler = ?1 AND state IN (0, 1) ORDER BY item_id, id LIMIT 1",
    [S_FIRST_UNROUTED] = "SELECT 1 FROM items INDEXED BY items_open WHERE state IN (2, 3) AND "
                         "id < ?2 AND (state = 3 OR due_ms <= ?1) LIMIT 1",
    [S_UNIT_GET] = "SELECT u.item_id, u.event, u.attempts, bd.body, i.received_ms FROM units u "
                   "JOIN items i ON i.id = u.item_id JOIN bodies bd ON bd.id = u.item_id "
                   "WHERE u.id = ?1",
    /* A running unit's last_error is this attempt's, if any (S_UNIT_NOTE) */
    [S_UNIT_RUN] = "UPDATE units SET state = 1, attempts = attempts + 1, last_error = NULL "
                   "WHERE id = ?1",
    [S_UNIT_NOTE] = "UPDATE units SET last_error = ?2 WHERE id = ?1 AND state = 1",
    /* a stuck direct delivery's unit, while its item is taken (not once its
     * completion is written) */
    [S_UNIT_NOTE_DIRECT] = "INSERT INTO units(item_id, handler, state, attempts, due_ms, "
                           "created_ms, last_error) SELECT ?1, ?2, 1, 1, ?3, ?3, ?4 WHERE "
                           "EXISTS (SELECT 1 FROM items WHERE id = ?1 AND state = 3)",
    /* the outcome of a direct delivery that has a unit (S_UNIT_NOTE_DIRECT) */
    [S_UNIT_NOTED] = "UPDATE units SET state = ?3, due_ms = ?4, finished_ms = ?5, last_error = ?6 "
                     "WHERE item_id = ?1 AND handler = ?2 AND state = 1 AND event IS NULL",
    [S_UNIT_EXISTS] = "SELECT 1 FROM units WHERE item_id = ?1 AND handler = ?2 AND event IS NULL",
    [S_UNIT_FINISH] = "UPDATE units SET state = ?2, finished_ms = ?3, last_error = ?4 "
                      "WHERE id = ?1",
    [S_UNIT_RETRY] = "UPDATE units SET state = 0, due_ms = ?2, last_error = ?3 WHERE id = ?1",
    /* S_ITEM_DONE, only once none of the item's deliveries is pending or running */
    [S_ITEM_CLOSE] = "UPDATE items SET state = CASE WHEN EXISTS (SELECT 1 FROM units WHERE "
                     "item_id = ?1 AND state = 3) THEN 6 ELSE 5 END, done_ms = ?2 WHERE id = ?1 "
                     "AND state = 4 AND NOT EXISTS (SELECT 1 FROM units WHERE item_id = ?1 AND "
                     "state IN (0, 1))",
    [S_NEXT_DUE_UNIT] = "SELECT min(due_ms) FROM units INDEXED BY units_due WHERE state = 0",
    [S_NEXT_DUE_ITEM] = "SELECT min(due_ms) FROM items INDEXED BY items_due WHERE state = 2 AND "
                        "due_ms <> received_ms",
    [S_OLDEST] = "SELECT created_ms FROM units INDEXED BY units_order WHERE handler = ?1 AND "
                 "state IN (0, 1) ORDER BY item_id, id LIMIT 1",
    [S_DATA_VERSION] = "PRAGMA data_version",
    /* the batch's own statements, prepared once: the writer runs them thousands of times a second */
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_SAVEPOINT] = "SAVEPOINT req",
    [S_RELEASE] = "RELEASE req",
    [S_ROLLBACK_TO] = "ROLLBACK TO req",
    [S_SYNC_FULL] = "PRAGMA synchronous = FULL",
    [S_SYNC_NORMAL] = "PRAGMA synchronous = NORMAL",
    [S_USED_PAGES] = "SELECT p.page_count - f.freelist_count FROM pragma_page_count AS p, "
                     "pragma_freelist_count AS f",
};

const char *sq_statement(int i)
{
    return i >= 0 && i < S_COUNT ? stmt_sql[i] : NULL;
}

/* ---- small helpers ----------------------------------------------------- */

int sq_step(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : rc;
}

char *sq_column_text(sqlite3_stmt *st, int col, size_t *len)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    if (!t)
        return NULL;
    size_t n = (size_t)sqlite3_column_bytes(st, col);
    if (len)
        *len = n;
    return gr_xstrndup((const char *)t, n);
}

int sq_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        gr_error("store: %s: %s", sql, msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    return rc;
}

uint64_t sq_wal_bytes(const struct sqlite_store *s)
{
    struct stat st;
    return stat(s->wal_path, &st) == 0 && st.st_size > 0 ? (uint64_t)st.st_size : 0;
}

bool sq_is_full(int rc)
{
    return rc > 0 && (rc & 0xff) == SQLITE_FULL;
}

void gr_work_free(struct gr_work *w)
{
    if (!w)
        return;
    free(w->body);
    free(w->handler);
    free(w->event);
    gr_token_list_unref(w->tokens);
    free(w);
}

void gr_store_stats_free(struct gr_store_stats *st)
{
    free(st->handlers);
    *st = (struct gr_store_stats){0};
}

void sq_free_req(struct req *r)
{
    for (size_t i = 0; i < r->ntargets; i++)
        free(r->targets[i]);
    free(r->targets);
    for (size_t i = 0; i < r->nevents; i++) {
        free((char *)r->events[i].handler);
        free((char *)r->events[i].json);
    }
    free(r->events);
    free(r->text);
    free(r->life_sub);
    free(r->life_event);
    for (size_t i = 0; i < r->nstate; i++) {
        free(r->state[i].key);
        free(r->state[i].value);
    }
    free(r->state);
    for (size_t i = 0; i < r->nparts; i++) {
        struct sq_part *pt = &r->parts[i];
        free(pt->handler);
        free(pt->text);
        free(pt->kind);
        for (size_t j = 0; j < pt->nevents; j++) {
            free((char *)pt->events[j].handler);
            free((char *)pt->events[j].json);
        }
        free(pt->events);
        for (size_t j = 0; j < pt->nstate; j++) {
            free(pt->state[j].key);
            free(pt->state[j].value);
        }
        free(pt->state);
    }
    free(r->parts);
    free(r->handler);
    free(r->handlers);
    gr_work_free(r->work); /* a completion's work, done with */
    free(r);
}

/* ---- the interface ------------------------------------------------------ */

static void sq_append(struct gr_store *base, struct gr_append *a)
{
    struct req *r = gr_xcalloc(1, sizeof *r);
    r->kind = REQ_APPEND;
    r->append = a;
    sq_enqueue((struct sqlite_store *)base, r);
}

static int sq_take(struct gr_store *base, const struct gr_store_handler *h, size_t nh,
                   bool prefer_delivery, int64_t wait_ms, struct gr_work **out)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    *out = NULL;
    pthread_mutex_lock(&s->lock);
    bool stopped = s->taking_stopped;
    uint64_t seq = s->work_seq;
    pthread_mutex_unlock(&s->lock);
    if (stopped)
        return -1;
    struct req *r = gr_xcalloc(1, sizeof *r);
    r->kind = REQ_TAKE;
    r->handlers = gr_xcalloc(nh ? nh : 1, sizeof *r->handlers);
    memcpy(r->handlers, h, nh * sizeof *h);
    r->nh = nh;
    r->prefer_delivery = prefer_delivery;
    sq_enqueue(s, r);
    pthread_mutex_lock(&s->lock);
    while (!r->done)
        pthread_cond_wait(&s->answered, &s->lock);
    *out = r->taken;
    int64_t due = r->next_due_ms;
    if (!*out) { /* nothing now: wait for new work, the next due time, or wait_ms */
        int64_t now = gr_wall_ms(), wait = wait_ms;
        if (due > now && due - now < wait)
            wait = due - now;
        if (due <= now && due)
            wait = wait < 200 ? wait : 200; /* due but its handler is busy */
        int64_t until = gr_mono_ms() + (wait > 0 ? wait : 0);
        struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (until % 1000) * 1000000};
        while (s->work_seq == seq && !s->taking_stopped && gr_mono_ms() < until)
            if (pthread_cond_timedwait(&s->work, &s->lock, &ts) == ETIMEDOUT)
                break;
    }
    pthread_mutex_unlock(&s->lock);
    sq_free_req(r); /* frees the copy of the handler list (the names are the caller's) */
    return *out ? 1 : 0;
}

static char **copy_strings(const char *const *v, size_t n)
{
    char **out = gr_xcalloc(n ? n : 1, sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = gr_xstrdup(v[i]);
    return out;
}

static void sq_routed(struct gr_store *base, struct gr_work *w, const struct gr_route_outcome *o)
{
    struct req *r = gr_xcalloc(1, sizeof *r);
    r->kind = REQ_ROUTED;
    r->work = w;
    r->result = o->result;
    r->targets = copy_strings(o->handlers, o->nhandlers);
    r->ntargets = o->result == GR_ROUTED ? o->nhandlers : 0;
    r->text = o->note ? gr_xstrdup(o->note) : NULL;
    r->delay_ms = o->delay_ms;
    if (o->result == GR_ROUTED && o->lifecycle_subscription && o->lifecycle_event) {
        r->life_sub = gr_xstrdup(o->lifecycle_subscription);
        r->life_event = gr_xstrdup(o->lifecycle_event);
    }
    sq_enqueue((struct sqlite_store *)base, r);
}

/* Copies of a delivery outcome's state writes and events (GR_DELIVERED only). */
static void copy_outcome(const struct gr_delivery_outcome *o, struct gr_state_write **state,
                         size_t *nstate, struct gr_emitted_event **events, size_t *nevents)
{
    if (o->result == GR_DELIVERED && o->nstate) {
        *state = gr_xcalloc(o->nstate, sizeof **state);
        for (size_t i = 0; i < o->nstate; i++)
            (*state)[i] = (struct gr_state_write){
                gr_xstrdup(o->state[i].key),
                o->state[i].value ? gr_xmemdup(o->state[i].value, o->state[i].len) : NULL,
                o->state[i].len};
        *nstate = o->nstate;
    }
    if (o->result == GR_DELIVERED && o->nevents) {
        *events = gr_xcalloc(o->nevents, sizeof **events);
        for (size_t i = 0; i < o->nevents; i++)
            (*events)[i] = (struct gr_emitted_event){
                gr_xstrdup(o->events[i].handler), gr_xstrndup(o->events[i].json, o->events[i].len),
                o->events[i].len};
        *nevents = o->nevents;
    }
}

static void sq_delivered(struct gr_store *base, struct gr_work *w,
                         const struct gr_delivery_outcome *o)
{
    struct req *r = gr_xcalloc(1, sizeof *r);
    r->kind = REQ_DELIVERED;
    r->work = w;
    r->result = o->result;
    r->text = o->error ? gr_xstrdup(o->error) : NULL;
    r->delay_ms = o->delay_ms;
    copy_outcome(o, &r->state, &r->nstate, &r->events, &r->nevents);
    struct sqlite_store *s = (struct sqlite_store *)base;
    pthread_mutex_lock(&s->lock);
    if (r->nstate) /* visible now, before the completion is written */
        sq_state_queued(s, w->handler, r->state, r->nstate, &r->state_seq);
    sq_enqueue_locked(s, r); /* in the order of the overlay's numbers */
    pthread_mutex_unlock(&s->lock);
}

static void sq_completed(struct gr_store *base, struct gr_work *w, const struct gr_route_outcome *o,
                         const struct gr_direct_delivery *d)
{
    struct req *r = gr_xcalloc(1, sizeof *r);
    r->kind = REQ_COMPLETED;
    r->work = w;
    r->nparts = o->nhandlers;
    r->parts = gr_xcalloc(o->nhandlers ? o->nhandlers : 1, sizeof *r->parts);
    for (size_t i = 0; i < o->nhandlers; i++) {
        struct sq_part *pt = &r->parts[i];
        const struct gr_delivery_outcome *out = &d[i].outcome;
        pt->handler = gr_xstrdup(d[i].handler);
        pt->result = out->result;
        pt->text = out->error ? gr_xstrdup(out->error) : NULL;
        pt->delay_ms = out->delay_ms;
        pt->noted = d[i].noted;
        pt->kind = gr_xstrdup(d[i].kind ? d[i].kind : "notification");
        pt->max_attempts = d[i].max_attempts;
        pt->state_seq = d[i].state_seq;
        copy_outcome(out, &pt->state, &pt->nstate, &pt->events, &pt->nevents);
    }
    if (o->lifecycle_subscription && o->lifecycle_event) {
        r->life_sub = gr_xstrdup(o->lifecycle_subscription);
        r->life_event = gr_xstrdup(o->lifecycle_event);
    }
    struct sqlite_store *s = (struct sqlite_store *)base;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < r->nparts; i++)
        if (r->parts[i].nstate && !r->parts[i].state_seq)
            sq_state_queued(s, r->parts[i].handler, r->parts[i].state, r->parts[i].nstate,
                            &r->parts[i].state_seq);
    sq_enqueue_locked(s, r);
    pthread_mutex_unlock(&s->lock);
}

static uint64_t sq_stage_state(struct gr_store *base, const char *handler,
                               const struct gr_state_write *w, size_t n)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    uint64_t seq;
    pthread_mutex_lock(&s->lock);
    sq_state_queued(s, handler, w, n, &seq);
    pthread_mutex_unlock(&s->lock);
    return seq;
}


static int64_t sq_note_running(struct gr_store *base, int64_t unit, int64_t item,
                               const char *handler, const char *note)
{
    struct req *r = gr_xcalloc(1, sizeof *r);
    r->kind = REQ_SYNC;
    r->unit = unit;
    r->item = item;
    r->handler = handler ? gr_xstrdup(handler) : NULL;
    r->text = gr_xstrdup(note);
    int64_t id = 0; /* stays 0 if a direct delivery's completion was written first */
    if (sq_run_now((struct sqlite_store *)base, r, &id))
        return id;
    if (unit)
        gr_warn("store: why delivery %lld is stuck could not be written; after the restart it "
                "reads as a crash",
                (long long)unit);
    else
        gr_warn("store: why the delivery of item %lld to handler \"%s\" is stuck could not be "
                "written; after the restart it reads as a crash",
                (long long)item, handler ? handler : "?");
    return 0;
}

static void sq_flush(struct gr_store *base)
{
    struct req *r = gr_xcalloc(1, sizeof *r);
    r->kind = REQ_SYNC; /* with no note */
    if (!sq_run_now((struct sqlite_store *)base, r, NULL))
        gr_warn("store: the last completions could not be written; that work runs again at the "
                "next start");
}

static void free_handlers(struct gr_store_handler *h, size_t n);

/* At once: what is routed from now on is checked against these (insert_unit);
 * the writer's next maintenance sweeps pending units of removed handlers. */
static void sq_set_handlers(struct gr_store *base, const struct gr_store_handler *h, size_t nh)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    struct gr_store_handler *copy = gr_xcalloc(nh ? nh : 1, sizeof *copy);
    for (size_t i = 0; i < nh; i++) {
        copy[i] = h[i];
        copy[i].name = gr_xstrdup(h[i].name);
    }
    pthread_mutex_lock(&s->lock);
    free_handlers(s->handlers, s->nhandlers);
    s->handlers = copy;
    s->nhandlers = nh;
    s->handlers_changed = true;
    pthread_mutex_unlock(&s->lock);
}

static void sq_stats(struct gr_store *base, struct gr_store_stats *out)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    pthread_mutex_lock(&s->lock);
    out->items_pending = s->items_pending;
    out->bytes_pending = s->bytes_pending;
    out->items_to_route = s->items_to_route;
    for (size_t i = 0; i < s->nhandlers; i++) /* every handler configured, units or not */
        sq_hstat(s, s->handlers[i].name);
    out->nhandlers = s->nstats;
    out->handlers = gr_xcalloc(s->nstats ? s->nstats : 1, sizeof *out->handlers);
    if (s->nstats)
        memcpy(out->handlers, s->stats, s->nstats * sizeof *s->stats);
    bool *configured = gr_xcalloc(s->nstats ? s->nstats : 1, sizeof *configured);
    for (size_t i = 0; i < s->nstats; i++)
        for (size_t k = 0; k < s->nhandlers && !configured[i]; k++)
            configured[i] = strcmp(s->stats[i].name, s->handlers[k].name) == 0;
    pthread_mutex_unlock(&s->lock);
    /* and the deliveries workers make as they route (no unit of their own) */
    for (size_t i = 0; i < out->nhandlers; i++)
        if (configured[i])
            out->handlers[i].running += atomic_load_explicit(
                &gr_metrics_handler(out->handlers[i].name)->direct_running, memory_order_relaxed);
    free(configured);
}

static void sq_stop_taking(struct gr_store *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    pthread_mutex_lock(&s->lock);
    s->taking_stopped = true;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->lock);
}

static void free_handlers(struct gr_store_handler *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free((char *)h[i].name);
    free(h);
}

static void sq_close(struct gr_store *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    if (s->writer_started)
        pthread_join(s->writer, NULL);
    gr_token_list_unref(s->batch_tokens);
    sq_state_close(s);
    pthread_mutex_destroy(&s->readers_lock);
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(s->stmt[i]);
    sq_exec(s->db, "PRAGMA wal_checkpoint(TRUNCATE)");
    sqlite3_close(s->db);
    free_handlers(s->handlers, s->nhandlers);
    free(s->stats);
    gr_dedupe_free(&s->dedupe);
    pthread_cond_destroy(&s->wake);
    pthread_cond_destroy(&s->answered);
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->lock);
    free(s->path);
    free(s->wal_path);
    free(s);
}

static const struct gr_store_ops sqlite_ops = {
    .append = sq_append,
    .take = sq_take,
    .routed = sq_routed,
    .delivered = sq_delivered,
    .completed = sq_completed,
    .stage_state = sq_stage_state,
    .set_handlers = sq_set_handlers,
    .note_running = sq_note_running,
    .flush = sq_flush,
    .stats = sq_stats,
    .stop_taking = sq_stop_taking,
    .close = sq_close,
    .subs_load = sq_subs_load,
    .subs_put = sq_subs_put,
    .subs_delete = sq_subs_delete,
    .lease = sq_lease,
    .state_get = sq_state_get,
};

/* Create missing parent directories (0700) and the file itself (0600),
 * private whatever the umask: SQLite gives its -wal and -shm files the
 * database file's mode. What exists already is left as it is. */
static int prepare_path(const char *path, char **err)
{
    char *dir = gr_xstrdup(path);
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0700) == 0) {
            if (chmod(dir, 0700) != 0) { /* a umask of 0277 would leave it unwritable */
                *err = gr_xprintf("store: cannot set the mode of %s: %s", dir, strerror(errno));
                free(dir);
                return -1;
            }
        } else if (errno != EEXIST) {
            *err = gr_xprintf("store: cannot create %s: %s", dir, strerror(errno));
            free(dir);
            return -1;
        }
        *p = '/';
    }
    free(dir);
    bool created = true;
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 && errno == EEXIST) {
        created = false;
        fd = open(path, O_RDWR | O_CLOEXEC);
    }
    if (fd < 0) {
        *err = gr_xprintf("store: cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (created && fchmod(fd, 0600) != 0) {
        *err = gr_xprintf("store: cannot set the mode of %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* Work that was running when the process stopped (a crash, a kill, or a
 * handler stuck at the shutdown deadline): its attempt was recorded when it
 * was taken, so it runs again, or is a dead letter once its handler's
 * attempts are used up: a plugin that crashes the process on one item ends
 * there instead of in a crash loop. */
/* A delivery found running runs again 1, 2, 4 ... 60 s after the start (by
 * its attempts), not at once: a plugin that crashes the process then
 * restarts it no faster than that, and systemd's start limit is not hit. */
int64_t sq_recovery_wait_ms(unsigned attempts)
{
    return attempts >= 7 ? 60000 : INT64_C(1000) << (attempts ? attempts - 1 : 0);
}

bool sq_interrupted(int64_t id, const char *name, unsigned attempts, unsigned max)
{
    if (max) /* configured: its metrics exist */
        atomic_fetch_add_explicit(&gr_metrics_handler(name)->interrupted, 1,
                                  memory_order_relaxed);
    bool dead = max && attempts >= max;
    if (dead)
        gr_warn("store: delivery %lld to handler \"%s\" was running when graphrouter stopped "
                "and has used its %u attempts: a dead letter (graphrouter dlq show %lld)",
                (long long)id, name, attempts, (long long)id);
    else
        gr_warn("store: delivery %lld to handler \"%s\" was running when graphrouter stopped "
                "(attempt %u); it runs again in %lld s",
                (long long)id, name, attempts, (long long)(sq_recovery_wait_ms(attempts) / 1000));
    return dead;
}

static int recover(struct sqlite_store *s, const struct gr_store_handler *h, size_t nh)
{
    /* Items taken (tries 1): their deliveries may have run, and are charged
     * an attempt each when the item is routed again, into units (routed()). */
    int rc = sq_exec(s->db, "UPDATE items INDEXED BY items_open SET state = 2, due_ms = "
                            "max(strftime('%s') * 1000, received_ms + 1) WHERE state IN (2, 3) "
                            "AND state = 3");
    sqlite3_stmt *st, *up;
    if (rc)
        return rc;
    if (sqlite3_changes(s->db) > 0)
        gr_warn("store: %d items were taken for delivery when graphrouter stopped; each is "
                "routed again, and each of its deliveries counts that attempt",
                sqlite3_changes(s->db));
    if (sqlite3_prepare_v2(s->db, "SELECT id, handler, attempts FROM units WHERE state = 1", -1,
                           &st, NULL) != SQLITE_OK)
        return sqlite3_errcode(s->db);
    if (sqlite3_prepare_v2(s->db, "UPDATE units SET state = ?2, due_ms = ?3, finished_ms = CASE "
                                  "WHEN ?2 = 3 THEN ?3 END, last_error = coalesce(last_error, "
                                  "'" SQ_INTERRUPTED_ERROR "') WHERE id = ?1",
                           -1, &up, NULL) != SQLITE_OK) {
        sqlite3_finalize(st);
        return sqlite3_errcode(s->db);
    }
    int64_t now = gr_wall_ms();
    while (!rc && sqlite3_step(st) == SQLITE_ROW) {
        sqlite3_int64 id = sqlite3_column_int64(st, 0);
        const char *name = (const char *)sqlite3_column_text(st, 1);
        unsigned attempts = (unsigned)sqlite3_column_int(st, 2), max = 0;
        for (size_t i = 0; i < nh; i++)
            if (strcmp(h[i].name, name) == 0)
                max = h[i].max_attempts;
        bool dead = sq_interrupted(id, name, attempts, max);
        int64_t wait = sq_recovery_wait_ms(attempts);
        sqlite3_bind_int64(up, 1, id);
        sqlite3_bind_int(up, 2, dead ? UNIT_DEAD : UNIT_PENDING);
        sqlite3_bind_int64(up, 3, dead ? now : now + wait);
        rc = sq_step(up);
    }
    sqlite3_finalize(st);
    sqlite3_finalize(up);
    if (!rc)
        rc = sq_exec(s->db, sq_close_finished_items);
    return rc;
}

/* The duplicate keys of the items routed within the window, newest first
 * until one was received before it (ids grow with the time of receipt; the
 * wall clock stepping back a little can only make a key missed, i.e. an item
 * delivered twice, which at-least-once allows), so the scan reads the window
 * and no further. A key seen twice keeps its first sighting, as when the
 * items were routed. Items not routed yet, or finished without a delivery
 * for another reason (dropped, unrouted), never recorded their key. */
static int dedupe_load(struct sqlite_store *s)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, "SELECT id, received_ms, dedupe, state IN (4, 5, 6) AND "
                                       "(note IS NULL OR note = '" NOTE_DUPLICATE "') "
                                       "FROM items ORDER BY id DESC",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    int64_t cutoff = gr_wall_ms() - s->cfg.dedupe_window_ms;
    size_t n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && sqlite3_column_int64(st, 1) >= cutoff) {
        if (!sqlite3_column_int(st, 3) || sqlite3_column_bytes(st, 2) != 32)
            continue;
        /* older sightings come later: the earliest in the window is kept */
        gr_dedupe_set(&s->dedupe, sqlite3_column_blob(st, 2), sqlite3_column_int64(st, 0),
                      sqlite3_column_int64(st, 1), cutoff);
        n++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return rc;
    if (n)
        gr_info("store: %zu duplicate keys of the last %lld s loaded", n,
                (long long)(s->cfg.dedupe_window_ms / 1000));
    return SQLITE_OK;
}

/* After each commit on the writer's connection: SQLite's automatic
 * checkpoint (which this hook replaces), keeping count of the WAL frames
 * the next transaction appends after. A checkpoint that copied every frame
 * lets the next transaction restart the WAL from its start. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    struct sqlite_store *s = arg;
    s->wal_frames = frames > 0 ? (uint64_t)frames : 0;
    if (s->wal_frames >= s->limits.autocheckpoint) {
        int log = 0, done = 0;
        if (sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, &log, &done) ==
                SQLITE_OK &&
            done == log)
            s->wal_frames = 0;
    }
    return SQLITE_OK;
}

struct gr_store *gr_store_sqlite_open(const struct gr_store_config *c,
                                      const struct gr_store_handler *h, size_t nh, char **err)
{
    if (prepare_path(c->path, err) < 0)
        return NULL;
    struct sqlite_store *s = gr_xcalloc(1, sizeof *s);
    s->base.ops = &sqlite_ops;
    s->cfg = *c;
    s->path = gr_xstrdup(c->path);
    s->wal_path = gr_xprintf("%s-wal", c->path);
    int rc = sqlite3_open_v2(c->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(s->db, 5000);
        sqlite3_extended_result_codes(s->db, 1);
    }
    char *pragmas = gr_xprintf("PRAGMA synchronous = %s; PRAGMA foreign_keys = OFF; "
                               "PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16000;",
                               c->synchronous_full ? "FULL" : "NORMAL");
    char *why = NULL; /* a reason of ours, when SQLite's message would not say it */
    /* WAL, or nothing: journal_mode answers with the mode it got */
    sqlite3_stmt *jm;
    if (rc == SQLITE_OK &&
        (rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &jm, NULL)) == SQLITE_OK) {
        const unsigned char *mode = sqlite3_step(jm) == SQLITE_ROW ? sqlite3_column_text(jm, 0)
                                                                   : NULL;
        if (!mode || strcmp((const char *)mode, "wal") != 0) {
            why = gr_xprintf("store: %s cannot use write-ahead logging (journal mode %s)",
                             c->path, mode ? (const char *)mode : "unknown");
            rc = SQLITE_CANTOPEN;
        }
        sqlite3_finalize(jm);
    }
    if (rc == SQLITE_OK)
        rc = sq_exec(s->db, pragmas);
    free(pragmas);
    sqlite3_stmt *uv;
    if (rc == SQLITE_OK &&
        (rc = sqlite3_prepare_v2(s->db, "SELECT (SELECT user_version FROM pragma_user_version), "
                                        "(SELECT count(*) FROM sqlite_schema)",
                                 -1, &uv, NULL)) == SQLITE_OK) {
        int version = sqlite3_step(uv) == SQLITE_ROW && sqlite3_column_int(uv, 1) > 0
                          ? sqlite3_column_int(uv, 0)
                          : SCHEMA_VERSION; /* a new file */
        sqlite3_finalize(uv);
        /* Older layouts are converted in place, in one transaction each:
         * 1 -> 2 moved duplicate keys to memory (dedupe.h), 2 -> 3 added the
         * control plane's tables, 3 -> 4 the lean items (sqlite.h). */
        static const char *const upgrade[] = {
            [1] = "BEGIN IMMEDIATE; DROP TABLE IF EXISTS dedupe; PRAGMA user_version = 2; COMMIT",
            [2] = "BEGIN IMMEDIATE; " LAYOUT3_TABLES " PRAGMA user_version = 3; COMMIT",
            [3] = upgrade_3_to_4,
        };
        int from = version;
        while (rc == SQLITE_OK && version >= 1 && version < SCHEMA_VERSION) {
            rc = sq_exec(s->db, upgrade[version]);
            if (rc == SQLITE_OK)
                version++;
            else if (!sqlite3_get_autocommit(s->db))
                sq_exec(s->db, "ROLLBACK");
        }
        if (rc == SQLITE_OK && from != version)
            gr_info("store: %s converted from layout %d to layout %d", c->path, from, version);
        if (rc == SQLITE_OK && version != SCHEMA_VERSION) {
            why = gr_xprintf("store: %s holds store layout %d; this graphrouter reads layout %d "
                             "(move the file away, or let the graphrouter that wrote it finish "
                             "its work first)",
                             c->path, version, SCHEMA_VERSION);
            rc = SQLITE_CANTOPEN;
        }
    }
    if (rc == SQLITE_OK)
        rc = sq_exec(s->db, schema);
    for (int i = 0; rc == SQLITE_OK && i < S_COUNT; i++)
        rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[i],
                                NULL);
    if (rc == SQLITE_OK)
        rc = recover(s, h, nh);
    if (rc == SQLITE_OK)
        rc = dedupe_load(s);
    s->page_size = 4096;
    sqlite3_stmt *ps;
    if (rc == SQLITE_OK && sqlite3_prepare_v2(s->db, "PRAGMA page_size", -1, &ps, NULL) == SQLITE_OK) {
        if (sqlite3_step(ps) == SQLITE_ROW && sqlite3_column_int64(ps, 0) > 0)
            s->page_size = (uint64_t)sqlite3_column_int64(ps, 0);
        sqlite3_finalize(ps);
    }
    /* max_db_bytes, shared out between the database, its WAL and the -shm
     * file (limits.h), by the file's own page size. The WAL is checkpointed
     * within its share and cut back when it restarts: without a cap, after a
     * commit that made it larger than SQLite's 1,000-page checkpoint size. */
    gr_store_limits_compute(c->max_db_bytes, s->page_size, &s->limits);
    if (rc == SQLITE_OK) {
        char *sql = s->limits.cap ? gr_xprintf("PRAGMA max_page_count = %llu; "
                                               "PRAGMA journal_size_limit = %lld",
                                               (unsigned long long)s->limits.max_page_count,
                                               (long long)s->limits.journal_size_limit)
                                  : gr_xprintf("PRAGMA journal_size_limit = %lld",
                                               (long long)s->limits.journal_size_limit);
        rc = sq_exec(s->db, sql);
        free(sql);
    }
    if (rc == SQLITE_OK) {
        uint64_t wal = sq_wal_bytes(s), frame = s->page_size + GR_WAL_FRAME_HEADER;
        s->wal_frames = wal > GR_WAL_HEADER ? (wal - GR_WAL_HEADER) / frame : 0;
        sqlite3_wal_hook(s->db, wal_hook, s);
    }
    if (rc == SQLITE_OK && s->limits.cap) {
        /* a file already larger than the database's share (a lower cap than
         * before) is not cut; appends wait until retention brings it under */
        sqlite3_stmt *pc;
        if (sqlite3_prepare_v2(s->db, "PRAGMA page_count", -1, &pc, NULL) == SQLITE_OK) {
            if (sqlite3_step(pc) == SQLITE_ROW &&
                (uint64_t)sqlite3_column_int64(pc, 0) > s->limits.max_page_count)
                gr_warn("store: %s has %lld pages, more than the %llu that store.max_db_bytes "
                        "leaves the database; POSTs get 503 until retention makes room",
                        c->path, (long long)sqlite3_column_int64(pc, 0),
                        (unsigned long long)s->limits.max_page_count);
            sqlite3_finalize(pc);
        }
    }
    if (rc != SQLITE_OK) {
        *err = why ? why
                   : gr_xprintf("store: cannot open %s: %s", c->path,
                                s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        for (int i = 0; i < S_COUNT; i++)
            sqlite3_finalize(s->stmt[i]);
        sqlite3_close(s->db);
        gr_dedupe_free(&s->dedupe);
        free(s->path);
        free(s->wal_path);
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->readers_lock, NULL);
    gr_cond_init_mono(&s->wake);
    gr_cond_init_mono(&s->answered);
    gr_cond_init_mono(&s->work);
    s->handlers = gr_xcalloc(nh ? nh : 1, sizeof *s->handlers);
    for (size_t i = 0; i < nh; i++) {
        s->handlers[i] = h[i];
        s->handlers[i].name = gr_xstrdup(h[i].name);
    }
    s->nhandlers = nh;
    s->handlers_changed = true;
    s->recount_needed = true;
    sq_maintenance(s);
    s->next_maintenance_ms = gr_mono_ms() + MAINTENANCE_MS;
    s->writer_started = pthread_create(&s->writer, NULL, sq_writer_main, s) == 0;
    if (s->writer_started) /* its name, for top -H and bench/ingest.sh */
        pthread_setname_np(s->writer, "gr-store");
    if (!s->writer_started) {
        *err = gr_xstrdup("store: cannot start its writer thread");
        sq_close(&s->base);
        return NULL;
    }
    return &s->base;
}

