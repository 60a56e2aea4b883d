/*
 * Fuzz validation-token checking against a fixed JWKS, as workers do it:
 * gr_jwks_new() (core/crypto/jwks.c) reads the synthetic vectors' JWKS
 * document (tests/vectors/synthetic/jwks.json, kid "synthetic-kid-1") once,
 * in LLVMFuzzerInitialize, and tokens are verified with gr_token_verify()
 * (core/crypto/jwt.c) through its key lookup, with gr_jwks_verify() (its
 * token cache) and gr_token_policy_check() with the vectors' app and tenant
 * ids at their validation time. LLVMFuzzerInitialize also checks that every
 * case of jwt_cases.json is judged as the vectors expect. The first input
 * byte picks the mode:
 *   0: the rest is a token, in a buffer of exactly its size (no NUL after it);
 *   1: byte 1 picks a header (RS256 with the published kid, most of the
 *      time; an unknown kid; alg "none", "HS256" or "RS512"; a "crit"
 *      member), the rest is the claims JSON, which the harness signs RS256
 *      with the vectors' signing key (jwt_signing_private_key.pem): random
 *      bytes never forge a signature, and this is how the claim checks
 *      behind it get fuzzed;
 *   2: the rest is a JWKS document, read by gr_jwks_new() from a file as the
 *      daemon reads validation_tokens.jwks_file, then the vectors' valid
 *      tokens are verified against it.
 *
 * Checks, beyond "no crash, leak or UB": results are valid enum values;
 * claims are filled exactly on success (tid, at least one audience); the
 * cached verification agrees with the uncached one, and a repeat is served
 * from the cache (not first_seen) unless the kid is unknown.
 * Mode 0: a token verifies only if its signed part is byte for byte that of
 * a vector token that verifies, with the same signature bytes: nobody
 * without the signing key makes a valid token. Mode 1: the result is exactly
 * what the documented rules (jwt.h) give for the claims and header, checked
 * in the same order by a model written here; on success the claims returned
 * are the ones signed. Mode 2: gr_jwks_new() returns a key set or an error
 * message, never both or neither; a vector token verifies against a fuzzed
 * key set only if the key it gets for the token's kid is the published one.
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crypto/base64.h"
#include "crypto/jwks.h"
#include "crypto/jwt.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KID "synthetic-kid-1"
#define MAX_CASES 32

static struct gr_jwks *jwks;   /* the published key set */
static EVP_PKEY *published;    /* its key */
static EVP_PKEY *signing_key;  /* the private half */
static int64_t now;            /* the vectors' validation_time_unix */
static const char *app_ids[4], *tenant_ids[4];
static struct gr_token_policy policy;
static json_t *cases;
static const char *valid_tokens[MAX_CASES]; /* cases gr_token_verify accepts */
static size_t nvalid;
static char *scratch_file; /* mode 2's JWKS document */

static json_t *load_json(const char *path)
{
    json_error_t err;
    json_t *v = json_load_file(path, 0, &err);
    if (!v) {
        fprintf(stderr, "fuzz_jwks: %s: %s\n", path, err.text);
        abort();
    }
    return v;
}

static void fill_ids(const json_t *list, const char **out, size_t *n)
{
    *n = 0;
    for (size_t i = 0; i < json_array_size(list) && *n < 4; i++)
        out[(*n)++] = json_string_value(json_array_get(list, i));
}

/* Verify and policy-check one token, checking the invariants every mode
 * shares; returns the verdict of gr_token_verify and fills *claims on
 * success (the caller frees them). */
static enum gr_token_result verify(struct gr_jwks *j, const char *token, size_t len,
                                   struct gr_token_claims *claims, enum gr_token_result *policy_r)
{
    enum gr_token_result r = gr_token_verify(token, len, gr_jwks_key, j, claims);
    if ((unsigned)r >= GR_TOKEN_RESULT_COUNT)
        abort();
    if (r == GR_TOKEN_VALID ? !claims->tid || claims->naud == 0 || !claims->aud
                            : claims->tid || claims->aud || claims->naud)
        abort();

    for (int round = 0; round < 2; round++) {
        struct gr_token_claims cached;
        bool first = false;
        enum gr_token_result rc = gr_jwks_verify(j, token, len, now, &cached, &first);
        if (rc != r || (round == 1 && first && r != GR_TOKEN_UNKNOWN_KID))
            abort();
        if (rc == GR_TOKEN_VALID) {
            if (strcmp(cached.tid, claims->tid) != 0 || cached.naud != claims->naud ||
                cached.exp != claims->exp || cached.nbf != claims->nbf)
                abort();
            for (size_t i = 0; i < cached.naud; i++)
                if (strcmp(cached.aud[i], claims->aud[i]) != 0)
                    abort();
        }
        gr_token_claims_free(&cached);
    }
    *policy_r = r;
    if (r == GR_TOKEN_VALID) {
        *policy_r = gr_token_policy_check(claims, &policy, now);
        if ((unsigned)*policy_r >= GR_TOKEN_RESULT_COUNT)
            abort();
    }
    return r;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char *err = NULL;
    struct gr_jwks_options o = {.file = GR_VECTORS_DIR "/jwks.json", .refresh_s = 86400,
                                .min_refresh_s = 300};
    jwks = gr_jwks_new(&o, &err);
    published = jwks ? gr_jwks_key(jwks, KID) : NULL;
    FILE *f = fopen(GR_VECTORS_DIR "/jwt_signing_private_key.pem", "r");
    signing_key = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    if (!published || !signing_key) {
        fprintf(stderr, "fuzz_jwks: cannot load the vectors' keys: %s\n", err ? err : "");
        abort();
    }

