/*
 * The Graph client (see client.h): credentials, tokens, calls, throttling.
 *
 * What Graph and the identity platform tell about a tenant (its token, a
 * Retry-After, its recent writes, failures to reach it) lives in a `pace`
 * shared by every generation's client for the same Graph, app and tenant,
 * so a reload forgets none of it. A pace's `lock` guards its fields and is
 * never held during I/O; `fetching` (under `lock`) makes token requests one
 * at a time: callers that need a token while one is being fetched wait on
 * `fetched` for it.
 */
#define _GNU_SOURCE
#include "graph/client.h"

#include <ctype.h>
#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "crypto/base64.h"
#include "crypto/jwt.h"
#include "crypto/keyfile.h"
#include "log.h"
#include "metrics.h"
#include "secret.h"
#include "util.h"

#define GR_GRAPH_MAX_BODY (16u << 20)    /* a page of a list is far smaller */
#define GR_GRAPH_ERROR_MAX 400            /* characters of an error kept for logs */
#define GR_ASSERTION_LIFETIME_S 600       /* a client assertion is valid this long */
#define GR_TOKEN_MARGIN_MAX_MS (5 * 60000) /* a token is renewed this long before it expires */

#define GR_TENANT_BACKOFF_CAP_MS 60000  /* a tenant that cannot be reached: retried this often */

