/*
 * The SQLite store's requests (see sqlite.h), run by the writer thread inside
 * its transaction: appends, takes of work for the workers, and the outcomes
 * of routing and delivery, with the per-handler counters they move.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/outcome_log.h"
#include "store/sqlite.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

/* ---- per-handler counters ------------------------------------------------
 * Kept up to date by the writer as deliveries change state, so statistics
 * never scan the tables; rebuilt from the tables by recount() at open, after
 * a failed write, and when another connection changed the file. */

struct gr_store_stats_handler *sq_hstat(struct sqlite_store *s, const char *name)
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
    struct gr_store_stats_handler *h = sq_hstat(s, handler);
    add_count(&h->pending, pending);
    add_count(&h->running, running);
    add_count(&h->dead, dead);
    pthread_mutex_unlock(&s->lock);
}


/* ---- requests, run by the writer inside a transaction ------------------ */

/* Returns 0, APPEND_FULL (over the limits, counting what this transaction
 * already added: nothing written), APPEND_LATER (nothing written: the next
 * transaction runs it), or an SQLite error. */
int sq_do_append(struct sqlite_store *s, struct gr_append *a, uint64_t batch_items,
                 uint64_t batch_bytes, uint64_t rewritten, uint64_t *bytes)
{
    *bytes = 0;
    for (size_t i = 0; i < a->n; i++)
        *bytes += a->items[i].len;
    pthread_mutex_lock(&s->lock);
    bool full = s->items_pending + batch_items + a->n > s->cfg.max_pending ||
                s->bytes_pending + batch_bytes + *bytes > s->cfg.max_pending_bytes;
    pthread_mutex_unlock(&s->lock);
    if (!full && s->limits.cap) {
        /* max_db_bytes counts the database, its WAL and the -shm file
         * (limits.h): appends stop at 90% of the database's share, the rest
         * being kept for routing and completing what is already stored (so
         * a full store drains), and when the WAL could not take them. */
        sqlite3_stmt *st = S(s, S_USED_PAGES);
        uint64_t used = sqlite3_step(st) == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
        sqlite3_reset(st);
        enum gr_store_fit fit = gr_store_limits_fit(&s->limits, used * s->page_size, s->wal_now,
                                                    rewritten, *bytes);
        if (fit == GR_FIT_WAL_FULL && rewritten)
            return APPEND_LATER; /* alone in the next commit it may fit */
        full = fit != GR_FIT_OK;
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
        int rc = sq_step(S(s, S_INS_BATCH));
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
        sqlite3_bind_int64(ins, 4, (sqlite3_int64)it->len);
        if (it->rich && batch)
            sqlite3_bind_int64(ins, 3, batch);
        else
            sqlite3_bind_null(ins, 3);
        if (it->has_dedupe)
            sqlite3_bind_blob(ins, 5, it->dedupe, sizeof it->dedupe, SQLITE_STATIC);
        else
            sqlite3_bind_null(ins, 5);
        int rc = sq_step(ins);
        if (!rc)
            rc = sq_insert_body(s, it->body, it->len);
        if (rc)
            return rc;
    }
    return 0;
}

int sq_insert_body(struct sqlite_store *s, const char *body, size_t len)
{
    sqlite3_stmt *st = S(s, S_INS_BODY);
    sqlite3_bind_int64(st, 1, sqlite3_last_insert_rowid(s->db)); /* the item's id */
    sqlite3_bind_text(st, 2, body, (int)len, SQLITE_STATIC);
    int rc = sq_step(st);
    sqlite3_clear_bindings(st);
    return rc;
}

/* Up to ROUTE_CHAIN items due for routing, marked as taken: the attempt of
 * their deliveries counts from now (store.h: completed()). An item taken
 * before (tried) comes alone, as a unit tried before does (units_for): a
 * crash charges every item a worker holds. Duplicate keys are checked (and
 * recorded) here, in the order of the items, so that a worker never
 * delivers the same change twice within the window; an item that is not
 * delivered after all forgets its key (forget_key). */
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
    uint64_t chain_bytes = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        /* marking an item as being routed rewrites its record: the chain
         * stays within the commit's WAL share (limits.h), one item at least */
        uint64_t len = (uint64_t)sqlite3_column_bytes(st, 1);
        bool tried = sqlite3_column_int(st, 7) > 0;
        if (head && (tried || !gr_store_limits_commit_fits(&s->limits, s->wal_now,
                                                           s->commit_rewritten + chain_bytes, len)))
            break;
        chain_bytes += len;
        struct gr_work *w = gr_xcalloc(1, sizeof *w);
        w->kind = GR_WORK_ROUTE;
        w->id = w->item_id = sqlite3_column_int64(st, 0);
        w->body = sq_column_text(st, 1, &w->len);
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
            w->duplicate = gr_dedupe_check(&s->dedupe, w->dedupe, w->id, w->received_ms,
                                           gr_wall_ms(), s->cfg.dedupe_window_ms);
        }
        w->tried = tried;
        *tail = w;
        tail = &w->next;
        if (tried)
            break;
    }
    sqlite3_reset(st);
    s->commit_rewritten += chain_bytes;
    s->batch_tokens = tokens;
    s->batch_id = batch;
    for (struct gr_work *w = head; w; w = w->next) {
        sqlite3_stmt *up = S(s, S_ITEM_TAKE);
        sqlite3_bind_int64(up, 1, w->id);
        if ((*rc = sq_step(up)) != 0)
            break; /* the take is undone (see run_batch); the chain freed */
    }
    return head;
}

