/*
 * JWKS key sets, their refresh thread and token cache (see jwks.h). `lock`
 * guards the key set pointer and the refresh state; a key handed out is a
 * new EVP_PKEY reference, so a swap never pulls a key from under a verifier.
 */
#define _GNU_SOURCE
#include "crypto/jwks.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto/base64.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define GR_JWKS_MAX_BYTES (1u << 20)
#define GR_TOKEN_CACHE_CAPACITY 4096

struct keyset {
    size_t n;
    char **kids;
    EVP_PKEY **keys;
};

struct gr_jwks {
    atomic_int refs;
    char *url, *file, *ca_file;
    int64_t refresh_ms, min_refresh_ms;
    struct gr_token_cache *cache;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct keyset *keys;
    int64_t last_success_wall_ms; /* 0: never */
    int64_t last_attempt_ms;      /* monotonic; 0: never */
    bool fetching, requested, started, last_failed;
    atomic_bool stopping; /* also read, unlocked, by a transfer in progress */
    pthread_t thread;
};

static void keyset_free(struct keyset *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        free(s->kids[i]);
        EVP_PKEY_free(s->keys[i]);
    }
    free(s->kids);
    free(s->keys);
    free(s);
}

static EVP_PKEY *rsa_public_key(const char *n64, const char *e64)
{
    size_t nlen, elen;
    unsigned char *n = gr_base64url_decode(n64, strlen(n64), &nlen);
    unsigned char *e = gr_base64url_decode(e64, strlen(e64), &elen);
    EVP_PKEY *key = NULL;
    BIGNUM *bn = n ? BN_bin2bn(n, (int)nlen, NULL) : NULL, *be = e ? BN_bin2bn(e, (int)elen, NULL) : NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (bn && be && bld && ctx && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) &&
        (params = OSSL_PARAM_BLD_to_param(bld)) && EVP_PKEY_fromdata_init(ctx) == 1 &&
        EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) == 1 &&
        EVP_PKEY_get_bits(key) < 2048) {
        EVP_PKEY_free(key); /* too weak to trust */
        key = NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    free(n);
    free(e);
    return key;
}

/* Parse a JWKS document: the RSA signing keys with a kid. */
static struct keyset *keyset_parse(const char *text, size_t len, char **why)
{
    json_error_t jerr;
    json_t *doc = json_loadb(text, len, 0, &jerr);
    const json_t *keys = json_object_get(doc, "keys");
    if (!json_is_array(keys)) {
        *why = gr_xstrdup(doc ? "no \"keys\" array" : "not JSON");
        json_decref(doc);
        return NULL;
    }
    struct keyset *s = gr_xcalloc(1, sizeof *s);
    s->kids = gr_xcalloc(json_array_size(keys) + 1, sizeof *s->kids);
    s->keys = gr_xcalloc(json_array_size(keys) + 1, sizeof *s->keys);
    size_t skipped = 0;
    for (size_t i = 0; i < json_array_size(keys); i++) {
        const json_t *k = json_array_get(keys, i);
        const char *kty = json_string_value(json_object_get(k, "kty"));
        const char *kid = json_string_value(json_object_get(k, "kid"));
        const char *use = json_string_value(json_object_get(k, "use"));
        const char *alg = json_string_value(json_object_get(k, "alg"));
        const char *n = json_string_value(json_object_get(k, "n"));
        const char *e = json_string_value(json_object_get(k, "e"));
        EVP_PKEY *key = NULL;
        bool dup = false;
        for (size_t j = 0; kid && j < s->n; j++)
            dup |= strcmp(s->kids[j], kid) == 0;
        if (kty && strcmp(kty, "RSA") == 0 && kid && !dup && (!use || strcmp(use, "sig") == 0) &&
            (!alg || strcmp(alg, "RS256") == 0) && n && e && (key = rsa_public_key(n, e))) {
            s->kids[s->n] = gr_xstrdup(kid);
            s->keys[s->n++] = key;
        } else {
            skipped++;
        }
    }
    json_decref(doc);
    if (!s->n) {
        *why = gr_xprintf("no usable key (RSA, with a kid, 2048 bits or more; %zu skipped)",
                          skipped);
        keyset_free(s);
        return NULL;
    }
    return s;
}

