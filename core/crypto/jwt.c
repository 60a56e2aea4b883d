/* Validation-token (JWT) verification and its cache (see jwt.h). */
#define _GNU_SOURCE
#include "crypto/jwt.h"

#include <jansson.h>
#include <math.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "crypto/base64.h"
#include "util.h"

/* A token that failed stays cached this long. */
#define GR_TOKEN_NEGATIVE_TTL_S 600

static const char *const result_names[GR_TOKEN_RESULT_COUNT] = {
    "valid",      "malformed",  "bad_alg",        "unknown_kid",  "bad_signature", "bad_issuer",
    "bad_caller", "expired",    "not_yet_valid",  "bad_audience", "bad_tenant"};

const char *gr_token_result_name(enum gr_token_result r)
{
    return (unsigned)r < GR_TOKEN_RESULT_COUNT ? result_names[r] : "unknown";
}

void gr_token_claims_free(struct gr_token_claims *c)
{
    free(c->tid);
    for (size_t i = 0; i < c->naud; i++)
        free(c->aud[i]);
    free(c->aud);
    *c = (struct gr_token_claims){0};
}

void gr_token_claims_copy(struct gr_token_claims *dst, const struct gr_token_claims *src)
{
    *dst = *src;
    dst->tid = src->tid ? gr_xstrdup(src->tid) : NULL;
    dst->aud = gr_xcalloc(src->naud ? src->naud : 1, sizeof *dst->aud);
    for (size_t i = 0; i < src->naud; i++)
        dst->aud[i] = gr_xstrdup(src->aud[i]);
}

/* Decode one base64url segment as a JSON object. */
static json_t *segment_json(const char *s, size_t len)
{
    size_t n;
    unsigned char *raw = gr_base64url_decode(s, len, &n);
    if (!raw)
        return NULL;
    json_t *v = json_loadb((const char *)raw, n, JSON_REJECT_DUPLICATES, NULL);
    free(raw);
    if (!json_is_object(v)) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* A NumericDate, seconds since the epoch. Bounded, so that adding the skew
 * can never overflow; later than the year 36812 is not a date anyone sends. */
#define GR_MAX_NUMERIC_DATE (INT64_C(1) << 40)

static bool number_claim(const json_t *claims, const char *name, int64_t *out)
{
    const json_t *v = json_object_get(claims, name);
    double d;
    if (json_is_integer(v))
        d = (double)json_integer_value(v);
    else if (json_is_real(v) && isfinite(json_real_value(v)))
        d = json_real_value(v);
    else
        return false;
    if (d < 0 || d > (double)GR_MAX_NUMERIC_DATE)
        return false;
    *out = json_is_integer(v) ? (int64_t)json_integer_value(v) : (int64_t)d;
    return true;
}

static bool signature_ok(EVP_PKEY *key, const char *input, size_t input_len,
                         const unsigned char *sig, size_t sig_len)
{
    if (EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA || (int)sig_len != EVP_PKEY_get_size(key))
        return false;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
              EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)input, input_len) == 1;
    EVP_MD_CTX_free(md);
    return ok;
}

/* iss must be one of Entra's two forms for exactly this tenant. */
static bool issuer_ok(const char *iss, const char *tid)
{
    char *v1 = gr_xprintf("https://sts.windows.net/%s/", tid);
    char *v2 = gr_xprintf("https://login.microsoftonline.com/%s/v2.0", tid);
    bool ok = strcmp(iss, v1) == 0 || strcmp(iss, v2) == 0;
    free(v1);
    free(v2);
    return ok;
}

static enum gr_token_result check_claims(const json_t *claims, struct gr_token_claims *out)
{
    const char *tid = json_string_value(json_object_get(claims, "tid"));
    const char *iss = json_string_value(json_object_get(claims, "iss"));
    const char *ver = json_string_value(json_object_get(claims, "ver"));
    const json_t *aud = json_object_get(claims, "aud");
    int64_t exp, nbf = 0;
    if (!tid || !iss || !ver || !number_claim(claims, "exp", &exp) ||
        (json_object_get(claims, "nbf") && !number_claim(claims, "nbf", &nbf)))
        return GR_TOKEN_MALFORMED;
    if (!json_is_string(aud) && !json_is_array(aud))
        return GR_TOKEN_MALFORMED;
    if (!issuer_ok(iss, tid))
        return GR_TOKEN_BAD_ISSUER;
    /* The caller is in appid for v1.0 tokens and in azp for v2.0 tokens. */
    const char *caller_claim = strcmp(ver, "1.0") == 0 ? "appid"
                               : strcmp(ver, "2.0") == 0 ? "azp"
                                                         : NULL;
    const char *caller = caller_claim ? json_string_value(json_object_get(claims, caller_claim))
                                      : NULL;
    if (!caller || strcmp(caller, GR_GRAPH_CHANGE_TRACKING_APP) != 0)
        return GR_TOKEN_BAD_CALLER;

