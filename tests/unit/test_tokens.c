#define _GNU_SOURCE
/* Validation tokens: every case of tests/vectors/synthetic/jwt_cases.json at
 * its validation_time_unix against its JWKS, the clock skew at both ends,
 * the verification cache, and base64 strictness. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "crypto/base64.h"
#include "crypto/jwks.h"
#include "crypto/jwt.h"
#include "simcrypto.h"

#define VECTORS GR_SOURCE_DIR "/tests/vectors/synthetic/"

static const struct {
    const char *name;
    enum gr_token_result want;
} expected[] = {
    {"valid_v2_tenantA", GR_TOKEN_VALID},
    {"valid_v1_tenantB", GR_TOKEN_VALID},
    {"expired", GR_TOKEN_EXPIRED},
    {"not_yet_valid", GR_TOKEN_NOT_YET_VALID},
    {"wrong_audience", GR_TOKEN_BAD_AUDIENCE},
    {"wrong_publisher_azp", GR_TOKEN_BAD_CALLER},
    {"wrong_publisher_appid_v1", GR_TOKEN_BAD_CALLER},
    {"v2_token_missing_azp_but_has_appid", GR_TOKEN_BAD_CALLER},
    {"issuer_other_tenant", GR_TOKEN_BAD_TENANT},
    {"issuer_foreign_authority", GR_TOKEN_BAD_ISSUER},
    {"bad_signature_unpublished_key", GR_TOKEN_BAD_SIGNATURE},
    {"unknown_kid", GR_TOKEN_UNKNOWN_KID},
    {"alg_none", GR_TOKEN_BAD_ALG},
    {"alg_HS256_header", GR_TOKEN_BAD_ALG},
    {"payload_tampered", GR_TOKEN_BAD_SIGNATURE},
};

struct fixture {
    json_t *doc;
    struct gr_jwks *jwks;
    const char **apps, **tenants;
    struct gr_token_policy policy;
    int64_t now;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    json_error_t err;
    f->doc = json_load_file(VECTORS "jwt_cases.json", 0, &err);
    assert_non_null(f->doc);
    char *why = NULL;
    struct gr_jwks_options o = {.file = VECTORS "jwks.json", .refresh_s = 3600,
                                .min_refresh_s = 300};
    f->jwks = gr_jwks_new(&o, &why);
    assert_non_null(f->jwks);
    const json_t *apps = json_object_get(f->doc, "app_ids"), *tenants = json_object_get(f->doc, "tenant_ids");
    f->apps = calloc(json_array_size(apps), sizeof *f->apps);
    f->tenants = calloc(json_array_size(tenants), sizeof *f->tenants);
    for (size_t i = 0; i < json_array_size(apps); i++)
        f->apps[i] = json_string_value(json_array_get(apps, i));
    for (size_t i = 0; i < json_array_size(tenants); i++)
        f->tenants[i] = json_string_value(json_array_get(tenants, i));
    f->policy = (struct gr_token_policy){f->apps, json_array_size(apps), f->tenants,
                                         json_array_size(tenants)};
    f->now = json_integer_value(json_object_get(f->doc, "validation_time_unix"));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    gr_jwks_unref(f->jwks);
    free(f->apps);
    free(f->tenants);
    json_decref(f->doc);
    free(f);
    return 0;
}

static const char *token_of(struct fixture *f, const char *name)
{
    const json_t *cases = json_object_get(f->doc, "cases");
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_array_get(cases, i);
        if (strcmp(json_string_value(json_object_get(c, "name")), name) == 0)
            return json_string_value(json_object_get(c, "token"));
    }
    fail_msg("no case %s", name);
    return NULL;
}

static enum gr_token_result check(struct fixture *f, const char *token, int64_t now)
{
    struct gr_token_claims claims;
    enum gr_token_result r = gr_token_verify(token, strlen(token), gr_jwks_key, f->jwks, &claims);
    if (r == GR_TOKEN_VALID) {
        r = gr_token_policy_check(&claims, &f->policy, now);
        gr_token_claims_free(&claims);
    }
    return r;
}

static void test_every_vector_case(void **state)
{
    struct fixture *f = *state;
    const json_t *cases = json_object_get(f->doc, "cases");
    assert_int_equal(json_array_size(cases), sizeof expected / sizeof expected[0]);
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        enum gr_token_result r = check(f, token_of(f, expected[i].name), f->now);
        if (r != expected[i].want)
            fail_msg("%s: %s, expected %s", expected[i].name, gr_token_result_name(r),
                     gr_token_result_name(expected[i].want));
    }
    /* the file's own verdicts agree */
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_array_get(cases, i);
        bool valid = check(f, json_string_value(json_object_get(c, "token")), f->now) ==
                     GR_TOKEN_VALID;
        assert_int_equal(valid, json_is_true(json_object_get(c, "expect_valid")));
    }
}

