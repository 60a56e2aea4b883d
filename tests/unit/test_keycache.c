/*
 * Content keys kept in memory (core/crypto/keycache.c) and their use by
 * gr_decrypt_cached (core/crypto/decrypt.c).
 *
 * Checked: a key put is got back exactly (16 and 32 bytes), an unknown id
 * misses and keys of other lengths are not kept; the table holds exactly its
 * capacity, and a full table evicts its least recently used key that no
 * delivery is expected for, else one whose deliveries have been expected for
 * longer than pending_ttl_ms, else keeps nothing; a key expected by two
 * deliveries stays expected after the first; an evicted,
 * replaced or cleared key no longer occurs anywhere in the table's memory
 * (the scan is shown to find live keys, so it can fail). Through
 * decryption, from graphrouter's own /metrics counters: one RSA operation
 * for an item decrypted twice (a miss, then a hit); a tampered data or MAC
 * under a dataKey already cached still fails with bad_signature and does no
 * RSA; a dataKey that does not unwrap, or an item whose MAC fails, is not
 * cached; a key forgotten is unwrapped again; a ring whose key was replaced under the same certificate id (a
 * reload) does not decrypt an item from the key the old one cached, while the
 * old key's entries still serve a ring that keeps it. And four threads
 * getting, putting, expecting and forgetting 40,000 ids in 256 entries only
 * ever get an id's own key
 * (run under ThreadSanitizer and ASan by scripts/test.sh).
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "config.h"
#include "crypto/base64.h"
#include "crypto/decrypt.h"
#include "crypto/keycache.h"
#include "metrics.h"
#include "simcrypto.h"
#include "store/store.h"
#include "util.h"

#define VECTORS GR_SOURCE_DIR "/tests/vectors/synthetic/"
#define CERT_ID "router-test-cert-2025"

static char dir[] = "/tmp/gr-keycache-XXXXXX";

#define SMALL 8
#define NEVER INT64_MAX /* keys with deliveries to come never age */

static void id_of(unsigned n, unsigned char id[GR_KEYCACHE_ID_LEN])
{
    unsigned char in[sizeof n];
    memcpy(in, &n, sizeof n);
    SHA256(in, sizeof in, id);
}

/* A key derived from the id, so that any thread can tell it is the right one. */
static void key_of(unsigned n, unsigned char key[32])
{
    unsigned char id[GR_KEYCACHE_ID_LEN];
    id_of(n, id);
    SHA256(id, sizeof id, key);
}

static void test_hit_and_miss(void **state)
{
    (void)state;
    struct gr_keycache *c = gr_keycache_new(64, NEVER);
    assert_int_equal(gr_keycache_capacity(c), 64);
    unsigned char a[32], b[16], ida[32], idb[32], idc[32], got[GR_KEYCACHE_KEY_MAX];
    size_t len = 0;
    RAND_bytes(a, sizeof a);
    RAND_bytes(b, sizeof b);
    id_of(1, ida);
    id_of(2, idb);
    id_of(3, idc);
    assert_false(gr_keycache_get(c, ida, got, &len));
    gr_keycache_put(c, ida, a, sizeof a);
    gr_keycache_put(c, idb, b, sizeof b);
    assert_true(gr_keycache_get(c, ida, got, &len));
    assert_int_equal(len, 32);
    assert_memory_equal(got, a, 32);
    assert_true(gr_keycache_get(c, idb, got, &len));
    assert_int_equal(len, 16);
    assert_memory_equal(got, b, 16);
    assert_false(gr_keycache_get(c, idc, got, &len));
    /* not AES key lengths: not kept */
    unsigned char big[33] = {0};
    gr_keycache_put(c, idc, big, 0);
    gr_keycache_put(c, idc, big, sizeof big);
    assert_false(gr_keycache_get(c, idc, got, &len));
    assert_int_equal(gr_keycache_count(c), 2);
    gr_keycache_free(c);
    gr_keycache_free(NULL);
}

static void put_n(struct gr_keycache *c, unsigned n)
{
    unsigned char id[32], key[32];
    id_of(n, id);
    key_of(n, key);
    gr_keycache_put(c, id, key, sizeof key);
}

static bool has(struct gr_keycache *c, unsigned n)
{
    unsigned char id[32], key[32], got[GR_KEYCACHE_KEY_MAX];
    size_t len = 0;
    id_of(n, id);
    key_of(n, key);
    bool hit = gr_keycache_get(c, id, got, &len);
    if (hit && (len != 32 || memcmp(got, key, 32) != 0))
        fail_msg("the wrong key for %u", n);
    return hit;
}