    size_t naud = json_is_string(aud) ? 1 : json_array_size(aud);
    if (naud == 0)
        return GR_TOKEN_MALFORMED;
    for (size_t i = 0; json_is_array(aud) && i < naud; i++)
        if (!json_is_string(json_array_get(aud, i)))
            return GR_TOKEN_MALFORMED;
    out->tid = gr_xstrdup(tid);
    out->aud = gr_xcalloc(naud, sizeof *out->aud);
    for (size_t i = 0; i < naud; i++)
        out->aud[i] = gr_xstrdup(json_is_string(aud) ? json_string_value(aud)
                                                     : json_string_value(json_array_get(aud, i)));
    out->naud = naud;
    out->exp = exp;
    out->nbf = nbf;
    return GR_TOKEN_VALID;
}

enum gr_token_result gr_token_verify(const char *token, size_t len, gr_key_lookup_fn lookup,
                                     void *lookup_ctx, struct gr_token_claims *claims)
{
    *claims = (struct gr_token_claims){0};
    if (!token || len == 0 || len > GR_TOKEN_MAX_BYTES)
        return GR_TOKEN_MALFORMED;
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
        return GR_TOKEN_MALFORMED;

    enum gr_token_result rc = GR_TOKEN_MALFORMED;
    json_t *header = segment_json(token, (size_t)(dot1 - token));
    json_t *payload = NULL;
    unsigned char *sig = NULL;
    EVP_PKEY *key = NULL;
    if (!header)
        goto out;
    const char *alg = json_string_value(json_object_get(header, "alg"));
    const char *kid = json_string_value(json_object_get(header, "kid"));
    if (!alg || strcmp(alg, "RS256") != 0) {
        rc = GR_TOKEN_BAD_ALG; /* "none", "HS256" (key confusion) and anything else */
        goto out;
    }
    if (!kid || json_object_get(header, "crit"))
        goto out; /* no critical extensions are understood */
    payload = segment_json(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    size_t sig_len;
    sig = gr_base64url_decode(dot2 + 1, len - (size_t)(dot2 + 1 - token), &sig_len);
    if (!payload || !sig)
        goto out;
    key = lookup(lookup_ctx, kid);
    if (!key) {
        rc = GR_TOKEN_UNKNOWN_KID;
        goto out;
    }
    if (!signature_ok(key, token, (size_t)(dot2 - token), sig, sig_len)) {
        rc = GR_TOKEN_BAD_SIGNATURE;
        goto out;
    }
    rc = check_claims(payload, claims);
out:
    EVP_PKEY_free(key);
    free(sig);
    json_decref(payload);
    json_decref(header);
    if (rc != GR_TOKEN_VALID)
        gr_token_claims_free(claims);
    return rc;
}

/* ---- token lists ------------------------------------------------------- */

/* The tid a token's payload claims, without verifying anything. */
static char *claimed_tid(const char *token, size_t len)
{
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot2)
        return NULL;
    json_t *payload = segment_json(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    const char *tid = json_string_value(json_object_get(payload, "tid"));
    char *out = tid ? gr_xstrdup(tid) : NULL;
    json_decref(payload);
    return out;
}

struct gr_token_list *gr_token_list_new(const json_t *tokens, size_t *skipped, const char **why)
{
    *skipped = 0;
    *why = NULL;
    if (!json_is_array(tokens) || json_array_size(tokens) == 0) {
        *why = !tokens ? "the POST has no validationTokens"
               : json_is_null(tokens) ? "the POST's validationTokens is null"
                                      : "the POST's validationTokens is not a list of tokens";
        return NULL;
    }
    if (json_array_size(tokens) > GR_TOKEN_LIST_MAX) {
        *why = "the POST's validationTokens holds more than 100 tokens";
        return NULL;
    }
    struct gr_token_list *l = gr_xcalloc(1, sizeof *l);
    atomic_init(&l->refs, 1);
    l->v = gr_xcalloc(json_array_size(tokens), sizeof *l->v);
    for (size_t i = 0; i < json_array_size(tokens); i++) {
        const json_t *t = json_array_get(tokens, i);
        size_t len = json_string_length(t);
        if (!json_is_string(t) || len == 0 || len > GR_TOKEN_MAX_BYTES) {
            (*skipped)++;
            continue;
        }
        char *tid = claimed_tid(json_string_value(t), len);
        if (!tid) { /* not even a JWT with a tenant: it can cover nothing */
            (*skipped)++;
            continue;
        }
        struct gr_listed_token *e = &l->v[l->n++];
        e->token = gr_xstrndup(json_string_value(t), len);
        e->len = len;
        e->claimed_tid = tid;
    }
    if (!l->n) {
        *why = "the POST's validationTokens holds no usable token";
        gr_token_list_unref(l);
        return NULL;
    }
    return l;
}

struct gr_token_list *gr_token_list_ref(struct gr_token_list *l)
{
    if (l)
        atomic_fetch_add(&l->refs, 1);
    return l;
}

void gr_token_list_unref(struct gr_token_list *l)
{
    if (!l || atomic_fetch_sub(&l->refs, 1) != 1)
        return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].token);
        free(l->v[i].claimed_tid);
    }
    free(l->v);
    free(l);
}

