/*
 * Configuration parsing and strict checking (see config.h). Runs on the
 * control thread only (start, reload, --check); the result is immutable.
 */
#define _GNU_SOURCE
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "privs.h"
#include "secret.h"
#include "util.h"

#ifndef GR_DEFAULT_PLUGIN_DIR
#define GR_DEFAULT_PLUGIN_DIR "/usr/local/lib/graphrouter/plugins"
#endif

#define GR_MAX_CONFIG_BYTES (64u << 20)

/* ---- secrets ----------------------------------------------------------- */

void gr_secret_digest(const char *value, size_t len, struct gr_secret *out)
{
    unsigned int n = 0;
    if (!EVP_Digest(value, len, out->digest, &n, gr_sha256(), NULL) || n != sizeof out->digest)
        abort(); /* SHA-256 cannot fail short of a broken libcrypto */
}

bool gr_secret_matches(const struct gr_secret *secret, const char *value, size_t len)
{
    /* Comparing digests keeps both the content and the length of the secret
     * out of the timing. */
    struct gr_secret presented;
    gr_secret_digest(value, len, &presented);
    return CRYPTO_memcmp(presented.digest, secret->digest, sizeof presented.digest) == 0;
}

/* ---- sections ---------------------------------------------------------- */

static unsigned default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 16 ? 16 : (unsigned)n;
}

static int parse_listen(struct gr_check *c, struct gr_config *cfg)
{
    cfg->listen_address = "127.0.0.1";
    cfg->listen_port = 8080;
    cfg->http_threads = default_threads();
    json_t *listen = NULL;
    if (gr_check_object(c, cfg->root, "listen", false, &listen) < 0)
        return -1;
    if (!listen)
        return 0;
    static const char *const keys[] = {"address", "port", "threads", NULL};
    uint64_t port = cfg->listen_port, threads = cfg->http_threads;
    if (gr_check_keys(c, listen, "\"listen\"", keys) < 0 ||
        gr_check_string(c, listen, "address", false, &cfg->listen_address) < 0 ||
        gr_check_uint(c, listen, "port", 0, 65535, &port) < 0 ||
        gr_check_uint(c, listen, "threads", 1, 256, &threads) < 0)
        return -1;
    unsigned char buf[16];
    if (inet_pton(AF_INET, cfg->listen_address, buf) != 1 &&
        inet_pton(AF_INET6, cfg->listen_address, buf) != 1)
        return gr_check_fail_member(c, listen, "address",
                                    "\"address\" must be a numeric IPv4 or IPv6 address, not "
                                    "\"%s\"",
                                    cfg->listen_address);
    cfg->listen_port = (unsigned)port;
    cfg->http_threads = (unsigned)threads;
    return 0;
}

static int check_path(struct gr_check *c, const json_t *paths, const char *key, const char *p)
{
    if (p[0] != '/' || strpbrk(p, "?# \t\r\n"))
        return gr_check_fail_member(c, paths, key,
                                    "path \"%s\" must start with '/' and hold no '?', '#' or "
                                    "whitespace",
                                    p);
    if (strcmp(p, "/healthz") == 0 || strcmp(p, "/metrics") == 0)
        return gr_check_fail_member(c, paths, key, "path \"%s\" is reserved for graphrouter", p);
    return 0;
}

static int parse_paths(struct gr_check *c, struct gr_config *cfg)
{
    static const char *dflt_notifications = "/notifications", *dflt_lifecycle = "/lifecycle";
    json_t *paths = NULL;
    if (gr_check_object(c, cfg->root, "paths", false, &paths) < 0)
        return -1;
    static const char *const keys[] = {"notifications", "lifecycle", NULL};
    if (paths && (gr_check_keys(c, paths, "\"paths\"", keys) < 0 ||
                  gr_check_string_list(c, paths, "notifications", &cfg->notification_paths,
                                       &cfg->n_notification_paths) < 0 ||
                  gr_check_string_list(c, paths, "lifecycle", &cfg->lifecycle_paths,
                                       &cfg->n_lifecycle_paths) < 0))
        return -1;
    if (!cfg->n_notification_paths) {
        cfg->notification_paths = gr_xmalloc(sizeof *cfg->notification_paths);
        cfg->notification_paths[cfg->n_notification_paths++] = dflt_notifications;
    }
    if (!cfg->n_lifecycle_paths) {
        cfg->lifecycle_paths = gr_xmalloc(sizeof *cfg->lifecycle_paths);
        cfg->lifecycle_paths[cfg->n_lifecycle_paths++] = dflt_lifecycle;
    }
    for (size_t i = 0; i < cfg->n_notification_paths; i++)
        if (check_path(c, paths, "notifications", cfg->notification_paths[i]) < 0)
            return -1;
    for (size_t i = 0; i < cfg->n_lifecycle_paths; i++)
        if (check_path(c, paths, "lifecycle", cfg->lifecycle_paths[i]) < 0)
            return -1;
    return 0;
}

