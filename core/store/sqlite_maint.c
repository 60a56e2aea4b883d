/*
 * The SQLite store's maintenance (see sqlite.h), run by the writer thread
 * between batches, about once a second: pending deliveries of removed
 * handlers become dead letters, finished work past retention is deleted in
 * bounded slices, and the counters are taken again from the tables when
 * they may be off.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/sqlite.h"
#include "log.h"
#include "util.h"

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
            sq_exec(s->db, sq_close_finished_items);
        }
        sqlite3_finalize(st);
    }
    gr_buf_free(&sql);
}

/* Delete what retention no longer keeps, PURGE_BATCH rows per statement,
 * for at most PURGE_BUDGET_MS (the writer commits nothing meanwhile).
 * Returns true if more is due. Items with dead letters are held (not done)
 * and are not looked at. */
const char *const sq_purge_sql[] = {
        /* finished items past retention: their deliveries, then themselves */
        "DELETE FROM units WHERE item_id IN (SELECT id FROM items INDEXED BY items_done WHERE "
        "state = 5 AND done_ms < ?1 ORDER BY done_ms LIMIT ?3)",
        "DELETE FROM bodies WHERE id IN (SELECT id FROM items INDEXED BY items_done WHERE "
        "state = 5 AND done_ms < ?1 ORDER BY done_ms LIMIT ?3)",
        "DELETE FROM items WHERE id IN (SELECT id FROM items INDEXED BY items_done WHERE "
        "state = 5 AND done_ms < ?1 ORDER BY done_ms LIMIT ?3)",
        "DELETE FROM batches WHERE id IN (SELECT id FROM batches b WHERE received_ms < ?1 AND "
        "NOT EXISTS (SELECT 1 FROM items WHERE batch_id = b.id) ORDER BY received_ms LIMIT ?3)",
        /* lifecycle events no manager took (the graph section was removed since) */
        "DELETE FROM subscription_events WHERE seq IN (SELECT seq FROM subscription_events "
        "WHERE received_ms < ?1 ORDER BY seq LIMIT ?3)",
};
const size_t sq_npurge = GR_ARRAY_LEN(sq_purge_sql);

static bool purge(struct sqlite_store *s, int64_t now)
{
    const char *const *sql = sq_purge_sql;
    /* Items are kept for the duplicate window at least: their keys are how a
     * restart remembers what was seen (dedupe_load). */
    int64_t keep_ms = s->cfg.retention_ms > s->cfg.dedupe_window_ms ? s->cfg.retention_ms
                                                                     : s->cfg.dedupe_window_ms;
    int64_t t0 = gr_mono_ms();
    bool more = true;
    while (more && gr_mono_ms() - t0 < PURGE_BUDGET_MS) {
        more = false;
        sq_exec(s->db, "BEGIN IMMEDIATE");
        for (size_t i = 0; i < sq_npurge; i++) {
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
        sq_exec(s->db, "COMMIT");
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
                                  "coalesce(sum(state IN (2, 3)), 0) FROM items "
                                  "WHERE state IN (2, 3, 4)",
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
        sq_hstat(s, names[i])->oldest_pending_ms = oldest;
        pthread_mutex_unlock(&s->lock);
    }
    free(names);
}

/* The WAL past half its share of max_db_bytes: the checkpoints in the
 * commits could not restart it (a reader held an old snapshot). Copy it
 * back and cut it to nothing now if no reader is in the way, without
 * waiting for one (the writer waits for nobody). */
static void shrink_wal(struct sqlite_store *s)
{
    if (!s->limits.cap || sq_wal_bytes(s) <= s->limits.wal_share / 2)
        return;
    sqlite3_busy_timeout(s->db, 0);
    int log = 0, done = 0;
    int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &log, &done);
    sqlite3_busy_timeout(s->db, 5000);
    if (rc == SQLITE_OK)
        s->wal_frames = 0;
    gr_debug("store: WAL of %s past half its share; checkpoint: %s (%d of %d frames)", s->path,
             sqlite3_errstr(rc), done, log);
}

/* Returns true if purging is behind (maintenance should come back soon). */
bool sq_maintenance(struct sqlite_store *s)
{
    int64_t now = gr_wall_ms();
    sweep_removed_handlers(s, now);
    bool behind = purge(s, now);
    shrink_wal(s);
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
