/*
 * What the subscription manager asks Graph (see manager.h): reconcile,
 * create, renew (with certificate rotation), delete, and the resync items.
 * Runs on the manager's thread only. Log lines name the subscription id,
 * tenant and resource; never a clientState, secret or token.
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "graph/client.h"
#include "graph/manager.h"
#include "graph/manager_int.h"
#include "route/router.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define GR_MAX_LIST_PAGES 1000
#define DELETE_KEY_PREFIX "delete\n"

void gr_mgr_ctx_init(struct gr_mgr_ctx *ctx, struct gr_manager *m, struct gr_generation *g)
{
    const struct gr_config *cfg = g->cfg;
    *ctx = (struct gr_mgr_ctx){.m = m, .g = g, .cfg = cfg};
    if (cfg->graph.present && cfg->graph.public_url) {
        ctx->notification_url =
            gr_xprintf("%s%s", cfg->graph.public_url, cfg->notification_paths[0]);
        ctx->lifecycle_url = gr_xprintf("%s%s", cfg->graph.public_url, cfg->lifecycle_paths[0]);
    }
}

void gr_mgr_ctx_free(struct gr_mgr_ctx *ctx)
{
    free(ctx->notification_url);
    free(ctx->lifecycle_url);
}

static const struct gr_declaration *declared(const struct gr_mgr_ctx *ctx, const char *key)
{
    for (size_t i = 0; i < ctx->cfg->ndeclarations; i++)
        if (strcmp(ctx->cfg->declarations[i].key, key) == 0)
            return &ctx->cfg->declarations[i];
    return NULL;
}

static bool tenant_configured(const struct gr_mgr_ctx *ctx, const char *tenant)
{
    for (size_t i = 0; ctx->cfg->graph.present && i < ctx->cfg->graph.ntenants; i++)
        if (strcasecmp(ctx->cfg->graph.tenants[i].id, tenant) == 0)
            return true;
    return false;
}

static void set_string(char **field, const char *value)
{
    free(*field);
    *field = value ? gr_xstrdup(value) : NULL;
}

static const char *id_of(const struct gr_sub_record *r)
{
    return r->id ? r->id : "(not created)";
}

/* ---- outcomes ------------------------------------------------------------- */

static void failed(struct gr_mgr_sub *s, const char *what, const struct gr_graph_response *resp,
                   int64_t now, int64_t not_after)
{
    s->r.failures++;
    set_string(&s->r.last_error, resp->error ? resp->error : "no answer");
    int64_t wait = gr_manager_backoff_ms(s->r.failures, gr_mgr_jitter());
    s->r.due_ms = now + wait;
    if (not_after && s->r.due_ms > not_after)
        s->r.due_ms = not_after;
    gr_warn("subscription %s (tenant %s, resource %s): %s failed (attempt %u): %s; trying again "
            "in %lld s",
            id_of(&s->r), s->r.tenant, s->r.resource, what, s->r.failures, s->r.last_error,
            (long long)((s->r.due_ms - now + 999) / 1000));
}

static void throttled(struct gr_mgr_sub *s, const char *what, const struct gr_graph_response *resp,
                      int64_t now)
{
    s->r.due_ms = now + (resp->retry_after_ms > 0 ? resp->retry_after_ms : 1000);
    gr_debug("subscription %s (tenant %s, resource %s): %s waits %lld ms: the tenant is "
             "throttled (Retry-After), at its write budget, or not answering",
            id_of(&s->r), s->r.tenant, s->r.resource, what, (long long)(s->r.due_ms - now));
}

void gr_mgr_recreate(struct gr_mgr_sub *s, const char *reason, int64_t now)
{
    s->r.state = GR_SUB_CREATING;
    set_string(&s->r.id, NULL);
    if (!s->r.resync)
        set_string(&s->r.resync, reason);
    s->r.expires_ms = 0;
    s->r.due_ms = now;
    s->r.failures = 0;
}

void gr_mgr_resync_item(const struct gr_sub_record *r, const char *reason,
                        struct gr_store_item *out)
{
    char expires[GR_RFC3339_LEN];
    gr_rfc3339(r->expires_ms, expires);
    json_t *item = json_pack("{s:s?,s:s,s:s,s:s,s:s,s:s}", "subscriptionId", r->id,
                             "changeType", "resync", "resource", r->resource, "tenantId",
                             r->tenant, "resyncReason", reason,
                             "subscriptionExpirationDateTime", expires);
    *out = (struct gr_store_item){0};
    out->body = json_dumps(item, JSON_COMPACT);
    out->len = strlen(out->body);
    json_decref(item);
}