/* The key-confusion attack: an HS256 token whose HMAC key is the RSA public
 * key as published. A verifier that let the token pick its algorithm would
 * accept it; this one refuses any alg but RS256. */
static void test_key_confusion(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *key = sim_read_key(VECTORS "jwt_signing_private_key.pem");
    assert_non_null(key);
    const char *valid = token_of(f, "valid_v2_tenantA");
    const char *dot1 = strchr(valid, '.'), *dot2 = strchr(dot1 + 1, '.');
    size_t n;
    unsigned char *raw = gr_base64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &n);
    json_t *claims = json_loadb((const char *)raw, n, 0, NULL);
    free(raw);
    char *forged = sim_jwt(key, "synthetic-kid-1", "HS256", claims);
    assert_int_equal(check(f, forged, f->now), GR_TOKEN_BAD_ALG);
    char *honest = sim_jwt(key, "synthetic-kid-1", "RS256", claims); /* the same claims, signed right */
    assert_int_equal(check(f, honest, f->now), GR_TOKEN_VALID);
    free(forged);
    free(honest);
    json_decref(claims);
    EVP_PKEY_free(key);
}

/* exp and nbf so large that adding the skew would overflow are malformed. */
static void test_huge_dates(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *key = sim_read_key(VECTORS "jwt_signing_private_key.pem");
    static const char *const dates[] = {"{\"exp\": 9223372036854775807}", "{\"nbf\": 9223372036854775807}",
                                        "{\"exp\": -1}", "{\"exp\": 1e300}"};
    for (size_t i = 0; i < sizeof dates / sizeof dates[0]; i++) {
        json_t *claims = json_pack("{s:s,s:s,s:s,s:s,s:s,s:I}", "aud", f->apps[0], "iss",
                                   "https://login.microsoftonline.com/aaaabbbb-0000-cccc-1111-dddd2222eeee/v2.0",
                                   "tid", "aaaabbbb-0000-cccc-1111-dddd2222eeee", "azp",
                                   GR_GRAPH_CHANGE_TRACKING_APP, "ver", "2.0", "exp",
                                   (json_int_t)4102444800);
        json_t *over = json_loads(dates[i], 0, NULL);
        json_object_update(claims, over);
        char *t = sim_jwt(key, "synthetic-kid-1", "RS256", claims);
        assert_int_equal(check(f, t, f->now), GR_TOKEN_MALFORMED);
        free(t);
        json_decref(over);
        json_decref(claims);
    }
    EVP_PKEY_free(key);
}

