/* Key ring loading and encryptedContent decryption (see decrypt.h). */
#define _GNU_SOURCE
#include "crypto/decrypt.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "crypto/base64.h"
#include "check.h"
#include "route/notification.h"
#include "util.h"

#define GR_KEY_FILE_MAX (1u << 20)

struct ring_key {
    char *certificate_id;
    char thumbprint[41]; /* "" without a certificate */
    EVP_PKEY *pkey;
};

struct gr_keyring {
    struct ring_key *v;
    size_t n;
};

static const char *const result_names[] = {"ok", "malformed", "unknown_key", "bad_key",
                                           "bad_signature", "bad_padding", "not_json"};

const char *gr_decrypt_result_name(enum gr_decrypt_result r)
{
    return (unsigned)r < GR_ARRAY_LEN(result_names) ? result_names[r] : "unknown";
}

/* ---- loading ----------------------------------------------------------- */

/* A secret file: readable, not by group or others, not huge. */
static unsigned char *read_secret(const char *path, bool check_mode, size_t *len, char **why)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        *why = gr_xprintf("cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    if (check_mode && (st.st_mode & (S_IRGRP | S_IROTH | S_IWGRP | S_IWOTH))) {
        *why = gr_xprintf("%s is readable or writable by group or others (mode %04o); it holds "
                          "a private key: chmod 600 it",
                          path, (unsigned)(st.st_mode & 07777));
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        *why = gr_xprintf("cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    unsigned char *buf = gr_xmalloc(GR_KEY_FILE_MAX + 1);
    size_t n = fread(buf, 1, GR_KEY_FILE_MAX + 1, f);
    fclose(f);
    if (n > GR_KEY_FILE_MAX) {
        OPENSSL_cleanse(buf, n);
        free(buf);
        *why = gr_xprintf("%s is larger than %u bytes", path, GR_KEY_FILE_MAX);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void free_secret(unsigned char *buf, size_t len)
{
    if (buf) {
        OPENSSL_cleanse(buf, len);
        free(buf);
    }
}

static int password_cb(char *buf, int size, int rwflag, void *u)
{
    (void)rwflag;
    const char *pass = u ? u : "";
    int n = (int)strlen(pass);
    if (n > size)
        return -1;
    memcpy(buf, pass, (size_t)n);
    return n;
}

/* PKCS#12 files from Windows often use RC2-40 or 3DES, which OpenSSL 3 keeps
 * in its legacy provider. Loading a provider explicitly turns off the
 * implicit default one, so both are loaded; and both are released at exit,
 * before OpenSSL's own clean-up (registered earlier, so run later), which
 * cannot free a provider still referenced. */
static OSSL_PROVIDER *legacy_provider, *default_provider;

static void unload_providers(void)
{
    OSSL_PROVIDER_unload(legacy_provider);
    OSSL_PROVIDER_unload(default_provider);
}

static void load_providers(void)
{
    legacy_provider = OSSL_PROVIDER_load(NULL, "legacy");
    default_provider = OSSL_PROVIDER_load(NULL, "default");
    atexit(unload_providers);
}

static void load_legacy_provider(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, load_providers);
}

static bool is_pem(const unsigned char *buf, size_t len)
{
    return memmem(buf, len, "-----BEGIN", 10) != NULL;
}

/* Read the private key (and a certificate, if the file carries one). */
static EVP_PKEY *read_key(const unsigned char *buf, size_t len, const char *pass, X509 **cert)
{
    EVP_PKEY *pkey = NULL;
    if (is_pem(buf, len)) {
        BIO *bio = BIO_new_mem_buf(buf, (int)len);
        pkey = PEM_read_bio_PrivateKey(bio, NULL, password_cb, (void *)pass);
        BIO_free(bio);
        bio = BIO_new_mem_buf(buf, (int)len);
        *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        BIO_free(bio);
        ERR_clear_error();
        return pkey;
    }
    for (int attempt = 0; attempt < 2 && !pkey; attempt++) {
        if (attempt == 1)
            load_legacy_provider();
        BIO *bio = BIO_new_mem_buf(buf, (int)len);
        PKCS12 *p12 = d2i_PKCS12_bio(bio, NULL);
        BIO_free(bio);
        if (p12 && PKCS12_parse(p12, pass ? pass : "", &pkey, cert, NULL) != 1)
            pkey = NULL;
        PKCS12_free(p12);
        ERR_clear_error();
    }
    return pkey;
}

static X509 *read_certificate(const char *path, char **why)
{
    size_t len;
    unsigned char *buf = read_secret(path, false, &len, why);
    if (!buf)
        return NULL;
    BIO *bio = BIO_new_mem_buf(buf, (int)len);
    X509 *cert = is_pem(buf, len) ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : d2i_X509_bio(bio, NULL);
    BIO_free(bio);
    free(buf);
    ERR_clear_error();
    if (!cert)
        *why = gr_xprintf("%s holds no X.509 certificate (PEM or DER)", path);
    return cert;
}

static void thumbprint(X509 *cert, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    out[0] = '\0';
    if (X509_digest(cert, EVP_sha1(), md, &n) == 1 && n == 20)
        for (unsigned i = 0; i < n; i++)
            snprintf(out + 2 * i, 3, "%02X", md[i]);
}

static int load_one(const struct gr_decryption_key_conf *k, struct ring_key *out, char **why)
{
    char *pass = NULL;
    size_t pass_len = 0, key_len = 0;
    if (k->password_file) {
        pass = (char *)read_secret(k->password_file, true, &pass_len, why);
        if (!pass)
            return -1;
        pass[strcspn(pass, "\r\n")] = '\0'; /* the first line */
    }
    unsigned char *buf = read_secret(k->private_key_file, true, &key_len, why);
    X509 *cert = NULL;
    EVP_PKEY *pkey = buf ? read_key(buf, key_len, pass, &cert) : NULL;
    free_secret(buf, key_len);
    free_secret((unsigned char *)pass, pass_len);
    if (!buf)
        goto fail;
    if (!pkey) {
        *why = gr_xprintf("%s: no private key could be read (PEM PKCS#1/PKCS#8 or PKCS#12%s)",
                          k->private_key_file,
                          k->password_file ? "; is the password right?" : "; encrypted? set password_file");
        goto fail;
    }
    if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA || EVP_PKEY_get_bits(pkey) < 2048 ||
        EVP_PKEY_get_bits(pkey) > 4096) {
        *why = gr_xprintf("%s: Graph needs an RSA key of 2048 to 4096 bits", k->private_key_file);
        goto fail;
    }
    if (k->certificate_file) {
        X509_free(cert);
        if (!(cert = read_certificate(k->certificate_file, why)))
            goto fail;
    }
    if (cert && EVP_PKEY_eq(X509_get0_pubkey(cert), pkey) != 1) {
        *why = gr_xprintf("the certificate %s does not belong to the private key %s",
                          k->certificate_file ? k->certificate_file : "in the key file",
                          k->private_key_file);
        goto fail;
    }
    out->certificate_id = gr_xstrdup(k->certificate_id);
    out->pkey = pkey;
    if (cert)
        thumbprint(cert, out->thumbprint);
    X509_free(cert);
    return 0;
fail:
    X509_free(cert);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return -1;
}

int gr_keyring_load(struct gr_check *c, const struct gr_decryption_key_conf *keys, size_t n,
                    struct gr_keyring **out)
{
    struct gr_keyring *ring = gr_xcalloc(1, sizeof *ring);
    ring->v = gr_xcalloc(n ? n : 1, sizeof *ring->v);
    for (size_t i = 0; i < n; i++) {
        char *why = NULL;
        if (load_one(&keys[i], &ring->v[i], &why) < 0) {
            gr_check_fail_value(c, keys[i].node, "decryption key \"%s\": %s",
                                keys[i].certificate_id, why);
            free(why);
            gr_keyring_free(ring);
            return -1;
        }
        ring->n = i + 1;
    }
    *out = ring;
    return 0;
}

void gr_keyring_free(struct gr_keyring *ring)
{
    if (!ring)
        return;
    for (size_t i = 0; i < ring->n; i++) {
        free(ring->v[i].certificate_id);
        EVP_PKEY_free(ring->v[i].pkey);
    }
    free(ring->v);
    free(ring);
}

size_t gr_keyring_size(const struct gr_keyring *ring)
{
    return ring ? ring->n : 0;
}

/* ---- decrypting -------------------------------------------------------- */

/* The keys that may have encrypted an item, best first: the one with its
 * thumbprint, then those with its certificate id (several, when a rotation
 * kept the id). At most ring->n; returns how many. */
static size_t candidate_keys(const struct gr_keyring *ring, const char *id, const char *tp,
                             const struct ring_key **out)
{
    size_t n = 0;
    for (size_t i = 0; tp && i < ring->n; i++)
        if (ring->v[i].thumbprint[0] && strcasecmp(ring->v[i].thumbprint, tp) == 0)
            out[n++] = &ring->v[i];
    for (size_t i = 0; id && i < ring->n; i++) {
        bool listed = false;
        for (size_t j = 0; j < n; j++)
            listed |= out[j] == &ring->v[i];
        if (!listed && strcmp(ring->v[i].certificate_id, id) == 0)
            out[n++] = &ring->v[i];
    }
    return n;
}

/* RSA-OAEP with SHA-1 and MGF1-SHA-1, as Graph encrypts dataKey. */
static bool unwrap_key(EVP_PKEY *pkey, const unsigned char *in, size_t in_len,
                       unsigned char *out, size_t *out_len)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
    bool ok = ctx && EVP_PKEY_decrypt_init(ctx) == 1 &&
              EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) == 1 &&
              EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1()) == 1 &&
              EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha1()) == 1 &&
              EVP_PKEY_decrypt(ctx, out, out_len, in, in_len) == 1;
    EVP_PKEY_CTX_free(ctx);
    return ok;
}

