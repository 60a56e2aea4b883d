/*
 * The SQLite store (see store.h): one database in WAL mode, one writer
 * thread that owns the connection.
 *
 * Every write (appends from HTTP threads, takes and completions from
 * workers) is a request queued to the writer, which runs all the requests
 * that queued up while its previous transaction committed in one new
 * transaction: group commit for the whole process. A transaction holding an
 * append commits with synchronous=FULL (the 202 promise survives power loss)
 * unless store.synchronous is "normal"; one holding only takes and
 * completions commits with NORMAL: losing it to a power cut repeats work,
 * which at-least-once allows, and WAL keeps it across a process crash.
 *
 * SQLite's automatic checkpoint runs inside the writer's commits (a
 * checkpointer thread on a second connection was measured: slower, with
 * 100 ms ack stalls, on 2 cores).
 *
 * Tables:
 *   batches(id, tokens, received_ms)      a POST's validationTokens, once
 *   items(id, received_ms, len, batch_id, state, due_ms, attempts, note, done_ms, body)
 *       state 0 to route, 3 routing, 1 routed (units open), 2 done (done_ms
 *       NULL while it has dead letters)
 *   units(id, item_id, handler, event, state, attempts, due_ms, created_ms,
 *         finished_ms, last_error)
 *       state 0 pending, 1 running, 2 done, 3 dead
 *   Duplicate keys are kept in memory (dedupe.h), rebuilt from
 *   items.dedupe at start.
 *
 * Locking: `lock` guards the request queue, the counters and the cached
 * statistics; the main connection is used by the writer thread only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store/dedupe.h"
#include "log.h"
#include "metrics.h"
#include "store/store.h"
#include "util.h"

enum { ITEM_TO_ROUTE = 0, ITEM_ROUTED = 1, ITEM_DONE = 2, ITEM_ROUTING = 3 };
enum { UNIT_PENDING = 0, UNIT_RUNNING = 1, UNIT_DONE = 2, UNIT_DEAD = 3 };

#define MAINTENANCE_MS 1000 /* purge, recount, statistics, sweep */
#define PURGE_BATCH 500     /* rows per statement */
#define PURGE_BUDGET_MS 20  /* per maintenance; more due: maintenance comes back sooner */
#define ROUTE_CHAIN 32    /* items one take hands out for routing */
#define DELIVERY_CHAIN 32 /* deliveries one take hands out (one handler's) */
#define NOTE_DUPLICATE "duplicate" /* items.note of an item not delivered: seen before */

/* The layout below; kept in PRAGMA user_version. A file of another version
 * is refused, never reinterpreted. */