/* Save, and route the resync the record still owes, now that it is active:
 * both in one step, or neither (it is still owed then). */
static void save_active(struct gr_manager *m, struct gr_mgr_sub *s)
{
    char *reason = s->r.resync;
    if (!reason) {
        gr_mgr_save(m, s, NULL, 0, NULL);
        return;
    }
    struct gr_store_item resync;
    gr_mgr_resync_item(&s->r, reason, &resync);
    s->r.resync = NULL;
    if (gr_mgr_save(m, s, NULL, 0, &resync) == 0) {
        gr_metrics_resync(reason);
        gr_info("subscription %s (tenant %s, resource %s): routing a resync (%s)", s->r.id,
                s->r.tenant, s->r.resource, reason);
        free(reason);
    } else {
        s->r.resync = reason;
    }
    free(resync.body);
}

/* Graph's subscription ids are GUIDs; anything else is never put in a path. */
static bool valid_id(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    return n > 0 && n <= 128 &&
           strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") == n;
}

static int64_t granted_expiry(const struct gr_graph_response *resp, int64_t asked)
{
    int64_t ms;
    const char *e = json_string_value(json_object_get(resp->body, "expirationDateTime"));
    return e && gr_graph_parse_time(e, &ms) ? ms : asked;
}

/* ---- create --------------------------------------------------------------- */

/* Begin a creation: a fresh clientState, published as pending before the
 * create is sent (Graph may deliver before it answers with the id). */
static void new_secret(struct gr_mgr_sub *s)
{
    gr_mgr_forget_secret(s);
    s->client_state = gr_graph_new_client_state();
    unsigned int n = 0;
    EVP_Digest(s->client_state, strlen(s->client_state), s->r.secret, &n, gr_sha256(), NULL);
}

/* The create's JSON text. The clientState (base64url: nothing to escape) is
 * written into the text, never into a JSON tree, so that every copy of it
 * is one the caller wipes. */
static char *create_body(const struct gr_mgr_ctx *ctx, const struct gr_mgr_sub *s,
                         const struct gr_declaration *d, int64_t expires, const char **cert_tp)
{
    char when[GR_RFC3339_LEN];
    gr_rfc3339(expires, when);
    json_t *b = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "changeType", d->change_type,
                          "notificationUrl", ctx->notification_url, "lifecycleNotificationUrl",
                          ctx->lifecycle_url, "resource", d->resource, "expirationDateTime",
                          when, "latestSupportedTlsVersion", "v1_2");
    if (d->rich) {
        const char *cert = gr_keyring_certificate(ctx->g->keyring, d->certificate_id, cert_tp);
        json_object_set_new(b, "includeResourceData", json_true());
        json_object_set_new(b, "encryptionCertificate", json_string(cert ? cert : ""));
        json_object_set_new(b, "encryptionCertificateId", json_string(d->certificate_id));
    }
    char *rest = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    char *text = gr_xprintf("{\"clientState\":\"%s\",%s", s->client_state, rest + 1);
    free(rest);
    return text;
}