    cases = load_json(GR_VECTORS_DIR "/jwt_cases.json");
    now = json_integer_value(json_object_get(cases, "validation_time_unix"));
    fill_ids(json_object_get(cases, "app_ids"), app_ids, &policy.napp_ids);
    fill_ids(json_object_get(cases, "tenant_ids"), tenant_ids, &policy.ntenant_ids);
    policy.app_ids = app_ids;
    policy.tenant_ids = tenant_ids;
    const json_t *list = json_object_get(cases, "cases"), *c;
    size_t i;
    json_array_foreach(list, i, c) {
        const char *token = json_string_value(json_object_get(c, "token"));
        struct gr_token_claims claims;
        enum gr_token_result pr;
        enum gr_token_result r = verify(jwks, token, strlen(token), &claims, &pr);
        if ((pr == GR_TOKEN_VALID) != json_is_true(json_object_get(c, "expect_valid"))) {
            fprintf(stderr, "fuzz_jwks: vector case %s judged %s\n",
                    json_string_value(json_object_get(c, "name")), gr_token_result_name(pr));
            abort();
        }
        if (r == GR_TOKEN_VALID && nvalid < MAX_CASES)
            valid_tokens[nvalid++] = token;
        gr_token_claims_free(&claims);
    }

    scratch_file = strdup("/tmp/fuzz-jwks-XXXXXX");
    int fd = scratch_file ? mkstemp(scratch_file) : -1;
    if (fd < 0)
        abort();
    close(fd);
    return 0;
}

/* The signed part (up to the last dot) and the decoded signature of a
 * token; false if it has no two dots or the signature does not decode. */
static bool split(const char *token, size_t len, size_t *signed_len, unsigned char **sig,
                  size_t *sig_len)
{
    const char *dot = memrchr(token, '.', len);
    if (!dot)
        return false;
    *signed_len = (size_t)(dot - token);
    *sig = gr_base64url_decode(dot + 1, len - *signed_len - 1, sig_len);
    return *sig != NULL;
}

static bool is_vector_token(const char *token, size_t len)
{
    size_t signed_len, sig_len;
    unsigned char *sig;
    if (!split(token, len, &signed_len, &sig, &sig_len))
        return false;
    bool found = false;
    for (size_t i = 0; i < nvalid && !found; i++) {
        size_t vsigned_len, vsig_len;
        unsigned char *vsig;
        if (!split(valid_tokens[i], strlen(valid_tokens[i]), &vsigned_len, &vsig, &vsig_len))
            abort();
        found = vsigned_len == signed_len && memcmp(valid_tokens[i], token, signed_len) == 0 &&
                vsig_len == sig_len && memcmp(vsig, sig, sig_len) == 0;
        free(vsig);
    }
    free(sig);
    return found;
}

static void token_mode(const uint8_t *data, size_t size)
{
    char *token = malloc(size ? size : 1);
    if (!token)
        abort();
    memcpy(token, data, size);
    struct gr_token_claims claims;
    enum gr_token_result pr;
    if (verify(jwks, token, size, &claims, &pr) == GR_TOKEN_VALID && !is_vector_token(token, size))
        abort();
    gr_token_claims_free(&claims);
    free(token);
}

/* ---- mode 1: the documented rules, as a model ---------------------------- */

static bool model_number(const json_t *claims, const char *name)
{
    /* RFC 7519 NumericDate: any JSON number, here within [0, 2^40]. */
    const json_t *v = json_object_get(claims, name);
    if (!json_is_number(v))
        return false;
    double d = json_number_value(v);
    return isfinite(d) && !(d < 0) && !(d > 1099511627776.0);
}