struct pace {
    struct pace *next; /* the registry's list */
    int refs;          /* under registry_lock */
    char *key;         /* base_url, login_url, app id, tenant (lower case) */
    pthread_mutex_t lock;
    pthread_cond_t fetched;      /* signalled when `fetching` ends */
    bool fetching;               /* a token request is in progress */
    char *token;                 /* cached access token ... */
    char *token_fingerprint;     /* ... for this credential */
    int64_t token_refresh_mono;  /* fetch a new one from then on */
    int64_t blocked_until_mono;  /* a Retry-After, or a failure backoff, in force */
    unsigned failures;           /* calls in a row that got no answer, or no token */
    int64_t *writes;             /* monotonic times of the last writes: a ring of `cap` */
    size_t cap, n, head;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pace *registry;

struct tenant {
    char *id;
    /* the credential: a secret, or a key and its certificate's x5t */
    char *secret;
    size_t secret_len;
    EVP_PKEY *key;
    char *x5t;
    char *fingerprint; /* what identifies the credential (no secret in it) */
    struct pace *pace;
};

struct gr_graph_client {
    char *app_id, *base_url, *login_url, *scope, *ca_file;
    long connect_timeout_ms, timeout_ms;
    unsigned write_budget;
    int64_t write_window_ms;
    struct tenant *tenants;
    size_t ntenants;
};

void gr_graph_response_free(struct gr_graph_response *r)
{
    json_decref(r->body);
    free(r->text);
    free(r->location);
    free(r->error);
    *r = (struct gr_graph_response){0};
}

/* ---- credentials --------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s ? gr_xstrdup(s) : NULL;
}

/* The client secret, through the configuration's one secret resolver
 * (secret.h): "client_secret" in any of its forms, or the older
 * "client_secret_file" and "client_secret_env", which mean {"file"} and
 * {"env"}. */
static int load_secret(struct gr_check *c, const struct gr_graph_tenant_conf *tc,
                       struct tenant *t)
{
    char *what = gr_xprintf("graph tenant \"%s\"", tc->id);
    int rc = tc->client_secret
                 ? gr_secret_resolve(c, tc->node, "client_secret", true, what, &t->secret,
                                     &t->secret_len)
             : tc->client_secret_env
                 ? gr_secret_from_env(c, tc->node, "client_secret_env", what,
                                      tc->client_secret_env, &t->secret, &t->secret_len)
                 : gr_secret_from_file(c, tc->node, "client_secret_file", what,
                                       tc->client_secret_file, &t->secret, &t->secret_len);
    free(what);
    if (rc < 0)
        return -1;
    /* A digest of the secret tells a changed one apart without keeping it twice. */
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(t->secret, t->secret_len, md, &mdlen, gr_sha256(), NULL);
    char *hex = gr_base64url_encode(md, sizeof md);
    t->fingerprint = gr_xprintf("secret:%s", hex);
    free(hex);
    return 0;
}

static int load_certificate(struct gr_check *c, const struct gr_graph_tenant_conf *tc,
                            struct tenant *t)
{
    struct gr_keyfile_spec spec = {tc->private_key_file, tc->client_certificate_file,
                                   tc->password_file};
    X509 *cert;
    char *why = NULL;
    if (gr_keyfile_load(&spec, &t->key, &cert, &why) < 0) {
        gr_check_fail_member(c, tc->node, "private_key_file", "graph tenant \"%s\": %s", tc->id,
                             why);
        free(why);
        return -1;
    }
    if (EVP_PKEY_get_base_id(t->key) != EVP_PKEY_RSA || EVP_PKEY_get_bits(t->key) < 2048) {
        X509_free(cert);
        return gr_check_fail_member(c, tc->node, "private_key_file",
                                    "graph tenant \"%s\": %s: Entra ID needs an RSA key of 2048 "
                                    "bits or more",
                                    tc->id, tc->private_key_file);
    }
    t->x5t = gr_keyfile_x5t(cert);
    X509_free(cert);
    t->fingerprint = gr_xprintf("cert:%s", t->x5t ? t->x5t : "");
    return 0;
}

static void wipe_free(char *s)
{
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

/* The pace for `key`, shared; its write ring holds at least `budget`. */
static struct pace *pace_get(const char *key, unsigned budget)
{
    pthread_mutex_lock(&registry_lock);
    struct pace *p = registry;
    while (p && strcmp(p->key, key) != 0)
        p = p->next;
    if (!p) {
        p = gr_xcalloc(1, sizeof *p);
        p->key = gr_xstrdup(key);
        pthread_mutex_init(&p->lock, NULL);
        gr_cond_init_mono(&p->fetched);
        p->next = registry;
        registry = p;
    }
    p->refs++;
    pthread_mutex_unlock(&registry_lock);
    pthread_mutex_lock(&p->lock);
    if (p->cap < budget) { /* grow, keeping the newest writes in order */
        int64_t *w = gr_xcalloc(budget, sizeof *w);
        for (size_t k = 0; k < p->n; k++)
            w[k] = p->writes[(p->head + p->cap - p->n + k) % p->cap];
        free(p->writes);
        p->writes = w;
        p->head = p->n % budget;
        p->cap = budget;
    }
    pthread_mutex_unlock(&p->lock);
    return p;
}

static void pace_put(struct pace *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&registry_lock);
    bool last = --p->refs == 0;
    if (last) {
        struct pace **q = &registry;
        while (*q != p)
            q = &(*q)->next;
        *q = p->next;
    }
    pthread_mutex_unlock(&registry_lock);
    if (!last)
        return;
    wipe_free(p->token);
    free(p->token_fingerprint);
    free(p->writes);
    free(p->key);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->fetched);
    free(p);
}

static void tenant_free(struct tenant *t)
{
    free(t->id);
    gr_secret_wipe(t->secret, t->secret_len);
    EVP_PKEY_free(t->key);
    free(t->x5t);
    free(t->fingerprint);
    pace_put(t->pace);
}

/* "https://graph.microsoft.com/v1.0" -> "https://graph.microsoft.com/.default":
 * a national cloud's tokens are for its own Graph host. */
static char *scope_of(const char *base_url)
{
    const char *host = strstr(base_url, "://");
    const char *end = host ? strchr(host + 3, '/') : NULL;
    size_t n = end ? (size_t)(end - base_url) : strlen(base_url);
    return gr_xprintf("%.*s/.default", (int)n, base_url);
}

