/*
 * graphrouter -c FILE subscriptions [--json]: the subscriptions graphrouter
 * manages, read from the store beside the running daemon (see
 * store_admin.h), and those the configuration declares but the daemon has
 * not recorded yet. Never prints a secret: the store has only digests.
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "store/store.h"
#include "store/store_admin.h"
#include "util.h"

/* A record of the store's, or a declaration not recorded yet (declared). */
struct row {
    struct gr_sub_record r;
    bool declared;
};

static char *text(sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    return t ? gr_xstrdup((const char *)t) : NULL;
}

static const char *state_name(const struct row *row, int64_t now)
{
    const struct gr_sub_record *r = &row->r;
    if (row->declared)
        return "declared";
    switch (r->state) {
    case GR_SUB_CREATING: return r->failures ? "failing" : "creating";
    case GR_SUB_ACTIVE: return r->expires_ms && r->expires_ms <= now ? "expired" : "active";
    case GR_SUB_DELETING: return "deleting";
    default: return "unknown";
    }
}

static json_t *time_or_null(int64_t ms)
{
    if (ms <= 0)
        return json_null();
    char t[GR_RFC3339_LEN];
    gr_rfc3339(ms, t);
    return json_string(t);
}

static json_t *as_json(const struct row *row, int64_t now)
{
    const struct gr_sub_record *r = &row->r;
    json_t *types = json_array();
    char *ct = gr_xstrdup(r->change_type ? r->change_type : "");
    for (char *save = NULL, *t = strtok_r(ct, ",", &save); t; t = strtok_r(NULL, ",", &save))
        json_array_append_new(types, json_string(t));
    free(ct);
    return json_pack("{s:s?,s:s,s:s?,s:s?,s:o,s:b,s:s?,s:o,s:o,s:o,s:i,s:s?,s:s?}", "id", r->id,
                     "state", state_name(row, now), "tenant", r->tenant, "resource", r->resource,
                     "change_type", types, "include_resource_data", r->rich, "certificate_id",
                     r->cert_id, "expires", time_or_null(r->expires_ms), "renewed",
                     time_or_null(r->renewed_ms), "next_action",
                     time_or_null(r->state == GR_SUB_ACTIVE || r->failures ? r->due_ms : 0),
                     "failures", (int)r->failures, "resync_pending", r->resync, "last_error",
                     r->last_error);
}

/* One line, one field: what Graph sent may hold anything. */
static char *printable(const char *v)
{
    char *out = gr_xstrdup(v && *v ? v : "-");
    for (char *p = out; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            *p = (unsigned char)*p == ' ' ? ' ' : '?';
    return out;
}

static void print_row(const struct row *row, int64_t now)
{
    const struct gr_sub_record *r = &row->r;
    char expires[32];
    gr_admin_duration(r->expires_ms ? r->expires_ms - now : 0, expires);
    char *id = printable(r->id), *tenant = printable(r->tenant), *ct = printable(r->change_type),
         *res = printable(r->resource), *err = printable(r->last_error);
    for (char *p = res; *p; p++)
        if (*p == ' ')
            *p = '_'; /* the resource is one column */
    printf("%-36s %-9s %10s  %-36s %-24s %-40s %s\n", id, state_name(row, now), expires, tenant,
           ct, res, err);
    free(id);
    free(tenant);
    free(ct);
    free(res);
    free(err);
}

int gr_subs_admin(sqlite3 *db, const struct gr_config *cfg, bool as_json_output)
{
    struct row *rows = NULL;
    size_t n = 0;
    sqlite3_stmt *st;
    bool has_table = sqlite3_prepare_v2(db, "SELECT key, id, tenant, resource, change_type, "
                                            "rich, cert_id, resync, last_error, state, "
                                            "expires_ms, renewed_ms, due_ms, failures FROM "
                                            "subscriptions ORDER BY tenant, resource, key",
                                        -1, &st, NULL) == SQLITE_OK;
    while (has_table && sqlite3_step(st) == SQLITE_ROW) {
        rows = gr_xrealloc(rows, (n + 1) * sizeof *rows);
        struct gr_sub_record *r = &rows[n++].r;
        rows[n - 1].declared = false;
        *r = (struct gr_sub_record){.key = text(st, 0), .id = text(st, 1), .tenant = text(st, 2),
                                    .resource = text(st, 3), .change_type = text(st, 4),
                                    .rich = sqlite3_column_int(st, 5) != 0,
                                    .cert_id = text(st, 6), .resync = text(st, 7),
                                    .last_error = text(st, 8),
                                    .state = (enum gr_sub_state)sqlite3_column_int(st, 9),
                                    .expires_ms = sqlite3_column_int64(st, 10),
                                    .renewed_ms = sqlite3_column_int64(st, 11),
                                    .due_ms = sqlite3_column_int64(st, 12),
                                    .failures = (unsigned)sqlite3_column_int(st, 13)};
    }
    if (has_table)
        sqlite3_finalize(st);
    /* declared, not recorded yet (the daemon has not run since) */
    for (size_t i = 0; i < cfg->ndeclarations; i++) {
        const struct gr_declaration *d = &cfg->declarations[i];
        bool known = false;
        for (size_t j = 0; j < n && !known; j++)
            known = rows[j].r.key && strcmp(rows[j].r.key, d->key) == 0;
        if (known)
            continue;
        rows = gr_xrealloc(rows, (n + 1) * sizeof *rows);
        rows[n++] = (struct row){{.tenant = gr_xstrdup(d->tenant),
                                  .resource = gr_xstrdup(d->resource),
                                  .change_type = gr_xstrdup(d->change_type), .rich = d->rich,
                                  .cert_id = d->certificate_id ? gr_xstrdup(d->certificate_id)
                                                               : NULL},
                                 true};
    }
    int64_t now = gr_wall_ms();
    if (as_json_output) {
        json_t *list = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(list, as_json(&rows[i], now));
        char *out = json_dumps(list, JSON_INDENT(2));
        printf("%s\n", out);
        free(out);
        json_decref(list);
    } else {
        printf("%-36s %-9s %10s  %-36s %-24s %-40s %s\n", "ID", "STATE", "EXPIRES IN", "TENANT",
               "CHANGE TYPES", "RESOURCE", "LAST ERROR");
        for (size_t i = 0; i < n; i++)
            print_row(&rows[i], now);
        fprintf(stderr, "%zu subscription%s\n", n, n == 1 ? "" : "s");
    }
    for (size_t i = 0; i < n; i++)
        gr_sub_record_clear(&rows[i].r);
    free(rows);
    return 0;
}