static void do_create(struct gr_mgr_ctx *ctx, struct gr_mgr_sub *s, const struct gr_declaration *d)
{
    struct gr_manager *m = ctx->m;
    int64_t now = gr_wall_ms();
    if (!s->client_state) {
        new_secret(s);
        gr_mgr_save(m, s, NULL, 0, NULL);
        gr_mgr_publish(m, ctx->cfg);
    }
    int64_t asked = now + (int64_t)d->expiration_minutes * 60000;
    const char *tp = NULL;
    char *body = create_body(ctx, s, d, asked, &tp);
    struct gr_graph_response resp;
    enum gr_graph_outcome o = gr_graph_call(ctx->g->graph, s->r.tenant, "POST", "/subscriptions",
                                            body, true, &m->stopping, 0, &resp);
    OPENSSL_cleanse(body, strlen(body));
    free(body);
    const char *id = json_string_value(json_object_get(resp.body, "id"));
    if (o == GR_GRAPH_THROTTLED) {
        throttled(s, "creating it", &resp, now);
    } else if (o == GR_GRAPH_ANSWERED && resp.status == 201 && valid_id(id)) {
        gr_metrics_sub_op(GR_SUB_OP_CREATE, true);
        now = gr_wall_ms();
        set_string(&s->r.id, id);
        s->r.state = GR_SUB_ACTIVE;
        s->r.renewed_ms = now;
        s->r.expires_ms = granted_expiry(&resp, asked);
        s->r.due_ms = gr_manager_renewal_due(now, s->r.expires_ms, gr_mgr_jitter(), now);
        s->r.failures = 0;
        set_string(&s->r.last_error, NULL);
        set_string(&s->r.cert_id, d->rich ? d->certificate_id : NULL);
        set_string(&s->r.cert_thumbprint, d->rich ? tp : NULL);
        gr_mgr_forget_secret(s);
        char expires[GR_RFC3339_LEN];
        gr_rfc3339(s->r.expires_ms, expires);
        gr_info("subscription %s created (tenant %s, resource %s, %s); Graph granted it until %s",
                s->r.id, s->r.tenant, s->r.resource, s->r.change_type, expires);
        save_active(m, s);
    } else {
        gr_metrics_sub_op(GR_SUB_OP_CREATE, false);
        if (o == GR_GRAPH_ANSWERED && resp.status == 409) /* an orphan: list, delete it, again */
            m->reconcile_due = now;
        if (o == GR_GRAPH_ANSWERED && !resp.error)
            resp.error = gr_xprintf("HTTP %ld without a usable subscription id", resp.status);
        failed(s, "creating it", &resp, now, 0);
        gr_mgr_save(m, s, NULL, 0, NULL);
    }
    gr_graph_response_free(&resp);
}

/* ---- renew ---------------------------------------------------------------- */

/* The certificate a rich declaration wants Graph to encrypt to, when the
 * subscription has another one (NULL: nothing to rotate). */
static const char *rotation(const struct gr_mgr_ctx *ctx, const struct gr_mgr_sub *s,
                            const struct gr_declaration *d, const char **tp)
{
    if (!d->rich)
        return NULL;
    const char *cert = gr_keyring_certificate(ctx->g->keyring, d->certificate_id, tp);
    if (!cert)
        return NULL;
    bool same = s->r.cert_id && strcmp(s->r.cert_id, d->certificate_id) == 0 &&
                s->r.cert_thumbprint && strcasecmp(s->r.cert_thumbprint, *tp) == 0;
    return same ? NULL : cert;
}

static void do_renew(struct gr_mgr_ctx *ctx, struct gr_mgr_sub *s, const struct gr_declaration *d)
{
    struct gr_manager *m = ctx->m;
    int64_t now = gr_wall_ms();
    int64_t asked = now + (int64_t)d->expiration_minutes * 60000;
    char when[GR_RFC3339_LEN];
    gr_rfc3339(asked, when);
    json_t *body = json_pack("{s:s}", "expirationDateTime", when);
    const char *tp = NULL, *cert = rotation(ctx, s, d, &tp);
    if (cert) {
        json_object_set_new(body, "encryptionCertificate", json_string(cert));
        json_object_set_new(body, "encryptionCertificateId", json_string(d->certificate_id));
    }
    char *path = gr_xprintf("/subscriptions/%s", s->r.id);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    struct gr_graph_response resp;
    enum gr_graph_outcome o = gr_graph_call(ctx->g->graph, s->r.tenant, "PATCH", path, text, true,
                                            &m->stopping, 0, &resp);
    free(text);
    free(path);
    if (o == GR_GRAPH_THROTTLED) {
        throttled(s, "renewing it", &resp, now);
        if (s->r.due_ms > s->r.expires_ms)
            s->r.due_ms = s->r.expires_ms;
        gr_mgr_save(m, s, NULL, 0, NULL);
    } else if (o == GR_GRAPH_ANSWERED && resp.status == 200) {
        gr_metrics_sub_op(GR_SUB_OP_RENEW, true);
        now = gr_wall_ms();
        s->r.renewed_ms = now;
        s->r.expires_ms = granted_expiry(&resp, asked);
        s->r.due_ms = gr_manager_renewal_due(now, s->r.expires_ms, gr_mgr_jitter(), now);
        s->r.failures = 0;
        set_string(&s->r.last_error, NULL);
        if (cert) {
            set_string(&s->r.cert_id, d->certificate_id);
            set_string(&s->r.cert_thumbprint, tp);
        }
        char expires[GR_RFC3339_LEN];
        gr_rfc3339(s->r.expires_ms, expires);
        gr_info("subscription %s renewed (tenant %s, resource %s)%s%s%s; Graph granted it until %s",
                s->r.id, s->r.tenant, s->r.resource, cert ? ", encryption certificate now \"" : "",
                cert ? d->certificate_id : "", cert ? "\"" : "", expires);
        save_active(m, s);
    } else if (o == GR_GRAPH_ANSWERED && resp.status == 404) {
        gr_metrics_sub_op(GR_SUB_OP_RENEW, false);
        gr_warn("subscription %s (tenant %s, resource %s): Graph no longer has it (renewal "
                "answered 404); creating it again, then a resync",
                s->r.id, s->r.tenant, s->r.resource);
        gr_mgr_recreate(s, "renewal_not_found", now);
        gr_mgr_save(m, s, NULL, 0, NULL);
    } else {
        gr_metrics_sub_op(GR_SUB_OP_RENEW, false);
        failed(s, "renewing it", &resp, now, s->r.expires_ms); /* no later than it expires */
        gr_mgr_save(m, s, NULL, 0, NULL);
    }
    gr_graph_response_free(&resp);
}