int gr_graph_client_build(struct gr_check *chk, const struct gr_graph_conf *conf,
                          struct gr_graph_client **out)
{
    *out = NULL;
    struct gr_graph_client *c = gr_xcalloc(1, sizeof *c);
    c->app_id = gr_xstrdup(conf->app_id);
    c->base_url = gr_xstrdup(conf->base_url);
    c->login_url = gr_xstrdup(conf->login_url);
    c->scope = scope_of(conf->base_url);
    c->ca_file = dup_or_null(conf->ca_file);
    c->connect_timeout_ms = (long)conf->connect_timeout_s * 1000;
    c->timeout_ms = (long)conf->timeout_s * 1000;
    c->write_budget = conf->write_budget;
    c->write_window_ms = (int64_t)conf->write_budget_window_s * 1000;
    c->tenants = gr_xcalloc(conf->ntenants, sizeof *c->tenants);
    for (size_t i = 0; i < conf->ntenants; i++) {
        const struct gr_graph_tenant_conf *tc = &conf->tenants[i];
        struct tenant *t = &c->tenants[i];
        c->ntenants = i + 1;
        t->id = gr_xstrdup(tc->id);
        if ((tc->private_key_file ? load_certificate(chk, tc, t) : load_secret(chk, tc, t)) < 0) {
            gr_graph_client_free(c);
            return -1;
        }
        char *key = gr_xprintf("%s\n%s\n%s\n%s", c->base_url, c->login_url, c->app_id, t->id);
        for (char *p = key; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        t->pace = pace_get(key, c->write_budget);
        free(key);
    }
    *out = c;
    return 0;
}

void gr_graph_client_free(struct gr_graph_client *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->ntenants; i++)
        tenant_free(&c->tenants[i]);
    free(c->tenants);
    free(c->app_id);
    free(c->base_url);
    free(c->login_url);
    free(c->scope);
    free(c->ca_file);
    free(c);
}

/* ---- HTTP ----------------------------------------------------------------- */

struct transfer {
    struct gr_buf body;
    bool too_large;
    char *retry_after, *location; /* those headers' values */
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    struct transfer *x = userp;
    size_t n = size * nmemb;
    if (x->body.len + n > GR_GRAPH_MAX_BODY) {
        x->too_large = true;
        return 0; /* aborts the transfer */
    }
    gr_buf_append(&x->body, data, n);
    return n;
}

/* The value of header `name` ("retry-after:") in this header line, or NULL. */
static char *header_value(const char *data, size_t n, const char *name)
{
    size_t k = strlen(name);
    if (n <= k || strncasecmp(data, name, k) != 0)
        return NULL;
    const char *v = data + k;
    size_t len = n - k;
    while (len && (*v == ' ' || *v == '\t'))
        v++, len--;
    while (len && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' '))
        len--;
    return gr_xstrndup(v, len);
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userp)
{
    struct transfer *x = userp;
    size_t n = size * nmemb;
    char *v;
    if ((v = header_value(data, n, "retry-after:"))) {
        free(x->retry_after);
        x->retry_after = v;
    } else if ((v = header_value(data, n, "location:"))) {
        free(x->location);
        x->location = v;
    }
    return n;
}

/* Printable ASCII only, at most GR_GRAPH_ERROR_MAX characters. */
static char *clean(const char *s)
{
    struct gr_buf b = {0};
    for (const char *p = s; p && *p && b.len < GR_GRAPH_ERROR_MAX; p++)
        gr_buf_append(&b, *p >= ' ' && *p < 0x7f ? p : "?", 1);
    return b.data ? b.data : gr_xstrdup("");
}

/* One HTTP exchange. `auth` is a bearer token or NULL; `content_type` goes
 * with `payload` (NULL: no body). Returns false on a network failure
 * (*error set). */
/* Aborts a transfer once *cancel is set (graphrouter is stopping). */
static int on_progress(void *userp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    const atomic_bool *cancel = userp;
    return cancel && atomic_load(cancel) ? 1 : 0;
}

