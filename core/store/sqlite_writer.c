/*
 * The SQLite store's writer (see sqlite.h): requests queue up under the
 * store's lock; the writer thread runs everything queued in one transaction
 * (group commit), answers the requests, and does the maintenance between
 * batches.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/sqlite.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

/* Completions nobody waits for are written lazily: with the next append or
 * take, or once the oldest has waited COMPLETION_DELAY_MS, or when
 * COMPLETIONS_MAX are queued. A commit costs its WAL frames (whole pages) and
 * a write to the log however little it holds; committing each completion as
 * it came was most of the writer's work while POSTs kept coming. */
#define COMPLETION_DELAY_MS 10
#define COMPLETIONS_MAX 256
/* While POSTs keep coming (an append was queued within TAKE_DELAY_MS), a
 * worker's take waits up to TAKE_DELAY_MS for the next append to share its
 * commit, instead of a commit of its own that rewrites the pages of the
 * items it marks; under load the next append comes within microseconds.
 * Without appends (a backlog being worked off, or idle) a take runs at once:
 * waiting would only leave the worker idle. */
#define TAKE_DELAY_MS 1

static bool parts_write_state(const struct req *r)
{
    for (size_t i = 0; i < r->nparts; i++)
        if (r->parts[i].nstate)
            return true;
    return false;
}

static bool urgent(const struct req *r)
{
    return r->kind == REQ_APPEND || r->kind == REQ_SYNC || r->kind == REQ_CALL;
}

/* When the queue should run (monotonic ms): INT64_MAX while empty (under lock). */
static int64_t queue_due(const struct sqlite_store *s)
{
    if (!s->head)
        return INT64_MAX;
    if (s->urgent || s->stopping || s->queued >= COMPLETIONS_MAX)
        return 0;
    int64_t due = s->head->queued_ms + COMPLETION_DELAY_MS; /* the head is the oldest */
    if (s->takes && s->last_append_ms + TAKE_DELAY_MS < gr_mono_ms())
        return 0; /* no POST is coming to share the commit with */
    if (s->takes && s->takes_since_ms + TAKE_DELAY_MS < due)
        due = s->takes_since_ms + TAKE_DELAY_MS;
    return due;
}

void sq_enqueue(struct sqlite_store *s, struct req *r)
{
    pthread_mutex_lock(&s->lock);
    sq_enqueue_locked(s, r);
    pthread_mutex_unlock(&s->lock);
}

void sq_enqueue_locked(struct sqlite_store *s, struct req *r)
{
    r->queued_ms = gr_mono_ms();
    bool was_empty = !s->head;
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
    s->queued++;
    s->urgent += urgent(r);
    if (r->kind == REQ_TAKE && s->takes++ == 0)
        s->takes_since_ms = r->queued_ms;
    if (r->kind == REQ_APPEND)
        s->last_append_ms = r->queued_ms;
    if (urgent(r) || r->kind == REQ_TAKE || was_empty || s->queued == COMPLETIONS_MAX)
        pthread_cond_signal(&s->wake);
}

/* The queue's counts, after it was cut or added to (under lock). */
void sq_count_queue(struct sqlite_store *s)
{
    s->queued = s->urgent = s->takes = 0;
    s->tail = NULL;
    for (struct req *r = s->head; r; r = r->next) {
        s->queued++;
        s->urgent += urgent(r);
        if (r->kind == REQ_TAKE && s->takes++ == 0)
            s->takes_since_ms = r->queued_ms;
        s->tail = r;
    }
}

/* ---- the writer -------------------------------------------------------- */

static void finish_requests(struct sqlite_store *s, struct req *batch, int rc)
{
    for (struct req *r = batch, *next; r; r = next) {
        next = r->next;
        if (r->kind == REQ_APPEND) {
            struct gr_append *a = r->append;
            /* no room (a limit, or SQLITE_FULL: max_page_count or a full
             * disk) is "full"; any other failure is "error" */
            enum gr_append_result res = r->result || (rc && sq_is_full(rc)) ? GR_APPEND_FULL
                                        : rc || r->failed                  ? GR_APPEND_ERROR
                                                                           : GR_APPEND_OK;
            a->done(a->ctx, res);
            sq_free_req(r);
        } else if (r->kind == REQ_SYNC || r->kind == REQ_CALL) {
            pthread_mutex_lock(&s->lock);
            bool abandoned = r->abandoned;
            r->failed |= rc != 0;
            r->done = true;
            pthread_cond_broadcast(&s->answered);
            pthread_mutex_unlock(&s->lock);
            if (abandoned)
                sq_free_req(r);
        } else if (r->kind == REQ_TAKE) {
            pthread_mutex_lock(&s->lock);
            if ((rc || r->failed) && r->taken) { /* the take did not commit: give nothing out */
                sq_free_chain(r->taken);
                r->taken = NULL;
                r->next_due_ms = 0;
            }
            r->done = true;
            pthread_cond_broadcast(&s->answered);
            pthread_mutex_unlock(&s->lock);
        } else {
            sq_free_req(r);
        }
    }
}

