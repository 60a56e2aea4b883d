/*
 * The control plane's records in the SQLite store (see store.h): the
 * subscriptions graphrouter manages and the lifecycle events it has yet to
 * act on. Each call is a REQ_CALL the writer thread runs in its next
 * transaction, after what was queued before it (a lifecycle item routed
 * just before is therefore seen by the load that follows it).
 *
 * Tables (layout 3):
 *   subscriptions(key, id, tenant, resource, change_type, rich, cert_id,
 *       cert_thumbprint, secret, state, resync, expires_ms, renewed_ms,
 *       due_ms, failures, last_error, created_ms, updated_ms, replaced_by)
 *       secret is the SHA-256 of the clientState, never the clientState
 *   subscription_events(seq, subscription_id, event, item_id, received_ms)
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "store/sqlite.h"
#include "log.h"
#include "util.h"

void gr_sub_record_clear(struct gr_sub_record *r)
{
    free(r->key);
    free(r->id);
    free(r->tenant);
    free(r->resource);
    free(r->change_type);
    free(r->cert_id);
    free(r->cert_thumbprint);
    free(r->resync);
    free(r->last_error);
    free(r->replaced_by);
    *r = (struct gr_sub_record){0};
}

static char *dup_or_null(const char *s)
{
    return s ? gr_xstrdup(s) : NULL;
}

void gr_sub_record_copy(struct gr_sub_record *d, const struct gr_sub_record *s)
{
    *d = *s;
    d->key = dup_or_null(s->key);
    d->id = dup_or_null(s->id);
    d->tenant = dup_or_null(s->tenant);
    d->resource = dup_or_null(s->resource);
    d->change_type = dup_or_null(s->change_type);
    d->cert_id = dup_or_null(s->cert_id);
    d->cert_thumbprint = dup_or_null(s->cert_thumbprint);
    d->resync = dup_or_null(s->resync);
    d->last_error = dup_or_null(s->last_error);
    d->replaced_by = dup_or_null(s->replaced_by);
}

void gr_sub_events_free(struct gr_sub_event *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(e[i].subscription_id);
        free(e[i].event);
    }
    free(e);
}

int sq_add_sub_event(struct sqlite_store *s, const char *subscription, const char *event,
                     int64_t item, int64_t now)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, "INSERT INTO subscription_events(subscription_id, event, "
                                       "item_id, received_ms) VALUES(?1, ?2, ?3, ?4)",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_text(st, 1, subscription, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, event, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, item);
    sqlite3_bind_int64(st, 4, now);
    rc = sq_step(st);
    sqlite3_finalize(st);
    return rc;
}

/* ---- load -------------------------------------------------------------- */

struct loaded {
    struct gr_sub_record *v;
    size_t n;
    struct gr_sub_event *events;
    size_t nevents;
};

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