#define SCHEMA_VERSION 2
#define GR_STR_(x) #x
#define GR_STR(x) GR_STR_(x)

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS batches(id INTEGER PRIMARY KEY, tokens TEXT NOT NULL,"
    "  received_ms INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS batches_age ON batches(received_ms);"
    /* the body last: reading the other columns never reads its overflow pages */
    "CREATE TABLE IF NOT EXISTS items("
    "  id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL, len INTEGER NOT NULL,"
    "  batch_id INTEGER, state INTEGER NOT NULL, due_ms INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0, note TEXT, done_ms INTEGER, dedupe BLOB,"
    "  body TEXT NOT NULL);"
    /* Partial indexes, each holding only the rows its queries look for, so
     * that every query the writer runs is a lookup, never a scan of the
     * backlog or of the retained history (see the INDEXED BY clauses). */
    "CREATE INDEX IF NOT EXISTS items_open ON items(id) WHERE state IN (0, 3);"
    "CREATE INDEX IF NOT EXISTS items_done ON items(done_ms) WHERE state = 2;"
    "CREATE INDEX IF NOT EXISTS items_batch ON items(batch_id) WHERE batch_id IS NOT NULL;"
    "CREATE TABLE IF NOT EXISTS units("
    "  id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL, handler TEXT NOT NULL, event TEXT,"
    "  state INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, due_ms INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL, finished_ms INTEGER, last_error TEXT);"
    "CREATE INDEX IF NOT EXISTS units_ready ON units(handler, due_ms, id) WHERE state = 0;"
    "CREATE INDEX IF NOT EXISTS units_due ON units(due_ms) WHERE state = 0;"
    "CREATE INDEX IF NOT EXISTS units_item ON units(item_id, state);"
    "CREATE INDEX IF NOT EXISTS units_order ON units(handler, item_id, id) WHERE state IN (0, 1);"
    "PRAGMA user_version = " GR_STR(SCHEMA_VERSION) ";";

/* Routed items none of whose deliveries is pending or running are done (as
 * close_item_if_finished does for one), after work was swept or recovered. */
static const char close_finished_items[] =
    "UPDATE items SET state = 2, done_ms = CASE WHEN EXISTS (SELECT 1 FROM units WHERE "
    "item_id = items.id AND state = 3) THEN NULL ELSE strftime('%s') * 1000 END "
    "WHERE state = 1 AND NOT EXISTS (SELECT 1 FROM units WHERE item_id = items.id AND "
    "state IN (0, 1))";

/* REQ_SYNC: written at once, after what was queued before it, and waited
 * for (run_now): a stuck delivery's note, or nothing (a flush) */
enum req_kind { REQ_APPEND, REQ_TAKE, REQ_ROUTED, REQ_DELIVERED, REQ_SYNC };

struct req {
    enum req_kind kind;
    struct req *next;
    int64_t queued_ms;        /* monotonic: when it was queued */
    struct gr_append *append; /* REQ_APPEND */
    bool failed;              /* undone alone (its savepoint rolled back) */
    bool duplicate;           /* REQ_ROUTED: the item was a duplicate, not delivered */
    /* REQ_TAKE */
    struct gr_store_handler *handlers;
    size_t nh;
    bool prefer_delivery;
    struct gr_work *taken;
    int64_t next_due_ms;
    bool done;
    bool abandoned; /* REQ_SYNC: its caller stopped waiting; the writer frees it */
    int64_t unit;   /* REQ_SYNC */
    /* REQ_ROUTED, REQ_DELIVERED: the work and a copy of its outcome */
    struct gr_work *work;
    int result;
    char **targets;
    size_t ntargets;
    char *text; /* note or error */
    int64_t delay_ms;
    struct gr_emitted_event *events; /* strings owned */
    size_t nevents;
};

enum stmt_id {
    S_INS_BATCH, S_INS_ITEM, S_ROUTE_NEXT, S_ITEM_STATE,
    S_ITEM_WAIT, S_ITEM_DONE, S_INS_UNIT, S_UNIT_NEXT, S_UNIT_HEAD, S_FIRST_UNROUTED, S_UNIT_GET, S_UNIT_RUN,
    S_UNIT_NOTE, S_UNIT_FINISH, S_UNIT_RETRY, S_ITEM_CLOSE, S_NEXT_DUE_UNIT, S_NEXT_DUE_ITEM, S_USED_PAGES, S_OLDEST, S_DATA_VERSION,
    S_BEGIN, S_COMMIT, S_SAVEPOINT, S_RELEASE, S_ROLLBACK_TO, S_SYNC_FULL, S_SYNC_NORMAL, S_COUNT
};

static const char *const stmt_sql[S_COUNT] = {
    [S_INS_BATCH] = "INSERT INTO batches(tokens, received_ms) VALUES(?1, ?2)",
    [S_INS_ITEM] = "INSERT INTO items(received_ms, body, len, batch_id, state, due_ms, dedupe) "
                   "VALUES(?1, ?2, ?4, ?3, 0, ?1, ?5)",
    [S_ROUTE_NEXT] = "SELECT i.id, i.body, i.received_ms, i.attempts, b.tokens, i.batch_id, "
                     "i.dedupe "
                     "FROM items i "
                     "INDEXED BY items_open LEFT JOIN batches b ON b.id = i.batch_id "
                     "WHERE i.state IN (0, 3) AND i.state = 0 AND "
                     "i.due_ms <= ?1 ORDER BY i.id LIMIT ?2",
    [S_ITEM_STATE] = "UPDATE items SET state = ?2 WHERE id = ?1",
    [S_ITEM_WAIT] = "UPDATE items SET state = 0, due_ms = ?2, attempts = attempts + 1 "
                    "WHERE id = ?1",
    /* done_ms stays NULL while the item has dead letters: retention skips
     * it without looking (graphrouter dlq purge sets it) */
    [S_ITEM_DONE] = "UPDATE items SET state = 2, note = coalesce(?3, note), done_ms = CASE WHEN "
                    "EXISTS (SELECT 1 FROM units WHERE item_id = ?1 AND state = 3) THEN NULL "
                    "ELSE ?2 END WHERE id = ?1",
    [S_INS_UNIT] = "INSERT INTO units(item_id, handler, event, state, due_ms, created_ms, "
                   "finished_ms, last_error) VALUES(?1, ?2, ?3, ?5, ?4, ?4, ?6, ?7)",
    [S_UNIT_NEXT] = "SELECT id, attempts FROM units INDEXED BY units_ready WHERE handler = ?1 "
                    "AND state = 0 AND due_ms <= ?2 ORDER BY due_ms, id LIMIT ?3",
    [S_UNIT_HEAD] = "SELECT id, state, due_ms, item_id FROM units INDEXED BY units_order WHERE "
                    "handler = ?1 AND state IN (0, 1) ORDER BY item_id, id LIMIT 1",
    [S_FIRST_UNROUTED] = "SELECT 1 FROM items INDEXED BY items_open WHERE state IN (0, 3) AND "
                         "id < ?2 AND (state = 3 OR due_ms <= ?1) LIMIT 1",
    [S_UNIT_GET] = "SELECT u.item_id, u.event, u.attempts, i.body, i.received_ms FROM units u "
                   "JOIN items i ON i.id = u.item_id WHERE u.id = ?1",
    /* A running unit's last_error is this attempt's, if any (S_UNIT_NOTE) */
    [S_UNIT_RUN] = "UPDATE units SET state = 1, attempts = attempts + 1, last_error = NULL "
                   "WHERE id = ?1",
    [S_UNIT_NOTE] = "UPDATE units SET last_error = ?2 WHERE id = ?1 AND state = 1",
    [S_UNIT_FINISH] = "UPDATE units SET state = ?2, finished_ms = ?3, last_error = ?4 "
                      "WHERE id = ?1",
    [S_UNIT_RETRY] = "UPDATE units SET state = 0, due_ms = ?2, last_error = ?3 WHERE id = ?1",
    /* S_ITEM_DONE, only once none of the item's deliveries is pending or running */
    [S_ITEM_CLOSE] = "UPDATE items SET state = 2, done_ms = CASE WHEN EXISTS (SELECT 1 FROM "
                     "units WHERE item_id = ?1 AND state = 3) THEN NULL ELSE ?2 END WHERE id = ?1 "
                     "AND NOT EXISTS (SELECT 1 FROM units WHERE item_id = ?1 AND state IN (0, 1))",
    [S_NEXT_DUE_UNIT] = "SELECT min(due_ms) FROM units INDEXED BY units_due WHERE state = 0",
    [S_NEXT_DUE_ITEM] = "SELECT min(due_ms) FROM items INDEXED BY items_open WHERE state IN (0, 3) "
                        "AND state = 0",
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

struct sqlite_store {
    struct gr_store base;
    struct gr_store_config cfg;
    char *path;
    sqlite3 *db;
    sqlite3_stmt *stmt[S_COUNT];
    pthread_t writer;
    bool writer_started;

    pthread_mutex_t lock;
    pthread_cond_t wake;     /* the writer: requests queued */
    pthread_cond_t answered; /* takers: a take was answered */
    pthread_cond_t work;     /* idle takers: new work may exist */
    struct req *head, *tail;
    size_t queued, urgent; /* requests in the queue; appends and takes among them */
    bool stopping, taking_stopped;
    uint64_t work_seq;
    uint64_t items_pending, bytes_pending, items_to_route;
    struct gr_store_stats_handler *stats;
    size_t nstats;
    struct gr_store_handler *handlers; /* the current configuration's */
    size_t nhandlers;
    bool handlers_changed;
    unsigned rr; /* round-robin start among handlers */
    int64_t next_maintenance_ms;
    bool failing; /* the last transaction failed: log once */
    uint64_t page_size;
    sqlite3_int64 batch_id;             /* the writer's last token batch ... */
    struct gr_token_list *batch_tokens; /* ... parsed (see take_route) */
    bool recount_needed;   /* the counters may be off: rebuild them from the tables */
    int64_t data_version;  /* changes when another connection (graphrouter dlq) writes */
    struct gr_dedupe dedupe;
};

#define S(st, i) ((st)->stmt[i])

/* ---- small helpers ----------------------------------------------------- */

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : rc;
}

static char *column_text(sqlite3_stmt *st, int col, size_t *len)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    if (!t)
        return NULL;
    size_t n = (size_t)sqlite3_column_bytes(st, col);
    if (len)
        *len = n;
    return gr_xstrndup((const char *)t, n);
}

static int exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        gr_error("store: %s: %s", sql, msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    return rc;
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

static void free_req(struct req *r)
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
    free(r->handlers);
    gr_work_free(r->work); /* a completion's work, done with */
    free(r);
}

/* Completions nobody waits for are written lazily: with the next append or
 * take, or once the oldest has waited COMPLETION_DELAY_MS, or when
 * COMPLETIONS_MAX are queued. A commit costs its WAL frames (whole pages) and
 * a write to the log however little it holds; committing each completion as
 * it came was most of the writer's work while POSTs kept coming. */
#define COMPLETION_DELAY_MS 10
#define COMPLETIONS_MAX 256

static bool urgent(const struct req *r)
{
    return r->kind == REQ_APPEND || r->kind == REQ_TAKE || r->kind == REQ_SYNC;
}

/* When the queue should run (monotonic ms): INT64_MAX while empty (under lock). */
static int64_t queue_due(const struct sqlite_store *s)
{
    if (!s->head)
        return INT64_MAX;
    if (s->urgent || s->stopping || s->queued >= COMPLETIONS_MAX)
        return 0;
    return s->head->queued_ms + COMPLETION_DELAY_MS; /* only completions: the head is the oldest */
}

static void enqueue(struct sqlite_store *s, struct req *r)
{
    r->queued_ms = gr_mono_ms();
    pthread_mutex_lock(&s->lock);
    bool was_empty = !s->head;
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
    s->queued++;
    s->urgent += urgent(r);
    if (urgent(r) || was_empty || s->queued == COMPLETIONS_MAX)
        pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
}

/* The queue's counts, after it was cut or added to (under lock). */
static void count_queue(struct sqlite_store *s)
{
    s->queued = s->urgent = 0;
    s->tail = NULL;
    for (struct req *r = s->head; r; r = r->next) {
        s->queued++;
        s->urgent += urgent(r);
        s->tail = r;
    }
}