static int run_request(struct sqlite_store *s, struct req *r, int64_t now,
                       const struct delta *so_far, struct delta *d)
{
    switch (r->kind) {
    case REQ_APPEND: {
        uint64_t bytes;
        int rc = sq_do_append(s, r->append, so_far->added_items, so_far->added_bytes,
                              s->commit_rewritten, &bytes);
        /* this request only: the others go on */
        r->result = rc == APPEND_FULL || sq_is_full(rc);
        r->later = rc == APPEND_LATER;
        if (rc == APPEND_FULL || rc == APPEND_LATER)
            return 0;
        if (!rc) {
            s->commit_rewritten += bytes;
            d->added_items = r->append->n;
            d->added_bytes = bytes;
            d->new_work = r->append->n > 0;
        }
        return rc;
    }
    case REQ_TAKE: return sq_do_take(s, r, now);
    case REQ_ROUTED: {
        int rc = sq_do_routed(s, r, now, &d->done_items, &d->done_bytes, &d->routed, &d->new_work);
        d->duplicates = r->duplicate;
        return rc;
    }
    case REQ_DELIVERED:
        return sq_do_delivered(s, r, now, &d->done_items, &d->done_bytes, &d->new_work);
    case REQ_COMPLETED: {
        int rc = sq_do_completed(s, r, now, &d->done_items, &d->done_bytes, &d->routed,
                                 &d->new_work);
        d->duplicates = r->duplicate;
        return rc;
    }
    case REQ_SYNC:
        return r->text ? sq_do_note(s, r, now) : 0; /* no note: a flush */
    case REQ_CALL: return r->call(s, r, now, d);
    }
    return 0;
}

/* Run a batch of requests in one transaction. Each write runs inside its own
 * savepoint: one that fails (the database is full, say) is undone alone;
 * its append is answered 503, its completion is tried again later, and the
 * rest of the batch commits. Completions that write handler state are the
 * exception: after one failed, those that follow it are held back with it
 * and tried again in their order, since a later one may have read what it
 * wrote (a delta link must never be written over by an older one, nor be
 * written without the events of the run before it). */