static const EVP_CIPHER *aes_cbc(size_t key_len)
{
    return key_len == 16 ? EVP_aes_128_cbc() : key_len == 24 ? EVP_aes_192_cbc() : EVP_aes_256_cbc();
}

enum gr_decrypt_result gr_decrypt(const struct gr_keyring *ring, const json_t *ec,
                                  json_t **content)
{
    *content = NULL;
    const char *data64 = gr_json_string_ci(ec, "data");
    const char *key64 = gr_json_string_ci(ec, "dataKey");
    const char *sig64 = gr_json_string_ci(ec, "dataSignature");
    if (!data64 || !key64 || !sig64)
        return GR_DECRYPT_MALFORMED;
    if (!ring || !ring->n)
        return GR_DECRYPT_UNKNOWN_KEY;
    const struct ring_key **candidates = gr_xcalloc(ring->n, sizeof *candidates);
    size_t ncandidates = candidate_keys(ring, gr_json_string_ci(ec, "encryptionCertificateId"),
                                        gr_json_string_ci(ec, "encryptionCertificateThumbprint"),
                                        candidates);
    if (!ncandidates) {
        free(candidates);
        return GR_DECRYPT_UNKNOWN_KEY;
    }

    enum gr_decrypt_result rc = GR_DECRYPT_MALFORMED;
    size_t wrapped_len = 0, data_len = 0, sig_len = 0, key_len = 0, plain_len = 0;
    unsigned char *wrapped = gr_base64_decode(key64, strlen(key64), &wrapped_len);
    unsigned char *data = gr_base64_decode(data64, strlen(data64), &data_len);
    unsigned char *sig = gr_base64_decode(sig64, strlen(sig64), &sig_len);
    unsigned char key[512]; /* RSA-4096 output at most */
    unsigned char *plain = NULL;
    EVP_CIPHER_CTX *aes = NULL;
    if (!wrapped || !data || !sig)
        goto out;

    rc = GR_DECRYPT_BAD_KEY; /* keys are at most 4096 bits: 512 bytes suffice */
    bool unwrapped = false;
    for (size_t i = 0; i < ncandidates && !unwrapped; i++) {
        key_len = sizeof key;
        unwrapped = unwrap_key(candidates[i]->pkey, wrapped, wrapped_len, key, &key_len) &&
                    (key_len == 16 || key_len == 24 || key_len == 32);
    }
    if (!unwrapped)
        goto out;

    /* The MAC first: tampered ciphertext is never decrypted. */
    rc = GR_DECRYPT_BAD_SIGNATURE;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (!HMAC(EVP_sha256(), key, (int)key_len, data, data_len, mac, &mac_len) ||
        sig_len != mac_len || CRYPTO_memcmp(mac, sig, mac_len) != 0)
        goto out;

    rc = GR_DECRYPT_BAD_PADDING;
    int n1 = 0, n2 = 0;
    plain = gr_xmalloc(data_len + 16);
    if (data_len == 0 || data_len % 16 != 0 || !(aes = EVP_CIPHER_CTX_new()) ||
        EVP_DecryptInit_ex(aes, aes_cbc(key_len), NULL, key, key) != 1 ||
        EVP_DecryptUpdate(aes, plain, &n1, data, (int)data_len) != 1 ||
        EVP_DecryptFinal_ex(aes, plain + n1, &n2) != 1)
        goto out;
    plain_len = (size_t)n1 + (size_t)n2;

    rc = GR_DECRYPT_NOT_JSON;
    json_t *doc = json_loadb((const char *)plain, plain_len, 0, NULL);
    if (json_is_object(doc)) {
        *content = doc;
        rc = GR_DECRYPT_OK;
    } else {
        json_decref(doc);
    }
out:
    free(candidates);
    EVP_CIPHER_CTX_free(aes);
    OPENSSL_cleanse(key, sizeof key);
    if (plain) {
        OPENSSL_cleanse(plain, data_len + 16);
        free(plain);
    }
    free(wrapped);
    free(data);
    free(sig);
    ERR_clear_error();
    return rc;
}