/* A CIDR list: a string or a list of strings; NULL when absent. */
static int parse_cidrs(struct gr_check *c, const json_t *obj, const char *key,
                       struct gr_cidr **out, size_t *n)
{
    const char **texts = NULL;
    if (gr_check_string_list(c, obj, key, &texts, n) < 0)
        return -1;
    *out = *n ? gr_xcalloc(*n, sizeof **out) : NULL;
    for (size_t i = 0; i < *n; i++)
        if (!gr_cidr_parse(texts[i], &(*out)[i])) {
            const json_t *v = json_object_get(obj, key);
            int rc = json_is_array(v)
                         ? gr_check_fail_element(c, v, i,
                                                 "\"%s\" is not an address or CIDR range "
                                                 "(e.g. \"192.0.2.0/24\", \"2001:db8::/32\")",
                                                 texts[i])
                         : gr_check_fail_member(c, obj, key,
                                                "\"%s\" is not an address or CIDR range "
                                                "(e.g. \"192.0.2.0/24\", \"2001:db8::/32\")",
                                                texts[i]);
            free(texts);
            free(*out);
            *out = NULL;
            *n = 0;
            return rc;
        }
    free(texts);
    return 0;
}

static int parse_limits(struct gr_check *c, struct gr_config *cfg)
{
    uint64_t body = 4u << 20, conns = 4096, per_ip = 128, head_s = 10, body_s = 30, timeout = 30;
    json_t *limits = NULL;
    static const char *const limit_keys[] = {
        "max_body_bytes",  "max_connections", "max_connections_per_ip", "header_timeout_s",
        "body_timeout_s",  "connection_timeout_s", "allow_from", "trusted_proxies", NULL};
    if (gr_check_object(c, cfg->root, "limits", false, &limits) < 0)
        return -1;
    if (limits &&
        (gr_check_keys(c, limits, "\"limits\"", limit_keys) < 0 ||
         gr_check_uint(c, limits, "max_body_bytes", 1024, 1u << 30, &body) < 0 ||
         gr_check_uint(c, limits, "max_connections", 1, 1000000, &conns) < 0 ||
         gr_check_uint(c, limits, "max_connections_per_ip", 1, 1000000, &per_ip) < 0 ||
         gr_check_uint(c, limits, "header_timeout_s", 1, 3600, &head_s) < 0 ||
         gr_check_uint(c, limits, "body_timeout_s", 1, 3600, &body_s) < 0 ||
         gr_check_uint(c, limits, "connection_timeout_s", 1, 3600, &timeout) < 0 ||
         parse_cidrs(c, limits, "allow_from", &cfg->allow_from, &cfg->n_allow_from) < 0 ||
         parse_cidrs(c, limits, "trusted_proxies", &cfg->trusted_proxies,
                     &cfg->n_trusted_proxies) < 0))
        return -1;
    cfg->max_body_bytes = (size_t)body;
    cfg->max_connections = (unsigned)conns;
    cfg->max_connections_per_ip = (unsigned)per_ip;
    cfg->header_timeout_s = (unsigned)head_s;
    cfg->body_timeout_s = (unsigned)body_s;
    cfg->connection_timeout_s = (unsigned)timeout;
    return 0;
}

static int parse_tls(struct gr_check *c, struct gr_config *cfg)
{
    static const char *const keys[] = {"cert_file", "key_file", NULL};
    json_t *tls = NULL;
    if (gr_check_object(c, cfg->root, "tls", false, &tls) < 0)
        return -1;
    if (!tls)
        return 0;
    cfg->tls_node = tls;
    return gr_check_keys(c, tls, "\"tls\"", keys) < 0 ||
                   gr_check_string(c, tls, "cert_file", true, &cfg->tls_cert_file) < 0 ||
                   gr_check_string(c, tls, "key_file", true, &cfg->tls_key_file) < 0
               ? -1
               : 0;
}