static void expect_n(struct gr_keycache *c, unsigned n, unsigned deliveries)
{
    struct gr_keycache_ref ref = {.set = true};
    id_of(n, ref.id);
    gr_keycache_expect(c, &ref, deliveries);
}

static void test_bound_and_eviction(void **state)
{
    (void)state;
    struct gr_keycache *c = gr_keycache_new(SMALL, NEVER);
    assert_int_equal(gr_keycache_capacity(c), SMALL);
    for (unsigned n = 0; n < SMALL; n++)
        put_n(c, n);
    /* no delivery expected: the least recently used goes */
    assert_true(has(c, 0));
    put_n(c, 8);
    assert_int_equal(gr_keycache_count(c), SMALL);
    assert_false(has(c, 1));
    /* keys with deliveries expected stay while others can go, even older ones */
    expect_n(c, 2, 1);
    expect_n(c, 3, 1);
    expect_n(c, 4, 2);
    assert_int_equal(gr_keycache_pending(c), 3);
    put_n(c, 9);
    put_n(c, 10);
    put_n(c, 11);
    assert_false(has(c, 5));
    assert_false(has(c, 6));
    assert_false(has(c, 7));
    for (unsigned n = 12; n <= 17; n++) /* evicts 0, 8, 9, 10, 11, then 12 */
        put_n(c, n);
    assert_false(has(c, 0) || has(c, 8) || has(c, 11) || has(c, 12));
    for (unsigned n = 13; n <= 17; n++)
        expect_n(c, n, 1);
    /* every key has a delivery to come: a new one is not kept, none is evicted */
    assert_int_equal(gr_keycache_pending(c), SMALL);
    put_n(c, 18);
    assert_false(has(c, 18));
    assert_int_equal(gr_keycache_count(c), SMALL);
    /* the delivery came: 2 is used up, and the next to go */
    assert_true(has(c, 2));
    assert_int_equal(gr_keycache_pending(c), SMALL - 1);
    put_n(c, 19);
    assert_false(has(c, 2));
    /* 4 expected two deliveries: it stays expected after the first */
    assert_true(has(c, 4));
    assert_int_equal(gr_keycache_pending(c), SMALL - 1);
    assert_true(has(c, 4));
    assert_int_equal(gr_keycache_pending(c), SMALL - 2);
    put_n(c, 20); /* 19 and 4 are idle now; 19 is the least recently used */
    assert_false(has(c, 19));
    assert_true(has(c, 3) && has(c, 4) && has(c, 13) && has(c, 17) && has(c, 20));
    /* putting an id it holds replaces its key, evicting nothing */
    unsigned char id[32], got[GR_KEYCACHE_KEY_MAX], other[32];
    size_t len;
    id_of(20, id);
    RAND_bytes(other, sizeof other);
    gr_keycache_put(c, id, other, sizeof other);
    assert_true(gr_keycache_get(c, id, got, &len));
    assert_memory_equal(got, other, 32);
    assert_int_equal(gr_keycache_count(c), SMALL);
    gr_keycache_free(c);

    /* keys expected for longer than pending_ttl_ms (here 0) can go, least recent first */
    c = gr_keycache_new(4, 0);
    for (unsigned n = 0; n < 4; n++) {
        put_n(c, n);
        expect_n(c, n, 1);
    }
    put_n(c, 4);
    assert_false(has(c, 0));
    assert_true(has(c, 1) && has(c, 4));
    gr_keycache_free(c);

    /* exactly the capacity, and exactly the most recent */
    c = gr_keycache_new(1000, NEVER);
    assert_int_equal(gr_keycache_capacity(c), 1000);
    for (unsigned n = 0; n < 20000; n++) {
        put_n(c, n);
        if (n % 997 == 0)
            assert_true(gr_keycache_count(c) <= 1000);
    }
    assert_int_equal(gr_keycache_count(c), 1000);
    assert_false(has(c, 18999));
    for (unsigned n = 19000; n < 20000; n++)
        assert_true(has(c, n));
    gr_keycache_free(c);
}