static char *read_file(const char *path, size_t *len, char **why)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        *why = gr_xprintf("cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    struct gr_buf b = {0};
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0 && b.len <= GR_JWKS_MAX_BYTES)
        gr_buf_append(&b, chunk, n);
    fclose(f);
    if (b.len > GR_JWKS_MAX_BYTES) {
        *why = gr_xprintf("%s is larger than %u bytes", path, GR_JWKS_MAX_BYTES);
        gr_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.data ? b.data : gr_xstrdup("");
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    struct gr_buf *b = userp;
    size_t n = size * nmemb;
    if (b->len + n > GR_JWKS_MAX_BYTES)
        return 0; /* aborts the transfer */
    gr_buf_append(b, data, n);
    return n;
}

/* Abort a transfer when the key set is being dropped, so that dropping it
 * (on the control thread) never waits for a slow server. */
static int on_progress(void *userp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    const struct gr_jwks *j = userp;
    return atomic_load(&j->stopping) ? 1 : 0;
}

static char *fetch_url(const struct gr_jwks *j, size_t *len, char **why)
{
    CURL *c = curl_easy_init();
    if (!c) {
        *why = gr_xstrdup("curl_easy_init failed");
        return NULL;
    }
    struct gr_buf b = {0};
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, j->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 3L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    if (j->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, j->ca_file);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)GR_JWKS_MAX_BYTES);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "graphrouter/" GR_VERSION);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)j);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        *why = gr_xprintf("fetching %s failed: %s", j->url, *errbuf ? errbuf : curl_easy_strerror(rc));
        gr_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.data ? b.data : gr_xstrdup("");
}

static struct keyset *load(const struct gr_jwks *j, char **why)
{
    size_t len = 0;
    char *text = j->url ? fetch_url(j, &len, why) : read_file(j->file, &len, why);
    if (!text)
        return NULL;
    char *parse_why = NULL;
    struct keyset *s = keyset_parse(text, len, &parse_why);
    free(text);
    if (!s) {
        *why = gr_xprintf("%s: %s", j->url ? j->url : j->file, parse_why);
        free(parse_why);
    }
    return s;
}

static void install(struct gr_jwks *j, struct keyset *s)
{
    struct keyset *old = j->keys;
    j->keys = s;
    j->last_success_wall_ms = gr_wall_ms();
    gr_metrics_jwks(s->n, j->last_success_wall_ms);
    keyset_free(old);
}

struct gr_jwks *gr_jwks_new(const struct gr_jwks_options *o, char **err)
{
    struct gr_jwks *j = gr_xcalloc(1, sizeof *j);
    atomic_init(&j->refs, 1);
    j->url = o->url ? gr_xstrdup(o->url) : NULL;
    j->file = o->file ? gr_xstrdup(o->file) : NULL;
    j->ca_file = o->ca_file ? gr_xstrdup(o->ca_file) : NULL;
    j->refresh_ms = o->refresh_s * 1000;
    j->min_refresh_ms = o->min_refresh_s * 1000;
    j->cache = gr_token_cache_new(GR_TOKEN_CACHE_CAPACITY);
    pthread_mutex_init(&j->lock, NULL);
    gr_cond_init_mono(&j->cond);
    if (j->file) { /* a file is read now, so --check and the first items see its keys */
        struct keyset *s = load(j, err);
        if (!s) {
            gr_jwks_unref(j);
            return NULL;
        }
        j->keys = s;
        j->last_success_wall_ms = gr_wall_ms();
        j->last_attempt_ms = gr_mono_ms();
        gr_metrics_jwks_refresh(true);
    }
    return j;
}

static bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

bool gr_jwks_same_source(const struct gr_jwks *j, const struct gr_jwks_options *o)
{
    return same(j->url, o->url) && same(j->file, o->file) && same(j->ca_file, o->ca_file) &&
           j->refresh_ms == o->refresh_s * 1000 && j->min_refresh_ms == o->min_refresh_s * 1000;
}