static bool exchange(const struct gr_graph_client *c, const char *method, const char *url,
                     const char *auth, const char *content_type, const char *payload,
                     const atomic_bool *cancel, long timeout_ms, long *status,
                     struct transfer *x, char **error)
{
    CURL *h = curl_easy_init();
    if (!h) {
        *error = gr_xstrdup("curl_easy_init failed");
        return false;
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = curl_slist_append(NULL, "Accept: application/json");
    headers = curl_slist_append(headers, "Expect:"); /* no 100-continue round trip */
    char *bearer = auth ? gr_xprintf("Authorization: Bearer %s", auth) : NULL;
    if (bearer)
        headers = curl_slist_append(headers, bearer);
    char *ct = content_type ? gr_xprintf("Content-Type: %s", content_type) : NULL;
    if (ct)
        headers = curl_slist_append(headers, ct);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https,http"); /* http only to loopback (config) */
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    if (c->ca_file)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
    long total = timeout_ms > 0 && timeout_ms < c->timeout_ms ? timeout_ms : c->timeout_ms;
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                     c->connect_timeout_ms < total ? c->connect_timeout_ms : total);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, total);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "graphrouter/" GR_VERSION);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (payload) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, payload);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(payload));
    } else if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    }
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, (void *)cancel);
    CURLcode rc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(h);
    for (struct curl_slist *l = headers; l; l = l->next) /* the copy of the token */
        OPENSSL_cleanse(l->data, strlen(l->data));
    curl_slist_free_all(headers);
    wipe_free(bearer);
    free(ct);
    if (rc != CURLE_OK) {
        *error = x->too_large ? gr_xprintf("the answer is larger than %u bytes", GR_GRAPH_MAX_BODY)
                              : clean(*errbuf ? errbuf : curl_easy_strerror(rc));
        *status = 0;
        return false;
    }
    return true;
}

/* ---- tokens --------------------------------------------------------------- */

static char *client_assertion(const struct gr_graph_client *c, const struct tenant *t,
                              const char *token_url)
{
    unsigned char id[16];
    if (RAND_bytes(id, sizeof id) != 1)
        return NULL;
    char *jti = gr_base64url_encode(id, sizeof id);
    json_int_t now = (json_int_t)(gr_wall_ms() / 1000);
    json_t *header = json_pack("{s:s,s:s,s:s}", "alg", "RS256", "typ", "JWT", "x5t", t->x5t);
    json_t *claims = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I}", "aud", token_url, "iss",
                               c->app_id, "sub", c->app_id, "jti", jti, "nbf", now, "iat", now,
                               "exp", now + GR_ASSERTION_LIFETIME_S);
    char *jwt = header && claims ? gr_jwt_sign_rs256(t->key, header, claims) : NULL;
    json_decref(header);
    json_decref(claims);
    free(jti);
    return jwt;
}

static void form_add(struct gr_buf *b, const char *name, const char *value)
{
    char *v = curl_easy_escape(NULL, value, 0);
    gr_buf_printf(b, "%s%s=%s", b->len ? "&" : "", name, v ? v : "");
    if (v) {
        OPENSSL_cleanse(v, strlen(v));
        curl_free(v);
    }
}

/* The error the token endpoint gave: "HTTP 401 invalid_client: AADSTS...". */
static char *token_error(long status, const json_t *doc)
{
    const char *code = json_string_value(json_object_get(doc, "error"));
    const char *desc = json_string_value(json_object_get(doc, "error_description"));
    char *raw = gr_xprintf("the token request for the app failed: HTTP %ld%s%s%s%s", status,
                           code ? " " : "", code ? code : "", desc ? ": " : "",
                           desc ? desc : "");
    char *out = clean(raw);
    free(raw);
    return out;
}

/* The cached token, if it is for this credential and fresh (under p->lock). */
static char *cached_token(const struct tenant *t)
{
    const struct pace *p = t->pace;
    return p->token && strcmp(p->token_fingerprint, t->fingerprint) == 0 &&
                   gr_mono_ms() < p->token_refresh_mono
               ? gr_xstrdup(p->token)
               : NULL;
}