static int call_load(struct sqlite_store *s, struct req *r, int64_t now, struct delta *d)
{
    (void)now, (void)d;
    struct loaded *out = r->arg;
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db,
                                "SELECT key, id, tenant, resource, change_type, rich, cert_id, "
                                "cert_thumbprint, secret, state, resync, expires_ms, renewed_ms, "
                                "due_ms, failures, last_error, created_ms, replaced_by FROM "
                                "subscriptions "
                                "ORDER BY key",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        out->v = gr_xrealloc(out->v, (out->n + 1) * sizeof *out->v);
        struct gr_sub_record *x = &out->v[out->n++];
        *x = (struct gr_sub_record){0};
        x->key = sq_column_text(st, 0, NULL);
        x->id = sq_column_text(st, 1, NULL);
        x->tenant = sq_column_text(st, 2, NULL);
        x->resource = sq_column_text(st, 3, NULL);
        x->change_type = sq_column_text(st, 4, NULL);
        x->rich = sqlite3_column_int(st, 5) != 0;
        x->cert_id = sq_column_text(st, 6, NULL);
        x->cert_thumbprint = sq_column_text(st, 7, NULL);
        if (sqlite3_column_bytes(st, 8) == (int)sizeof x->secret)
            memcpy(x->secret, sqlite3_column_blob(st, 8), sizeof x->secret);
        x->state = (enum gr_sub_state)sqlite3_column_int(st, 9);
        x->resync = sq_column_text(st, 10, NULL);
        x->expires_ms = sqlite3_column_int64(st, 11);
        x->renewed_ms = sqlite3_column_int64(st, 12);
        x->due_ms = sqlite3_column_int64(st, 13);
        x->failures = (unsigned)sqlite3_column_int(st, 14);
        x->last_error = sq_column_text(st, 15, NULL);
        x->created_ms = sqlite3_column_int64(st, 16);
        x->replaced_by = sq_column_text(st, 17, NULL);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return rc;
    rc = sqlite3_prepare_v2(s->db,
                            "SELECT seq, subscription_id, event FROM subscription_events "
                            "ORDER BY seq",
                            -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        out->events = gr_xrealloc(out->events, (out->nevents + 1) * sizeof *out->events);
        struct gr_sub_event *e = &out->events[out->nevents++];
        e->seq = sqlite3_column_int64(st, 0);
        e->subscription_id = sq_column_text(st, 1, NULL);
        e->event = sq_column_text(st, 2, NULL);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : rc;
}

int sq_subs_load(struct gr_store *base, struct gr_sub_record **v, size_t *n,
                 struct gr_sub_event **events, size_t *nevents)
{
    struct loaded out = {0};
    struct req *r = gr_xcalloc(1, sizeof *r);
    *r = (struct req){.kind = REQ_CALL, .call = call_load, .arg = &out};
    bool ok = sq_run_call((struct sqlite_store *)base, r);
    sq_free_req(r);
    if (!ok) {
        for (size_t i = 0; i < out.n; i++)
            gr_sub_record_clear(&out.v[i]);
        free(out.v);
        gr_sub_events_free(out.events, out.nevents);
        return -1;
    }
    *v = out.v;
    *n = out.n;
    *events = out.events;
    *nevents = out.nevents;
    return 0;
}

/* ---- put and delete ------------------------------------------------------ */

struct put {
    const struct gr_sub_record *r;
    const int64_t *consumed;
    size_t nconsumed;
    const struct gr_store_item *resync;
};

static int insert_resync(struct sqlite_store *s, const struct gr_store_item *it, int64_t now,
                         struct delta *d)
{
    sqlite3_stmt *ins = S(s, S_INS_ITEM);
    sqlite3_bind_int64(ins, 1, now);
    sqlite3_bind_null(ins, 3);
    sqlite3_bind_int64(ins, 4, (sqlite3_int64)it->len);
    sqlite3_bind_null(ins, 5); /* never a duplicate */
    int rc = sq_step(ins);
    sqlite3_clear_bindings(ins);
    if (!rc)
        rc = sq_insert_body(s, it->body, it->len);
    if (!rc) {
        d->added_items = 1;
        d->added_bytes = it->len;
        d->new_work = true;
    }
    return rc;
}

static int call_put(struct sqlite_store *s, struct req *req, int64_t now, struct delta *d)
{
    const struct put *p = req->arg;
    const struct gr_sub_record *r = p->r;
    sqlite3_stmt *st;
    int rc = 0;
    if (!r)
        goto events;
    rc = sqlite3_prepare_v2(
        s->db,
        "INSERT OR REPLACE INTO subscriptions(key, id, tenant, resource, change_type, rich, "
        "cert_id, cert_thumbprint, secret, state, resync, expires_ms, renewed_ms, due_ms, "
        "failures, last_error, created_ms, updated_ms, replaced_by) VALUES(?1, ?2, ?3, ?4, ?5, "
        "?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_text(st, 1, r->key, -1, SQLITE_STATIC);
    bind_text_or_null(st, 2, r->id);
    sqlite3_bind_text(st, 3, r->tenant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, r->resource, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, r->change_type, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 6, r->rich);
    bind_text_or_null(st, 7, r->cert_id);
    bind_text_or_null(st, 8, r->cert_thumbprint);
    sqlite3_bind_blob(st, 9, r->secret, sizeof r->secret, SQLITE_STATIC);
    sqlite3_bind_int(st, 10, (int)r->state);
    bind_text_or_null(st, 11, r->resync);
    sqlite3_bind_int64(st, 12, r->expires_ms);
    sqlite3_bind_int64(st, 13, r->renewed_ms);
    sqlite3_bind_int64(st, 14, r->due_ms);
    sqlite3_bind_int(st, 15, (int)r->failures);
    bind_text_or_null(st, 16, r->last_error);
    sqlite3_bind_int64(st, 17, r->created_ms ? r->created_ms : now);
    sqlite3_bind_int64(st, 18, now);
    bind_text_or_null(st, 19, r->replaced_by);
    rc = sq_step(st);
    sqlite3_finalize(st);
events:
    if (!rc && p->nconsumed &&
        (rc = sqlite3_prepare_v2(s->db, "DELETE FROM subscription_events WHERE seq = ?1", -1,
                                 &st, NULL)) == SQLITE_OK) {
        for (size_t i = 0; i < p->nconsumed && !rc; i++) {
            sqlite3_bind_int64(st, 1, p->consumed[i]);
            rc = sq_step(st);
        }
        sqlite3_finalize(st);
    }
    if (!rc && p->resync)
        rc = insert_resync(s, p->resync, now, d);
    return rc;
}

int sq_subs_put(struct gr_store *base, const struct gr_sub_record *r, const int64_t *consumed,
                size_t nconsumed, const struct gr_store_item *resync)
{
    struct put p = {r, consumed, nconsumed, resync};
    struct req *q = gr_xcalloc(1, sizeof *q);
    *q = (struct req){.kind = REQ_CALL, .call = call_put, .arg = &p};
    bool ok = sq_run_call((struct sqlite_store *)base, q);
    sq_free_req(q);
    return ok ? 0 : -1;
}

static int call_delete(struct sqlite_store *s, struct req *req, int64_t now, struct delta *d)
{
    (void)now, (void)d;
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, "DELETE FROM subscriptions WHERE key = ?1", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_text(st, 1, req->arg, -1, SQLITE_STATIC);
    rc = sq_step(st);
    sqlite3_finalize(st);
    return rc;
}

int sq_subs_delete(struct gr_store *base, const char *key)
{
    struct req *q = gr_xcalloc(1, sizeof *q);
    *q = (struct req){.kind = REQ_CALL, .call = call_delete, .arg = (void *)key};
    bool ok = sq_run_call((struct sqlite_store *)base, q);
    sq_free_req(q);
    return ok ? 0 : -1;
}

/* One graphrouter process owns a SQLite store (its writer thread is the
 * file's only writer), so it always holds the lease. */
bool sq_lease(struct gr_store *base, int64_t ttl_ms)
{
    (void)base, (void)ttl_ms;
    return true;
}
