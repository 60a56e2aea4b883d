/* Decryption: the shared vectors (two tenants, block-aligned, tampered),
 * every failure reason, and key loading: PEM PKCS#1 / PKCS#8 / encrypted,
 * PKCS#12 (modern and legacy), certificate thumbprints, and the refusals
 * (file readable by others, certificate of another key, weak key). */
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
#include <openssl/pkcs12.h>
#include <openssl/provider.h>

#include "config.h"
#include "crypto/decrypt.h"
#include "simcrypto.h"

#define VECTORS GR_SOURCE_DIR "/tests/vectors/synthetic/"

static char dir[] = "/tmp/gr-decrypt-XXXXXX";

static char *in_dir(const char *name)
{
    char *p;
    if (asprintf(&p, "%s/%s", dir, name) < 0)
        abort();
    return p;
}

/* Copy a file into the scratch directory with `mode`. */
static char *install(const char *src, const char *name, mode_t mode)
{
    char *dst = in_dir(name);
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
    chmod(dst, mode);
    return dst;
}

/* Load a key ring from decryption_keys JSON; returns NULL and *err on failure. */
static struct gr_keyring *ring_from(const char *keys_json, char **err)
{
    char *text;
    if (asprintf(&text, "{\"decryption_keys\": %s, \"handlers\": {}, \"routes\": []}",
                 keys_json) < 0)
        abort();
    struct gr_config *cfg;
    *err = NULL;
    if (gr_config_parse("k.json", text, strlen(text), &cfg, err) != 0)
        fail_msg("%s", *err);
    struct gr_check c = {.file = "k.json", .pos = cfg->pos};
    struct gr_keyring *ring = NULL;
    if (gr_keyring_load(&c, cfg->decryption_keys, cfg->ndecryption_keys, &ring) < 0)
        *err = c.err;
    gr_config_free(cfg);
    free(text);
    return ring;
}

static struct gr_keyring *vector_ring(bool with_cert)
{
    char *key = install(VECTORS "enc_private_key.pem", "vector.key", 0600), *json;
    if (asprintf(&json, "[{\"certificate_id\": \"router-test-cert-2025\", \"private_key_file\": "
                        "\"%s\"%s%s%s}]",
                 key, with_cert ? ", \"certificate_file\": \"" : "",
                 with_cert ? VECTORS "enc_certificate.pem" : "", with_cert ? "\"" : "") < 0)
        abort();
    char *err;
    struct gr_keyring *ring = ring_from(json, &err);
    if (!ring)
        fail_msg("%s", err);
    free(json);
    free(key);
    return ring;
}

static void expect_plaintext(const json_t *content, const char *file)
{
    json_t *want = json_load_file(file, 0, NULL);
    assert_non_null(want);
    assert_true(json_equal(content, want));
    json_decref(want);
}