static int parse_store(struct gr_check *c, struct gr_config *cfg)
{
    json_t *store = NULL;
    static const char *const keys[] = {"path", "max_pending", "max_pending_bytes", "max_db_bytes",
                                       "synchronous", "dedupe_window_s", "retention_s", NULL};
    uint64_t pending = 100000, bytes = UINT64_C(1) << 30, db = 0, window = 4 * 3600,
             retention = 24 * 3600;
    const char *sync = "full";
    cfg->store_path = "var/graphrouter.db";
    if (gr_check_object(c, cfg->root, "store", false, &store) < 0)
        return -1;
    if (store && (gr_check_keys(c, store, "\"store\"", keys) < 0 ||
                  gr_check_string(c, store, "path", false, &cfg->store_path) < 0 ||
                  gr_check_uint(c, store, "max_pending", 1, 1000000000, &pending) < 0 ||
                  gr_check_uint(c, store, "max_pending_bytes", 1024, UINT64_C(1) << 40, &bytes) < 0 ||
                  gr_check_uint(c, store, "max_db_bytes", 0, UINT64_C(1) << 42, &db) < 0 ||
                  gr_check_string(c, store, "synchronous", false, &sync) < 0 ||
                  gr_check_uint(c, store, "dedupe_window_s", 0, 30 * 86400, &window) < 0 ||
                  gr_check_uint(c, store, "retention_s", 0, 365 * 86400, &retention) < 0))
        return -1;
    if (!*cfg->store_path)
        return gr_check_fail_member(c, store, "path", "\"path\" is empty");
    if (strcmp(sync, "full") != 0 && strcmp(sync, "normal") != 0)
        return gr_check_fail_member(c, store, "synchronous",
                                    "\"synchronous\" is \"%s\": use \"full\" (the default: a "
                                    "202 survives power loss) or \"normal\" (faster; the last "
                                    "acknowledged items may be lost on power loss)",
                                    sync);
    if (db && db < (UINT64_C(1) << 20))
        return gr_check_fail_member(c, store, "max_db_bytes",
                                    "\"max_db_bytes\" is %llu: 0 (no cap) or at least 1 MiB",
                                    (unsigned long long)db);
    cfg->max_pending = pending;
    cfg->max_pending_bytes = bytes;
    cfg->max_db_bytes = db;
    cfg->synchronous_full = strcmp(sync, "full") == 0;
    cfg->dedupe_window_s = (int64_t)window;
    cfg->retention_s = (int64_t)retention;
    return 0;
}

static int cmp_subscription(const void *a, const void *b)
{
    return strcasecmp(((const struct gr_subscription *)a)->id,
                      ((const struct gr_subscription *)b)->id);
}