void sq_free_chain(struct gr_work *w)
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
    uint64_t n = sq_hstat(s, handler)->running;
    pthread_mutex_unlock(&s->lock);
    return (unsigned)n;
}

/* Mark unit id running (the attempt counts from now) and load it. */
static struct gr_work *take_unit(struct sqlite_store *s, const struct gr_store_handler *h,
                                 sqlite3_int64 id, int *rc)
{
    sqlite3_stmt *run = S(s, S_UNIT_RUN);
    sqlite3_bind_int64(run, 1, id);
    if ((*rc = sq_step(run)) != 0)
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
        w->event = sq_column_text(st, 1, &w->event_len);
        w->attempts = (unsigned)sqlite3_column_int(st, 2);
        w->body = sq_column_text(st, 3, &w->len);
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
                sq_free_chain(head); /* the take is undone (see run_batch) */
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

int sq_do_take(struct sqlite_store *s, struct req *r, int64_t now)
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
    if (sq_step(up))
        return -1;
    return sqlite3_changes(s->db) > 0;
}

/* The configured handler's retry.max_attempts (at least 1), or 0: not configured. */
static unsigned max_attempts_of(struct sqlite_store *s, const char *name)
{
    unsigned max = 0;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->nhandlers && !max; i++)
        if (strcmp(s->handlers[i].name, name) == 0)
            max = s->handlers[i].max_attempts;
    pthread_mutex_unlock(&s->lock);
    return max;
}

static bool handler_configured(struct sqlite_store *s, const char *name)
{
    return max_attempts_of(s, name) > 0;
}

/* A new delivery, pending; or a dead letter at once when its handler is no
 * longer configured (a worker on an older generation routed or emitted to
 * it after a reload removed it): nothing waits for a handler that never comes. */
/* A unit as it is written: pending (due at due_ms) or dead (finished now),
 * with the attempts it used so far. */