static void test_claims_and_skew(void **state)
{
    struct fixture *f = *state;
    const char *t = token_of(f, "valid_v1_tenantB");
    struct gr_token_claims c;
    assert_int_equal(gr_token_verify(t, strlen(t), gr_jwks_key, f->jwks, &c), GR_TOKEN_VALID);
    assert_string_equal(c.tid, "bbbbcccc-1111-dddd-2222-eeee3333ffff");
    assert_int_equal(c.naud, 1);
    assert_string_equal(c.aud[0], "11112222-bbbb-3333-cccc-4444dddd5555");
    /* five minutes of skew at both ends, and not a second more */
    assert_int_equal(gr_token_policy_check(&c, &f->policy, c.exp + 299), GR_TOKEN_VALID);
    assert_int_equal(gr_token_policy_check(&c, &f->policy, c.exp + 300), GR_TOKEN_EXPIRED);
    assert_int_equal(gr_token_policy_check(&c, &f->policy, c.nbf - 300), GR_TOKEN_VALID);
    assert_int_equal(gr_token_policy_check(&c, &f->policy, c.nbf - 301), GR_TOKEN_NOT_YET_VALID);
    /* without an allow-list any tenant passes; app ids compare ignoring case */
    const char *app = "11112222-BBBB-3333-CCCC-4444DDDD5555";
    struct gr_token_policy any = {&app, 1, NULL, 0};
    assert_int_equal(gr_token_policy_check(&c, &any, f->now), GR_TOKEN_VALID);
    gr_token_claims_free(&c);
}

static void test_malformed(void **state)
{
    struct fixture *f = *state;
    static const char *const bad[] = {"", "abc", "a.b", "a.b.c.d", "!!!.e30.sig",
                                      "e30.e30.", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct gr_token_claims c;
        enum gr_token_result r = gr_token_verify(bad[i], strlen(bad[i]), gr_jwks_key, f->jwks, &c);
        if (r != GR_TOKEN_MALFORMED && r != GR_TOKEN_BAD_ALG)
            fail_msg("\"%s\": %s", bad[i], gr_token_result_name(r));
    }
    char *huge = calloc(GR_TOKEN_MAX_BYTES + 2, 1);
    memset(huge, 'a', GR_TOKEN_MAX_BYTES + 1);
    struct gr_token_claims c;
    assert_int_equal(gr_token_verify(huge, strlen(huge), gr_jwks_key, f->jwks, &c),
                     GR_TOKEN_MALFORMED);
    free(huge);
}

static void test_cache(void **state)
{
    struct fixture *f = *state;
    struct gr_token_claims c;
    bool first;
    const char *valid = token_of(f, "valid_v2_tenantA"), *forged = token_of(f, "payload_tampered");
    const char *unknown = token_of(f, "unknown_kid");
    assert_int_equal(gr_jwks_verify(f->jwks, valid, strlen(valid), f->now, &c, &first),
                     GR_TOKEN_VALID);
    assert_true(first);
    assert_string_equal(c.tid, "aaaabbbb-0000-cccc-1111-dddd2222eeee");
    gr_token_claims_free(&c);
    assert_int_equal(gr_jwks_verify(f->jwks, valid, strlen(valid), f->now, &c, &first),
                     GR_TOKEN_VALID);
    assert_false(first); /* served from the cache, claims and all */
    assert_string_equal(c.tid, "aaaabbbb-0000-cccc-1111-dddd2222eeee");
    gr_token_claims_free(&c);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(gr_jwks_verify(f->jwks, forged, strlen(forged), f->now, &c, &first),
                         GR_TOKEN_BAD_SIGNATURE);
        assert_int_equal(first, i == 0);
    }
    /* a valid but expired token is cached like a failure: a replay of it is
     * verified and counted once, and the policy check still refuses it */
    const char *expired = token_of(f, "expired");
    for (int i = 0; i < 2; i++) {
        assert_int_equal(gr_jwks_verify(f->jwks, expired, strlen(expired), f->now, &c, &first),
                         GR_TOKEN_VALID);
        assert_int_equal(first, i == 0);
        assert_true(c.exp + GR_TOKEN_SKEW_S <= f->now);
        gr_token_claims_free(&c);
    }
    /* an unknown kid is never cached: the next refresh may publish it */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(gr_jwks_verify(f->jwks, unknown, strlen(unknown), f->now, &c, &first),
                         GR_TOKEN_UNKNOWN_KID);
        assert_true(first);
    }
}