/* ---- delete ----------------------------------------------------------------- */

static void do_delete(struct gr_mgr_ctx *ctx, struct gr_mgr_sub *s)
{
    struct gr_manager *m = ctx->m;
    int64_t now = gr_wall_ms();
    char *path = gr_xprintf("/subscriptions/%s", s->r.id);
    struct gr_graph_response resp;
    enum gr_graph_outcome o = gr_graph_call(ctx->g->graph, s->r.tenant, "DELETE", path, NULL,
                                            true, &m->stopping, 0, &resp);
    free(path);
    if (o == GR_GRAPH_THROTTLED) {
        throttled(s, "deleting it", &resp, now);
        gr_mgr_save(m, s, NULL, 0, NULL);
    } else if (o == GR_GRAPH_ANSWERED && (resp.status / 100 == 2 || resp.status == 404)) {
        gr_metrics_sub_op(GR_SUB_OP_DELETE, true);
        gr_info("subscription %s deleted (tenant %s, resource %s)%s", s->r.id, s->r.tenant,
                s->r.resource, resp.status == 404 ? ": Graph had it no more" : "");
        gr_mgr_drop(m, s);
    } else {
        gr_metrics_sub_op(GR_SUB_OP_DELETE, false);
        failed(s, "deleting it", &resp, now, 0);
        gr_mgr_save(m, s, NULL, 0, NULL);
    }
    gr_graph_response_free(&resp);
}

/* A subscription graphrouter no longer wants: its record becomes a
 * deletion, under a key of its own, so the declaration may get a new one.
 * With `replaced`, the deletion waits until the declaration's new
 * subscription is live (its URL moved: no gap), and its notifications are
 * accepted meanwhile. */
static void to_deleting(struct gr_manager *m, struct gr_mgr_sub *s, const char *why,
                        bool replaced)
{
    if (!s->r.id) { /* never created: nothing to delete in Graph */
        gr_mgr_drop(m, s);
        return;
    }
    gr_info("subscription %s (tenant %s, resource %s): %s; deleting it", s->r.id, s->r.tenant,
            s->r.resource, why);
    char *old_key = gr_xstrdup(s->r.key);
    struct gr_sub_record r;
    gr_sub_record_copy(&r, &s->r);
    set_string(&r.key, NULL);
    r.key = gr_xprintf(DELETE_KEY_PREFIX "%s", s->r.id);
    r.state = GR_SUB_DELETING;
    r.due_ms = gr_wall_ms();
    r.failures = 0;
    set_string(&r.resync, NULL);
    set_string(&r.replaced_by, replaced ? old_key : NULL);
    if (!gr_mgr_find_key(m, r.key))
        gr_mgr_save(m, gr_mgr_add(m, &r), NULL, 0, NULL); /* first: the deletion is kept */
    gr_mgr_drop(m, gr_mgr_find_key(m, old_key));
    free(old_key);
    gr_sub_record_clear(&r);
}