/* ---- per-handler counters ------------------------------------------------
 * Kept up to date by the writer as deliveries change state, so statistics
 * never scan the tables; rebuilt from the tables by recount() at open, after
 * a failed write, and when another connection changed the file. */

static struct gr_store_stats_handler *hstat(struct sqlite_store *s, const char *name)
{
    for (size_t i = 0; i < s->nstats; i++)
        if (strcmp(s->stats[i].name, name) == 0)
            return &s->stats[i];
    s->stats = gr_xrealloc(s->stats, (s->nstats + 1) * sizeof *s->stats);
    struct gr_store_stats_handler *h = &s->stats[s->nstats++];
    *h = (struct gr_store_stats_handler){0};
    snprintf(h->name, sizeof h->name, "%s", name);
    return h;
}

static void add_count(uint64_t *v, int d)
{
    *v = d < 0 && *v < (uint64_t)-d ? 0 : *v + (uint64_t)(int64_t)d;
}

static void bump(struct sqlite_store *s, const char *handler, int pending, int running, int dead)
{
    pthread_mutex_lock(&s->lock);
    struct gr_store_stats_handler *h = hstat(s, handler);
    add_count(&h->pending, pending);
    add_count(&h->running, running);
    add_count(&h->dead, dead);
    pthread_mutex_unlock(&s->lock);
}

/* ---- requests, run by the writer inside a transaction ------------------ */

#define APPEND_FULL (-1)

/* Returns 0, APPEND_FULL (over the limits, counting what this transaction
 * already added: nothing written), or an SQLite error. */
static int do_append(struct sqlite_store *s, struct gr_append *a, uint64_t batch_items,
                     uint64_t batch_bytes, uint64_t *bytes)
{
    *bytes = 0;
    for (size_t i = 0; i < a->n; i++)
        *bytes += a->items[i].len;
    pthread_mutex_lock(&s->lock);
    bool full = s->items_pending + batch_items + a->n > s->cfg.max_pending ||
                s->bytes_pending + batch_bytes + *bytes > s->cfg.max_pending_bytes;
    pthread_mutex_unlock(&s->lock);
    if (!full && s->cfg.max_db_bytes) {
        /* Appends stop at 90% of max_db_bytes: the rest is kept for routing
         * and completing what is already stored, so a full store drains. */
        sqlite3_stmt *st = S(s, S_USED_PAGES);
        uint64_t used = sqlite3_step(st) == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
        sqlite3_reset(st);
        full = used * s->page_size + 2 * *bytes > s->cfg.max_db_bytes / 10 * 9;
    }
    if (full)
        return APPEND_FULL;
    sqlite3_int64 batch = 0;
    if (a->tokens) {
        json_t *list = json_array();
        for (size_t i = 0; i < a->tokens->n; i++)
            json_array_append_new(list, json_stringn(a->tokens->v[i].token, a->tokens->v[i].len));
        char *text = json_dumps(list, JSON_COMPACT);
        json_decref(list);
        sqlite3_bind_text(S(s, S_INS_BATCH), 1, text, -1, free);
        sqlite3_bind_int64(S(s, S_INS_BATCH), 2, a->received_ms);
        int rc = step_done(S(s, S_INS_BATCH));
        sqlite3_clear_bindings(S(s, S_INS_BATCH));
        if (rc)
            return rc;
        batch = sqlite3_last_insert_rowid(s->db);
    }
    /* Duplicates are recognised when the item is routed (do_routed): the
     * duplicate keys are random, so writing them here would dirty a random
     * page per item in the very commit the POST waits for. */
    for (size_t i = 0; i < a->n; i++) {
        struct gr_store_item *it = &a->items[i];
        sqlite3_stmt *ins = S(s, S_INS_ITEM);
        sqlite3_bind_int64(ins, 1, a->received_ms);
        sqlite3_bind_text(ins, 2, it->body, (int)it->len, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 4, (sqlite3_int64)it->len);
        if (it->rich && batch)
            sqlite3_bind_int64(ins, 3, batch);
        else
            sqlite3_bind_null(ins, 3);
        if (it->has_dedupe)
            sqlite3_bind_blob(ins, 5, it->dedupe, sizeof it->dedupe, SQLITE_STATIC);
        else
            sqlite3_bind_null(ins, 5);
        int rc = step_done(ins);
        if (rc)
            return rc;
    }
    return 0;
}

/* Up to ROUTE_CHAIN items due for routing, marked as being routed. */
static struct gr_work *take_route(struct sqlite_store *s, int64_t now, int *rc)
{
    sqlite3_stmt *st = S(s, S_ROUTE_NEXT);
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_int(st, 2, ROUTE_CHAIN);
    struct gr_work *head = NULL, **tail = &head;
    /* A POST's tokens are parsed once and shared by its items, as at ingest:
     * the writer keeps the last batch's list across takes (a POST of 1,500
     * rich items spans many chains). */
    struct gr_token_list *tokens = s->batch_tokens;
    sqlite3_int64 batch = s->batch_id;
    while (sqlite3_step(st) == SQLITE_ROW) {
        struct gr_work *w = gr_xcalloc(1, sizeof *w);
        w->kind = GR_WORK_ROUTE;
        w->id = w->item_id = sqlite3_column_int64(st, 0);
        w->body = column_text(st, 1, &w->len);
        w->received_ms = sqlite3_column_int64(st, 2);
        w->attempts = (unsigned)sqlite3_column_int(st, 3);
        sqlite3_int64 b = sqlite3_column_int64(st, 5);
        if (b && b != batch && sqlite3_column_type(st, 4) != SQLITE_NULL) {
            json_t *list = json_loads((const char *)sqlite3_column_text(st, 4), 0, NULL);
            size_t skipped;
            const char *why;
            gr_token_list_unref(tokens);
            tokens = gr_token_list_new(list, &skipped, &why);
            batch = b;
            json_decref(list);
        }
        if (b && b == batch)
            w->tokens = gr_token_list_ref(tokens);
        if (sqlite3_column_bytes(st, 6) == (int)sizeof w->dedupe) {
            memcpy(w->dedupe, sqlite3_column_blob(st, 6), sizeof w->dedupe);
            w->has_dedupe = true;
        }
        *tail = w;
        tail = &w->next;
    }
    sqlite3_reset(st);
    s->batch_tokens = tokens;
    s->batch_id = batch;
    for (struct gr_work *w = head; w; w = w->next) {
        sqlite3_stmt *up = S(s, S_ITEM_STATE);
        sqlite3_bind_int64(up, 1, w->id);
        sqlite3_bind_int(up, 2, ITEM_ROUTING);
        if ((*rc = step_done(up)) != 0)
            break; /* the take is undone (see run_batch); the chain freed */
    }
    return head;
}

static void free_chain(struct gr_work *w)
{
    while (w) {
        struct gr_work *next = w->next;
        gr_work_free(w);
        w = next;
    }
}

/* The unit an in-order handler (concurrency 1) may run next, or 0: only its
 * oldest open unit, when due and idle, and only once every item accepted
 * before it is routed (an item waiting for signing keys does not hold it back). */