static enum gr_token_result model_claims(const json_t *claims)
{
    const char *tid = json_string_value(json_object_get(claims, "tid"));
    const char *iss = json_string_value(json_object_get(claims, "iss"));
    const char *ver = json_string_value(json_object_get(claims, "ver"));
    const json_t *aud = json_object_get(claims, "aud");
    if (!tid || !iss || !ver || !model_number(claims, "exp") ||
        (json_object_get(claims, "nbf") && !model_number(claims, "nbf")) ||
        (!json_is_string(aud) && !json_is_array(aud)))
        return GR_TOKEN_MALFORMED;
    char *v1, *v2;
    if (asprintf(&v1, "https://sts.windows.net/%s/", tid) < 0 ||
        asprintf(&v2, "https://login.microsoftonline.com/%s/v2.0", tid) < 0)
        abort();
    bool issuer = strcmp(iss, v1) == 0 || strcmp(iss, v2) == 0;
    free(v1);
    free(v2);
    if (!issuer)
        return GR_TOKEN_BAD_ISSUER;
    const char *caller = strcmp(ver, "1.0") == 0   ? "appid"
                         : strcmp(ver, "2.0") == 0 ? "azp"
                                                   : NULL;
    const char *who = caller ? json_string_value(json_object_get(claims, caller)) : NULL;
    if (!who || strcmp(who, GR_GRAPH_CHANGE_TRACKING_APP) != 0)
        return GR_TOKEN_BAD_CALLER;
    if (json_is_array(aud)) {
        if (json_array_size(aud) == 0)
            return GR_TOKEN_MALFORMED;
        for (size_t i = 0; i < json_array_size(aud); i++)
            if (!json_is_string(json_array_get(aud, i)))
                return GR_TOKEN_MALFORMED;
    }
    return GR_TOKEN_VALID;
}

static bool same_claims(const json_t *c, const struct gr_token_claims *out)
{
    const json_t *aud = json_object_get(c, "aud");
    size_t naud = json_is_string(aud) ? 1 : json_array_size(aud);
    if (strcmp(out->tid, json_string_value(json_object_get(c, "tid"))) != 0 || out->naud != naud)
        return false;
    for (size_t i = 0; i < naud; i++)
        if (strcmp(out->aud[i], json_string_value(json_is_string(aud) ? aud
                                                                       : json_array_get(aud, i))) !=
            0)
            return false;
    json_int_t exp = json_is_integer(json_object_get(c, "exp"))
                         ? json_integer_value(json_object_get(c, "exp"))
                         : (json_int_t)json_real_value(json_object_get(c, "exp"));
    const json_t *nbf = json_object_get(c, "nbf");
    json_int_t nbf_value = !nbf                   ? 0
                           : json_is_integer(nbf) ? json_integer_value(nbf)
                                                  : (json_int_t)json_real_value(nbf);
    return out->exp == exp && out->nbf == nbf_value;
}

static void claims_mode(const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    json_t *claims = json_loadb((const char *)data + 1, size - 1, 0, NULL);
    if (!json_is_object(claims)) {
        json_decref(claims);
        return;
    }
    unsigned choice = data[0] & 7;
    static const char *const algs[] = {"RS256", "RS256", "RS256", "RS256",
                                       "RS256", "none",  "HS256", "RS512"};
    json_t *header = json_pack("{s:s,s:s,s:s}", "typ", "JWT", "alg", algs[choice], "kid",
                               choice == 4 ? "unknown-kid" : KID);
    if (choice == 3 && (data[0] & 8))
        json_object_set_new(header, "crit", json_pack("[s]", "exp"));
    char *token = gr_jwt_sign_rs256(signing_key, header, claims);
    if (!token)
        abort();
    enum gr_token_result want = strlen(token) > GR_TOKEN_MAX_BYTES ? GR_TOKEN_MALFORMED
                                : choice >= 5                   ? GR_TOKEN_BAD_ALG
                                : choice == 4                 ? GR_TOKEN_UNKNOWN_KID
                                : json_object_get(header, "crit") ? GR_TOKEN_MALFORMED
                                                              : model_claims(claims);
    struct gr_token_claims out;
    enum gr_token_result pr;
    enum gr_token_result r = verify(jwks, token, strlen(token), &out, &pr);
    if (r != want) {
        fprintf(stderr, "fuzz_jwks: %s, the model says %s\n", gr_token_result_name(r),
                gr_token_result_name(want));
        abort();
    }
    if (r == GR_TOKEN_VALID && !same_claims(claims, &out))
        abort();
    gr_token_claims_free(&out);
    free(token);
    json_decref(header);
    json_decref(claims);
}

/* ---- mode 2: the JWKS document ------------------------------------------ */

static void jwks_mode(const uint8_t *data, size_t size)
{
    FILE *f = fopen(scratch_file, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    char *err = NULL;
    struct gr_jwks_options o = {.file = scratch_file, .refresh_s = 86400, .min_refresh_s = 300};
    struct gr_jwks *j = gr_jwks_new(&o, &err);
    if (!j == !err)
        abort();
    free(err);
    if (!j)
        return;
    if (!gr_jwks_same_source(j, &o))
        abort();
    for (size_t i = 0; i < nvalid; i++) {
        struct gr_token_claims claims;
        enum gr_token_result pr;
        if (verify(j, valid_tokens[i], strlen(valid_tokens[i]), &claims, &pr) == GR_TOKEN_VALID) {
            EVP_PKEY *key = gr_jwks_key(j, KID);
            if (!key || EVP_PKEY_eq(key, published) != 1)
                abort();
            EVP_PKEY_free(key);
        }
        gr_token_claims_free(&claims);
    }
    gr_jwks_unref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    switch (data[0] % 3) {
    case 0: token_mode(data + 1, size - 1); break;
    case 1: claims_mode(data + 1, size - 1); break;
    default: jwks_mode(data + 1, size - 1); break;
    }
    return 0;
}