static void test_vectors(void **state)
{
    (void)state;
    struct gr_keyring *ring = vector_ring(true);
    json_t *doc = json_load_file(VECTORS "rich_notification_two_tenants.json", 0, NULL);
    json_t *content;
    for (int i = 0; i < 2; i++) {
        const json_t *ec = json_object_get(json_array_get(json_object_get(doc, "value"), (size_t)i),
                                           "encryptedContent");
        assert_int_equal(gr_decrypt(ring, ec, &content), GR_DECRYPT_OK);
        expect_plaintext(content, i == 0 ? VECTORS "expected_plaintext_item0.json"
                                         : VECTORS "expected_plaintext_item1.json");
        json_decref(content);
    }
    json_t *aligned = json_load_file(VECTORS "encryptedContent_blockaligned.json", 0, NULL);
    assert_int_equal(gr_decrypt(ring, aligned, &content), GR_DECRYPT_OK);
    expect_plaintext(content, VECTORS "expected_plaintext_blockaligned.json");
    json_decref(content);
    json_t *tampered = json_load_file(VECTORS "encryptedContent_tampered.json", 0, NULL);
    assert_int_equal(gr_decrypt(ring, tampered, &content), GR_DECRYPT_BAD_SIGNATURE);
    assert_null(content);

    /* lookup: by thumbprint when the id is unknown, and nothing without either */
    json_t *ec = json_deep_copy(aligned);
    json_object_set_new(ec, "encryptionCertificateId", json_string("someone-else"));
    assert_int_equal(gr_decrypt(ring, ec, &content), GR_DECRYPT_OK);
    json_decref(content);
    json_object_set_new(ec, "encryptionCertificateThumbprint",
                        json_string("1b241614f1ef233102eb4a3ccf6815bd553f654a")); /* any case */
    assert_int_equal(gr_decrypt(ring, ec, &content), GR_DECRYPT_OK);
    json_decref(content);
    json_object_set_new(ec, "encryptionCertificateThumbprint", json_string("00"));
    assert_int_equal(gr_decrypt(ring, ec, &content), GR_DECRYPT_UNKNOWN_KEY);
    /* malformed: a field missing, or not base64 */
    json_decref(ec);
    ec = json_deep_copy(aligned);
    json_object_del(ec, "dataSignature");
    assert_int_equal(gr_decrypt(ring, ec, &content), GR_DECRYPT_MALFORMED);
    json_object_set_new(ec, "dataSignature", json_string("not base64!"));
    assert_int_equal(gr_decrypt(ring, ec, &content), GR_DECRYPT_MALFORMED);
    json_decref(ec);
    json_decref(aligned);
    json_decref(tampered);
    json_decref(doc);
    gr_keyring_free(ring);

    /* without the certificate there is no thumbprint to find the key by */
    ring = vector_ring(false);
    aligned = json_load_file(VECTORS "encryptedContent_blockaligned.json", 0, NULL);
    json_object_del(aligned, "encryptionCertificateId");
    assert_int_equal(gr_decrypt(ring, aligned, &content), GR_DECRYPT_UNKNOWN_KEY);
    json_decref(aligned);
    gr_keyring_free(ring);
}

static void test_every_failure(void **state)
{
    (void)state;
    struct gr_keyring *ring = vector_ring(true);
    X509 *cert = sim_read_cert(VECTORS "enc_certificate.pem");
    static const struct {
        enum sim_tamper tamper;
        const char *plain;
        int aes_bits;
        enum gr_decrypt_result want;
    } cases[] = {
        {SIM_TAMPER_NONE, "{\"ok\": true}", 256, GR_DECRYPT_OK},
        {SIM_TAMPER_NONE, "{\"ok\": true}", 192, GR_DECRYPT_OK},
        {SIM_TAMPER_NONE, "{\"ok\": \"a block-aligned text..\"}", 128, GR_DECRYPT_OK},
        {SIM_TAMPER_DATA, "{\"ok\": true}", 256, GR_DECRYPT_BAD_SIGNATURE},
        {SIM_TAMPER_DATA, "{\"ok\": true}", 128, GR_DECRYPT_BAD_SIGNATURE},
        {SIM_TAMPER_MAC, "{\"ok\": true}", 256, GR_DECRYPT_BAD_SIGNATURE},
        {SIM_TAMPER_KEY, "{\"ok\": true}", 256, GR_DECRYPT_BAD_KEY},
        {SIM_TAMPER_PADDING, "{}", 256, GR_DECRYPT_BAD_PADDING},
        {SIM_TAMPER_PADDING, "{}", 192, GR_DECRYPT_BAD_PADDING},
        {SIM_TAMPER_NONE, "not json", 256, GR_DECRYPT_NOT_JSON},
        {SIM_TAMPER_NONE, "[1, 2]", 256, GR_DECRYPT_NOT_JSON},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *ec = sim_encrypt(cases[i].plain, cert, "router-test-cert-2025", true, true,
                                 cases[i].tamper, cases[i].aes_bits);
        json_t *content;
        enum gr_decrypt_result r = gr_decrypt(ring, ec, &content);
        if (r != cases[i].want)
            fail_msg("case %zu: %s, expected %s", i, gr_decrypt_result_name(r),
                     gr_decrypt_result_name(cases[i].want));
        if (r == GR_DECRYPT_OK) {
            json_t *want = json_loads(cases[i].plain, 0, NULL);
            assert_true(json_equal(content, want));
            json_decref(want);
        }
        json_decref(content);
        json_decref(ec);
    }
    X509_free(cert);
    gr_keyring_free(ring);
}

