/* The status and dlq commands (see store_admin.h). Single-threaded. */
#define _GNU_SOURCE
#include "store/store_admin.h"

#include <jansson.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "store/sqlite.h" /* SCHEMA_VERSION */
#include "util.h"

void gr_admin_duration(int64_t ms, char out[32])
{
    if (ms <= 0) {
        snprintf(out, 32, "-");
        return;
    }
    long long s = ms / 1000;
    if (s < 60)
        snprintf(out, 32, "%llds", s);
    else if (s < 3600)
        snprintf(out, 32, "%lldm%02llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(out, 32, "%lldh%02lldm", s / 3600, s / 60 % 60);
    else
        snprintf(out, 32, "%lldd%02lldh", s / 86400, s / 3600 % 24);
}

static int fail(sqlite3 *db, const char *what)
{
    fprintf(stderr, "graphrouter: %s: %s\n", what, sqlite3_errmsg(db));
    return 1;
}

static int status(sqlite3 *db, const struct gr_config *cfg)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT count(*), coalesce(sum(len), 0), "
                               "coalesce(sum(state IN (2, 3)), 0) FROM items WHERE state IN (2, 3, 4)",
                           -1, &st, NULL) != SQLITE_OK)
        return fail(db, "reading the store");
    if (sqlite3_step(st) == SQLITE_ROW)
        printf("store %s: %lld items pending (%lld bytes), %lld not yet routed\n", cfg->store_path,
               sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1), sqlite3_column_int64(st, 2));
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(db,
                           "WITH h(name) AS (SELECT DISTINCT handler FROM units) "
                           "SELECT name, (SELECT count(*) FROM units WHERE handler = name AND state = 0),"
                           " (SELECT count(*) FROM units WHERE handler = name AND state = 1),"
                           " (SELECT count(*) FROM units WHERE handler = name AND state = 3),"
                           " (SELECT min(created_ms) FROM units WHERE handler = name AND state = 0) "
                           "FROM h ORDER BY name",
                           -1, &st, NULL) != SQLITE_OK)
        return fail(db, "reading the store");
    printf("%-24s %10s %12s %12s %16s\n", "HANDLER", "PENDING", "IN PROGRESS", "DEAD LETTERS",
           "OLDEST PENDING");
    int64_t now = gr_wall_ms();
    while (sqlite3_step(st) == SQLITE_ROW) {
        char a[32];
        gr_admin_duration(sqlite3_column_type(st, 4) == SQLITE_NULL ? 0 : now - sqlite3_column_int64(st, 4), a);
        const char *name = (const char *)sqlite3_column_text(st, 0);
        printf("%-24s %10lld %12lld %12lld %16s%s\n", name, sqlite3_column_int64(st, 1),
               sqlite3_column_int64(st, 2), sqlite3_column_int64(st, 3), a,
               gr_config_handler_index(cfg, name) < 0 ? "  (not configured)" : "");
    }
    sqlite3_finalize(st);
    return 0;
}

/* What a delivery carries, as two words: "notification RESOURCE" or
 * "event NAME" ("-" when absent). */
static char *what(const char *body, const char *event)
{
    json_t *v = json_loads(event ? event : body, 0, NULL);
    const char *s = event ? json_string_value(json_object_get(v, "event"))
                          : json_string_value(json_object_get(v, "resource"));
    if (!s && !event)
        s = json_string_value(json_object_get(v, "lifecycleEvent"));
    char *out = gr_xprintf("%s %.80s", event ? "event" : "notification", s && *s ? s : "-");
    for (char *p = strchr(out, ' ') + 1; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            *p = '_'; /* one word, one line */
    json_decref(v);
    return out;
}

/* An error text on one line: control characters become spaces. */
static char *one_line(const unsigned char *text)
{
    char *out = gr_xstrdup(text ? (const char *)text : "");
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < ' ' || *p == 0x7f)
            *p = ' ';
    return out;
}

static int dlq_list(sqlite3 *db)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT u.id, u.handler, u.attempts, u.finished_ms, u.last_error, "
                               "bd.body, u.event FROM units u JOIN bodies bd ON bd.id = u.item_id "
                               "WHERE u.state = 3 ORDER BY u.id",
                           -1, &st, NULL) != SQLITE_OK)
        return fail(db, "reading the store");
    printf("%-8s %-20s %8s %8s  %-50s %s\n", "ID", "HANDLER", "ATTEMPTS", "AGE", "WHAT",
           "LAST ERROR");
    int64_t now = gr_wall_ms();
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        char a[32];
        gr_admin_duration(now - sqlite3_column_int64(st, 3), a);
        char *err = one_line(sqlite3_column_text(st, 4));
        char *w = what((const char *)sqlite3_column_text(st, 5),
                       (const char *)sqlite3_column_text(st, 6));
        printf("%-8lld %-20s %8d %8s  %-50s %s\n", sqlite3_column_int64(st, 0),
               sqlite3_column_text(st, 1), sqlite3_column_int(st, 2), a, w, err);
        free(w);
        free(err);
        n++;
    }
    sqlite3_finalize(st);
    fprintf(stderr, "%d dead letter%s\n", n, n == 1 ? "" : "s");
    return 0;
}

