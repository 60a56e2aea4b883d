/*
 * Graph's validation tokens: JWTs, RS256, issued by Entra ID
 * (graph-protocol.md §4). Verification is split in two:
 *
 *   gr_token_verify   what does not depend on configuration or time:
 *                     three base64url parts of JSON, alg exactly RS256, a kid
 *                     the key lookup knows, a valid signature, iss exactly
 *                     https://sts.windows.net/{tid}/ or
 *                     https://login.microsoftonline.com/{tid}/v2.0 with the
 *                     token's own tid, and the Graph change-tracking app as
 *                     appid (ver 1.0) or azp (ver 2.0);
 *   gr_token_policy_check  what does: nbf <= now < exp (with skew), aud one of
 *                     the configured app ids, tid in the allow-list if any.
 *
 * The first part can be cached by the token's digest (gr_token_cache). Pure
 * functions; thread-safe as long as the key lookup is.
 */
#ifndef GR_JWT_H
#define GR_JWT_H

#include <jansson.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GR_GRAPH_CHANGE_TRACKING_APP "0bf30f3b-4a52-48df-9a82-234910c4a086"
#define GR_TOKEN_MAX_BYTES 16384
#define GR_TOKEN_SKEW_S 300

enum gr_token_result {
    GR_TOKEN_VALID = 0,
    GR_TOKEN_MALFORMED,      /* not a JWT of JSON parts, or a claim missing or mistyped */
    GR_TOKEN_BAD_ALG,        /* header alg is not RS256 (none, HS256, ...) */
    GR_TOKEN_UNKNOWN_KID,    /* no published key has the token's kid */
    GR_TOKEN_BAD_SIGNATURE,  /* the signature does not verify with that key */
    GR_TOKEN_BAD_ISSUER,     /* iss is not Entra's, for the token's own tid */
    GR_TOKEN_BAD_CALLER,     /* appid (v1) / azp (v2) is not Graph change tracking */
    GR_TOKEN_EXPIRED,        /* now >= exp + skew */
    GR_TOKEN_NOT_YET_VALID,  /* now < nbf - skew */
    GR_TOKEN_BAD_AUDIENCE,   /* aud is none of validation_tokens.app_ids */
    GR_TOKEN_BAD_TENANT,     /* tid is not in validation_tokens.tenant_ids */
    GR_TOKEN_RESULT_COUNT
};
const char *gr_token_result_name(enum gr_token_result r);

/* What a verified token says (owned strings). */
struct gr_token_claims {
    char *tid;
    char **aud; /* one or more audiences */
    size_t naud;
    int64_t exp, nbf; /* seconds since the epoch; nbf 0 if absent */
};
void gr_token_claims_free(struct gr_token_claims *c);
void gr_token_claims_copy(struct gr_token_claims *dst, const struct gr_token_claims *src);

/* Returns a new reference to the RSA public key published for `kid`, or NULL. */
typedef EVP_PKEY *(*gr_key_lookup_fn)(void *ctx, const char *kid);

enum gr_token_result gr_token_verify(const char *token, size_t len, gr_key_lookup_fn lookup,
                                     void *lookup_ctx, struct gr_token_claims *claims);

struct gr_token_policy {
    const char *const *app_ids;
    size_t napp_ids;
    const char *const *tenant_ids; /* none: any tenant */
    size_t ntenant_ids;
};

enum gr_token_result gr_token_policy_check(const struct gr_token_claims *c,
                                           const struct gr_token_policy *p, int64_t now);

/*
 * The validationTokens of one POST, read once on the request path and shared
 * (reference-counted) by its rich items, however many there are. Bounded: at
 * most GR_TOKEN_LIST_MAX tokens of at most GR_TOKEN_MAX_BYTES each, so a POST
 * cannot make its items hold more than a few megabytes of tokens. Each entry
 * records the tenant the token claims (unverified: it only picks which
 * tokens are worth verifying for an item). Immutable once built.
 */
#define GR_TOKEN_LIST_MAX 100

struct gr_listed_token {
    char *token;
    size_t len;
    char *claimed_tid;
};

struct gr_token_list {
    atomic_int refs;
    size_t n;
    struct gr_listed_token *v;
};

/* A list from a POST's "validationTokens" value. NULL (and *why set, for a
 * log line) when it is absent, null, not a list, empty or over the limits.
 * Entries that are not strings, are longer than GR_TOKEN_MAX_BYTES or do not
 * decode to a payload with a tid are left out and counted in *skipped. */
struct gr_token_list *gr_token_list_new(const json_t *tokens, size_t *skipped, const char **why);
struct gr_token_list *gr_token_list_ref(struct gr_token_list *l);
void gr_token_list_unref(struct gr_token_list *l);

/*
 * A cache of gr_token_verify results keyed by the SHA-256 of the token:
 * a token that verified stays cached until its exp (at least ten minutes,
 * so an expired token replayed is verified once too), one that failed for
 * ten minutes (an unknown kid is never cached: a refresh may publish it).
 * Bounded; when full, expired entries go first, then everything. Internally
 * locked; any thread.
 */
struct gr_token_cache;
struct gr_token_cache *gr_token_cache_new(size_t capacity);
void gr_token_cache_free(struct gr_token_cache *c);
/* Verify through the cache. *first_seen is set for the one call that put
 * the token's result in the cache (so each token is counted once), and for
 * every call that met an unknown kid (never cached). `claims` is filled on
 * VALID. */
enum gr_token_result gr_token_cache_verify(struct gr_token_cache *cache, const char *token,
                                           size_t len, gr_key_lookup_fn lookup, void *lookup_ctx,
                                           int64_t now, struct gr_token_claims *claims,
                                           bool *first_seen);

/* A JWT signed RS256 with `key`: base64url(header).base64url(claims).signature,
 * each JSON part compact (graphrouter's client assertion for Entra ID;
 * graphrouter-simulate's tokens). NULL if signing fails. */
char *gr_jwt_sign_rs256(EVP_PKEY *key, const json_t *header, const json_t *claims);

#endif