static char *write_pem_key(EVP_PKEY *key, const char *name, bool traditional, const char *pass)
{
    char *path = in_dir(name);
    BIO *bio = BIO_new_file(path, "w");
    if (traditional) /* "BEGIN RSA PRIVATE KEY": PKCS#1 */
        PEM_write_bio_PrivateKey_traditional(bio, key, NULL, NULL, 0, NULL, NULL);
    else
        PEM_write_bio_PrivateKey(bio, key, pass ? EVP_aes_256_cbc() : NULL, NULL, 0, NULL,
                                 (void *)pass);
    BIO_free(bio);
    chmod(path, 0600);
    return path;
}

static char *write_p12(EVP_PKEY *key, X509 *cert, const char *name, const char *pass, int nid)
{
    PKCS12 *p12 = PKCS12_create(pass, "graphrouter", key, cert, NULL, nid, nid, 0, 0, 0);
    assert_non_null(p12);
    char *path = in_dir(name);
    FILE *f = fopen(path, "wb");
    i2d_PKCS12_fp(f, p12);
    fclose(f);
    chmod(path, 0600);
    PKCS12_free(p12);
    return path;
}

static void expect_loads(const char *key, const char *cert, const char *pass_file, X509 *x)
{
    char *json, *err;
    if (asprintf(&json, "[{\"certificate_id\": \"c\", \"private_key_file\": \"%s\"%s%s%s%s%s%s}]",
                 key, cert ? ", \"certificate_file\": \"" : "", cert ? cert : "",
                 cert ? "\"" : "", pass_file ? ", \"password_file\": \"" : "",
                 pass_file ? pass_file : "", pass_file ? "\"" : "") < 0)
        abort();
    struct gr_keyring *ring = ring_from(json, &err);
    if (!ring)
        fail_msg("%s: %s", key, err);
    /* the key works: by thumbprint if it came with a certificate, else by id */
    json_t *ec = sim_encrypt("{\"k\": 1}", x, "c", !cert && !strstr(key, ".p12"), true,
                             SIM_TAMPER_NONE, 256);
    json_t *content;
    assert_int_equal(gr_decrypt(ring, ec, &content), GR_DECRYPT_OK);
    json_decref(content);
    json_decref(ec);
    gr_keyring_free(ring);
    free(json);
}

static void expect_refused(const char *keys_json, const char *where, const char *what)
{
    char *err;
    struct gr_keyring *ring = ring_from(keys_json, &err);
    assert_null(ring);
    if (strncmp(err, where, strlen(where)) != 0 || !strstr(err, what))
        fail_msg("got %s\nwant %s...%s", err, where, what);
    free(err);
}

/* A rotation that kept the certificate id: both keys decrypt their items,
 * with or without a thumbprint in the item. */
static void test_one_id_two_keys(void **state)
{
    (void)state;
    EVP_PKEY *k1 = sim_rsa_key(2048), *k2 = sim_rsa_key(2048);
    X509 *c1 = sim_self_signed(k1, "one", 30), *c2 = sim_self_signed(k2, "two", 30);
    char *p1 = write_pem_key(k1, "k1.pem", false, NULL), *p2 = write_pem_key(k2, "k2.pem", false, NULL);
    char *json, *err;
    if (asprintf(&json, "[{\"certificate_id\": \"same\", \"private_key_file\": \"%s\"},"
                        " {\"certificate_id\": \"same\", \"private_key_file\": \"%s\"}]",
                 p1, p2) < 0)
        abort();
    struct gr_keyring *ring = ring_from(json, &err);
    assert_non_null(ring);
    for (int i = 0; i < 2; i++) {
        json_t *ec = sim_encrypt("{\"n\": 1}", i ? c2 : c1, "same", true, false, SIM_TAMPER_NONE, 256);
        json_t *content;
        assert_int_equal(gr_decrypt(ring, ec, &content), GR_DECRYPT_OK);
        json_decref(content);
        json_decref(ec);
    }
    gr_keyring_free(ring);
    unlink(p1);
    unlink(p2);
    free(p1);
    free(p2);
    free(json);
    X509_free(c1);
    X509_free(c2);
    EVP_PKEY_free(k1);
    EVP_PKEY_free(k2);
}

