/*
 * Fuzz the decryption of a rich item's encryptedContent: gr_decrypt()
 * (core/crypto/decrypt.c, with core/crypto/base64.c) and gr_rich_content()
 * (core/crypto/rich.c), the call a worker makes for an item it delivers.
 *
 * The key ring is loaded once, in LLVMFuzzerInitialize, with
 * gr_keyring_load() from the synthetic vectors' RSA-2048 key and certificate
 * (tests/vectors/synthetic; the key is copied to a mode-0600 temporary file,
 * as the loader requires), certificate id "router-test-cert-2025". The
 * first input byte picks the mode:
 *   even: the rest is an encryptedContent value as received (JSON text),
 *         such as the vectors' good and tampered ones;
 *   odd:  structured: byte 1 is flags, bytes 2-4 a flip (position, bits),
 *         the rest a plaintext that the harness encrypts to the ring's key
 *         as Graph does (AES-CBC with a 16/24/32-byte key K, IV = K[0..16),
 *         PKCS#7; HMAC-SHA256(K) over the ciphertext; K wrapped RSA-OAEP-SHA1)
 *         with a choice of identifiers (id and thumbprint, either alone,
 *         lower-case thumbprint, or an unknown id), then optionally flips
 *         bits of one decoded byte of data, dataSignature or dataKey, or
 *         drops the signature's last byte. This is how the success path and
 *         the JSON after it get fuzzed: random bytes never carry a valid MAC.
 *
 * Checks, beyond "no crash, leak or UB": the result is a valid enum value
 * with a name; content is set exactly on GR_DECRYPT_OK and is then a JSON
 * object; gr_rich_content() on an item carrying the same value agrees with
 * gr_decrypt() (result and content), and so does it twice in a row through
 * a content key cache (crypto/keycache.h) shared by every input: the second
 * call takes the key from the cache whenever the first one kept it, and a
 * cached key never changes a result (a tampered data or MAC under a known
 * dataKey still gives bad_signature). Structured mode knows the answer and
 * checks it: an unknown id gives unknown_key; untampered content decrypts to
 * exactly what jansson reads from the plaintext (ok), or not_json when that
 * is not an object, never bad_padding; a flipped or shortened data or
 * dataSignature gives bad_signature (the MAC is checked before anything is
 * decrypted); a flipped dataKey gives bad_key or bad_signature.
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "crypto/base64.h"
#include "crypto/decrypt.h"
#include "crypto/keycache.h"
#include "crypto/rich.h"
#include "generation.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CERT_ID "router-test-cert-2025"
#define THUMBPRINT "1B241614F1EF233102EB4A3CCF6815BD553F654A"

static struct gr_keyring *ring;
static struct gr_keycache *keys; /* small, so that inputs also evict */
static EVP_PKEY *public_key; /* the certificate's, to encrypt to */

static char *copy_key(const char *src)
{
    char *dst = strdup("/tmp/fuzz-decrypt-key-XXXXXX");
    int fd = dst ? mkstemp(dst) : -1; /* mode 0600 */
    FILE *in = fopen(src, "rb");
    if (fd < 0 || !in)
        return NULL;
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (write(fd, buf, n) != (ssize_t)n)
            return NULL;
    fclose(in);
    close(fd);
    return dst;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char *key_file = copy_key(GR_VECTORS_DIR "/enc_private_key.pem");
    if (!key_file) {
        fprintf(stderr, "fuzz_decrypt: cannot copy " GR_VECTORS_DIR "/enc_private_key.pem\n");
        abort();
    }
    struct gr_decryption_key_conf conf = {CERT_ID, key_file, GR_VECTORS_DIR "/enc_certificate.pem",
                                          NULL, NULL};
    struct gr_check c = {.file = "fuzz-decrypt"};
    int rc = gr_keyring_load(&c, &conf, 1, &ring);
    unlink(key_file);
    free(key_file);
    const char *thumbprint = NULL;
    if (rc < 0 || !gr_keyring_certificate(ring, CERT_ID, &thumbprint) ||
        strcmp(thumbprint, THUMBPRINT) != 0) {
        fprintf(stderr, "fuzz_decrypt: key ring: %s\n", c.err ? c.err : "wrong thumbprint");
        abort();
    }
    FILE *f = fopen(GR_VECTORS_DIR "/enc_certificate.pem", "r");
    X509 *cert = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    keys = gr_keycache_new(64, 0);
    public_key = cert ? X509_get_pubkey(cert) : NULL;
    X509_free(cert);
    return public_key ? 0 : -1;
}