static char *fetch_token(const struct gr_graph_client *c, struct tenant *t,
                         const atomic_bool *cancel, long timeout_ms, char **error)
{
    char *url = gr_xprintf("%s/%s/oauth2/v2.0/token", c->login_url, t->id);
    struct gr_buf form = {0};
    form_add(&form, "client_id", c->app_id);
    form_add(&form, "scope", c->scope);
    form_add(&form, "grant_type", "client_credentials");
    if (t->key) {
        char *jwt = client_assertion(c, t, url);
        if (!jwt) {
            *error = gr_xstrdup("signing the client assertion failed");
            free(url);
            gr_buf_free(&form);
            return NULL;
        }
        form_add(&form, "client_assertion_type",
                 "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
        form_add(&form, "client_assertion", jwt);
        wipe_free(jwt);
    } else {
        form_add(&form, "client_secret", t->secret);
    }
    struct transfer x = {0};
    long status = 0;
    char *token = NULL;
    if (exchange(c, "POST", url, NULL, "application/x-www-form-urlencoded", form.data, cancel,
                 timeout_ms, &status, &x, error)) {
        json_t *doc = json_loadb(x.body.data ? x.body.data : "", x.body.len, 0, NULL);
        const char *tok = json_string_value(json_object_get(doc, "access_token"));
        json_int_t expires_in = json_integer_value(json_object_get(doc, "expires_in"));
        if (status == 200 && tok && *tok && expires_in > 0) {
            token = gr_xstrdup(tok);
            int64_t life = (int64_t)expires_in * 1000, margin = life / 4;
            if (margin > GR_TOKEN_MARGIN_MAX_MS)
                margin = GR_TOKEN_MARGIN_MAX_MS;
            struct pace *p = t->pace;
            pthread_mutex_lock(&p->lock);
            wipe_free(p->token);
            free(p->token_fingerprint);
            p->token = gr_xstrdup(tok);
            p->token_fingerprint = gr_xstrdup(t->fingerprint);
            p->token_refresh_mono = gr_mono_ms() + life - margin;
            pthread_mutex_unlock(&p->lock);
        } else {
            *error = token_error(status, doc);
        }
        json_decref(doc);
    } else {
        char *net = *error;
        *error = gr_xprintf("the token request for the app failed: %s", net);
        free(net);
    }
    gr_metrics_graph_token(token != NULL);
    if (x.body.data)
        OPENSSL_cleanse(x.body.data, x.body.len);
    gr_buf_free(&x.body);
    free(x.retry_after);
    free(x.location);
    OPENSSL_cleanse(form.data, form.len);
    gr_buf_free(&form);
    free(url);
    return token;
}

/* A token for `t`: the cached one, or one fetched now (one fetch at a time
 * per pace: the others wait for it, within their own `timeout_ms` if they
 * have one). NULL with *error on failure. */
static char *get_token(const struct gr_graph_client *c, struct tenant *t,
                       const atomic_bool *cancel, long timeout_ms, char **error)
{
    struct pace *p = t->pace;
    int64_t until = gr_mono_ms() + timeout_ms;
    struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (until % 1000) * 1000000};
    pthread_mutex_lock(&p->lock);
    char *token = cached_token(t);
    while (!token && p->fetching) { /* another caller may fetch it meanwhile */
        if (timeout_ms <= 0)
            pthread_cond_wait(&p->fetched, &p->lock);
        else if (pthread_cond_timedwait(&p->fetched, &p->lock, &ts) != 0 && p->fetching) {
            pthread_mutex_unlock(&p->lock);
            *error = gr_xstrdup("the app's token was still being fetched when this call's "
                                "time ran out");
            return NULL;
        }
        token = cached_token(t);
    }
    if (token) {
        pthread_mutex_unlock(&p->lock);
        return token;
    }
    p->fetching = true;
    pthread_mutex_unlock(&p->lock);
    if (timeout_ms > 0) { /* what is left, at least 1 ms: never "no limit" */
        timeout_ms = (long)(until - gr_mono_ms());
        timeout_ms = timeout_ms < 1 ? 1 : timeout_ms;
    }
    token = fetch_token(c, t, cancel, timeout_ms, error);
    pthread_mutex_lock(&p->lock);
    p->fetching = false;
    pthread_cond_broadcast(&p->fetched);
    pthread_mutex_unlock(&p->lock);
    return token;
}

static void forget_token(struct tenant *t, const char *used)
{
    struct pace *p = t->pace;
    pthread_mutex_lock(&p->lock);
    if (p->token && strcmp(p->token, used) == 0) {
        wipe_free(p->token);
        p->token = NULL;
    }
    pthread_mutex_unlock(&p->lock);
}

/* ---- calls ---------------------------------------------------------------- */