static void test_key_formats(void **state)
{
    (void)state;
    EVP_PKEY *key = sim_rsa_key(2048);
    X509 *cert = sim_self_signed(key, "t", 30);
    char *cert_path = in_dir("cert.pem");
    sim_write_cert(cert_path, cert);

    char *pkcs8 = write_pem_key(key, "pkcs8.pem", false, NULL);
    char *pkcs1 = write_pem_key(key, "pkcs1.pem", true, NULL);
    char *encrypted = write_pem_key(key, "enc.pem", false, "s3cret");
    char *pass = in_dir("pass");
    FILE *f = fopen(pass, "w");
    fputs("s3cret\n", f);
    fclose(f);
    chmod(pass, 0600);
    expect_loads(pkcs8, cert_path, NULL, cert);
    expect_loads(pkcs1, NULL, NULL, cert);
    expect_loads(encrypted, cert_path, pass, cert);
    /* PKCS#12, modern (AES) and legacy (RC2-40, as Windows exports it) */
    char *p12 = write_p12(key, cert, "modern.p12", "s3cret", NID_aes_256_cbc);
    expect_loads(p12, NULL, pass, cert);
    OSSL_PROVIDER *legacy_provider = OSSL_PROVIDER_load(NULL, "legacy"); /* to write RC2-40 */
    OSSL_PROVIDER *default_provider = OSSL_PROVIDER_load(NULL, "default");
    char *legacy = write_p12(key, cert, "legacy.p12", "s3cret", NID_pbe_WithSHA1And40BitRC2_CBC);
    OSSL_PROVIDER_unload(legacy_provider);
    OSSL_PROVIDER_unload(default_provider);
    expect_loads(legacy, NULL, pass, cert); /* graphrouter loads the legacy provider itself */

    char *json;
    /* a key file readable by others */
    chmod(pkcs8, 0644);
    if (asprintf(&json, "[\n {\"certificate_id\": \"c\", \"private_key_file\": \"%s\"}]", pkcs8) < 0)
        abort();
    expect_refused(json, "k.json:2:2: ", "is readable or writable by group or others (mode 0644)");
    free(json);
    chmod(pkcs8, 0600);
    /* an encrypted key without its password, a wrong password */
    if (asprintf(&json, "[{\"certificate_id\": \"c\", \"private_key_file\": \"%s\"}]", encrypted) < 0)
        abort();
    expect_refused(json, "k.json:1:22: ", "no private key could be read");
    free(json);
    /* the certificate of another key */
    EVP_PKEY *other = sim_rsa_key(2048);
    X509 *other_cert = sim_self_signed(other, "o", 30);
    char *other_path = in_dir("other.pem");
    sim_write_cert(other_path, other_cert);
    if (asprintf(&json, "[{\"certificate_id\": \"c\", \"private_key_file\": \"%s\", "
                        "\"certificate_file\": \"%s\"}]",
                 pkcs8, other_path) < 0)
        abort();
    expect_refused(json, "k.json:1:22: ", "does not belong to the private key");
    free(json);
    /* a key Graph would not use: over 4096 bits */
    EVP_PKEY *huge = EVP_RSA_gen(4104);
    char *huge_path = write_pem_key(huge, "huge.pem", false, NULL);
    if (asprintf(&json, "[{\"certificate_id\": \"c\", \"private_key_file\": \"%s\"}]", huge_path) < 0)
        abort();
    expect_refused(json, "k.json:1:22: ", "RSA key of 2048 to 4096 bits");
    free(json);
    EVP_PKEY_free(huge);
    unlink(huge_path);
    free(huge_path);
    /* a weak key */
    EVP_PKEY *weak = EVP_RSA_gen(1024);
    char *weak_path = write_pem_key(weak, "weak.pem", false, NULL);
    if (asprintf(&json, "[{\"certificate_id\": \"c\", \"private_key_file\": \"%s\"}]", weak_path) < 0)
        abort();
    expect_refused(json, "k.json:1:22: ", "RSA key of 2048 to 4096 bits");
    free(json);
    /* a missing file */
    expect_refused("[{\"certificate_id\": \"c\", \"private_key_file\": \"/nonexistent\"}]",
                   "k.json:1:22: ", "cannot open /nonexistent");

    EVP_PKEY_free(weak);
    EVP_PKEY_free(other);
    X509_free(other_cert);
    EVP_PKEY_free(key);
    X509_free(cert);
    char *files[] = {cert_path, pkcs8, pkcs1, encrypted, pass, p12, legacy, other_path, weak_path};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        unlink(files[i]);
        free(files[i]);
    }
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char *key = in_dir("vector.key");
    unlink(key);
    free(key);
    return rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_every_failure),
        cmocka_unit_test(test_one_id_two_keys),
        cmocka_unit_test(test_key_formats),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