/* Decrypt `ec` both ways; returns gr_decrypt's result and content. */
static enum gr_decrypt_result decrypt_both(const json_t *ec, json_t **content)
{
    enum gr_decrypt_result r = gr_decrypt(ring, ec, content);
    if ((unsigned)r > GR_DECRYPT_NOT_JSON || strcmp(gr_decrypt_result_name(r), "unknown") == 0)
        abort();
    if ((r == GR_DECRYPT_OK) != (*content != NULL) || (*content && !json_is_object(*content)))
        abort();

    /* At delivery, a worker reaches the same code through the item. */
    struct gr_generation g = {.keyring = ring};
    json_t *item = json_pack("{sO}", "encryptedContent", (json_t *)ec);
    json_t *again = NULL;
    enum gr_decrypt_result r2 = gr_rich_content(&g, NULL, item, &again);
    if (r2 != r || (r == GR_DECRYPT_OK && !json_equal(again, *content)))
        abort();
    json_decref(again);
    for (int i = 0; i < 2; i++) { /* a miss or a hit, then a hit if it was kept */
        again = NULL;
        r2 = gr_rich_content(&g, keys, item, &again);
        if (r2 != r || (r == GR_DECRYPT_OK && !json_equal(again, *content)))
            abort();
        json_decref(again);
    }
    json_decref(item);
    return r;
}

static void raw_mode(const uint8_t *data, size_t size)
{
    json_t *ec = json_loadb((const char *)data, size, 0, NULL);
    if (json_is_object(ec)) {
        json_t *content = NULL;
        decrypt_both(ec, &content);
        json_decref(content);
    } else if (ec) { /* not an object: a worker delivers the item as it is */
        struct gr_generation g = {.keyring = ring};
        json_t *item = json_pack("{sO}", "encryptedContent", ec), *content = NULL;
        if (gr_rich_content(&g, keys, item, &content) != GR_DECRYPT_OK || content)
            abort();
        json_decref(item);
    }
    json_decref(ec);
}

/* What the structured mode spoils. */
enum tamper { TAMPER_NONE, TAMPER_DATA, TAMPER_KEY, TAMPER_SIGNATURE, TAMPER_SHORT_SIGNATURE };

static json_t *base64_string(const unsigned char *b, size_t n)
{
    char *s = gr_base64_encode(b, n);
    json_t *v = json_string(s);
    free(s);
    return v;
}