static struct tenant *tenant_of(struct gr_graph_client *c, const char *id)
{
    for (size_t i = 0; id && i < c->ntenants; i++)
        if (strcasecmp(c->tenants[i].id, id) == 0)
            return &c->tenants[i];
    return NULL;
}

bool gr_graph_has_tenant(struct gr_graph_client *c, const char *tenant)
{
    return tenant_of(c, tenant) != NULL;
}

/* May a call go out now? Records a write against the budget: at most
 * write_budget writes in any write_budget_window_s (under p->lock). */
static bool admit(const struct gr_graph_client *c, struct pace *p, bool write, int64_t *wait_ms)
{
    int64_t now = gr_mono_ms();
    if (p->blocked_until_mono > now) {
        *wait_ms = p->blocked_until_mono - now;
        return false;
    }
    if (!write)
        return true;
    if (p->n >= c->write_budget) { /* the budget-th newest write must have left the window */
        int64_t t = p->writes[(p->head + p->cap - c->write_budget) % p->cap];
        if (now - t < c->write_window_ms) {
            *wait_ms = t + c->write_window_ms - now;
            return false;
        }
    }
    p->writes[p->head] = now;
    p->head = (p->head + 1) % p->cap;
    if (p->n < p->cap)
        p->n++;
    return true;
}

/* After each call: a tenant that cannot be reached (or gives no token) is
 * held back, 1 s doubling to a minute, so its calls do not hold up the
 * other tenants' for their whole time limits; any answer lifts it. A
 * Retry-After holds it back for as long as it says. */
static void paced(struct pace *p, bool answered, int64_t retry_after_ms)
{
    pthread_mutex_lock(&p->lock);
    int64_t now = gr_mono_ms(), until = 0;
    if (answered) {
        p->failures = 0;
        if (retry_after_ms >= 0)
            until = now + retry_after_ms;
    } else {
        int64_t wait = 1000;
        for (unsigned i = 0; i < p->failures && wait < GR_TENANT_BACKOFF_CAP_MS; i++)
            wait *= 2;
        p->failures++;
        until = now + (wait < GR_TENANT_BACKOFF_CAP_MS ? wait : GR_TENANT_BACKOFF_CAP_MS);
    }
    if (until > p->blocked_until_mono)
        p->blocked_until_mono = until;
    pthread_mutex_unlock(&p->lock);
}

/* "HTTP 400 ValidationError: Subscription validation request failed. ..." */
static char *graph_error(long status, const json_t *doc)
{
    const json_t *e = json_object_get(doc, "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    char *raw = gr_xprintf("HTTP %ld%s%s%s%s", status, code ? " " : "", code ? code : "",
                           msg ? ": " : "", msg ? msg : "");
    char *out = clean(raw);
    free(raw);
    return out;
}