static int parse_secrets(struct gr_check *c, struct gr_config *cfg)
{
    char *fallback = NULL;
    size_t len = 0;
    if (gr_secret_resolve(c, cfg->root, "client_state", false, NULL, &fallback, &len) < 0)
        return -1;
    if (fallback) {
        gr_secret_digest(fallback, len, &cfg->fallback_secret);
        cfg->has_fallback_secret = true;
        gr_secret_wipe(fallback, len);
    }

    const json_t *subs = json_object_get(cfg->root, "subscriptions");
    if (!subs || json_is_null(subs))
        return 0;
    if (!json_is_array(subs))
        return gr_check_fail_member(c, cfg->root, "subscriptions",
                                    "\"subscriptions\" must be a list of {\"id\", "
                                    "\"client_state\"} or {\"resource\", \"change_type\", ...} "
                                    "objects");
    size_t n = json_array_size(subs);
    cfg->subscriptions = gr_xcalloc(n ? n : 1, sizeof *cfg->subscriptions);
    cfg->declarations = gr_xcalloc(n ? n : 1, sizeof *cfg->declarations);
    static const char *const keys[] = {"id", "client_state", NULL};
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(subs, i);
        const char *id = NULL;
        if (!json_is_object(s))
            return gr_check_fail_element(c, subs, i,
                                         "each subscription must be an object with \"id\" and "
                                         "\"client_state\", or one that declares a subscription "
                                         "with \"resource\"");
        if (json_object_get(s, "resource")) {
            if (json_object_get(s, "id") || json_object_get(s, "client_state"))
                return gr_check_fail_element(c, subs, i,
                                             "a subscription either names an \"id\" (created "
                                             "elsewhere, with its \"client_state\") or declares "
                                             "one with \"resource\" for graphrouter to create; "
                                             "not both");
            struct gr_declaration *d = &cfg->declarations[cfg->ndeclarations++];
            if (gr_declaration_parse(c, s, &cfg->graph, d) < 0)
                return -1;
            for (size_t j = 0; j + 1 < cfg->ndeclarations; j++)
                if (gr_declaration_same_subscription(&cfg->declarations[j], d))
                    return gr_check_fail_element(c, subs, i,
                                                 "subscription \"%s\" (%s, tenant %s) is "
                                                 "declared twice (Graph keeps one subscription "
                                                 "per tenant, resource and change types)",
                                                 d->resource, d->change_type, d->tenant);
            continue;
        }
        if (gr_check_keys(c, s, "a subscription", keys) < 0 ||
            gr_check_string(c, s, "id", true, &id) < 0)
            return -1;
        if (!*id)
            return gr_check_fail_element(c, subs, i, "a subscription's \"id\" must not be empty");
        for (size_t j = 0; j < cfg->nsubscriptions; j++)
            if (strcasecmp(cfg->subscriptions[j].id, id) == 0)
                return gr_check_fail_element(c, subs, i, "subscription \"%s\" is listed twice",
                                             id);
        char *what = gr_xprintf("subscription \"%s\"", id), *secret = NULL;
        int rc = gr_secret_resolve(c, s, "client_state", true, what, &secret, &len);
        free(what);
        if (rc < 0)
            return -1;
        struct gr_subscription *listed = &cfg->subscriptions[cfg->nsubscriptions++];
        listed->id = id;
        gr_secret_digest(secret, len, &listed->secret);
        gr_secret_wipe(secret, len);
    }
    qsort(cfg->subscriptions, cfg->nsubscriptions, sizeof *cfg->subscriptions, cmp_subscription);
    return 0;
}

#define GR_DEFAULT_JWKS_URL "https://login.microsoftonline.com/common/discovery/v2.0/keys"

static int parse_tokens(struct gr_check *c, struct gr_config *cfg)
{
    json_t *obj = NULL;
    if (gr_check_object(c, cfg->root, "validation_tokens", false, &obj) < 0)
        return -1;
    if (!obj)
        return 0;
    static const char *const keys[] = {"app_ids", "tenant_ids", "jwks_url", "jwks_file",
                                       "ca_file", "refresh_s", "min_refresh_s", NULL};
    struct gr_tokens_conf *t = &cfg->tokens;
    uint64_t refresh = 3600, min_refresh = 300;
    t->jwks_url = GR_DEFAULT_JWKS_URL;
    if (gr_check_keys(c, obj, "\"validation_tokens\"", keys) < 0 ||
        gr_check_string_list(c, obj, "app_ids", &t->app_ids, &t->napp_ids) < 0 ||
        gr_check_string_list(c, obj, "tenant_ids", &t->tenant_ids, &t->ntenant_ids) < 0 ||
        gr_check_string(c, obj, "jwks_url", false, &t->jwks_url) < 0 ||
        gr_check_string(c, obj, "jwks_file", false, &t->jwks_file) < 0 ||
        gr_check_string(c, obj, "ca_file", false, &t->ca_file) < 0 ||
        gr_check_uint(c, obj, "refresh_s", 1, 86400, &refresh) < 0 ||
        gr_check_uint(c, obj, "min_refresh_s", 0, 86400, &min_refresh) < 0)
        return -1;
    if (!t->napp_ids)
        return gr_check_fail_value(c, obj,
                                   "\"validation_tokens\" needs \"app_ids\": the application "
                                   "id(s) your subscriptions were created with");
    if (strncmp(t->jwks_url, "https://", 8) != 0)
        return gr_check_fail_member(c, obj, "jwks_url",
                                    "\"jwks_url\" must be an https:// URL (keys are only ever "
                                    "fetched with TLS verification)");
    t->refresh_s = (int64_t)refresh;
    t->min_refresh_s = (int64_t)min_refresh;
    cfg->has_tokens = true;
    return 0;
}

