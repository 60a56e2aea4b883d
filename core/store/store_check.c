/*
 * The store's part of --check (see store_admin.h): the database opened
 * read-only, beside a running daemon or not, and SQLite's quick_check run on
 * it within a time limit.
 *
 * Read-only means SQLITE_OPEN_READONLY on a URI with mode=ro: the file is
 * never created, and neither it nor its -wal is written.
 *   - With a -wal (a daemon runs, or one died): it is read, as the daemon
 *     would, so what is checked is what the daemon would see. The -shm (the
 *     WAL's index) is used, or rebuilt if it is missing, as any SQLite reader
 *     does (SQLite gives it the database's mode and owner).
 *   - Without a -wal (no daemon has the file open: an open connection keeps
 *     the -wal): the database file is all there is, and it is opened
 *     immutable, so that no -wal or -shm is created for the check. A daemon
 *     that starts during the check may make it report a page it was writing.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "store/sqlite.h"
#include "store/store_admin.h"
#include "util.h"

/* file: URI of a path (RFC 3986: everything but unreserved characters and
 * '/' percent-encoded, so '?', '#' and '%' in a name stay part of it). */
static char *file_uri(const char *path, bool immutable)
{
    struct gr_buf b = {0};
    gr_buf_puts(&b, "file:");
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            strchr("/-._~", *p))
            gr_buf_printf(&b, "%c", *p);
        else
            gr_buf_printf(&b, "%%%02X", *p);
    }
    gr_buf_puts(&b, immutable ? "?mode=ro&immutable=1" : "?mode=ro");
    return b.data;
}

static int give_up(void *arg)
{
    return gr_mono_ms() >= *(const int64_t *)arg;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int gr_store_check(const char *path, int64_t timeout_ms, char **report)
{
    *report = NULL;
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT) {
            *report = gr_xprintf("store %s: does not exist yet; graphrouter creates it at start",
                                 path);
            return 0;
        }
        *report = gr_xprintf("store %s: %s", path, strerror(errno));
        return 1;
    }
    if (!S_ISREG(st.st_mode)) {
        *report = gr_xprintf("store %s: not a regular file", path);
        return 1;
    }
    if (st.st_size == 0) { /* created, never written: the daemon lays it out */
        *report = gr_xprintf("store %s: ok (empty; graphrouter lays it out at start)", path);
        return 0;
    }
    char *wal = gr_xprintf("%s-wal", path);
    bool has_wal = exists(wal);
    free(wal);
    char *uri = file_uri(path, !has_wal);
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
    free(uri);
    if (rc != SQLITE_OK) {
        *report = gr_xprintf("store %s: cannot be opened: %s", path,
                             db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return 1;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, 5000); /* a daemon recovering the WAL holds it briefly */
    int64_t deadline = gr_mono_ms() + timeout_ms;
    sqlite3_progress_handler(db, 1000, give_up, &deadline);
    int version = -1, tables = 0;
    long long pages = 0;
    struct gr_buf problems = {0};
    size_t nproblems = 0;
    sqlite3_stmt *q = NULL;
    rc = sqlite3_prepare_v2(db, "SELECT (SELECT user_version FROM pragma_user_version), "
                                "(SELECT count(*) FROM sqlite_schema), "
                                "(SELECT page_count FROM pragma_page_count)",
                            -1, &q, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        version = sqlite3_column_int(q, 0);
        tables = sqlite3_column_int(q, 1);
        pages = sqlite3_column_int64(q, 2);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(q);
    if (rc == SQLITE_OK &&
        (rc = sqlite3_prepare_v2(db, "PRAGMA quick_check(20)", -1, &q, NULL)) == SQLITE_OK) {
        while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
            const char *line = (const char *)sqlite3_column_text(q, 0);
            if (line && strcmp(line, "ok") != 0) {
                gr_buf_printf(&problems, "\n  %s", line);
                nproblems++;
            }
        }
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        sqlite3_finalize(q);
    }
    int status = 1;
    if ((rc & 0xff) == SQLITE_INTERRUPT)
        *report = gr_xprintf("store %s: quick_check gave up after %lld s (a large file, or a slow "
                             "disk); its integrity was NOT checked",
                             path, (long long)(timeout_ms / 1000));
    else if (rc != SQLITE_OK)
        *report = gr_xprintf("store %s: corrupt or unreadable: %s (SQLite: %s)", path,
                             sqlite3_errmsg(db), sqlite3_errstr(rc));
    else if (nproblems)
        *report = gr_xprintf("store %s: corrupt: SQLite's quick_check found %s%zu problem%s:%s",
                             path, nproblems >= 20 ? "at least " : "", nproblems,
                             nproblems == 1 ? "" : "s", problems.data);
    else if (tables > 0 && version != SCHEMA_VERSION && (version < 1 || version > SCHEMA_VERSION))
        *report = gr_xprintf("store %s: holds store layout %d; this graphrouter reads layout %d, "
                             "and would refuse to start on it",
                             path, version, SCHEMA_VERSION);
    else {
        status = 0;
        if (tables > 0 && version < SCHEMA_VERSION)
            *report = gr_xprintf("store %s: ok (%lld pages, layout %d: converted to layout %d at "
                                 "start)",
                                 path, pages, version, SCHEMA_VERSION);
        else
            *report = gr_xprintf("store %s: ok (%lld pages%s)", path, pages,
                                 has_wal ? ", with its write-ahead log" : "");
    }
    gr_buf_free(&problems);
    sqlite3_close(db);
    return status;
}