static int dlq_show(sqlite3 *db, const char *id)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT u.id, u.handler, u.state, u.attempts, u.created_ms, "
                               "u.finished_ms, u.last_error, bd.body, u.event, i.received_ms "
                               "FROM units u JOIN items i ON i.id = u.item_id JOIN bodies bd ON bd.id = u.item_id "
                               "WHERE u.id = ?1",
                           -1, &st, NULL) != SQLITE_OK)
        return fail(db, "reading the store");
    sqlite3_bind_int64(st, 1, strtoll(id, NULL, 10));
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        fprintf(stderr, "graphrouter: no delivery %s in the store\n", id);
        return 1;
    }
    static const char *const states[] = {"pending", "running", "done", "dead"};
    char created[GR_RFC3339_LEN], finished[GR_RFC3339_LEN], received[GR_RFC3339_LEN];
    gr_rfc3339(sqlite3_column_int64(st, 4), created);
    gr_rfc3339(sqlite3_column_int64(st, 5), finished);
    gr_rfc3339(sqlite3_column_int64(st, 9), received);
    int state = sqlite3_column_int(st, 2);
    json_t *out = json_pack("{s:I,s:s,s:s,s:i,s:s,s:s?,s:s?,s:s}", "id",
                            (json_int_t)sqlite3_column_int64(st, 0), "handler",
                            sqlite3_column_text(st, 1), "state",
                            state >= 0 && state < 4 ? states[state] : "unknown", "attempts",
                            sqlite3_column_int(st, 3), "created_at", created, "finished_at",
                            sqlite3_column_type(st, 5) == SQLITE_NULL ? NULL : finished,
                            "last_error", sqlite3_column_text(st, 6), "item_received_at", received);
    /* The item as received: rich content stays encrypted. */
    json_object_set_new(out, "item", json_loads((const char *)sqlite3_column_text(st, 7), 0, NULL));
    if (sqlite3_column_type(st, 8) != SQLITE_NULL)
        json_object_set_new(out, "event",
                            json_loads((const char *)sqlite3_column_text(st, 8), 0, NULL));
    sqlite3_finalize(st);
    char *text = json_dumps(out, JSON_INDENT(2));
    printf("%s\n", text);
    free(text);
    json_decref(out);
    return 0;
}

/* The handlers the configuration names, as a JSON array for json_each(). */
static char *handler_names(const struct gr_config *cfg)
{
    json_t *names = json_array();
    for (size_t i = 0; i < cfg->nhandlers; i++)
        json_array_append_new(names, json_string(cfg->handlers[i].name));
    char *text = json_dumps(names, JSON_COMPACT);
    json_decref(names);
    return text;
}

/* Runs `sql` with ?1 the id (unless all), ?2 now and ?3 the configured
 * handlers; returns the rows it changed, or -1. */
static int replay_step(sqlite3 *db, const char *sql, bool all, const char *id, const char *names)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return -1;
    if (!all)
        sqlite3_bind_int64(st, 1, strtoll(id, NULL, 10));
    sqlite3_bind_int64(st, 2, gr_wall_ms());
    sqlite3_bind_text(st, 3, names, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? sqlite3_changes(db) : -1;
}

/* Dead letters back to pending, attempts from zero; their items open again.
 * Only those of handlers the configuration names: the daemon would make the
 * others dead letters again. */
static int dlq_replay(sqlite3 *db, const struct gr_config *cfg, const char *id)
{
    bool all = strcmp(id, "--all") == 0;
    char *names = handler_names(cfg);
#define REPLAYABLE "state = 3 AND handler IN (SELECT value FROM json_each(?3))"
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        free(names);
        return fail(db, "locking the store");
    }
    /* (items' states: store/sqlite.h) */
    int n = replay_step(db, all ? "UPDATE items SET state = 4, done_ms = received_ms WHERE id IN "
                                  "(SELECT item_id FROM units WHERE " REPLAYABLE ")"
                                : "UPDATE items SET state = 4, done_ms = received_ms WHERE id = "
                                  "(SELECT item_id FROM units WHERE id = ?1 AND " REPLAYABLE ")",
                        all, id, names);
    if (n >= 0)
        n = replay_step(db, all ? "UPDATE units SET state = 0, attempts = 0, finished_ms = NULL, "
                                  "due_ms = ?2 WHERE " REPLAYABLE
                                : "UPDATE units SET state = 0, attempts = 0, finished_ms = NULL, "
                                  "due_ms = ?2 WHERE id = ?1 AND " REPLAYABLE,
                        all, id, names);