static int parse_decryption_keys(struct gr_check *c, struct gr_config *cfg)
{
    const json_t *list = json_object_get(cfg->root, "decryption_keys");
    if (!list || json_is_null(list))
        return 0;
    if (!json_is_array(list))
        return gr_check_fail_member(c, cfg->root, "decryption_keys",
                                    "\"decryption_keys\" must be a list of {\"certificate_id\", "
                                    "\"private_key_file\", ...} objects");
    size_t n = json_array_size(list);
    cfg->decryption_keys = gr_xcalloc(n ? n : 1, sizeof *cfg->decryption_keys);
    static const char *const keys[] = {"certificate_id", "private_key_file", "certificate_file",
                                       "password_file", NULL};
    for (size_t i = 0; i < n; i++) {
        const json_t *k = json_array_get(list, i);
        struct gr_decryption_key_conf *d = &cfg->decryption_keys[i];
        if (!json_is_object(k))
            return gr_check_fail_element(c, list, i, "each decryption key must be an object");
        d->node = k;
        if (gr_check_keys(c, k, "a decryption key", keys) < 0 ||
            gr_check_string(c, k, "certificate_id", true, &d->certificate_id) < 0 ||
            gr_check_string(c, k, "private_key_file", true, &d->private_key_file) < 0 ||
            gr_check_string(c, k, "certificate_file", false, &d->certificate_file) < 0 ||
            gr_check_string(c, k, "password_file", false, &d->password_file) < 0)
            return -1;
        /* One certificate_id may name several keys: a rotation that kept the id. */
        cfg->ndecryption_keys = i + 1;
    }
    return 0;
}

/* What declared subscriptions with resource data need from the rest of
 * the configuration. */
static int check_rich_declarations(struct gr_check *c, const struct gr_config *cfg)
{
    const char **ids = gr_xcalloc(cfg->ndecryption_keys + 1, sizeof *ids);
    for (size_t i = 0; i < cfg->ndecryption_keys; i++)
        ids[i] = cfg->decryption_keys[i].certificate_id;
    int rc = 0;
    for (size_t i = 0; i < cfg->ndeclarations && rc == 0; i++)
        rc = gr_declaration_check_rich(c, &cfg->declarations[i], &cfg->graph, ids,
                                       cfg->ndecryption_keys, cfg->tokens.app_ids,
                                       cfg->has_tokens ? cfg->tokens.napp_ids : 0);
    free(ids);
    return rc;
}

static bool valid_name(const char *s, bool allow_dot)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-' && !(allow_dot && *p == '.'))
            return false;
    return true;
}

static int parse_retry(struct gr_check *c, const json_t *h, const char *name,
                       struct gr_retry_policy *retry)
{
    uint64_t attempts = 10, initial = 1000, max = 600000;
    json_t *obj = NULL;
    static const char *const keys[] = {"max_attempts", "initial_backoff_ms", "max_backoff_ms",
                                       NULL};
    if (gr_check_object(c, h, "retry", false, &obj) < 0)
        return -1;
    if (obj) {
        char *what = gr_xprintf("the retry policy of handler \"%s\"", name);
        int rc = gr_check_keys(c, obj, what, keys);
        free(what);
        if (rc < 0 || gr_check_uint(c, obj, "max_attempts", 1, 1000, &attempts) < 0 ||
            gr_check_uint(c, obj, "initial_backoff_ms", 0, 86400000, &initial) < 0 ||
            gr_check_uint(c, obj, "max_backoff_ms", 0, 86400000, &max) < 0)
            return -1;
        if (max < initial)
            return gr_check_fail_member(c, obj, "max_backoff_ms",
                                        "\"max_backoff_ms\" (%llu) is below "
                                        "\"initial_backoff_ms\" (%llu)",
                                        (unsigned long long)max, (unsigned long long)initial);
    }
    *retry = (struct gr_retry_policy){(unsigned)attempts, (int64_t)initial, (int64_t)max};
    return 0;
}

/* A plugin's own "timeout_ms" (the bundled http and exec plugins have one)
 * bounds each call, so timeout_s must leave it room: a call that uses its
 * whole time limit is slow, not stuck. Unset, timeout_s is the default or
 * that limit plus a minute, whichever is longer; set, it must be longer. */