static bool one_of_ci(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(s, list[i]) == 0)
            return true;
    return false;
}

enum gr_token_result gr_token_policy_check(const struct gr_token_claims *c,
                                           const struct gr_token_policy *p, int64_t now)
{
    if (now >= c->exp + GR_TOKEN_SKEW_S)
        return GR_TOKEN_EXPIRED;
    if (now < c->nbf - GR_TOKEN_SKEW_S)
        return GR_TOKEN_NOT_YET_VALID;
    bool aud_ok = false;
    for (size_t i = 0; i < c->naud && !aud_ok; i++)
        aud_ok = one_of_ci(c->aud[i], p->app_ids, p->napp_ids);
    if (!aud_ok)
        return GR_TOKEN_BAD_AUDIENCE;
    if (p->ntenant_ids && !one_of_ci(c->tid, p->tenant_ids, p->ntenant_ids))
        return GR_TOKEN_BAD_TENANT;
    return GR_TOKEN_VALID;
}

/* ---- cache ------------------------------------------------------------- */

struct cache_entry {
    bool used;
    unsigned char digest[32];
    enum gr_token_result result;
    struct gr_token_claims claims;
    int64_t until; /* seconds since the epoch */
};

struct gr_token_cache {
    pthread_mutex_t lock;
    struct cache_entry *v;
    size_t cap, n; /* cap is a power of two, n <= cap / 2 */
};