#undef REPLAYABLE
    free(names);
    if (n < 0 || sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        int rc = fail(db, "replaying");
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    /* What was left, and why. */
    sqlite3_stmt *st;
    int left = 0;
    char *handler = NULL;
    if (sqlite3_prepare_v2(db, all ? "SELECT count(*), min(handler) FROM units WHERE state = 3"
                                   : "SELECT count(*), min(handler) FROM units WHERE state = 3 "
                                     "AND id = ?1",
                           -1, &st, NULL) == SQLITE_OK) {
        if (!all)
            sqlite3_bind_int64(st, 1, strtoll(id, NULL, 10));
        if (sqlite3_step(st) == SQLITE_ROW) {
            left = sqlite3_column_int(st, 0);
            if (sqlite3_column_text(st, 1))
                handler = gr_xstrdup((const char *)sqlite3_column_text(st, 1));
        }
        sqlite3_finalize(st);
    }
    int rc = 0;
    if (!all && n == 0 && left) {
        fprintf(stderr, "graphrouter: dead letter %s is for handler \"%s\", which %s does not "
                        "configure: replayed, it would be a dead letter again\n",
                id, handler, cfg->file);
        rc = 1;
    } else if (!all && n == 0) {
        fprintf(stderr, "graphrouter: no dead letter %s in the store\n", id);
        rc = 1;
    } else {
        printf("%d dead letter%s replayed\n", n, n == 1 ? "" : "s");
        if (all && left)
            printf("%d left: for handlers %s does not configure (such as \"%s\")\n", left,
                   cfg->file, handler);
    }
    free(handler);
    return rc;
}

static int dlq_purge(sqlite3 *db)
{
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return fail(db, "locking the store");
    if (sqlite3_exec(db, "DELETE FROM units WHERE state = 3", NULL, NULL, NULL) != SQLITE_OK) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return fail(db, "purging");
    }
    int n = sqlite3_changes(db);
    /* their items are finished now: retention counts from here */
    if (sqlite3_exec(db, "UPDATE items SET state = 5, done_ms = strftime('%s') * 1000 WHERE "
                         "state = 6", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return fail(db, "purging");
    }
    printf("%d dead letter%s purged\n", n, n == 1 ? "" : "s");
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: graphrouter -c FILE status\n"
                    "       graphrouter -c FILE dlq list | show ID | replay ID | replay --all | "
                    "purge\n"
                    "       graphrouter -c FILE subscriptions [--json]\n");
    return 2;
}

int gr_store_admin(const char *config_file, int argc, char **argv)
{
    bool is_status = strcmp(argv[0], "status") == 0;
    bool is_subs = strcmp(argv[0], "subscriptions") == 0;
    bool subs_json = is_subs && argc == 2 && strcmp(argv[1], "--json") == 0;
    if (is_subs && argc != 1 && !subs_json)
        return usage();
    if (!is_status && !is_subs && (strcmp(argv[0], "dlq") != 0 || argc < 2))
        return usage();
    const char *cmd = is_status || is_subs ? argv[0] : argv[1];
    bool needs_id = strcmp(cmd, "show") == 0 || strcmp(cmd, "replay") == 0;
    if ((is_status && argc != 1) || (!is_status && !is_subs && argc != (needs_id ? 3 : 2)))
        return usage();
    struct gr_config *cfg;
    char *err = NULL;
    if (gr_config_load(config_file, &cfg, &err) < 0) {
        fprintf(stderr, "%s\n", err);
        free(err);
        return 1;
    }
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(cfg->store_path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        fprintf(stderr, "graphrouter: no store at %s (%s); has graphrouter run with this "
                        "configuration?\n",
                cfg->store_path, sqlite3_errmsg(db));
        sqlite3_close(db);
        gr_config_free(cfg);
        return 1;
    }
    sqlite3_busy_timeout(db, 10000);
    /* states and tables are read as this graphrouter's layout: another
     * layout would be misread (the daemon converts older ones at start) */
    sqlite3_stmt *uv;
    int version = SCHEMA_VERSION;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &uv, NULL) == SQLITE_OK) {
        if (sqlite3_step(uv) == SQLITE_ROW)
            version = sqlite3_column_int(uv, 0);
        sqlite3_finalize(uv);
    }
    if (version != SCHEMA_VERSION) {
        fprintf(stderr, "graphrouter: %s holds store layout %d; this graphrouter reads layout %d%s\n",
                cfg->store_path, version, SCHEMA_VERSION,
                version < SCHEMA_VERSION ? " (start this graphrouter once: it converts the file)"
                                         : "");
        sqlite3_close(db);
        gr_config_free(cfg);
        return 1;
    }
    int rc;
    if (is_status)
        rc = status(db, cfg);
    else if (is_subs)
        rc = gr_subs_admin(db, cfg, subs_json);
    else if (strcmp(cmd, "list") == 0)
        rc = dlq_list(db);
    else if (strcmp(cmd, "show") == 0)
        rc = dlq_show(db, argv[2]);
    else if (strcmp(cmd, "replay") == 0)
        rc = dlq_replay(db, cfg, argv[2]);
    else if (strcmp(cmd, "purge") == 0)
        rc = dlq_purge(db);
    else
        rc = usage();
    sqlite3_close(db);
    gr_config_free(cfg);
    return rc;
}