static void *refresh_main(void *arg)
{
    struct gr_jwks *j = arg;
    pthread_mutex_lock(&j->lock);
    while (!atomic_load(&j->stopping)) {
        int64_t now = gr_mono_ms();
        /* After a failure, again after min_refresh_s (at least a second). */
        int64_t retry_ms = j->min_refresh_ms > 1000 ? j->min_refresh_ms : 1000;
        int64_t due = !j->last_attempt_ms ? now
                      : j->last_failed    ? j->last_attempt_ms + retry_ms
                                          : j->last_attempt_ms + j->refresh_ms;
        if (j->requested || due <= now) {
            j->requested = false;
            j->fetching = true;
            pthread_mutex_unlock(&j->lock);
            char *why = NULL;
            struct keyset *s = load(j, &why);
            pthread_mutex_lock(&j->lock);
            j->fetching = false;
            j->last_attempt_ms = gr_mono_ms();
            j->last_failed = !s;
            if (s) {
                size_t n = s->n;
                install(j, s);
                gr_metrics_jwks_refresh(true);
                gr_info("validation-token keys refreshed: %zu key(s) from %s", n,
                        j->url ? j->url : j->file);
            } else {
                gr_metrics_jwks_refresh(false);
                if (j->keys)
                    gr_warn("validation-token keys not refreshed; the cached keys stay in force: "
                            "%s",
                            why);
                else
                    gr_warn("validation-token keys could not be loaded; rich items wait until "
                            "they are: %s",
                            why);
                free(why);
            }
            pthread_cond_broadcast(&j->cond);
            continue;
        }
        struct timespec ts = {.tv_sec = due / 1000, .tv_nsec = (due % 1000) * 1000000};
        pthread_cond_timedwait(&j->cond, &j->lock, &ts);
    }
    pthread_mutex_unlock(&j->lock);
    return NULL;
}

void gr_jwks_start(struct gr_jwks *j)
{
    pthread_mutex_lock(&j->lock);
    if (!j->started && pthread_create(&j->thread, NULL, refresh_main, j) == 0)
        j->started = true;
    if (j->keys)
        gr_metrics_jwks(j->keys->n, j->last_success_wall_ms);
    pthread_mutex_unlock(&j->lock);
}

struct gr_jwks *gr_jwks_ref(struct gr_jwks *j)
{
    atomic_fetch_add(&j->refs, 1);
    return j;
}

void gr_jwks_unref(struct gr_jwks *j)
{
    if (!j || atomic_fetch_sub(&j->refs, 1) != 1)
        return;
    pthread_mutex_lock(&j->lock);
    atomic_store(&j->stopping, true);
    pthread_cond_broadcast(&j->cond);
    bool started = j->started;
    pthread_mutex_unlock(&j->lock);
    if (started)
        pthread_join(j->thread, NULL);
    keyset_free(j->keys);
    gr_token_cache_free(j->cache);
    pthread_cond_destroy(&j->cond);
    pthread_mutex_destroy(&j->lock);
    free(j->url);
    free(j->file);
    free(j->ca_file);
    free(j);
}

EVP_PKEY *gr_jwks_key(void *jwks, const char *kid)
{
    struct gr_jwks *j = jwks;
    EVP_PKEY *key = NULL;
    pthread_mutex_lock(&j->lock);
    for (size_t i = 0; j->keys && i < j->keys->n && !key; i++)
        if (strcmp(j->keys->kids[i], kid) == 0 && EVP_PKEY_up_ref(j->keys->keys[i]) == 1)
            key = j->keys->keys[i];
    pthread_mutex_unlock(&j->lock);
    return key;
}

enum gr_token_result gr_jwks_verify(struct gr_jwks *j, const char *token, size_t len,
                                    int64_t now, struct gr_token_claims *claims,
                                    bool *first_seen)
{
    return gr_token_cache_verify(j->cache, token, len, gr_jwks_key, j, now, claims, first_seen);
}

bool gr_jwks_wait_for_kid(struct gr_jwks *j, int64_t received_ms)
{
    pthread_mutex_lock(&j->lock);
    /* Keys loaded within min_refresh_s before the item arrived, or since,
     * are fresh: Entra publishes keys before it signs with them. */
    bool fresh = j->last_success_wall_ms && j->last_success_wall_ms >= received_ms - j->min_refresh_ms;
    bool may_ask = !j->last_attempt_ms || gr_mono_ms() - j->last_attempt_ms >= j->min_refresh_ms;
    bool wait = j->started && (j->fetching || !fresh);
    if (wait && !j->fetching && may_ask && !j->requested) {
        j->requested = true;
        pthread_cond_broadcast(&j->cond);
    }
    pthread_mutex_unlock(&j->lock);
    return wait;
}