static int check_timeout(struct gr_check *c, const json_t *h, struct gr_handler_conf *hc)
{
    const json_t *own = json_object_get(hc->config, "timeout_ms");
    if (!json_is_integer(own) || json_integer_value(own) <= 0)
        return 0;
    json_int_t own_ms = json_integer_value(own);
    if (own_ms > (json_int_t)86400 * 1000) /* no timeout_s can be longer */
        own_ms = (json_int_t)86400 * 1000;
    json_int_t own_s = (own_ms + 999) / 1000;
    if (!json_object_get(h, "timeout_s")) {
        if (own_s + 60 > (json_int_t)hc->timeout_s)
            hc->timeout_s = own_s + 60 > 86400 ? 86400 : (unsigned)(own_s + 60);
        return 0;
    }
    if (hc->timeout_s && (json_int_t)hc->timeout_s <= own_s)
        return gr_check_fail_member(c, h, "timeout_s",
                                    "\"timeout_s\" (%u s) of handler \"%s\" must be longer than "
                                    "its plugin's \"timeout_ms\" (%lld ms): a call that uses its "
                                    "whole time limit would restart graphrouter",
                                    hc->timeout_s, hc->name, (long long)json_integer_value(own));
    return 0;
}

static int parse_handlers(struct gr_check *c, struct gr_config *cfg)
{
    json_t *handlers = NULL;
    if (gr_check_object(c, cfg->root, "handlers", true, &handlers) < 0)
        return -1;
    cfg->handlers = gr_xcalloc(json_object_size(handlers), sizeof *cfg->handlers);
    static const char *const keys[] = {"plugin", "config", "retry", "concurrency", "timeout_s",
                                       NULL};
    const char *name;
    json_t *h;
    json_object_foreach(handlers, name, h) {
        if (gr_check_is_comment(name))
            continue;
        struct gr_handler_conf *hc = &cfg->handlers[cfg->nhandlers++];
        hc->name = name;
        hc->node = h;
        if (!valid_name(name, true))
            return gr_check_fail_member(c, handlers, name,
                                        "handler name \"%s\" must be 1-64 characters of "
                                        "A-Z a-z 0-9 _ - .",
                                        name);
        if (!json_is_object(h))
            return gr_check_fail_member(c, handlers, name,
                                        "handler \"%s\" must be an object like {\"plugin\": "
                                        "\"file\", \"config\": {...}}",
                                        name);
        char *what = gr_xprintf("handler \"%s\"", name);
        int rc = gr_check_keys(c, h, what, keys);
        free(what);
        uint64_t concurrency = 0, timeout_s = GR_HANDLER_TIMEOUT_S;
        if (rc < 0 || gr_check_string(c, h, "plugin", true, &hc->plugin) < 0 ||
            gr_check_object(c, h, "config", false, &hc->config) < 0 ||
            parse_retry(c, h, name, &hc->retry) < 0 ||
            gr_check_uint(c, h, "concurrency", 0, 1024, &concurrency) < 0 ||
            gr_check_uint(c, h, "timeout_s", 0, 86400, &timeout_s) < 0)
            return -1;
        hc->concurrency = (unsigned)concurrency;
        hc->timeout_s = (unsigned)timeout_s;
        if (strchr(hc->plugin, '/')) {
            hc->plugin_path = gr_xstrdup(hc->plugin);
        } else if (valid_name(hc->plugin, false)) {
            hc->plugin_path = gr_xprintf("%s/%s.so", cfg->plugin_dir, hc->plugin);
        } else {
            return gr_check_fail_member(c, h, "plugin",
                                        "\"plugin\" is \"%s\": use a bare name such as \"file\" "
                                        "(loads <plugin_dir>/file.so) or a path containing '/'",
                                        hc->plugin);
        }
        if (!hc->config) {
            hc->config = json_object();
            json_object_set_new((json_t *)h, "config", hc->config); /* owned by root */
        }
        if (check_timeout(c, h, hc) < 0)
            return -1;
    }
    return 0;
}

/* "user": looked up now, so that --check and a reload report a user that
 * does not exist; graphrouter becomes it at start (main.c, privs.c). */