static int write_unit(struct sqlite_store *s, int64_t item, const char *handler,
                      const char *event, size_t len, int state, unsigned attempts,
                      int64_t due_ms, int64_t now, const char *error)
{
    sqlite3_stmt *st = S(s, S_INS_UNIT);
    sqlite3_bind_int64(st, 1, item);
    sqlite3_bind_text(st, 2, handler, -1, SQLITE_STATIC);
    if (event)
        sqlite3_bind_text(st, 3, event, (int)len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_int(st, 4, state);
    sqlite3_bind_int(st, 5, (int)attempts);
    sqlite3_bind_int64(st, 6, due_ms);
    sqlite3_bind_int64(st, 7, now);
    if (state == UNIT_DEAD)
        sqlite3_bind_int64(st, 8, now);
    if (error)
        sqlite3_bind_text(st, 9, error, -1, SQLITE_STATIC);
    int rc = sq_step(st);
    sqlite3_clear_bindings(st);
    if (!rc)
        bump(s, handler, state == UNIT_PENDING, 0, state == UNIT_DEAD);
    return rc;
}

static int insert_unit(struct sqlite_store *s, int64_t item, const char *handler,
                       const char *event, size_t len, int64_t now, bool *any_dead)
{
    bool dead = !handler_configured(s, handler);
    *any_dead |= dead;
    int rc = write_unit(s, item, handler, event, len, dead ? UNIT_DEAD : UNIT_PENDING, 0, now,
                        now, dead ? "the handler is no longer configured" : NULL);
    if (!rc && dead)
        gr_warn("store: delivery %lld to handler \"%s\" is a dead letter: the handler is no "
                "longer configured (graphrouter dlq replay brings it back)",
                (long long)sqlite3_last_insert_rowid(s->db), handler);
    return rc;
}

/* A delivery of an item taken before graphrouter stopped (its attempt
 * charged, as recover() charges a running unit's): a unit that runs again
 * after the same wait, or a dead letter once the attempts are used up. The
 * target that already has a unit (its call was stuck: note_running) keeps it. */
static int insert_tried_unit(struct sqlite_store *s, int64_t item, const char *handler,
                             int64_t now, bool *any_dead)
{
    sqlite3_stmt *ex = S(s, S_UNIT_EXISTS);
    sqlite3_bind_int64(ex, 1, item);
    sqlite3_bind_text(ex, 2, handler, -1, SQLITE_STATIC);
    bool exists = sqlite3_step(ex) == SQLITE_ROW;
    sqlite3_reset(ex);
    if (exists)
        return 0;
    unsigned max = max_attempts_of(s, handler);
    if (!max) /* no longer configured */
        return insert_unit(s, item, handler, NULL, 0, now, any_dead);
    bool dead = max <= 1;
    *any_dead |= dead;
    int rc = write_unit(s, item, handler, NULL, 0, dead ? UNIT_DEAD : UNIT_PENDING, 1,
                        now + sq_recovery_wait_ms(1), now, SQ_INTERRUPTED_ERROR);
    if (!rc)
        sq_interrupted(sqlite3_last_insert_rowid(s->db), handler, 1, max);
    return rc;
}

/* An item not delivered after all leaves no duplicate key behind. */
static void forget_key(struct sqlite_store *s, const struct gr_work *w)
{
    if (w->has_dedupe)
        gr_dedupe_forget(&s->dedupe, w->dedupe, w->id);
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
    int rc = sq_step(st);
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

int sq_do_routed(struct sqlite_store *s, struct req *r, int64_t now, uint64_t *done_items,
                     uint64_t *done_bytes, uint64_t *routed, bool *new_work)
{
    struct gr_work *w = r->work;
    if (r->result == GR_ROUTE_WAIT) {
        forget_key(s, w);
        sqlite3_stmt *st = S(s, S_ITEM_WAIT);
        sqlite3_bind_int64(st, 1, w->id);
        sqlite3_bind_int64(st, 2, now + r->delay_ms);
        return sq_step(st);
    }
    (*routed)++;
    if (r->life_sub) { /* for the manager, whatever the routes do with the item */
        int rc = sq_add_sub_event(s, r->life_sub, r->life_event, w->id, now);
        if (rc)
            return rc;
    }
    if (r->result != GR_ROUTED || !r->ntargets) { /* dropped, or nothing routes it */
        forget_key(s, w);
        return finish_item(s, w, now, r->text ? r->text : "unrouted", done_items, done_bytes);
    }
    if (w->has_dedupe && (w->duplicate || is_duplicate(s, w))) {
        r->duplicate = true;
        return finish_item(s, w, now, NOTE_DUPLICATE, done_items, done_bytes);
    }
    bool any_dead = w->tried; /* a tried target may have a finished unit already */
    for (size_t i = 0; i < r->ntargets; i++) {
        int rc = w->tried ? insert_tried_unit(s, w->id, r->targets[i], now, &any_dead)
                          : insert_unit(s, w->id, r->targets[i], NULL, 0, now, &any_dead);
        if (rc)
            return rc;
    }
    sqlite3_stmt *st = S(s, S_ITEM_STATE);
    sqlite3_bind_int64(st, 1, w->id);
    sqlite3_bind_int(st, 2, ITEM_ROUTED);
    *new_work = true;
    int rc = sq_step(st);
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

int sq_do_delivered(struct sqlite_store *s, struct req *r, int64_t now, uint64_t *done_items,
                        uint64_t *done_bytes, bool *new_work)
{
    struct gr_work *w = r->work;
    if (r->result == GR_DELIVERY_RETRY) {
        sqlite3_stmt *st = S(s, S_UNIT_RETRY);
        sqlite3_bind_int64(st, 1, w->id);
        sqlite3_bind_int64(st, 2, now + r->delay_ms);
        sqlite3_bind_text(st, 3, r->text, -1, SQLITE_STATIC);
        int rc = sq_step(st);
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
    if (r->result == GR_DELIVERED) {
        int rc = sq_state_write(s, w->handler, r->state, r->nstate, now);
        if (rc)
            return rc;
    }
    sqlite3_stmt *st = S(s, S_UNIT_FINISH);
    sqlite3_bind_int64(st, 1, w->id);
    sqlite3_bind_int(st, 2, r->result == GR_DELIVERED ? UNIT_DONE : UNIT_DEAD);
    sqlite3_bind_int64(st, 3, now);
    if (r->text)
        sqlite3_bind_text(st, 4, r->text, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 4);
    int rc = sq_step(st);
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


/* One target's direct delivery, as the completion records it: nothing when
 * it was delivered (its emitted events become units), a pending unit when
 * it is to be retried, a dead letter when given up. A delivery whose call
 * was stuck has a running unit already (sq_do_note), which takes the
 * outcome. Sets *open if the item has a unit to wait for, *dead if it has a
 * dead letter. */
static int complete_part(struct sqlite_store *s, const struct gr_work *w, struct sq_part *p,
                         int64_t now, bool *open, bool *dead, bool *new_work)
{
    int state = p->result == GR_DELIVERED ? UNIT_DONE
                : p->result == GR_DELIVERY_RETRY ? UNIT_PENDING
                                                 : UNIT_DEAD;
    int64_t due = p->result == GR_DELIVERY_RETRY ? now + p->delay_ms : now;
    bool written = false;
    if (p->noted) {
        sqlite3_stmt *st = S(s, S_UNIT_NOTED);
        sqlite3_bind_int64(st, 1, w->id);
        sqlite3_bind_text(st, 2, p->handler, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 3, state);
        sqlite3_bind_int64(st, 4, due);
        if (state == UNIT_PENDING)
            sqlite3_bind_null(st, 5);
        else
            sqlite3_bind_int64(st, 5, now);
        if (p->text)
            sqlite3_bind_text(st, 6, p->text, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 6);
        int rc = sq_step(st);
        sqlite3_clear_bindings(st);
        if (rc)
            return rc;
        written = sqlite3_changes(s->db) > 0;
        if (written) /* the counters never counted that unit as running */
            bump(s, p->handler, state == UNIT_PENDING, 0, state == UNIT_DEAD);
    }
    if (!written && state != UNIT_DONE) {
        int rc = write_unit(s, w->id, p->handler, NULL, 0, state, 1, due, now, p->text);
        if (rc)
            return rc;
    }
    int64_t id = sqlite3_last_insert_rowid(s->db);
    if (state == UNIT_PENDING && !written)
        gr_log_retry(p->handler, id, p->kind, 1, p->max_attempts,
                     p->text ? p->text : "GR_RETRY", p->delay_ms);
    else if (state == UNIT_DEAD && !written)
        gr_log_dead_letter(p->handler, id, p->kind, p->text ? p->text : "failed");
    *open |= state == UNIT_PENDING;
    *dead |= state == UNIT_DEAD;
    for (size_t i = 0; i < p->nevents; i++) {
        bool dead_event = false;
        int rc = insert_unit(s, w->id, p->events[i].handler, p->events[i].json, p->events[i].len,
                             now, &dead_event);
        if (rc)
            return rc;
        *open |= !dead_event;
        *dead |= dead_event;
        *new_work = true;
    }
    if (state == UNIT_DONE)
        return sq_state_write(s, p->handler, p->state, p->nstate, now);
    return 0;
}

int sq_do_completed(struct sqlite_store *s, struct req *r, int64_t now, uint64_t *done_items,
                    uint64_t *done_bytes, uint64_t *routed, bool *new_work)
{
    struct gr_work *w = r->work;
    (*routed)++;
    if (r->life_sub) {
        int rc = sq_add_sub_event(s, r->life_sub, r->life_event, w->id, now);
        if (rc)
            return rc;
    }
    bool open = false, dead = false;
    for (size_t i = 0; i < r->nparts; i++) {
        int rc = complete_part(s, w, &r->parts[i], now, &open, &dead, new_work);
        if (rc)
            return rc;
    }
    sqlite3_stmt *st = S(s, S_ITEM_COMPLETE);
    sqlite3_bind_int64(st, 1, w->id);
    sqlite3_bind_int(st, 2, open ? ITEM_ROUTED : dead ? ITEM_HELD : ITEM_DONE);
    sqlite3_bind_int64(st, 3, open ? w->received_ms : now);
    int rc = sq_step(st);
    if (!rc && !open) {
        (*done_items)++;
        *done_bytes += w->len;
    }
    return rc;
}

int sq_do_note(struct sqlite_store *s, struct req *r, int64_t now)
{
    sqlite3_stmt *st = S(s, r->unit ? S_UNIT_NOTE : S_UNIT_NOTE_DIRECT);
    if (r->unit) {
        sqlite3_bind_int64(st, 1, r->unit);
        sqlite3_bind_text(st, 2, r->text, -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_int64(st, 1, r->item);
        sqlite3_bind_text(st, 2, r->handler, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, now);
        sqlite3_bind_text(st, 4, r->text, -1, SQLITE_STATIC);
    }
    int rc = sq_step(st);
    sqlite3_clear_bindings(st);
    if (!rc && !r->unit && sqlite3_changes(s->db) > 0)
        r->unit = sqlite3_last_insert_rowid(s->db);
    return rc;
}