enum gr_graph_outcome gr_graph_call(struct gr_graph_client *c, const char *tenant_id,
                                    const char *method, const char *target, const char *body,
                                    bool write, const atomic_bool *cancel, int64_t deadline_mono,
                                    struct gr_graph_response *out)
{
    *out = (struct gr_graph_response){0};
    struct tenant *t = tenant_of(c, tenant_id);
    if (!t) {
        out->error = gr_xprintf("tenant %s is not in graph.tenants", tenant_id ? tenant_id : "?");
        return GR_GRAPH_FAILED;
    }
    char *url;
    if (target[0] == '/') {
        url = gr_xprintf("%s%s", c->base_url, target);
    } else {
        size_t n = strlen(c->base_url);
        if (strncmp(target, c->base_url, n) != 0 || target[n] != '/') {
            out->error = gr_xstrdup("a link outside graph.base_url is not followed");
            return GR_GRAPH_FAILED;
        }
        url = gr_xstrdup(target);
    }
    struct pace *p = t->pace;
    enum gr_graph_outcome result = GR_GRAPH_FAILED;
    for (int attempt = 0; attempt < 2; attempt++) {
        pthread_mutex_lock(&p->lock);
        int64_t wait = 0;
        bool go = admit(c, p, write && attempt == 0, &wait);
        pthread_mutex_unlock(&p->lock);
        if (!go) {
            out->retry_after_ms = wait;
            result = GR_GRAPH_THROTTLED;
            break;
        }
        long left = 0; /* ms to the deadline, if there is one */
        if (deadline_mono && (left = (long)(deadline_mono - gr_mono_ms())) < 1) {
            out->error = gr_xstrdup("no time is left for a Graph call");
            break;
        }
        char *token = get_token(c, t, cancel, left, &out->error);
        if (!token) {
            paced(p, false, -1);
            break;
        }
        struct transfer x = {0};
        long status = 0;
        if (deadline_mono && (left = (long)(deadline_mono - gr_mono_ms())) < 1)
            left = 1;
        bool answered = exchange(c, method, url, token, body ? "application/json" : NULL, body,
                                 cancel, left, &status, &x, &out->error);
        gr_metrics_graph_request(status);
        int64_t retry_after = -1;
        if (answered) {
            out->status = status;
            out->body = x.body.len ? json_loadb(x.body.data, x.body.len, 0, NULL) : NULL;
            out->text = x.body.len ? gr_xstrndup(x.body.data, x.body.len) : NULL;
            out->len = x.body.len;
            out->location = x.location;
            x.location = NULL;
            if ((status == 429 || status == 503) && x.retry_after)
                retry_after = gr_graph_retry_after_ms(x.retry_after, gr_wall_ms());
            out->retry_after_ms = retry_after > 0 ? retry_after : 0;
            if (status >= 300)
                out->error = graph_error(status, out->body);
            result = GR_GRAPH_ANSWERED;
        }
        paced(p, answered, retry_after);
        if (x.body.data) /* a create's answer echoes the clientState */
            OPENSSL_cleanse(x.body.data, x.body.len);
        gr_buf_free(&x.body);
        free(x.retry_after);
        free(x.location);
        bool again = answered && status == 401 && attempt == 0;
        if (again) /* the token may have been revoked: once more with a new one */
            forget_token(t, token);
        wipe_free(token);
        if (!again)
            break;
        gr_graph_response_free(out);
    }
    free(url);
    return result;
}

/* ---- small pieces ---------------------------------------------------------- */

char *gr_graph_new_client_state(void)
{
    unsigned char raw[32];
    if (RAND_bytes(raw, sizeof raw) != 1)
        abort(); /* no CSPRNG: no secret can be made */
    char *s = gr_base64url_encode(raw, sizeof raw);
    OPENSSL_cleanse(raw, sizeof raw);
    return s;
}

static bool digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

bool gr_graph_parse_time(const char *s, int64_t *ms)
{
    int y, mo, d, h, mi, sec;
    if (!s || strlen(s) < 19 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) ||
        s[7] != '-' || !digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') ||
        !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' ||
        !digits(s + 17, 2, &sec) || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 ||
        sec > 60)
        return false;
    const char *p = s + 19;
    int64_t frac_ms = 0;
    if (*p == '.') {
        int n = 0, scale = 100;
        for (p++; *p >= '0' && *p <= '9'; p++, n++) {
            frac_ms += (*p - '0') * scale;
            scale /= 10;
        }
        if (n < 1 || n > 7)
            return false;
    }
    int offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (!digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om) || oh > 23 ||
            om > 59)
            return false;
        offset_min = (oh * 60 + om) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return false;
    }
    if (*p)
        return false;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h,
                    .tm_min = mi, .tm_sec = sec};
    time_t t = timegm(&tm);
    *ms = ((int64_t)t - (int64_t)offset_min * 60) * 1000 + frac_ms;
    return true;
}

int64_t gr_graph_retry_after_ms(const char *v, int64_t now_wall_ms)
{
    int64_t ms = -1;
    char *end;
    long long secs = v && *v ? strtoll(v, &end, 10) : -1;
    if (v && *v && *end == '\0' && secs >= 0) {
        ms = secs > 86400 ? 86400000 : secs * 1000;
    } else if (v && *v) {
        time_t when = curl_getdate(v, NULL);
        if (when != -1)
            ms = (int64_t)when * 1000 - now_wall_ms;
        if (ms < 0 && when != -1)
            ms = 0;
    }
    return ms > 86400000 ? 86400000 : ms;
}
