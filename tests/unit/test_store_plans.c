/*
 * Every query the store's writer runs stays O(log n) under a backlog of a
 * million pending items (and as many pending deliveries), with retained
 * history beside them:
 *   - EXPLAIN QUERY PLAN of each prepared statement and each purge
 *     statement shows only index lookups (SEARCH), lookups of one row, or
 *     walks of an index in its order that a LIMIT stops;
 *   - the read statements the writer runs at every take, run against that
 *     backlog, make no full-scan step and a bounded number of virtual
 *     machine steps (SQLite's own counters, not a clock: a scan of the
 *     backlog would take millions).
 * The store is made by gr_store_sqlite_open (the real layout), filled with
 * SQL, and read with a connection of the test's own.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store/sqlite.h"
#include "util.h"

#define BACKLOG 1000000
#define HISTORY 100000
#define T0 INT64_C(1700000000000) /* ms: the backlog's receive times follow */

static char dir[64];
static char path[128];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/gr-plans-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof path, "%s/store.db", dir);
    struct gr_store_handler h = {.name = "out", .max_attempts = 5};
    struct gr_store_config c = {.path = path, .max_pending = UINT64_MAX,
                                .max_pending_bytes = UINT64_MAX, .synchronous_full = false,
                                .dedupe_window_ms = 1000, .retention_ms = 1000};
    char *err = NULL;
    struct gr_store *s = gr_store_sqlite_open(&c, &h, 1, &err);
    if (!s) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    gr_store_close(s);
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        return -1;
    char *sql = gr_xprintf(
        "PRAGMA synchronous = OFF; BEGIN;"
        /* a million items to route, due at once */
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < %d) "
        "INSERT INTO items(state, due_ms, done_ms, received_ms, len) "
        "SELECT 2, %lld + x, %lld + x, %lld + x, 2 FROM c;"
        /* history: done, retained */
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < %d) "
        "INSERT INTO items(state, due_ms, done_ms, received_ms, len) "
        "SELECT 5, %lld - x, %lld - x + 10, %lld - x, 2 FROM c;"
        "INSERT INTO bodies(id, body) SELECT id, '{}' FROM items;"
        /* a million deliveries pending for one handler, and as many done */
        "INSERT INTO units(item_id, handler, state, attempts, due_ms, created_ms) "
        "SELECT id, 'out', 0, 0, due_ms, received_ms FROM items WHERE state = 2;"
        "INSERT INTO units(item_id, handler, state, attempts, due_ms, created_ms, finished_ms) "
        "SELECT id, 'out', 2, 1, due_ms, received_ms, done_ms FROM items WHERE state = 5;"
        "COMMIT;",
        BACKLOG, (long long)T0, (long long)T0, (long long)T0, HISTORY, (long long)T0,
        (long long)T0, (long long)T0);
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    free(sql);
    if (rc != SQLITE_OK) {
        fprintf(stderr, "filling the store: %s\n", sqlite3_errmsg(db));
        return -1;
    }
    *state = db;
    return 0;
}

static int teardown(void **state)
{
    sqlite3_close(*state);
    char *cmd = gr_xprintf("rm -rf '%s'", dir);
    int rc = system(cmd);
    free(cmd);
    return rc == 0 ? 0 : -1;
}

/* Whether one line of a query plan reads a bounded number of rows. */
static bool plan_line_ok(const char *sql, const char *line)
{
    static const char *const fine[] = {
        "SEARCH ",            /* an index or rowid lookup */
        "SCAN CONSTANT ROW",  /* no table */
        "CORRELATED SCALAR SUBQUERY", "SCALAR SUBQUERY", "LIST SUBQUERY",
        "CORRELATED LIST SUBQUERY", "USING ROWID SEARCH",
    };
    for (size_t i = 0; i < GR_ARRAY_LEN(fine); i++)
        if (strncmp(line, fine[i], strlen(fine[i])) == 0)
            return true;
    /* the lifecycle events the manager has yet to act on, oldest first: a
     * handful at any time, however large the backlog */
    if (strcmp(line, "SCAN subscription_events") == 0 && strstr(sql, "LIMIT"))
        return true;
    /* table-valued pragmas: one row each */
    if (strncmp(line, "SCAN ", 5) == 0 && strstr(line, "VIRTUAL TABLE"))
        return true;
    /* an index walked in its own order, which the statement's LIMIT stops
     * (the rows it skips are the ones being worked on: bounded by the
     * workers, not by the backlog) */
    if (strncmp(line, "SCAN ", 5) == 0 && strstr(line, "USING") && strstr(line, "INDEX") &&
        strstr(sql, "LIMIT") && !strstr(sql, "TEMP B-TREE"))
        return true;
    return false;
}