static void structured_mode(const uint8_t *data, size_t size)
{
    if (size < 4)
        return;
    uint8_t flags = data[0];
    size_t flip_at = (size_t)data[1] << 8 | data[2];
    uint8_t flip_bits = data[3] ? data[3] : 1;
    const unsigned char *plain = data + 4;
    size_t plain_len = size - 4;
    static const size_t key_lengths[] = {16, 24, 32, 32};
    size_t key_len = key_lengths[flags & 3];
    unsigned ids = (flags >> 2) & 3; /* both, id only, thumbprint only, unknown id */
    bool lower_thumbprint = flags & 0x10;
    enum tamper tamper = (enum tamper)((flags >> 5) % 5);

    unsigned char key[SHA256_DIGEST_LENGTH];
    SHA256(plain, plain_len, key); /* K: any bytes will do; these are reproducible */

    unsigned char *cipher = malloc(plain_len + 16);
    int n1 = 0, n2 = 0;
    EVP_CIPHER_CTX *aes = EVP_CIPHER_CTX_new();
    const EVP_CIPHER *alg = key_len == 16   ? EVP_aes_128_cbc()
                            : key_len == 24 ? EVP_aes_192_cbc()
                                            : EVP_aes_256_cbc();
    if (!cipher || !aes || EVP_EncryptInit_ex(aes, alg, NULL, key, key) != 1 ||
        EVP_EncryptUpdate(aes, cipher, &n1, plain, (int)plain_len) != 1 ||
        EVP_EncryptFinal_ex(aes, cipher + n1, &n2) != 1)
        abort();
    EVP_CIPHER_CTX_free(aes);
    size_t cipher_len = (size_t)n1 + (size_t)n2;

    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (!HMAC(EVP_sha256(), key, (int)key_len, cipher, cipher_len, mac, &mac_len))
        abort();

    unsigned char wrapped[512];
    size_t wrapped_len = sizeof wrapped;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(public_key, NULL);
    if (!ctx || EVP_PKEY_encrypt_init(ctx) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1()) != 1 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha1()) != 1 ||
        EVP_PKEY_encrypt(ctx, wrapped, &wrapped_len, key, key_len) != 1)
        abort();
    EVP_PKEY_CTX_free(ctx);

    switch (tamper) {
    case TAMPER_DATA: cipher[flip_at % cipher_len] ^= flip_bits; break;
    case TAMPER_KEY: wrapped[flip_at % wrapped_len] ^= flip_bits; break;
    case TAMPER_SIGNATURE: mac[flip_at % mac_len] ^= flip_bits; break;
    case TAMPER_SHORT_SIGNATURE: mac_len--; break;
    case TAMPER_NONE: break;
    }

    json_t *ec = json_object();
    json_object_set_new(ec, "data", base64_string(cipher, cipher_len));
    json_object_set_new(ec, "dataSignature", base64_string(mac, mac_len));
    json_object_set_new(ec, "dataKey", base64_string(wrapped, wrapped_len));
    if (ids == 0 || ids == 1)
        json_object_set_new(ec, "encryptionCertificateId", json_string(CERT_ID));
    if (ids == 3)
        json_object_set_new(ec, "encryptionCertificateId", json_string("another-certificate"));
    if (ids == 0 || ids == 2) {
        char tp[] = THUMBPRINT;
        for (char *p = tp; lower_thumbprint && *p; p++)
            *p = (char)(*p >= 'A' && *p <= 'F' ? *p - 'A' + 'a' : *p);
        json_object_set_new(ec, "encryptionCertificateThumbprint", json_string(tp));
    }

    json_t *content = NULL;
    enum gr_decrypt_result r = decrypt_both(ec, &content);
    json_t *expected = json_loadb((const char *)plain, plain_len, 0, NULL);
    bool ok;
    if (ids == 3)
        ok = r == GR_DECRYPT_UNKNOWN_KEY;
    else if (tamper == TAMPER_KEY)
        ok = r == GR_DECRYPT_BAD_KEY || r == GR_DECRYPT_BAD_SIGNATURE;
    else if (tamper != TAMPER_NONE)
        ok = r == GR_DECRYPT_BAD_SIGNATURE;
    else if (json_is_object(expected))
        ok = r == GR_DECRYPT_OK && json_equal(content, expected);
    else
        ok = r == GR_DECRYPT_NOT_JSON;
    if (!ok) {
        fprintf(stderr, "fuzz_decrypt: result %s (ids %u, tamper %d)\n", gr_decrypt_result_name(r),
                ids, (int)tamper);
        abort();
    }
    json_decref(expected);
    json_decref(content);
    json_decref(ec);
    free(cipher);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] & 1) {
        structured_mode(data + 1, size - 1);
    } else {
        /* exactly `size` bytes, no NUL after them */
        uint8_t *copy = malloc(size - 1 ? size - 1 : 1);
        if (!copy)
            abort();
        memcpy(copy, data + 1, size - 1);
        raw_mode(copy, size - 1);
        free(copy);
    }
    return 0;
}