static sqlite3_int64 unit_for(struct sqlite_store *s, const struct gr_store_handler *h,
                              int64_t now)
{
    sqlite3_int64 id = 0, item = 0;
    sqlite3_stmt *st = S(s, S_UNIT_HEAD);
    sqlite3_bind_text(st, 1, h->name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 1) == UNIT_PENDING &&
        sqlite3_column_int64(st, 2) <= now) {
        id = sqlite3_column_int64(st, 0);
        item = sqlite3_column_int64(st, 3);
    }
    sqlite3_reset(st);
    if (id) {
        st = S(s, S_FIRST_UNROUTED);
        sqlite3_bind_int64(st, 1, now);
        sqlite3_bind_int64(st, 2, item);
        if (sqlite3_step(st) == SQLITE_ROW)
            id = 0;
        sqlite3_reset(st);
    }
    return id;
}

/* Running units per handler (the counters; the writer is their only writer). */
static unsigned running_of(struct sqlite_store *s, const char *handler)
{
    pthread_mutex_lock(&s->lock);
    uint64_t n = hstat(s, handler)->running;
    pthread_mutex_unlock(&s->lock);
    return (unsigned)n;
}

/* Mark unit id running (the attempt counts from now) and load it. */
static struct gr_work *take_unit(struct sqlite_store *s, const struct gr_store_handler *h,
                                 sqlite3_int64 id, int *rc)
{
    sqlite3_stmt *run = S(s, S_UNIT_RUN);
    sqlite3_bind_int64(run, 1, id);
    if ((*rc = step_done(run)) != 0)
        return NULL;
    bump(s, h->name, -1, 1, 0);
    sqlite3_stmt *st = S(s, S_UNIT_GET);
    sqlite3_bind_int64(st, 1, id);
    struct gr_work *w = NULL;
    if (sqlite3_step(st) == SQLITE_ROW) {
        w = gr_xcalloc(1, sizeof *w);
        w->kind = GR_WORK_DELIVER;
        w->id = id;
        w->item_id = sqlite3_column_int64(st, 0);
        w->event = column_text(st, 1, &w->event_len);
        w->attempts = (unsigned)sqlite3_column_int(st, 2);
        w->body = column_text(st, 3, &w->len);
        w->received_ms = sqlite3_column_int64(st, 4);
        w->handler = gr_xstrdup(h->name);
    }
    sqlite3_reset(st);
    if (!w)
        *rc = SQLITE_ERROR; /* undo the take: nobody would run it */
    return w;
}

/* The units a handler may run next (at most max, in order of due time), or
 * 0. A unit that was tried before (a retry, or running when graphrouter
 * died) comes alone: a crash charges an attempt to every unit a worker holds,
 * so a unit that crashes the process every time must end up alone and
 * exhaust its own attempts, not those of the units that came with it. */
static size_t units_for(struct sqlite_store *s, const struct gr_store_handler *h, int64_t now,
                        size_t max, sqlite3_int64 *ids)
{
    sqlite3_stmt *st = S(s, S_UNIT_NEXT);
    size_t n = 0;
    sqlite3_bind_text(st, 1, h->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)max);
    while (n < max && sqlite3_step(st) == SQLITE_ROW) {
        bool tried = sqlite3_column_int(st, 1) > 0;
        if (tried && n)
            break;
        ids[n++] = sqlite3_column_int64(st, 0);
        if (tried)
            break;
    }
    sqlite3_reset(st);
    return n;
}

/* A chain of deliveries for the first handler, in round-robin order, that
 * has due work and room under its concurrency. */
static struct gr_work *take_delivery(struct sqlite_store *s, const struct req *r, int64_t now,
                                     int *rc)
{
    for (size_t k = 0; k < r->nh; k++) {
        const struct gr_store_handler *h = &r->handlers[(s->rr + k) % r->nh];
        sqlite3_int64 ids[DELIVERY_CHAIN];
        size_t n = 0, room = DELIVERY_CHAIN;
        if (h->concurrency > 1) {
            unsigned running = running_of(s, h->name);
            if (running >= h->concurrency)
                continue;
            room = h->concurrency - running < room ? h->concurrency - running : room;
        }
        if (h->concurrency == 1) {
            ids[0] = unit_for(s, h, now);
            n = ids[0] != 0;
        } else {
            n = units_for(s, h, now, room, ids);
        }
        if (!n)
            continue;
        s->rr = (unsigned)((s->rr + k + 1) % r->nh);
        struct gr_work *head = NULL, **tail = &head;
        for (size_t i = 0; i < n; i++) {
            if (!(*tail = take_unit(s, h, ids[i], rc))) {
                free_chain(head); /* the take is undone (see run_batch) */
                return NULL;
            }
            tail = &(*tail)->next;
        }
        return head;
    }
    return NULL;
}

static int64_t next_due(struct sqlite_store *s)
{
    int64_t due = INT64_MAX;
    for (int q = S_NEXT_DUE_UNIT; q <= S_NEXT_DUE_ITEM; q++) {
        sqlite3_stmt *st = S(s, q);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL &&
            sqlite3_column_int64(st, 0) < due)
            due = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    return due;
}

static int do_take(struct sqlite_store *s, struct req *r, int64_t now)
{
    int rc = 0;
    r->taken = NULL;
    if (s->taking_stopped)
        return 0;
    if (r->prefer_delivery)
        r->taken = take_delivery(s, r, now, &rc);
    if (!r->taken && !rc)
        r->taken = take_route(s, now, &rc);
    if (!r->taken && !rc && !r->prefer_delivery)
        r->taken = take_delivery(s, r, now, &rc);
    if (!r->taken && !rc)
        r->next_due_ms = next_due(s);
    return rc;
}

/* An item whose units are all finished is done. Returns 1 if it became so. */
static int close_item_if_finished(struct sqlite_store *s, int64_t item, int64_t now)
{
    sqlite3_stmt *up = S(s, S_ITEM_CLOSE);
    sqlite3_bind_int64(up, 1, item);
    sqlite3_bind_int64(up, 2, now);
    if (step_done(up))
        return -1;
    return sqlite3_changes(s->db) > 0;
}

static bool handler_configured(struct sqlite_store *s, const char *name)
{
    bool found = false;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->nhandlers && !found; i++)
        found = strcmp(s->handlers[i].name, name) == 0;
    pthread_mutex_unlock(&s->lock);
    return found;
}

/* A new delivery, pending; or a dead letter at once when its handler is no
 * longer configured (a worker on an older generation routed or emitted to
 * it after a reload removed it): nothing waits for a handler that never comes. */