static void test_wiped_when_it_leaves(void **state)
{
    (void)state;
    struct gr_keycache *c = gr_keycache_new(SMALL, NEVER);
    unsigned char keys[SMALL + 1][32], id[32];
    for (unsigned n = 0; n <= SMALL; n++)
        RAND_bytes(keys[n], 32);
    for (unsigned n = 0; n < SMALL; n++) {
        id_of(n, id);
        gr_keycache_put(c, id, keys[n], 32);
    }
    for (unsigned n = 0; n < SMALL; n++) /* the scan finds what is there */
        assert_true(gr_keycache_memory_holds(c, keys[n], 32));
    /* evicted: key 0 was the least recently used */
    id_of(SMALL, id);
    gr_keycache_put(c, id, keys[SMALL], 32);
    assert_false(gr_keycache_memory_holds(c, keys[0], 32));
    assert_false(gr_keycache_memory_holds(c, keys[0] + 16, 16));
    assert_true(gr_keycache_memory_holds(c, keys[SMALL], 32));
    /* replaced by a shorter key: nothing of the longer one is left behind */
    unsigned char short_key[16];
    RAND_bytes(short_key, sizeof short_key);
    id_of(1, id);
    gr_keycache_put(c, id, short_key, sizeof short_key);
    assert_false(gr_keycache_memory_holds(c, keys[1], 32));
    assert_false(gr_keycache_memory_holds(c, keys[1] + 16, 16));
    assert_true(gr_keycache_memory_holds(c, short_key, 16));
    /* cleared: nothing left at all */
    gr_keycache_clear(c);
    assert_int_equal(gr_keycache_count(c), 0);
    for (unsigned n = 0; n <= SMALL; n++) {
        assert_false(gr_keycache_memory_holds(c, keys[n], 32));
        assert_false(gr_keycache_memory_holds(c, keys[n] + 16, 16));
    }
    assert_false(gr_keycache_memory_holds(c, short_key, 16));
    unsigned char got[GR_KEYCACHE_KEY_MAX];
    size_t len;
    id_of(2, id);
    assert_false(gr_keycache_get(c, id, got, &len));
    /* forgotten (its item needs it no more): gone and wiped; others stay */
    struct gr_keycache_ref ref = {.set = true};
    id_of(3, ref.id);
    gr_keycache_put(c, ref.id, keys[3], 32);
    id_of(4, id);
    gr_keycache_put(c, id, keys[4], 32);
    gr_keycache_forget(c, &ref);
    assert_false(gr_keycache_get(c, ref.id, got, &len));
    assert_false(gr_keycache_memory_holds(c, keys[3], 32));
    assert_true(gr_keycache_get(c, id, got, &len));
    assert_int_equal(gr_keycache_count(c), 1);
    ref.set = false; /* an unset ref forgets nothing */
    memcpy(ref.id, id, sizeof id);
    gr_keycache_forget(c, &ref);
    assert_int_equal(gr_keycache_count(c), 1);
    gr_keycache_forget(NULL, &ref);
    gr_keycache_free(c);
}

/* ---- through decryption ---------------------------------------------------- */

/* A counter of graphrouter's /metrics, as rendered. */
static double metric(const char *series)
{
    struct gr_store_stats st = {0};
    struct gr_metrics_gauges g = {.store = &st};
    struct gr_buf b = {0};
    gr_metrics_render(&b, &g);
    char *line = gr_xprintf("\n%s ", series);
    const char *at = strstr(b.data, line);
    assert_non_null(at);
    double v = strtod(at + strlen(line), NULL);
    free(line);
    gr_buf_free(&b);
    return v;
}

static double rsa_ops(void)
{
    return metric("graphrouter_rsa_private_operations_total");
}
static double hits(void)
{
    return metric("graphrouter_content_key_cache_total{result=\"hit\"}");
}
static double misses(void)
{
    return metric("graphrouter_content_key_cache_total{result=\"miss\"}");
}

static char *in_dir(const char *name)
{
    return gr_xprintf("%s/%s", dir, name);
}

/* A key ring of one key file (mode 0600) under `id`, with a certificate file or not. */
static struct gr_keyring *ring_of(const char *key_file, const char *cert_file)
{
    char *text = gr_xprintf("{\"decryption_keys\": [{\"certificate_id\": \"%s\", "
                            "\"private_key_file\": \"%s\"%s%s%s}], \"handlers\": {}, "
                            "\"routes\": []}",
                            CERT_ID, key_file, cert_file ? ", \"certificate_file\": \"" : "",
                            cert_file ? cert_file : "", cert_file ? "\"" : "");
    struct gr_config *cfg;
    char *err = NULL;
    if (gr_config_parse("k.json", text, strlen(text), &cfg, &err) != 0)
        fail_msg("%s", err);
    struct gr_check c = {.file = "k.json", .pos = cfg->pos};
    struct gr_keyring *ring = NULL;
    if (gr_keyring_load(&c, cfg->decryption_keys, cfg->ndecryption_keys, &ring) < 0)
        fail_msg("%s", c.err);
    gr_config_free(cfg);
    free(text);
    return ring;
}