static int parse_user(struct gr_check *c, struct gr_config *cfg)
{
    if (gr_check_string(c, cfg->root, "user", false, &cfg->user) < 0)
        return -1;
    if (!cfg->user)
        return 0;
    if (!*cfg->user)
        return gr_check_fail_member(c, cfg->root, "user",
                                    "\"user\" is empty; remove it to stay the user graphrouter "
                                    "is started as");
    char *why = NULL;
    if (gr_privs_lookup(cfg->user, &cfg->uid, &cfg->gid, &why) < 0) {
        gr_check_fail_member(c, cfg->root, "user", "\"user\": %s", why);
        free(why);
        return -1;
    }
    return 0;
}

static int parse_top(struct gr_check *c, struct gr_config *cfg)
{
    static const char *const keys[] = {
        "listen",  "paths",     "limits",   "tls",      "store",           "client_state",
        "subscriptions", "plugin_dir", "workers", "log_level", "shutdown_timeout_s",
        "validation_tokens", "decryption_keys", "graph", "handlers", "routes", "user", NULL};
    if (!json_is_object(cfg->root))
        return gr_check_fail_value(c, cfg->root, "the configuration must be a JSON object");
    if (gr_check_keys(c, cfg->root, "the configuration", keys) < 0 || parse_listen(c, cfg) < 0 ||
        parse_paths(c, cfg) < 0 || parse_limits(c, cfg) < 0 || parse_tls(c, cfg) < 0 ||
        parse_store(c, cfg) < 0 ||
        gr_graph_conf_parse(c, cfg->root, &cfg->graph) < 0 || parse_secrets(c, cfg) < 0 ||
        parse_tokens(c, cfg) < 0 || parse_decryption_keys(c, cfg) < 0 || check_rich_declarations(c, cfg) < 0)
        return -1;

    cfg->plugin_dir = GR_DEFAULT_PLUGIN_DIR;
    uint64_t workers = 4, shutdown = 30;
    const char *level = "info";
    if (gr_check_string(c, cfg->root, "plugin_dir", false, &cfg->plugin_dir) < 0 ||
        gr_check_uint(c, cfg->root, "workers", 1, 1024, &workers) < 0 ||
        gr_check_uint(c, cfg->root, "shutdown_timeout_s", 0, 3600, &shutdown) < 0 ||
        gr_check_string(c, cfg->root, "log_level", false, &level) < 0)
        return -1;
    cfg->workers = (unsigned)workers;
    cfg->shutdown_timeout_s = (unsigned)shutdown;
    cfg->log_level = gr_log_level_parse(level);
    if (cfg->log_level < 0)
        return gr_check_fail_member(c, cfg->root, "log_level",
                                    "\"log_level\" is \"%s\"; use error, warn, info or debug",
                                    level);
    if (parse_user(c, cfg) < 0 || parse_handlers(c, cfg) < 0)
        return -1;

    const json_t *routes = json_object_get(cfg->root, "routes");
    if (!routes)
        return gr_check_fail_value(c, cfg->root,
                                   "missing required key \"routes\" (a list of routes)");
    if (!json_is_array(routes))
        return gr_check_fail_member(c, cfg->root, "routes", "\"routes\" must be a list");
    const char **names = gr_xcalloc(cfg->nhandlers, sizeof *names);
    for (size_t i = 0; i < cfg->nhandlers; i++)
        names[i] = cfg->handlers[i].name;
    int rc = gr_routes_parse(c, routes, names, cfg->nhandlers, &cfg->routes);
    free(names);
    return rc;
}

/* jansson's messages end in "near '<text>'"; the text may be part of a
 * secret, so it is dropped (the position says where). */
static void strip_near(char *msg)
{
    char *near = strstr(msg, " near '");
    if (near)
        *near = '\0';
}

int gr_config_parse(const char *file, const char *text, size_t len, struct gr_config **out,
                    char **err)
{
    *out = NULL;
    *err = NULL;
    /* jansson silently drops a NUL byte after a number ("4\0"); a config file
     * has no business holding one, so say where it is. */
    const char *nul = memchr(text, '\0', len);
    if (nul) {
        int line = 1, col = 1;
        for (const char *p = text; p < nul; p++) {
            if (*p == '\n')
                line++, col = 1;
            else if ((*p & 0xC0) != 0x80)
                col++;
        }
        *err = gr_xprintf("%s:%d:%d: NUL byte in the configuration", file, line, col);
        return -1;
    }
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        strip_near(jerr.text);
        *err = gr_xprintf("%s:%d:%d: %s", file, jerr.line, jerr.column, jerr.text);
        return -1;
    }
    struct gr_config *cfg = gr_xcalloc(1, sizeof *cfg);
    cfg->file = gr_xstrdup(file);
    cfg->root = root;
    cfg->pos = gr_jsonpos_build(text, len, root);
    struct gr_check c = {.file = file, .pos = cfg->pos};
    if (parse_top(&c, cfg) < 0) {
        *err = c.err;
        gr_config_free(cfg);
        return -1;
    }
    *out = cfg;
    return 0;
}