static void run_batch(struct sqlite_store *s, struct req *batch)
{
    int64_t t0 = gr_mono_ns(), now = gr_wall_ms();
    size_t nreq = 0, nappend = 0;
    for (struct req *r = batch; r; r = r->next) {
        nreq++;
        nappend += r->kind == REQ_APPEND || r->kind == REQ_CALL; /* both durable at once */
    }
    sq_step(S(s, nappend && s->cfg.synchronous_full ? S_SYNC_FULL : S_SYNC_NORMAL));
    int rc = sq_step(S(s, S_BEGIN));
    /* what the WAL holds, not its file: frames past a restart overwrite it */
    s->wal_now = s->wal_frames ? GR_WAL_HEADER + s->wal_frames * (s->page_size + GR_WAL_FRAME_HEADER)
                               : 0;
    s->commit_rewritten = 0;
    struct delta total = {0};
    int request_error = 0; /* the first error of a request that was undone alone */
    bool state_held = s->state_dropped; /* a state write failed: later ones wait for it */
    bool state_later = false;           /* one was left for the next commit: the same */
    for (struct req *r = batch; r && !rc; r = r->next) {
        bool writes_state = (r->kind == REQ_DELIVERED && r->nstate) ||
                            (r->kind == REQ_COMPLETED && parts_write_state(r));
        if (writes_state && state_held) {
            r->failed = true;
            continue;
        }
        if (writes_state && state_later) {
            r->later = true;
            continue;
        }
        /* Routing an item or closing it rewrites its record: past the
         * commit's WAL share (limits.h) that waits for the next commit,
         * which the first request of a commit always fits. */
        uint64_t rewrites = r->kind == REQ_ROUTED || r->kind == REQ_DELIVERED ||
                                    r->kind == REQ_COMPLETED
                                ? r->work->len
                                : 0;
        for (size_t i = 0; i < r->nevents; i++)
            rewrites += r->events[i].len;
        for (size_t i = 0; i < r->nparts; i++)
            for (size_t j = 0; j < r->parts[i].nevents; j++)
                rewrites += r->parts[i].events[j].len;
        if (rewrites && s->commit_rewritten &&
            !gr_store_limits_commit_fits(&s->limits, s->wal_now, s->commit_rewritten, rewrites)) {
            r->later = true;
            state_later |= writes_state; /* those after it keep their order */
            continue;
        }
        s->commit_rewritten += rewrites;
        if ((rc = sq_step(S(s, S_SAVEPOINT))) != SQLITE_OK)
            break;
        struct delta d = {0};
        int rrc = run_request(s, r, now, &total, &d);
        if (rrc && !sqlite3_get_autocommit(s->db) &&
            sq_step(S(s, S_ROLLBACK_TO)) == SQLITE_OK && sq_step(S(s, S_RELEASE)) == SQLITE_OK) {
            r->failed = true;
            state_held |= writes_state;
            request_error = request_error ? request_error : rrc;
            continue;
        }
        if (rrc) { /* the transaction itself is gone */
            rc = rrc;
            break;
        }
        if ((rc = sq_step(S(s, S_RELEASE))) != SQLITE_OK)
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
        rc = sq_step(S(s, S_COMMIT));
    if (rc && !sqlite3_get_autocommit(s->db))
        sq_exec(s->db, "ROLLBACK");
    int error = rc ? rc : request_error;
    if (error)
        s->recount_needed = true; /* counters moved for what was undone */
    if (error && sq_is_full(error)) { /* try again in smaller transactions (limits.h) */
        uint64_t tried = s->limits.full_budget && s->limits.full_budget < s->commit_rewritten
                             ? s->limits.full_budget
                             : s->commit_rewritten;
        s->limits.full_budget = tried > 1 ? tried / 2 : 1;
    } else if (!error) {
        s->limits.full_budget = 0;
    }
    if (error) {
        if (!s->failing && sq_is_full(error))
            gr_warn("store: %s has no room (%s); POSTs get 503 (store full) until there is "
                    "room again",
                    s->path, sqlite3_errstr(error));
        else if (!s->failing)
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
    for (struct req *r = batch; r && !rc; r = r->next) {
        if (r->failed || r->later)
            continue;
        if (r->kind == REQ_DELIVERED) /* its state is in the file now */
            sq_state_committed(s, r->work->handler, r->state, r->nstate, r->state_seq);
        for (size_t i = 0; r->kind == REQ_COMPLETED && i < r->nparts; i++)
            sq_state_committed(s, r->parts[i].handler, r->parts[i].state, r->parts[i].nstate,
                               r->parts[i].state_seq);
    }
    /* Completions must not be lost: those not kept are tried again. */
    struct req *retry_head = NULL, **retry_tail = &retry_head;
    for (struct req **p = &batch; *p;) {
        struct req *r = *p;
        if ((r->kind == REQ_ROUTED || r->kind == REQ_DELIVERED || r->kind == REQ_COMPLETED) &&
            (rc || r->failed)) {
            *p = r->next;
            r->next = NULL;
            r->failed = r->later = false;
            *retry_tail = r;
            retry_tail = &r->next;
        } else {
            p = &r->next;
        }
    }
    /* What the WAL's share left out of this commit runs first in the next. */
    struct req *later_head = NULL, **later_tail = &later_head;
    for (struct req **p = &batch; *p && !rc;) {
        struct req *r = *p;
        if (r->later) {
            *p = r->next;
            r->next = NULL;
            r->later = false;
            r->result = 0;
            *later_tail = r;
            later_tail = &r->next;
        } else {
            p = &r->next;
        }
    }
    finish_requests(s, batch, rc);
    pthread_mutex_lock(&s->lock);
    if (later_head) {
        *later_tail = s->head;
        s->head = later_head;
        sq_count_queue(s);
    }
    bool stopping = s->stopping;
    pthread_mutex_unlock(&s->lock);
    if (retry_head && stopping) {
        size_t n = 0;
        for (struct req *r = retry_head, *next; r; r = next, n++) {
            next = r->next;
            s->state_dropped |= (r->kind == REQ_DELIVERED && r->nstate) ||
                                (r->kind == REQ_COMPLETED && parts_write_state(r));
            sq_free_req(r);
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
        sq_count_queue(s);
        pthread_mutex_unlock(&s->lock);
    }
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
    sq_count_queue(s);
    return batch;
}

void *sq_writer_main(void *arg)
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
            bool behind = sq_maintenance(s);
            s->next_maintenance_ms = gr_mono_ms() + (behind ? MAINTENANCE_MS / 10 : MAINTENANCE_MS);
        }
    }
    return NULL;
}

bool sq_run_now(struct sqlite_store *s, struct req *r, int64_t *unit)
{
    sq_enqueue(s, r);
    int64_t until = gr_mono_ms() + 5000;
    struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (until % 1000) * 1000000};
    pthread_mutex_lock(&s->lock);
    while (!r->done && pthread_cond_timedwait(&s->answered, &s->lock, &ts) != ETIMEDOUT) {
    }
    bool done = r->done, written = done && !r->failed;
    r->abandoned = !done; /* then the writer frees it */
    if (unit)
        *unit = written ? r->unit : 0;
    pthread_mutex_unlock(&s->lock);
    if (done)
        sq_free_req(r);
    return written;
}

bool sq_run_call(struct sqlite_store *s, struct req *r)
{
    sq_enqueue(s, r);
    pthread_mutex_lock(&s->lock);
    while (!r->done)
        pthread_cond_wait(&s->answered, &s->lock);
    bool written = !r->failed;
    pthread_mutex_unlock(&s->lock);
    return written;
}