static int insert_unit(struct sqlite_store *s, int64_t item, const char *handler,
                       const char *event, size_t len, int64_t now, bool *any_dead)
{
    bool dead = !handler_configured(s, handler);
    *any_dead |= dead;
    sqlite3_stmt *st = S(s, S_INS_UNIT);
    sqlite3_bind_int64(st, 1, item);
    sqlite3_bind_text(st, 2, handler, -1, SQLITE_STATIC);
    if (event)
        sqlite3_bind_text(st, 3, event, (int)len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_int64(st, 4, now);
    sqlite3_bind_int(st, 5, dead ? UNIT_DEAD : UNIT_PENDING);
    if (dead) {
        sqlite3_bind_int64(st, 6, now);
        sqlite3_bind_text(st, 7, "the handler is no longer configured", -1, SQLITE_STATIC);
    }
    int rc = step_done(st);
    sqlite3_clear_bindings(st);
    if (rc)
        return rc;
    if (dead)
        gr_warn("store: delivery %lld to handler \"%s\" is a dead letter: the handler is no "
                "longer configured (graphrouter dlq replay brings it back)",
                (long long)sqlite3_last_insert_rowid(s->db), handler);
    bump(s, handler, dead ? 0 : 1, 0, dead ? 1 : 0);
    return 0;
}

/* Returns 0, or an SQLite error; *finished_bytes counts items now done. */
/* Finish an item that has no delivery to wait for, saying why. */
static int finish_item(struct sqlite_store *s, const struct gr_work *w, int64_t now,
                       const char *note, uint64_t *done_items, uint64_t *done_bytes)
{
    sqlite3_stmt *st = S(s, S_ITEM_DONE);
    sqlite3_bind_int64(st, 1, w->id);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_text(st, 3, note, -1, SQLITE_STATIC);
    int rc = step_done(st);
    if (!rc) {
        (*done_items)++;
        *done_bytes += w->len;
    }
    return rc;
}

/* The same change accepted within the window already (not delivered)? */
static bool is_duplicate(struct sqlite_store *s, const struct gr_work *w)
{
    return gr_dedupe_check(&s->dedupe, w->dedupe, w->id, w->received_ms, gr_wall_ms(),
                           s->cfg.dedupe_window_ms);
}

static int do_routed(struct sqlite_store *s, struct req *r, int64_t now, uint64_t *done_items,
                     uint64_t *done_bytes, uint64_t *routed, bool *new_work)
{
    struct gr_work *w = r->work;
    if (r->result == GR_ROUTE_WAIT) {
        sqlite3_stmt *st = S(s, S_ITEM_WAIT);
        sqlite3_bind_int64(st, 1, w->id);
        sqlite3_bind_int64(st, 2, now + r->delay_ms);
        return step_done(st);
    }
    (*routed)++;
    if (r->result != GR_ROUTED || !r->ntargets) /* dropped, or nothing routes it */
        return finish_item(s, w, now, r->text ? r->text : "unrouted", done_items, done_bytes);
    if (w->has_dedupe) {
        if (is_duplicate(s, w)) {
            r->duplicate = true;
            return finish_item(s, w, now, NOTE_DUPLICATE, done_items, done_bytes);
        }
    }
    bool any_dead = false;
    for (size_t i = 0; i < r->ntargets; i++) {
        int rc = insert_unit(s, w->id, r->targets[i], NULL, 0, now, &any_dead);
        if (rc)
            return rc;
    }
    sqlite3_stmt *st = S(s, S_ITEM_STATE);
    sqlite3_bind_int64(st, 1, w->id);
    sqlite3_bind_int(st, 2, ITEM_ROUTED);
    *new_work = true;
    int rc = step_done(st);
    if (rc || !any_dead)
        return rc;
    int closed = close_item_if_finished(s, w->id, now); /* every target was a dead letter? */
    if (closed < 0)
        return SQLITE_ERROR;
    if (closed) {
        (*done_items)++;
        *done_bytes += w->len;
    }
    return 0;
}

static int do_delivered(struct sqlite_store *s, struct req *r, int64_t now, uint64_t *done_items,
                        uint64_t *done_bytes, bool *new_work)
{
    struct gr_work *w = r->work;
    if (r->result == GR_DELIVERY_RETRY) {
        sqlite3_stmt *st = S(s, S_UNIT_RETRY);
        sqlite3_bind_int64(st, 1, w->id);
        sqlite3_bind_int64(st, 2, now + r->delay_ms);
        sqlite3_bind_text(st, 3, r->text, -1, SQLITE_STATIC);
        int rc = step_done(st);
        if (!rc)
            bump(s, w->handler, 1, -1, 0);
        return rc;
    }
    for (size_t i = 0; i < r->nevents; i++) {
        bool dead_event = false; /* the parent's completion closes the item if need be */
        int rc = insert_unit(s, w->item_id, r->events[i].handler, r->events[i].json,
                             r->events[i].len, now, &dead_event);
        if (rc)
            return rc;
        *new_work = true;
    }
    sqlite3_stmt *st = S(s, S_UNIT_FINISH);
    sqlite3_bind_int64(st, 1, w->id);
    sqlite3_bind_int(st, 2, r->result == GR_DELIVERED ? UNIT_DONE : UNIT_DEAD);
    sqlite3_bind_int64(st, 3, now);
    if (r->text)
        sqlite3_bind_text(st, 4, r->text, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 4);
    int rc = step_done(st);
    sqlite3_clear_bindings(st);
    if (rc)
        return rc;
    bump(s, w->handler, 0, -1, r->result == GR_DELIVERED ? 0 : 1);
    int closed = close_item_if_finished(s, w->item_id, now);
    if (closed < 0)
        return SQLITE_ERROR;
    if (closed) {
        (*done_items)++;
        *done_bytes += w->len;
    }
    return 0;
}

/* ---- the writer -------------------------------------------------------- */

static void finish_requests(struct sqlite_store *s, struct req *batch, int rc)
{
    for (struct req *r = batch, *next; r; r = next) {
        next = r->next;
        if (r->kind == REQ_APPEND) {
            struct gr_append *a = r->append;
            enum gr_append_result res = rc || r->failed ? GR_APPEND_ERROR
                                        : r->result     ? GR_APPEND_FULL
                                                        : GR_APPEND_OK;
            a->done(a->ctx, res);
            free_req(r);
        } else if (r->kind == REQ_SYNC) {
            pthread_mutex_lock(&s->lock);
            bool abandoned = r->abandoned;
            r->failed |= rc != 0;
            r->done = true;
            pthread_cond_broadcast(&s->answered);
            pthread_mutex_unlock(&s->lock);
            if (abandoned)
                free_req(r);
        } else if (r->kind == REQ_TAKE) {
            pthread_mutex_lock(&s->lock);
            if ((rc || r->failed) && r->taken) { /* the take did not commit: give nothing out */
                free_chain(r->taken);
                r->taken = NULL;
                r->next_due_ms = 0;
            }
            r->done = true;
            pthread_cond_broadcast(&s->answered);
            pthread_mutex_unlock(&s->lock);
        } else {
            free_req(r);
        }
    }
}

/* What one request changed, applied to the counters once it is kept. */
struct delta {
    uint64_t added_items, added_bytes, done_items, done_bytes, routed, duplicates;
    bool new_work;
};

static int run_request(struct sqlite_store *s, struct req *r, int64_t now,
                       const struct delta *so_far, struct delta *d)
{
    switch (r->kind) {
    case REQ_APPEND: {
        uint64_t bytes;
        int rc = do_append(s, r->append, so_far->added_items, so_far->added_bytes,
                           &bytes);
        r->result = rc == APPEND_FULL; /* this request only: the others go on */
        if (rc == APPEND_FULL)
            return 0;
        if (!rc) {
            d->added_items = r->append->n;
            d->added_bytes = bytes;
            d->new_work = r->append->n > 0;
        }
        return rc;
    }
    case REQ_TAKE: return do_take(s, r, now);
    case REQ_ROUTED: {
        int rc = do_routed(s, r, now, &d->done_items, &d->done_bytes, &d->routed, &d->new_work);
        d->duplicates = r->duplicate;
        return rc;
    }
    case REQ_DELIVERED:
        return do_delivered(s, r, now, &d->done_items, &d->done_bytes, &d->new_work);
    case REQ_SYNC: {
        if (!r->text) /* a flush: only what was queued before it */
            return 0;
        sqlite3_stmt *st = S(s, S_UNIT_NOTE);
        sqlite3_bind_int64(st, 1, r->unit);
        sqlite3_bind_text(st, 2, r->text, -1, SQLITE_STATIC);
        int rc = step_done(st);
        sqlite3_clear_bindings(st);
        return rc;
    }
    }
    return 0;
}

/* Run a batch of requests in one transaction. Each write runs inside its own
 * savepoint: one that fails (the database is full, say) is undone alone;
 * its append is answered 503, its completion is tried again later, and the
 * rest of the batch commits. */
static void run_batch(struct sqlite_store *s, struct req *batch)
{
    int64_t t0 = gr_mono_ns(), now = gr_wall_ms();
    size_t nreq = 0, nappend = 0;
    for (struct req *r = batch; r; r = r->next) {
        nreq++;
        nappend += r->kind == REQ_APPEND;
    }
    step_done(S(s, nappend && s->cfg.synchronous_full ? S_SYNC_FULL : S_SYNC_NORMAL));
    int rc = step_done(S(s, S_BEGIN));
    struct delta total = {0};
    int request_error = 0; /* the first error of a request that was undone alone */
    for (struct req *r = batch; r && !rc; r = r->next) {
        if ((rc = step_done(S(s, S_SAVEPOINT))) != SQLITE_OK)
            break;
        struct delta d = {0};
        int rrc = run_request(s, r, now, &total, &d);
        if (rrc && !sqlite3_get_autocommit(s->db) &&
            step_done(S(s, S_ROLLBACK_TO)) == SQLITE_OK && step_done(S(s, S_RELEASE)) == SQLITE_OK) {
            r->failed = true;
            request_error = request_error ? request_error : rrc;
            continue;
        }
        if (rrc) { /* the transaction itself is gone */
            rc = rrc;
            break;
        }
        if ((rc = step_done(S(s, S_RELEASE))) != SQLITE_OK)
            break;
        total.added_items += d.added_items;
        total.added_bytes += d.added_bytes;
        total.done_items += d.done_items;
        total.done_bytes += d.done_bytes;
        total.routed += d.routed;
        total.duplicates += d.duplicates;
        total.new_work |= d.new_work;
    }
    if (!rc)
        rc = step_done(S(s, S_COMMIT));
    if (rc && !sqlite3_get_autocommit(s->db))
        exec(s->db, "ROLLBACK");
    int error = rc ? rc : request_error;
    if (error)
        s->recount_needed = true; /* counters moved for what was undone */
    if (error) {
        if (!s->failing)
            gr_error("store: writing %s failed (%s); POSTs get 503 until it works again",
                     s->path, sqlite3_errstr(error));
        s->failing = true;
        gr_metrics_store_failure();
    } else if (s->failing) {
        gr_info("store: writing %s works again", s->path);
        s->failing = false;
    }
    if (!rc) {
        pthread_mutex_lock(&s->lock);
        s->items_pending += total.added_items;
        s->bytes_pending += total.added_bytes;
        s->items_pending -= total.done_items < s->items_pending ? total.done_items
                                                                : s->items_pending;
        s->bytes_pending -= total.done_bytes < s->bytes_pending ? total.done_bytes
                                                                : s->bytes_pending;
        s->items_to_route += total.added_items;
        s->items_to_route -= total.routed < s->items_to_route ? total.routed : s->items_to_route;
        if (total.new_work)
            s->work_seq++;
        pthread_cond_broadcast(&s->work);
        pthread_mutex_unlock(&s->lock);
        gr_metrics_store_commit(gr_mono_ns() - t0, nreq);
        gr_metrics_duplicates(total.duplicates);
    }
    /* Completions must not be lost: those not kept are tried again. */
    struct req *retry_head = NULL, **retry_tail = &retry_head;
    for (struct req **p = &batch; *p;) {
        struct req *r = *p;
        if ((r->kind == REQ_ROUTED || r->kind == REQ_DELIVERED) && (rc || r->failed)) {
            *p = r->next;
            r->next = NULL;
            r->failed = false;
            *retry_tail = r;
            retry_tail = &r->next;
        } else {
            p = &r->next;
        }
    }
    finish_requests(s, batch, rc);
    pthread_mutex_lock(&s->lock);
    bool stopping = s->stopping;
    pthread_mutex_unlock(&s->lock);
    if (retry_head && stopping) {
        size_t n = 0;
        for (struct req *r = retry_head, *next; r; r = next, n++) {
            next = r->next;
            free_req(r);
        }
        gr_warn("store: %zu completions could not be written before the exit; that work runs "
                "again at the next start",
                n);
        retry_head = NULL;
    }
    if (retry_head) {
        struct timespec pause = {0, 100 * 1000000};
        nanosleep(&pause, NULL); /* a failing disk is not hammered */
        pthread_mutex_lock(&s->lock);
        *retry_tail = s->head;
        s->head = retry_head;
        count_queue(s);
        pthread_mutex_unlock(&s->lock);
    }
}

/* Pending units of handlers no longer configured become dead letters. */
static void sweep_removed_handlers(struct sqlite_store *s, int64_t now)
{
    pthread_mutex_lock(&s->lock);
    bool changed = s->handlers_changed;
    s->handlers_changed = false;
    struct gr_buf sql = {0};
    if (changed && s->nhandlers) {
        gr_buf_puts(&sql, "UPDATE units SET state = 3, finished_ms = ?1, last_error = "
                          "'the handler is no longer configured' WHERE state = 0 AND handler "
                          "NOT IN (");
        for (size_t i = 0; i < s->nhandlers; i++)
            gr_buf_printf(&sql, "%s?%zu", i ? ", " : "", i + 2);
        gr_buf_puts(&sql, ")");
    }
    pthread_mutex_unlock(&s->lock);
    if (!sql.data)
        return;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, sql.data, -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, now);
        pthread_mutex_lock(&s->lock);
        for (size_t i = 0; i < s->nhandlers; i++)
            sqlite3_bind_text(st, (int)i + 2, s->handlers[i].name, -1, SQLITE_TRANSIENT);
        pthread_mutex_unlock(&s->lock);
        if (sqlite3_step(st) == SQLITE_DONE && sqlite3_changes(s->db) > 0) {
            gr_warn("store: %d pending deliveries are dead letters: their handler is no longer "
                    "configured (graphrouter dlq replay brings them back)",
                    sqlite3_changes(s->db));
            s->recount_needed = true;
            exec(s->db, close_finished_items);
        }
        sqlite3_finalize(st);
    }
    gr_buf_free(&sql);
}