/* The file's text holds every secret written inline: it is read without
 * stdio's buffer and into one allocation sized by the file (no copies left
 * behind by growing it), and wiped before it is freed. */
static void wipe_text(struct gr_buf *text)
{
    if (text->data)
        OPENSSL_cleanse(text->data, text->len);
    gr_buf_free(text);
}

int gr_config_load(const char *file, struct gr_config **out, char **err)
{
    *out = NULL;
    FILE *f = fopen(file, "rb");
    if (!f) {
        *err = gr_xprintf("%s: cannot open: %s", file, strerror(errno));
        return -1;
    }
    setvbuf(f, NULL, _IONBF, 0);
    struct gr_buf text = {0};
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && st.st_size > 0 && st.st_size <= GR_MAX_CONFIG_BYTES)
        gr_buf_reserve(&text, (size_t)st.st_size + 1);
    char chunk[16384];
    size_t n;
    int rc = -1;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        gr_buf_append(&text, chunk, n);
        if (text.len > GR_MAX_CONFIG_BYTES) {
            *err = gr_xprintf("%s: larger than %u bytes; is this the right file?", file,
                              GR_MAX_CONFIG_BYTES);
            goto out;
        }
    }
    if (ferror(f)) {
        *err = gr_xprintf("%s: read error", file);
        goto out;
    }
    rc = gr_config_parse(file, text.data ? text.data : "", text.len, out, err);
out:
    fclose(f);
    OPENSSL_cleanse(chunk, sizeof chunk);
    wipe_text(&text);
    return rc;
}

/* The secrets the core reads that may be written inline, wherever the
 * parse stopped: noted here, so that they are wiped with the JSON. */
static void note_inline_secrets(struct gr_config *cfg)
{
    gr_secret_nodes_add(&cfg->secrets, cfg->root, "client_state");
    const json_t *subs = json_object_get(cfg->root, "subscriptions");
    for (size_t i = 0; i < json_array_size(subs); i++)
        gr_secret_nodes_add(&cfg->secrets, json_array_get(subs, i), "client_state");
    const json_t *tenants = json_object_get(json_object_get(cfg->root, "graph"), "tenants");
    for (size_t i = 0; i < json_array_size(tenants); i++)
        gr_secret_nodes_add(&cfg->secrets, json_array_get(tenants, i), "client_secret");
}

void gr_config_free(struct gr_config *cfg)
{
    if (!cfg)
        return;
    note_inline_secrets(cfg);
    for (size_t i = 0; i < cfg->nhandlers; i++)
        free(cfg->handlers[i].plugin_path);
    free(cfg->handlers);
    gr_routes_free(&cfg->routes);
    free(cfg->subscriptions);
    for (size_t i = 0; i < cfg->ndeclarations; i++)
        gr_declaration_free(&cfg->declarations[i]);
    free(cfg->declarations);
    gr_graph_conf_free(&cfg->graph);
    free(cfg->tokens.app_ids);
    free(cfg->tokens.tenant_ids);
    free(cfg->decryption_keys);
    free(cfg->notification_paths);
    free(cfg->lifecycle_paths);
    free(cfg->allow_from);
    free(cfg->trusted_proxies);
    gr_jsonpos_free(cfg->pos);
    gr_secret_nodes_wipe(&cfg->secrets);
    json_decref(cfg->root);
    free(cfg->file);
    free(cfg);
}

int gr_config_handler_index(const struct gr_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nhandlers; i++)
        if (strcmp(cfg->handlers[i].name, name) == 0)
            return (int)i;
    return -1;
}

const struct gr_subscription *gr_config_subscription(const struct gr_config *cfg, const char *id)
{
    if (!cfg->nsubscriptions)
        return NULL; /* bsearch's array must not be NULL, even when empty */
    struct gr_subscription key = {.id = id};
    return bsearch(&key, cfg->subscriptions, cfg->nsubscriptions, sizeof key, cmp_subscription);
}