/* ---- reconcile --------------------------------------------------------------- */

/* Every subscription of the app in `tenant`, following @odata.nextLink; NULL
 * if Graph could not be asked (*wait_ms: its Retry-After, if throttled). */
static json_t *list_all(struct gr_mgr_ctx *ctx, const char *tenant, int64_t *wait_ms)
{
    json_t *all = json_array();
    char *next = gr_xstrdup("/subscriptions");
    for (int page = 0; next && page < GR_MAX_LIST_PAGES; page++) {
        struct gr_graph_response resp;
        enum gr_graph_outcome o = gr_graph_call(ctx->g->graph, tenant, "GET", next, NULL, false,
                                                &ctx->m->stopping, 0, &resp);
        free(next);
        next = NULL;
        const json_t *value = json_object_get(resp.body, "value");
        if (o != GR_GRAPH_ANSWERED || resp.status != 200 || !json_is_array(value)) {
            *wait_ms = o == GR_GRAPH_THROTTLED ? resp.retry_after_ms : 0;
            if (o == GR_GRAPH_THROTTLED)
                gr_info("subscriptions: listing tenant %s's waits %lld ms (an earlier "
                        "Retry-After, or failures)",
                        tenant, (long long)resp.retry_after_ms);
            else
                gr_warn("subscriptions: listing tenant %s's failed: %s; trying again later",
                        tenant, resp.error ? resp.error : "no \"value\" list in Graph's answer");
            gr_graph_response_free(&resp);
            json_decref(all);
            return NULL;
        }
        json_array_extend(all, (json_t *)value);
        const char *link = json_string_value(json_object_get(resp.body, "@odata.nextLink"));
        next = link ? gr_xstrdup(link) : NULL;
        gr_graph_response_free(&resp);
    }
    if (next) { /* cut short, it would make the rest look deleted */
        gr_warn("subscriptions: tenant %s lists more than %d pages; not reconciled", tenant,
                GR_MAX_LIST_PAGES);
        free(next);
        json_decref(all);
        *wait_ms = 0;
        return NULL;
    }
    return all;
}

static const json_t *listed(const json_t *all, const char *id)
{
    size_t i;
    const json_t *e;
    json_array_foreach(all, i, e) {
        const char *eid = json_string_value(json_object_get(e, "id"));
        if (eid && strcasecmp(eid, id) == 0)
            return e;
    }
    return NULL;
}