/* Delete what retention no longer keeps, PURGE_BATCH rows per statement,
 * for at most PURGE_BUDGET_MS (the writer commits nothing meanwhile).
 * Returns true if more is due. Items with dead letters have no done_ms and
 * are not looked at. */
static bool purge(struct sqlite_store *s, int64_t now)
{
    static const char *const sql[] = {
        /* finished items past retention: their deliveries, then themselves */
        "DELETE FROM units WHERE item_id IN (SELECT id FROM items INDEXED BY items_done WHERE "
        "state = 2 AND done_ms < ?1 ORDER BY done_ms LIMIT ?3)",
        "DELETE FROM items WHERE id IN (SELECT id FROM items INDEXED BY items_done WHERE "
        "state = 2 AND done_ms < ?1 ORDER BY done_ms LIMIT ?3)",
        "DELETE FROM batches WHERE id IN (SELECT id FROM batches b WHERE received_ms < ?1 AND "
        "NOT EXISTS (SELECT 1 FROM items WHERE batch_id = b.id) ORDER BY received_ms LIMIT ?3)",
    };
    /* Items are kept for the duplicate window at least: their keys are how a
     * restart remembers what was seen (dedupe_load). */
    int64_t keep_ms = s->cfg.retention_ms > s->cfg.dedupe_window_ms ? s->cfg.retention_ms
                                                                     : s->cfg.dedupe_window_ms;
    int64_t t0 = gr_mono_ms();
    bool more = true;
    while (more && gr_mono_ms() - t0 < PURGE_BUDGET_MS) {
        more = false;
        exec(s->db, "BEGIN IMMEDIATE");
        for (size_t i = 0; i < GR_ARRAY_LEN(sql); i++) {
            sqlite3_stmt *st;
            if (sqlite3_prepare_v2(s->db, sql[i], -1, &st, NULL) != SQLITE_OK) {
                gr_error("store: purging finished work: %s", sqlite3_errmsg(s->db));
                continue;
            }
            sqlite3_bind_int64(st, 1, now - keep_ms);
            sqlite3_bind_int(st, 3, PURGE_BATCH);
            if (sqlite3_step(st) == SQLITE_DONE && sqlite3_changes(s->db) >= PURGE_BATCH)
                more = true;
            sqlite3_finalize(st);
        }
        exec(s->db, "COMMIT");
    }
    return more;
}