static struct gr_keyring *vector_ring(void)
{
    char *key = in_dir("vector.key");
    FILE *in = fopen(VECTORS "enc_private_key.pem", "rb"), *out = fopen(key, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
    chmod(key, 0600);
    struct gr_keyring *ring = ring_of(key, VECTORS "enc_certificate.pem");
    unlink(key);
    free(key);
    return ring;
}

/* A copy of `ec` with one bit of the decoded `field` flipped: the same dataKey. */
static json_t *flipped(const json_t *ec, const char *field)
{
    json_t *copy = json_deep_copy(ec);
    const char *b64 = json_string_value(json_object_get(copy, field));
    size_t len;
    unsigned char *raw = gr_base64_decode(b64, strlen(b64), &len);
    assert_non_null(raw);
    raw[len / 2] ^= 0x10;
    char *again = gr_base64_encode(raw, len);
    json_object_set_new(copy, field, json_string(again));
    free(again);
    free(raw);
    return copy;
}

static const char *const plain = "{\"body\": {\"content\": \"kept in memory, never on disk\"}}";

static void expect(const struct gr_keyring *ring, struct gr_keycache *c, const json_t *ec,
                   enum gr_decrypt_result want)
{
    json_t *content = NULL;
    struct gr_keycache_ref ref = {.set = true};
    enum gr_decrypt_result r = gr_decrypt_cached(ring, c, ec, &content, &ref);
    if (r != want)
        fail_msg("%s, expected %s", gr_decrypt_result_name(r), gr_decrypt_result_name(want));
    /* the entry is named once the MAC verified, and only then */
    assert_int_equal(ref.set, c != NULL && r == GR_DECRYPT_OK);
    if (r == GR_DECRYPT_OK) {
        json_t *expected = json_loads(plain, 0, NULL);
        assert_true(json_equal(content, expected));
        json_decref(expected);
    } else {
        assert_null(content);
    }
    json_decref(content);
}

static void test_one_rsa_operation_and_the_mac_every_time(void **state)
{
    (void)state;
    struct gr_keyring *ring = vector_ring();
    struct gr_keycache *c = gr_keycache_new(64, NEVER);
    X509 *cert = sim_read_cert(VECTORS "enc_certificate.pem");
    json_t *ec = sim_encrypt(plain, cert, CERT_ID, true, true, SIM_TAMPER_NONE, 256);

    double rsa0 = rsa_ops(), hit0 = hits(), miss0 = misses();
    expect(ring, c, ec, GR_DECRYPT_OK); /* routing: unwrapped */
    assert_true(rsa_ops() == rsa0 + 1 && misses() == miss0 + 1 && hits() == hit0);
    assert_int_equal(gr_keycache_count(c), 1);
    expect(ring, c, ec, GR_DECRYPT_OK); /* two deliveries: from the cache */
    expect(ring, c, ec, GR_DECRYPT_OK);
    assert_true(rsa_ops() == rsa0 + 1 && hits() == hit0 + 2);

    /* tampered data or MAC under the cached dataKey: the MAC still decides */
    json_t *data = flipped(ec, "data"), *mac = flipped(ec, "dataSignature");
    expect(ring, c, data, GR_DECRYPT_BAD_SIGNATURE);
    expect(ring, c, mac, GR_DECRYPT_BAD_SIGNATURE);
    assert_true(rsa_ops() == rsa0 + 1 && hits() == hit0 + 4);
    json_decref(data);
    json_decref(mac);

    /* an item whose MAC fails is not cached: the next one unwraps again */
    json_t *fresh = sim_encrypt(plain, cert, CERT_ID, true, true, SIM_TAMPER_NONE, 128);
    json_t *bad = flipped(fresh, "data");
    expect(ring, c, bad, GR_DECRYPT_BAD_SIGNATURE);
    assert_true(rsa_ops() == rsa0 + 2);
    assert_int_equal(gr_keycache_count(c), 1);
    expect(ring, c, fresh, GR_DECRYPT_OK);
    expect(ring, c, fresh, GR_DECRYPT_OK);
    assert_true(rsa_ops() == rsa0 + 3);
    assert_int_equal(gr_keycache_count(c), 2);
    json_decref(bad);
    json_decref(fresh);

    /* a dataKey that does not unwrap is not cached: each try is an RSA operation */
    json_t *badkey = sim_encrypt(plain, cert, CERT_ID, true, true, SIM_TAMPER_KEY, 256);
    expect(ring, c, badkey, GR_DECRYPT_BAD_KEY);
    expect(ring, c, badkey, GR_DECRYPT_BAD_KEY);
    assert_true(rsa_ops() == rsa0 + 5);
    assert_int_equal(gr_keycache_count(c), 2);
    json_decref(badkey);

    /* without a cache (gr_decrypt): every call unwraps, no lookup is counted */
    double hit1 = hits(), miss1 = misses();
    expect(ring, NULL, ec, GR_DECRYPT_OK);
    json_t *content = NULL;
    assert_int_equal(gr_decrypt(ring, ec, &content), GR_DECRYPT_OK);
    json_decref(content);
    assert_true(rsa_ops() == rsa0 + 7 && hits() == hit1 && misses() == miss1);

    /* forgotten: the next decryption unwraps again */
    struct gr_keycache_ref ref;
    assert_int_equal(gr_decrypt_cached(ring, c, ec, &content, &ref), GR_DECRYPT_OK);
    json_decref(content);
    assert_true(ref.set && rsa_ops() == rsa0 + 7);
    gr_keycache_forget(c, &ref);
    expect(ring, c, ec, GR_DECRYPT_OK);
    assert_true(rsa_ops() == rsa0 + 8);

    json_decref(ec);
    X509_free(cert);
    gr_keycache_free(c);
    gr_keyring_free(ring);
}

/* A reload that replaces the key under the same certificate id: the old
 * key's cached content keys are not found by the new ring. */
static void test_a_replaced_key_finds_nothing(void **state)
{
    (void)state;
    struct gr_keyring *old_ring = vector_ring();
    struct gr_keycache *c = gr_keycache_new(64, NEVER);
    X509 *cert = sim_read_cert(VECTORS "enc_certificate.pem");
    /* by certificate id only, as an item whose thumbprint is not sent */
    json_t *ec = sim_encrypt(plain, cert, CERT_ID, true, false, SIM_TAMPER_NONE, 256);
    expect(old_ring, c, ec, GR_DECRYPT_OK);

    EVP_PKEY *other = sim_rsa_key(2048);
    char *path = in_dir("other.pem");
    assert_int_equal(sim_write_key(path, other), 0);
    struct gr_keyring *new_ring = ring_of(path, NULL);
    double rsa0 = rsa_ops();
    expect(new_ring, c, ec, GR_DECRYPT_BAD_KEY); /* tried with the new key: it fails */
    assert_true(rsa_ops() == rsa0 + 1);
    /* a ring that keeps the key (a reload that changed something else) still finds it */
    struct gr_keyring *same = vector_ring();
    expect(same, c, ec, GR_DECRYPT_OK);
    assert_true(rsa_ops() == rsa0 + 1);

    unlink(path);
    free(path);
    EVP_PKEY_free(other);
    json_decref(ec);
    X509_free(cert);
    gr_keycache_free(c);
    gr_keyring_free(old_ring);
    gr_keyring_free(new_ring);
    gr_keyring_free(same);
}

/* ---- threads ------------------------------------------------------------------ */

struct racer {
    struct gr_keycache *c;
    unsigned seed;
    unsigned wrong, hits;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    unsigned char id[32], key[32], got[GR_KEYCACHE_KEY_MAX];
    for (unsigned i = 0; i < 40000; i++) {
        unsigned n = (i * 7919u + r->seed) % 2000;
        id_of(n, id);
        key_of(n, key);
        size_t len = 0;
        if (gr_keycache_get(r->c, id, got, &len)) {
            r->hits++;
            r->wrong += len != 32 || memcmp(got, key, 32) != 0;
        } else {
            gr_keycache_put(r->c, id, key, sizeof key);
            struct gr_keycache_ref ref = {.set = true};
            memcpy(ref.id, id, sizeof id);
            if (i % 3 == 0)
                gr_keycache_expect(r->c, &ref, 2);
            else if (i % 7 == 0)
                gr_keycache_forget(r->c, &ref);
        }
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    struct gr_keycache *c = gr_keycache_new(256, 0);
    struct racer r[4];
    pthread_t t[4];
    for (unsigned i = 0; i < 4; i++) {
        r[i] = (struct racer){.c = c, .seed = i * 1013u};
        assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
    }
    unsigned hit_total = 0;
    for (unsigned i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(r[i].wrong, 0);
        hit_total += r[i].hits;
    }
    assert_true(hit_total > 0);
    assert_true(gr_keycache_count(c) <= gr_keycache_capacity(c));
    gr_keycache_free(c);
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hit_and_miss),
        cmocka_unit_test(test_bound_and_eviction),
        cmocka_unit_test(test_wiped_when_it_leaves),
        cmocka_unit_test(test_one_rsa_operation_and_the_mac_every_time),
        cmocka_unit_test(test_a_replaced_key_finds_nothing),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