static void check_plan(sqlite3 *db, const char *sql)
{
    char *eqp = gr_xprintf("EXPLAIN QUERY PLAN %s", sql);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, eqp, -1, &st, NULL);
    free(eqp);
    if (rc != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    int lines = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *line = (const char *)sqlite3_column_text(st, 3);
        lines++;
        if (strstr(line, "TEMP B-TREE"))
            fail_msg("sorts what it found (O(n)): %s\n  in %s", line, sql);
        if (!plan_line_ok(sql, line))
            fail_msg("scans: %s\n  in %s", line, sql);
    }
    sqlite3_finalize(st);
    (void)lines;
}

static void every_statement_is_a_lookup(void **state)
{
    sqlite3 *db = *state;
    for (int i = 0; sq_statement(i); i++) {
        const char *sql = sq_statement(i);
        if (strncmp(sql, "PRAGMA", 6) == 0 || strncmp(sql, "BEGIN", 5) == 0 ||
            strcmp(sql, "COMMIT") == 0 || strncmp(sql, "SAVEPOINT", 9) == 0 ||
            strncmp(sql, "RELEASE", 7) == 0 || strncmp(sql, "ROLLBACK", 8) == 0)
            continue;
        check_plan(db, sql);
    }
    for (size_t i = 0; i < sq_npurge; i++)
        check_plan(db, sq_purge_sql[i]);
}

/* Closing the routed items whose deliveries all finished runs at start and
 * after a reload removed a handler, never per item: it walks the routed
 * items (those with units open), never the retained history. */
static void closing_finished_items_walks_the_routed_only(void **state)
{
    sqlite3 *db = *state;
    char *eqp = gr_xprintf("EXPLAIN QUERY PLAN %s", sq_close_finished_items);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, eqp, -1, &st, NULL), SQLITE_OK);
    free(eqp);
    bool walks_routed = false;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *line = (const char *)sqlite3_column_text(st, 3);
        if (strcmp(line, "SCAN items USING INDEX items_routed") == 0)
            walks_routed = true;
        else if (!plan_line_ok("", line))
            fail_msg("scans: %s", line);
    }
    sqlite3_finalize(st);
    assert_true(walks_routed);
}

/* Run a read statement against the backlog: no more steps of an index walk
 * (SQLite counts them as full-scan steps) than the rows it returns, and a
 * bounded number of VM steps. */
static void run_bounded(sqlite3 *db, int which, const char *handler, int64_t a, int64_t b,
                        int max_steps)
{
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, sq_statement(which), -1, &st, NULL), SQLITE_OK);
    int n = sqlite3_bind_parameter_count(st), p = 1;
    if (handler && p <= n)
        sqlite3_bind_text(st, p++, handler, -1, SQLITE_STATIC);
    if (p <= n)
        sqlite3_bind_int64(st, p++, a);
    if (p <= n)
        sqlite3_bind_int64(st, p++, b);
    int rows = 0;
    while (sqlite3_step(st) == SQLITE_ROW)
        rows++;
    int full = sqlite3_stmt_status(st, SQLITE_STMTSTATUS_FULLSCAN_STEP, 0);
    int steps = sqlite3_stmt_status(st, SQLITE_STMTSTATUS_VM_STEP, 0);
    if (full > rows + 1 || steps > max_steps)
        fail_msg("%s: %d rows, %d full-scan steps, %d VM steps (at most %d)", sq_statement(which),
                 rows, full, steps, max_steps);
    sqlite3_finalize(st);
}

static void takes_read_little_of_the_backlog(void **state)
{
    sqlite3 *db = *state;
    int64_t now = T0 + 2 * BACKLOG;
    run_bounded(db, S_ROUTE_NEXT, NULL, now, ROUTE_CHAIN, 2000);
    run_bounded(db, S_UNIT_NEXT, "out", now, DELIVERY_CHAIN, 2000);
    run_bounded(db, S_UNIT_HEAD, "out", 0, 0, 200);
    run_bounded(db, S_FIRST_UNROUTED, NULL, now, BACKLOG / 2, 200);
    run_bounded(db, S_NEXT_DUE_UNIT, NULL, 0, 0, 200);
    run_bounded(db, S_NEXT_DUE_ITEM, NULL, 0, 0, 200);
    run_bounded(db, S_OLDEST, "out", 0, 0, 200);
    run_bounded(db, S_UNIT_EXISTS, NULL, BACKLOG / 2, 0, 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_statement_is_a_lookup),
        cmocka_unit_test(closing_finished_items_walks_the_routed_only),
        cmocka_unit_test(takes_read_little_of_the_backlog),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