/* Counters and per-handler statistics, from the tables (also catches what
 * `graphrouter dlq replay` changed from outside). */
static void recount(struct sqlite_store *s)
{
    sqlite3_stmt *st;
    uint64_t items = 0, bytes = 0, to_route = 0;
    s->recount_needed = false;
    if (sqlite3_prepare_v2(s->db, "SELECT count(*), coalesce(sum(len), 0), "
                                  "coalesce(sum(state IN (0, 3)), 0) FROM items "
                                  "WHERE state IN (0, 1, 3)",
                           -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) {
            items = (uint64_t)sqlite3_column_int64(st, 0);
            bytes = (uint64_t)sqlite3_column_int64(st, 1);
            to_route = (uint64_t)sqlite3_column_int64(st, 2);
        }
        sqlite3_finalize(st);
    }
    struct gr_store_stats_handler *stats = NULL;
    size_t n = 0;
    if (sqlite3_prepare_v2(s->db, "SELECT handler, state, count(*) FROM units "
                                  "WHERE state IN (0, 1, 3) GROUP BY handler, state",
                           -1, &st, NULL) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *name = (const char *)sqlite3_column_text(st, 0);
            size_t i = 0;
            while (i < n && strcmp(stats[i].name, name) != 0)
                i++;
            if (i == n) {
                stats = gr_xrealloc(stats, (n + 1) * sizeof *stats);
                stats[n] = (struct gr_store_stats_handler){0};
                snprintf(stats[n].name, sizeof stats[n].name, "%s", name);
                n++;
            }
            uint64_t count = (uint64_t)sqlite3_column_int64(st, 2);
            switch (sqlite3_column_int(st, 1)) {
            case UNIT_PENDING: stats[i].pending = count; break;
            case UNIT_RUNNING: stats[i].running = count; break;
            default: stats[i].dead = count;
            }
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_lock(&s->lock);
    bool more = s->items_pending != items || s->items_to_route != to_route;
    s->items_pending = items;
    s->bytes_pending = bytes;
    s->items_to_route = to_route;
    free(s->stats);
    s->stats = stats;
    s->nstats = n;
    if (more) /* something changed outside, e.g. a replay */
        s->work_seq++;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->lock);
}

/* Each handler's oldest pending delivery (by id: cheap, from the index). */
static void refresh_oldest(struct sqlite_store *s)
{
    pthread_mutex_lock(&s->lock);
    size_t n = s->nstats;
    char (*names)[65] = gr_xcalloc(n ? n : 1, sizeof *names);
    for (size_t i = 0; i < n; i++)
        memcpy(names[i], s->stats[i].name, sizeof names[i]);
    pthread_mutex_unlock(&s->lock);
    for (size_t i = 0; i < n; i++) {
        sqlite3_stmt *st = S(s, S_OLDEST);
        sqlite3_bind_text(st, 1, names[i], -1, SQLITE_STATIC);
        int64_t oldest = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
        sqlite3_reset(st);
        pthread_mutex_lock(&s->lock);
        hstat(s, names[i])->oldest_pending_ms = oldest;
        pthread_mutex_unlock(&s->lock);
    }
    free(names);
}

/* Returns true if purging is behind (maintenance should come back soon). */
static bool maintenance(struct sqlite_store *s)
{
    int64_t now = gr_wall_ms();
    sweep_removed_handlers(s, now);
    bool behind = purge(s, now);
    sqlite3_stmt *st = S(s, S_DATA_VERSION);
    int64_t version = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    if (version != s->data_version) { /* graphrouter dlq replay or purge */
        s->data_version = version;
        s->recount_needed = true;
    }
    if (s->recount_needed)
        recount(s);
    refresh_oldest(s);
    return behind;
}

/* The requests the next transaction runs (under lock). While appends wait,
 * a batch takes all of them but at most WORK_PER_BATCH worker requests
 * (takes, completions), in order; the rest waits for the next batch. A
 * backlog being worked off then never stretches the commit that POSTs wait
 * for: acknowledging fast is what Graph times, stored work can wait. */
#define WORK_PER_BATCH 64

static struct req *next_batch(struct sqlite_store *s)
{
    struct req *r = s->head;
    while (r && r->kind != REQ_APPEND)
        r = r->next;
    struct req *batch = s->head;
    s->head = NULL;
    if (r) { /* appends wait: all of them, and the first WORK_PER_BATCH others */
        struct req *all = batch, **bt = &batch, **rt = &s->head;
        size_t others = 0;
        batch = NULL;
        for (struct req *next; all; all = next) {
            next = all->next;
            all->next = NULL;
            if (all->kind == REQ_APPEND || others++ < WORK_PER_BATCH) {
                *bt = all;
                bt = &all->next;
            } else {
                *rt = all;
                rt = &all->next;
            }
        }
    }
    count_queue(s);
    return batch;
}

static void *writer_main(void *arg)
{
    struct sqlite_store *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        int64_t now = gr_mono_ms(), due;
        while ((due = queue_due(s)) > now && !(s->stopping && !s->head) &&
               now < s->next_maintenance_ms) {
            int64_t until = due < s->next_maintenance_ms ? due : s->next_maintenance_ms;
            struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (until % 1000) * 1000000};
            pthread_cond_timedwait(&s->wake, &s->lock, &ts);
            now = gr_mono_ms();
        }
        struct req *batch = due <= now ? next_batch(s) : NULL;
        bool stop = s->stopping && !batch;
        pthread_mutex_unlock(&s->lock);
        if (stop)
            break;
        if (batch)
            run_batch(s, batch);
        if (gr_mono_ms() >= s->next_maintenance_ms) {
            bool behind = maintenance(s);
            s->next_maintenance_ms = gr_mono_ms() + (behind ? MAINTENANCE_MS / 10 : MAINTENANCE_MS);
        }
    }
    return NULL;
}

/* ---- the interface ------------------------------------------------------ */