struct gr_token_cache *gr_token_cache_new(size_t capacity)
{
    struct gr_token_cache *c = gr_xcalloc(1, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    c->cap = 16;
    while (c->cap < capacity * 2)
        c->cap *= 2;
    c->v = gr_xcalloc(c->cap, sizeof *c->v);
    return c;
}

static void drop_entries(struct gr_token_cache *c, int64_t now, bool all)
{
    /* Rebuild: open addressing cannot simply blank a slot. */
    struct cache_entry *old = c->v;
    c->v = gr_xcalloc(c->cap, sizeof *c->v);
    c->n = 0;
    for (size_t i = 0; i < c->cap; i++) {
        if (!old[i].used)
            continue;
        if (all || old[i].until <= now) {
            gr_token_claims_free(&old[i].claims);
            continue;
        }
        size_t j;
        memcpy(&j, old[i].digest, sizeof j);
        for (j &= c->cap - 1; c->v[j].used; j = (j + 1) & (c->cap - 1)) {
        }
        c->v[j] = old[i];
        c->n++;
    }
    free(old);
}

void gr_token_cache_free(struct gr_token_cache *c)
{
    if (!c)
        return;
    drop_entries(c, 0, true);
    free(c->v);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static struct cache_entry *find(struct gr_token_cache *c, const unsigned char digest[32])
{
    size_t j;
    memcpy(&j, digest, sizeof j);
    for (j &= c->cap - 1; c->v[j].used; j = (j + 1) & (c->cap - 1))
        if (memcmp(c->v[j].digest, digest, 32) == 0)
            return &c->v[j];
    return &c->v[j]; /* the empty slot where it would go */
}

enum gr_token_result gr_token_cache_verify(struct gr_token_cache *cache, const char *token,
                                           size_t len, gr_key_lookup_fn lookup, void *lookup_ctx,
                                           int64_t now, struct gr_token_claims *claims,
                                           bool *first_seen)
{
    *claims = (struct gr_token_claims){0};
    *first_seen = false;
    unsigned char digest[32];
    unsigned int dlen;
    if (!token || len > GR_TOKEN_MAX_BYTES ||
        !EVP_Digest(token, len, digest, &dlen, EVP_sha256(), NULL))
        return GR_TOKEN_MALFORMED;

    pthread_mutex_lock(&cache->lock);
    struct cache_entry *e = find(cache, digest);
    if (e->used && e->until > now) {
        enum gr_token_result rc = e->result;
        if (rc == GR_TOKEN_VALID)
            gr_token_claims_copy(claims, &e->claims);
        pthread_mutex_unlock(&cache->lock);
        return rc;
    }
    pthread_mutex_unlock(&cache->lock);

    /* Verify outside the lock: it is the slow part. Two threads meeting a
     * new token at once both verify it; only the one that caches its result
     * reports a first sighting, so each token is counted once. */
    struct gr_token_claims fresh;
    enum gr_token_result rc = gr_token_verify(token, len, lookup, lookup_ctx, &fresh);
    if (rc == GR_TOKEN_UNKNOWN_KID) {
        *first_seen = true; /* not cached: a refresh may publish the kid */
        return rc;
    }
    pthread_mutex_lock(&cache->lock);
    e = find(cache, digest);
    if (e->used && e->until > now) { /* another thread was quicker */
        pthread_mutex_unlock(&cache->lock);
        *claims = fresh;
        return rc;
    }
    *first_seen = true;
    if (!e->used) {
        if (cache->n + 1 > cache->cap / 2) {
            drop_entries(cache, now, false);
            if (cache->n + 1 > cache->cap / 2)
                drop_entries(cache, now, true);
            e = find(cache, digest);
        }
        e->used = true;
        memcpy(e->digest, digest, sizeof digest);
        cache->n++;
    } else {
        gr_token_claims_free(&e->claims);
    }
    e->result = rc;
    /* A valid token stays until it expires; one that has already expired
     * (a replay of an old token) as long as a failure, or every repeat of it
     * would be verified and counted again. */
    e->until = now + GR_TOKEN_NEGATIVE_TTL_S;
    if (rc == GR_TOKEN_VALID && fresh.exp + GR_TOKEN_SKEW_S > e->until)
        e->until = fresh.exp + GR_TOKEN_SKEW_S;
    if (rc == GR_TOKEN_VALID)
        gr_token_claims_copy(&e->claims, &fresh);
    pthread_mutex_unlock(&cache->lock);
    *claims = fresh;
    return rc;
}

static char *segment(const json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT);
    char *out = text ? gr_base64url_encode((const unsigned char *)text, strlen(text)) : NULL;
    free(text);
    return out;
}

char *gr_jwt_sign_rs256(EVP_PKEY *key, const json_t *header, const json_t *claims)
{
    char *h = segment(header), *p = segment(claims), *token = NULL;
    char *input = h && p ? gr_xprintf("%s.%s", h, p) : NULL;
    free(h);
    free(p);
    size_t sig_len = 0;
    unsigned char *sig = NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (input && md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
        EVP_DigestSign(md, NULL, &sig_len, (const unsigned char *)input, strlen(input)) == 1) {
        sig = gr_xmalloc(sig_len);
        if (EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)input, strlen(input)) == 1) {
            char *s64 = gr_base64url_encode(sig, sig_len);
            token = gr_xprintf("%s.%s", input, s64);
            free(s64);
        }
    }
    EVP_MD_CTX_free(md);
    free(sig);
    free(input);
    return token;
}
