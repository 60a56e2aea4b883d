/*
 * How store.max_db_bytes is shared out (core/store/limits.c): the database,
 * its WAL and the -shm file together stay within the cap, a checkpoint has
 * room to copy the WAL into the database, and the append and commit rules
 * refuse or defer exactly at their thresholds.
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

#include "store/limits.h"
#include "store/sqlite.h"
#include "store/store_admin.h"

#define MiB (UINT64_C(1) << 20)

/* 1 MiB, 4 KiB pages: the figures the README gives. */
static void one_mib(void **state)
{
    (void)state;
    struct gr_store_limits l;
    gr_store_limits_compute(MiB, 4096, &l);
    assert_int_equal(l.wal_share, 262144);
    assert_int_equal(l.shm_share, 32768);
    assert_int_equal(l.max_page_count, 184);
    assert_int_equal(l.db_share, 753664);
    assert_int_equal(l.append_db, 678294); /* db_share / 10 * 9 */
    assert_int_equal(l.append_wal, 196608);
    assert_int_equal(l.autocheckpoint, 15);   /* a quarter of the 63 frames the WAL share holds */
    assert_int_equal(l.journal_size_limit, 65536);
    assert_true(l.db_share + l.wal_share + l.shm_share <= MiB);
}

/* Whatever the cap and page size: the shares add up to no more than it, the
 * WAL share holds its checkpoint size, the -shm share covers the frames. */
static void shares_fit_the_cap(void **state)
{
    (void)state;
    static const uint64_t caps[] = {MiB, MiB + 1, 3 * MiB + 12345, 64 * MiB, 256 * MiB,
                                    UINT64_C(10) << 30, UINT64_C(1) << 42};
    static const uint64_t pages[] = {512, 1024, 4096, 8192, 65536};
    for (size_t i = 0; i < sizeof caps / sizeof *caps; i++)
        for (size_t j = 0; j < sizeof pages / sizeof *pages; j++) {
            struct gr_store_limits l;
            gr_store_limits_compute(caps[i], pages[j], &l);
            uint64_t frame = pages[j] + GR_WAL_FRAME_HEADER;
            assert_true(l.db_share + l.wal_share + l.shm_share <= caps[i]);
            assert_true(l.wal_share <= GR_WAL_SHARE_MAX);
            assert_true(l.max_page_count >= 1);
            assert_true(l.autocheckpoint >= 1 && l.autocheckpoint <= GR_AUTOCHECKPOINT_MAX);
            assert_true(GR_WAL_HEADER + l.autocheckpoint * frame <= l.wal_share);
            uint64_t frames = l.wal_share / frame;
            assert_true(l.shm_share >= GR_SHM_REGION * (frames / GR_SHM_REGION_FRAMES + 1));
            assert_true(l.append_db < l.db_share);
            assert_true(l.append_wal < l.wal_share);
        }
}

static void no_cap_fits_everything(void **state)
{
    (void)state;
    struct gr_store_limits l;
    gr_store_limits_compute(0, 4096, &l);
    assert_int_equal(l.max_page_count, 0);
    assert_int_equal(l.autocheckpoint, 1000);
    assert_true(l.journal_size_limit > 0);
    assert_int_equal(gr_store_limits_fit(&l, UINT64_C(1) << 50, UINT64_C(1) << 50, 0, 1 << 30),
                     GR_FIT_OK);
    assert_true(gr_store_limits_commit_fits(&l, UINT64_C(1) << 50, UINT64_C(1) << 50, 1 << 30));
}

/* used + 2 B <= 90% of the database share; WAL + 2 (T + B) <= 3/4 of its share */
static void thresholds(void **state)
{
    (void)state;
    struct gr_store_limits l;
    gr_store_limits_compute(MiB, 4096, &l);
    uint64_t b = 20000;
    assert_int_equal(gr_store_limits_fit(&l, l.append_db - 2 * b, 0, 0, b), GR_FIT_OK);
    assert_int_equal(gr_store_limits_fit(&l, l.append_db - 2 * b + 1, 0, 0, b), GR_FIT_DB_FULL);
    assert_int_equal(gr_store_limits_fit(&l, 0, l.append_wal - 2 * b, 0, b), GR_FIT_OK);
    assert_int_equal(gr_store_limits_fit(&l, 0, l.append_wal - 2 * b + 1, 0, b), GR_FIT_WAL_FULL);
    /* what the commit already wrote counts: the append waits for the next one */
    assert_int_equal(gr_store_limits_fit(&l, 0, 65536, 30000, b), GR_FIT_OK);
    assert_int_equal(gr_store_limits_fit(&l, 0, 65536, 46000, b), GR_FIT_WAL_FULL);
    assert_true(gr_store_limits_commit_fits(&l, 65536, 45000, 20536));
    assert_false(gr_store_limits_commit_fits(&l, 65536, 45000, 20537));
    /* a body that could never fit, even in an empty store */
    assert_int_equal(gr_store_limits_fit(&l, 0, 0, 0, 4 * MiB), GR_FIT_DB_FULL);
    assert_int_equal(gr_store_limits_fit(&l, 0, 0, 0, 100000), GR_FIT_WAL_FULL);
    /* no overflow with absurd sizes */
    assert_int_equal(gr_store_limits_fit(&l, 0, 0, 0, UINT64_MAX / 2 + 1), GR_FIT_DB_FULL);
    assert_false(gr_store_limits_commit_fits(&l, 0, UINT64_MAX / 2, UINT64_MAX / 2));
}

/* --check's store part: a deadline that has passed gives up and says so,
 * never "ok"; with time, the same file is ok; a missing one is fine. */
static void check_gives_up_and_says_so(void **state)
{
    (void)state;
    char dir[] = "/tmp/gr-unit-check-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/store.db", dir);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *sql = sqlite3_mprintf("PRAGMA user_version = %d; CREATE TABLE t(x);"
                                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                                "WHERE i < 2000) INSERT INTO t SELECT randomblob(300) FROM n;",
                                SCHEMA_VERSION);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_free(sql);
    sqlite3_close(db);
    char *report = NULL;
    assert_int_equal(gr_store_check(path, 0, &report), 1);
    assert_non_null(strstr(report, "quick_check gave up"));
    assert_non_null(strstr(report, "NOT checked"));
    assert_null(strstr(report, "ok"));
    free(report);
    assert_int_equal(gr_store_check(path, 10000, &report), 0);
    assert_non_null(strstr(report, ": ok ("));
    free(report);
    unlink(path);
    assert_int_equal(gr_store_check(path, 10000, &report), 0);
    assert_non_null(strstr(report, "does not exist yet"));
    assert_int_equal(access(path, F_OK), -1); /* and is not created */
    free(report);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(one_mib),
        cmocka_unit_test(shares_fit_the_cap),
        cmocka_unit_test(no_cap_fits_everything),
        cmocka_unit_test(thresholds),
        cmocka_unit_test(check_gives_up_and_says_so),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