static void sq_append(struct gr_store *base, struct gr_append *a)
{
    struct req *r = gr_xcalloc(1, sizeof *r);
    r->kind = REQ_APPEND;
    r->append = a;
    enqueue((struct sqlite_store *)base, r);
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
    enqueue(s, r);
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
    free_req(r); /* frees the copy of the handler list (the names are the caller's) */
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
    enqueue((struct sqlite_store *)base, r);
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
    if (o->result == GR_DELIVERED && o->nevents) {
        r->events = gr_xcalloc(o->nevents, sizeof *r->events);
        for (size_t i = 0; i < o->nevents; i++)
            r->events[i] = (struct gr_emitted_event){gr_xstrdup(o->events[i].handler),
                                                     gr_xstrndup(o->events[i].json, o->events[i].len),
                                                     o->events[i].len};
        r->nevents = o->nevents;
    }
    enqueue((struct sqlite_store *)base, r);
}

/* Queue `r` as urgent and wait (up to 5 s) until the writer ran it, with
 * everything queued before it. False if it was not written. */
static bool run_now(struct sqlite_store *s, struct req *r)
{
    enqueue(s, r);
    int64_t until = gr_mono_ms() + 5000;
    struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (until % 1000) * 1000000};
    pthread_mutex_lock(&s->lock);
    while (!r->done && pthread_cond_timedwait(&s->answered, &s->lock, &ts) != ETIMEDOUT) {
    }
    bool done = r->done, written = done && !r->failed;
    r->abandoned = !done; /* then the writer frees it */
    pthread_mutex_unlock(&s->lock);
    if (done)
        free_req(r);
    return written;
}

static void sq_note_running(struct gr_store *base, int64_t unit, const char *note)
{
    struct req *r = gr_xcalloc(1, sizeof *r);
    r->kind = REQ_SYNC;
    r->unit = unit;
    r->text = gr_xstrdup(note);
    if (!run_now((struct sqlite_store *)base, r))
        gr_warn("store: why delivery %lld is stuck could not be written; after the restart it "
                "reads as a crash",
                (long long)unit);
}

static void sq_flush(struct gr_store *base)
{
    struct req *r = gr_xcalloc(1, sizeof *r);
    r->kind = REQ_SYNC; /* with no note */
    if (!run_now((struct sqlite_store *)base, r))
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
    out->nhandlers = s->nstats;
    out->handlers = gr_xcalloc(s->nstats ? s->nstats : 1, sizeof *out->handlers);
    if (s->nstats)
        memcpy(out->handlers, s->stats, s->nstats * sizeof *s->stats);
    pthread_mutex_unlock(&s->lock);
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
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(s->stmt[i]);
    exec(s->db, "PRAGMA wal_checkpoint(TRUNCATE)");
    sqlite3_close(s->db);
    free_handlers(s->handlers, s->nhandlers);
    free(s->stats);
    gr_dedupe_free(&s->dedupe);
    pthread_cond_destroy(&s->wake);
    pthread_cond_destroy(&s->answered);
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->lock);
    free(s->path);
    free(s);
}

static const struct gr_store_ops sqlite_ops = {
    .append = sq_append,
    .take = sq_take,
    .routed = sq_routed,
    .delivered = sq_delivered,
    .set_handlers = sq_set_handlers,
    .note_running = sq_note_running,
    .flush = sq_flush,
    .stats = sq_stats,
    .stop_taking = sq_stop_taking,
    .close = sq_close,
};

/* Create missing parent directories and the file itself, private. */
static int prepare_path(const char *path, char **err)
{
    char *dir = gr_xstrdup(path);
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
            *err = gr_xprintf("store: cannot create %s: %s", dir, strerror(errno));
            free(dir);
            return -1;
        }
        *p = '/';
    }
    free(dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        *err = gr_xprintf("store: cannot open %s: %s", path, strerror(errno));
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
static int64_t recovery_wait_ms(unsigned attempts)
{
    return attempts >= 7 ? 60000 : INT64_C(1000) << (attempts ? attempts - 1 : 0);
}

static int recover(struct sqlite_store *s, const struct gr_store_handler *h, size_t nh)
{
    int rc = exec(s->db, "UPDATE items SET state = 0 WHERE state = 3");
    sqlite3_stmt *st, *up;
    if (rc)
        return rc;
    if (sqlite3_prepare_v2(s->db, "SELECT id, handler, attempts FROM units WHERE state = 1", -1,
                           &st, NULL) != SQLITE_OK)
        return sqlite3_errcode(s->db);
    if (sqlite3_prepare_v2(s->db, "UPDATE units SET state = ?2, due_ms = ?3, finished_ms = CASE "
                                  "WHEN ?2 = 3 THEN ?3 END, last_error = coalesce(last_error, "
                                  "'graphrouter stopped while the handler ran (a crash?)') "
                                  "WHERE id = ?1",
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
                    (long long)id, name, attempts, (long long)(recovery_wait_ms(attempts) / 1000));
        int64_t wait = recovery_wait_ms(attempts);
        sqlite3_bind_int64(up, 1, id);
        sqlite3_bind_int(up, 2, dead ? UNIT_DEAD : UNIT_PENDING);
        sqlite3_bind_int64(up, 3, dead ? now : now + wait);
        rc = step_done(up);
    }
    sqlite3_finalize(st);
    sqlite3_finalize(up);
    if (!rc)
        rc = exec(s->db, close_finished_items);
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
    int rc = sqlite3_prepare_v2(s->db, "SELECT id, received_ms, dedupe, state IN (1, 2) AND "
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

struct gr_store *gr_store_sqlite_open(const struct gr_store_config *c,
                                      const struct gr_store_handler *h, size_t nh, char **err)
{
    if (prepare_path(c->path, err) < 0)
        return NULL;
    struct sqlite_store *s = gr_xcalloc(1, sizeof *s);
    s->base.ops = &sqlite_ops;
    s->cfg = *c;
    s->path = gr_xstrdup(c->path);
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
        rc = exec(s->db, pragmas);
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
        if (version == 1) { /* duplicate keys moved to memory (dedupe.h) */
            rc = exec(s->db, "BEGIN IMMEDIATE; DROP TABLE IF EXISTS dedupe; PRAGMA user_version = "
                             GR_STR(SCHEMA_VERSION) "; COMMIT");
            if (rc == SQLITE_OK)
                gr_info("store: %s converted from layout 1 to layout %d", c->path, SCHEMA_VERSION);
            else if (!sqlite3_get_autocommit(s->db))
                exec(s->db, "ROLLBACK");
            version = SCHEMA_VERSION;
        }
        if (rc == SQLITE_OK && version != SCHEMA_VERSION) {
            why = gr_xprintf("store: %s holds store layout %d; this graphrouter reads layout %d "
                             "(move the file away, or let the graphrouter that wrote it finish "
                             "its work first)",
                             c->path, version, SCHEMA_VERSION);
            rc = SQLITE_CANTOPEN;
        }
    }
    if (rc == SQLITE_OK)
        rc = exec(s->db, schema);
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
    if (rc == SQLITE_OK && c->max_db_bytes) { /* the file's own page size */
        char *cap = gr_xprintf("PRAGMA max_page_count = %llu",
                               (unsigned long long)(c->max_db_bytes / s->page_size));
        rc = exec(s->db, cap);
        free(cap);
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
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
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
    maintenance(s);
    s->next_maintenance_ms = gr_mono_ms() + MAINTENANCE_MS;
    s->writer_started = pthread_create(&s->writer, NULL, writer_main, s) == 0;
    if (!s->writer_started) {
        *err = gr_xstrdup("store: cannot start its writer thread");
        sq_close(&s->base);
        return NULL;
    }
    return &s->base;
}