struct racer {
    pthread_barrier_t *start;
    struct gr_jwks *jwks;
    const char *token;
    int64_t now;
    bool first;
    enum gr_token_result result;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    struct gr_token_claims c;
    pthread_barrier_wait(r->start);
    r->result = gr_jwks_verify(r->jwks, r->token, strlen(r->token), r->now, &c, &r->first);
    gr_token_claims_free(&c);
    return NULL;
}

/* Threads that meet one new token at once: all get the result, one counts it. */
static void test_cache_counts_once_under_concurrency(void **state)
{
    struct fixture *f = *state;
    enum { N = 8 };
    static const char *const names[] = {"valid_v1_tenantB", "wrong_publisher_azp"};
    for (size_t k = 0; k < 2; k++) {
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, N);
        struct racer r[N];
        pthread_t t[N];
        for (int i = 0; i < N; i++) {
            r[i] = (struct racer){&start, f->jwks, token_of(f, names[k]), f->now, false, 0};
            pthread_create(&t[i], NULL, race, &r[i]);
        }
        int firsts = 0;
        for (int i = 0; i < N; i++) {
            pthread_join(t[i], NULL);
            firsts += r[i].first;
            assert_int_equal(r[i].result, k == 0 ? GR_TOKEN_VALID : GR_TOKEN_BAD_CALLER);
        }
        assert_int_equal(firsts, 1);
        pthread_barrier_destroy(&start);
    }
}

static void test_cache_bound(void **state)
{
    (void)state;
    struct gr_token_cache *cache = gr_token_cache_new(4);
    struct gr_token_claims c;
    bool first;
    char token[32];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 100; i++) {
            snprintf(token, sizeof token, "junk-%d", i);
            assert_int_equal(gr_token_cache_verify(cache, token, strlen(token), gr_jwks_key, NULL,
                                                   1000, &c, &first),
                             GR_TOKEN_MALFORMED);
        }
    }
    snprintf(token, sizeof token, "junk-%d", 99);
    gr_token_cache_verify(cache, token, strlen(token), gr_jwks_key, NULL, 1000, &c, &first);
    assert_false(first); /* the newest entry survived the evictions */
    gr_token_cache_free(cache);
}

static void test_base64(void **state)
{
    (void)state;
    size_t n;
    unsigned char *d = gr_base64_decode("aGVsbG8=", 8, &n);
    assert_int_equal(n, 5);
    assert_memory_equal(d, "hello", 5);
    free(d);
    d = gr_base64url_decode("aGVsbG8", 7, &n); /* url-safe, unpadded */
    assert_int_equal(n, 5);
    free(d);
    d = gr_base64url_decode("-_-_", 4, &n);
    assert_int_equal(n, 3);
    assert_int_equal(d[0], 0xfb);
    free(d);
    static const char *const bad[] = {"aGVsbG8==", "a", "aGVs*G8=", "aGVsbG9=", "-_-_", "ab=c"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_null(gr_base64_decode(bad[i], strlen(bad[i]), &n));
    char *e = gr_base64_encode((const unsigned char *)"\xfb\xff", 2);
    assert_string_equal(e, "+/8=");
    free(e);
    e = gr_base64url_encode((const unsigned char *)"\xfb\xff", 2);
    assert_string_equal(e, "-_8");
    free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_vector_case), cmocka_unit_test(test_claims_and_skew),
        cmocka_unit_test(test_key_confusion),     cmocka_unit_test(test_huge_dates),
        cmocka_unit_test(test_malformed),         cmocka_unit_test(test_cache),
        cmocka_unit_test(test_cache_counts_once_under_concurrency),
        cmocka_unit_test(test_cache_bound),       cmocka_unit_test(test_base64),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