/* "created,updated" -> its GR_CHANGE_* bits, whatever the order or case. */
static unsigned change_bits(const char *list)
{
    unsigned bits = 0;
    char *copy = gr_xstrdup(list ? list : "");
    for (char *save = NULL, *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
        bits |= gr_change_type_bit(t);
    free(copy);
    return bits;
}

/* The same resource, as Graph compares them for a 409: no leading '/', any case. */
static bool same_resource(const char *a, const char *b)
{
    a += *a == '/';
    b += *b == '/';
    return strcasecmp(a, b) == 0;
}

/* Would this listed subscription conflict (409) with a declared one? */
static bool conflicts_with_declaration(const struct gr_mgr_ctx *ctx, const char *tenant,
                                       const json_t *e)
{
    const char *res = json_string_value(json_object_get(e, "resource"));
    unsigned bits = change_bits(json_string_value(json_object_get(e, "changeType")));
    for (size_t i = 0; res && i < ctx->cfg->ndeclarations; i++) {
        const struct gr_declaration *d = &ctx->cfg->declarations[i];
        if (strcasecmp(d->tenant, tenant) == 0 && same_resource(d->resource, res) &&
            change_bits(d->change_type) == bits)
            return true;
    }
    return false;
}

/* An unknown subscription at this router's URL: ours, orphaned (a create
 * whose answer was lost, a lost store), unless the configuration lists it by
 * id (made elsewhere: never touched), or a top-level client_state could be
 * what it was made with and no declaration needs its place. */
static bool orphan(const struct gr_mgr_ctx *ctx, const char *tenant, const json_t *e,
                   const char *id)
{
    if (gr_config_subscription(ctx->cfg, id))
        return false;
    return !ctx->cfg->has_fallback_secret || conflicts_with_declaration(ctx, tenant, e);
}

static bool same_url(const json_t *e, const char *member, const char *ours)
{
    const char *v = json_string_value(json_object_get(e, member));
    return v && ours && strcmp(v, ours) == 0;
}

/* Compare one tenant's records with what Graph lists. */
static void reconcile_tenant(struct gr_mgr_ctx *ctx, const char *tenant, const json_t *all)
{
    struct gr_manager *m = ctx->m;
    int64_t now = gr_wall_ms();
    for (size_t i = 0; i < m->n;) {
        struct gr_mgr_sub *s = &m->v[i];
        size_t before = m->n;
        if (strcasecmp(s->r.tenant, tenant) != 0 || s->r.state == GR_SUB_CREATING || !s->r.id) {
            i++;
            continue;
        }
        const json_t *e = listed(all, s->r.id);
        if (!e && s->r.state == GR_SUB_DELETING) {
            gr_mgr_drop(m, s); /* gone already */
        } else if (!e) {
            bool want = declared(ctx, s->r.key) != NULL;
            gr_warn("subscription %s (tenant %s, resource %s) is no longer in Graph%s", s->r.id,
                    s->r.tenant, s->r.resource, want ? "; creating it again, then a resync" : "");
            if (want) {
                gr_mgr_recreate(s, now >= s->r.expires_ms ? "expired" : "subscriptionRemoved",
                                now);
                gr_mgr_save(m, s, NULL, 0, NULL);
            } else {
                gr_mgr_drop(m, s);
            }
        } else if (s->r.state == GR_SUB_ACTIVE &&
                   (!same_url(e, "notificationUrl", ctx->notification_url) ||
                    !same_url(e, "lifecycleNotificationUrl", ctx->lifecycle_url))) {
            to_deleting(m, s, "its notification URLs are not this router's any more; it is "
                              "created again at the new ones first", true);
        } else if (s->r.state == GR_SUB_ACTIVE) { /* adopted: Graph's expiry is the truth */
            int64_t graph_ms;
            const char *exp = json_string_value(json_object_get(e, "expirationDateTime"));
            if (exp && gr_graph_parse_time(exp, &graph_ms) && llabs(graph_ms - s->r.expires_ms) > 1000) {
                s->r.expires_ms = graph_ms;
                if (s->r.due_ms > graph_ms)
                    s->r.due_ms = gr_manager_renewal_due(s->r.renewed_ms, graph_ms,
                                                         gr_mgr_jitter(), now);
                gr_mgr_save(m, s, NULL, 0, NULL);
            }
        }
        if (m->n == before) /* a drop moved the last record here: look at it next */
            i++;
    }
    size_t i;
    const json_t *e;
    json_array_foreach(all, i, e) {
        const char *id = json_string_value(json_object_get(e, "id"));
        if (!valid_id(id) || gr_mgr_find_id(m, id) || !same_url(e, "notificationUrl", ctx->notification_url) ||
            !orphan(ctx, tenant, e, id))
            continue; /* known, listed, or not at this router's URL: never touched */
        struct gr_sub_record r = {0};
        r.key = gr_xprintf(DELETE_KEY_PREFIX "%s", id);
        if (gr_mgr_find_key(m, r.key)) {
            free(r.key);
            continue;
        }
        r.id = gr_xstrdup(id);
        r.tenant = gr_xstrdup(tenant);
        const char *res = json_string_value(json_object_get(e, "resource"));
        const char *ct = json_string_value(json_object_get(e, "changeType"));
        r.resource = gr_xstrdup(res ? res : "?");
        r.change_type = gr_xstrdup(ct ? ct : "?");
        r.state = GR_SUB_DELETING;
        r.due_ms = now;
        r.created_ms = now;
        gr_info("subscription %s (tenant %s, resource %s) carries this router's notification URL "
                "but the store does not know it (its clientState cannot be known): deleting it",
                r.id, r.tenant, r.resource);
        gr_mgr_save(m, gr_mgr_add(m, &r), NULL, 0, NULL);
        gr_sub_record_clear(&r);
    }
}

void gr_mgr_reconcile(struct gr_mgr_ctx *ctx)
{
    struct gr_manager *m = ctx->m;
    const struct gr_config *cfg = ctx->cfg;
    int64_t now = gr_wall_ms(), retry_in = -1;
    m->reconcile_due = 0;
    for (size_t t = 0; ctx->g->graph && ctx->notification_url && t < cfg->graph.ntenants; t++) {
        const char *tenant = cfg->graph.tenants[t].id;
        int64_t wait = 0;
        json_t *all = list_all(ctx, tenant, &wait);
        if (!all) {
            if (retry_in < 0 || wait > retry_in)
                retry_in = wait;
            continue;
        }
        reconcile_tenant(ctx, tenant, all);
        json_decref(all);
    }
    /* Records no declaration wants: deleted in Graph; declarations without
     * a record: created. */
    for (size_t i = 0; i < m->n;) {
        struct gr_mgr_sub *s = &m->v[i];
        size_t before = m->n;
        if (s->r.state != GR_SUB_DELETING && !declared(ctx, s->r.key)) {
            if (tenant_configured(ctx, s->r.tenant))
                to_deleting(m, s, "no longer declared", false);
            else
                gr_mgr_act(ctx, s); /* says why, and forgets it */
        } else if (s->r.state == GR_SUB_ACTIVE) {
            const struct gr_declaration *d = declared(ctx, s->r.key);
            const char *tp = NULL;
            if (d && rotation(ctx, s, d, &tp) && s->r.due_ms > now)
                s->r.due_ms = now; /* a new encryption certificate: PATCH it now */
        }
        if (m->n == before)
            i++;
    }
    for (size_t i = 0; i < cfg->ndeclarations; i++) {
        const struct gr_declaration *d = &cfg->declarations[i];
        if (gr_mgr_find_key(m, d->key))
            continue;
        struct gr_sub_record r = {.key = gr_xstrdup(d->key), .tenant = gr_xstrdup(d->tenant),
                                  .resource = gr_xstrdup(d->resource),
                                  .change_type = gr_xstrdup(d->change_type), .rich = d->rich,
                                  .state = GR_SUB_CREATING, .due_ms = now, .created_ms = now};
        struct gr_mgr_sub *s = gr_mgr_add(m, &r);
        new_secret(s);
        gr_mgr_save(m, s, NULL, 0, NULL);
        gr_sub_record_clear(&r);
    }
    if (retry_in >= 0) {
        m->reconcile_failures++;
        int64_t backoff = gr_manager_backoff_ms(m->reconcile_failures, gr_mgr_jitter());
        m->reconcile_due = now + (retry_in > backoff ? retry_in : backoff);
    } else if (cfg->ndeclarations || m->n) {
        /* again later: most resources never say that Graph removed a subscription */
        m->reconcile_failures = 0;
        m->reconcile_due = now + (int64_t)cfg->graph.reconcile_interval_s * 1000;
    }
    gr_mgr_publish(m, cfg);
}

/* ---- acting on one record -------------------------------------------------- */

void gr_mgr_act(struct gr_mgr_ctx *ctx, struct gr_mgr_sub *s)
{
    struct gr_manager *m = ctx->m;
    int64_t now = gr_wall_ms();
    if (!ctx->g->graph || !tenant_configured(ctx, s->r.tenant)) {
        gr_warn("subscription %s (tenant %s, resource %s): the configuration has no credential "
                "for its tenant any more; graphrouter forgets it (it expires on its own)",
                id_of(&s->r), s->r.tenant, s->r.resource);
        gr_mgr_drop(m, s);
        return;
    }
    if (s->r.state == GR_SUB_DELETING) {
        const struct gr_mgr_sub *by = s->r.replaced_by ? gr_mgr_find_key(m, s->r.replaced_by) : NULL;
        if (by && by->r.state != GR_SUB_ACTIVE && declared(ctx, by->r.key)) {
            s->r.due_ms = now + 2000; /* its replacement is not live yet */
            return;
        }
        do_delete(ctx, s);
        return;
    }
    const struct gr_declaration *d = declared(ctx, s->r.key);
    if (!d) {
        to_deleting(m, s, "no longer declared", false);
        return;
    }
    if (s->r.state == GR_SUB_CREATING) {
        do_create(ctx, s, d);
        return;
    }
    if (now >= s->r.expires_ms) {
        gr_warn("subscription %s (tenant %s, resource %s) has expired; creating it again, then "
                "a resync",
                s->r.id, s->r.tenant, s->r.resource);
        gr_mgr_recreate(s, "expired", now);
        gr_mgr_save(m, s, NULL, 0, NULL);
        return;
    }
    do_renew(ctx, s, d);
}
