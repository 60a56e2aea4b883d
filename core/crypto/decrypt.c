/* Key ring loading and encryptedContent decryption (see decrypt.h). */
#define _GNU_SOURCE
#include "crypto/decrypt.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "crypto/base64.h"
#include "crypto/keycache.h"
#include "crypto/keyfile.h"
#include "check.h"
#include "metrics.h"
#include "route/notification.h"
#include "util.h"

struct ring_key {
    char *certificate_id;
    char thumbprint[41]; /* "" without a certificate */
    char *certificate;   /* base64 DER; NULL without a certificate */
    EVP_PKEY *pkey;
    /* SHA-256 of the public key (SubjectPublicKeyInfo DER): what the content
     * keys it unwrapped are cached under (keycache.h), so that a reload that
     * replaces the key, even under the same certificate id, finds none. */
    unsigned char identity[GR_KEYCACHE_ID_LEN];
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

static int load_one(const struct gr_decryption_key_conf *k, struct ring_key *out, char **why)
{
    struct gr_keyfile_spec spec = {k->private_key_file, k->certificate_file, k->password_file};
    EVP_PKEY *pkey;
    X509 *cert;
    if (gr_keyfile_load(&spec, &pkey, &cert, why) < 0)
        return -1;
    if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA || EVP_PKEY_get_bits(pkey) < 2048 ||
        EVP_PKEY_get_bits(pkey) > 4096) {
        *why = gr_xprintf("%s: Graph needs an RSA key of 2048 to 4096 bits", k->private_key_file);
        X509_free(cert);
        EVP_PKEY_free(pkey);
        return -1;
    }
    unsigned char *der = NULL;
    int der_len = i2d_PUBKEY(pkey, &der);
    unsigned int md_len = 0;
    if (der_len <= 0 ||
        EVP_Digest(der, (size_t)der_len, out->identity, &md_len, gr_sha256(), NULL) != 1) {
        OPENSSL_free(der);
        *why = gr_xprintf("%s: the public key cannot be encoded", k->private_key_file);
        X509_free(cert);
        EVP_PKEY_free(pkey);
        return -1;
    }
    OPENSSL_free(der);
    out->certificate_id = gr_xstrdup(k->certificate_id);
    out->pkey = pkey;
    if (cert) {
        gr_keyfile_thumbprint(cert, out->thumbprint);
        out->certificate = gr_keyfile_cert_base64(cert);
    }
    X509_free(cert);
    return 0;
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
        free(ring->v[i].certificate);
        EVP_PKEY_free(ring->v[i].pkey);
    }
    free(ring->v);
    free(ring);
}

size_t gr_keyring_size(const struct gr_keyring *ring)
{
    return ring ? ring->n : 0;
}

const char *gr_keyring_certificate(const struct gr_keyring *ring, const char *id,
                                   const char **thumbprint)
{
    for (size_t i = 0; ring && i < ring->n; i++)
        if (ring->v[i].certificate && strcmp(ring->v[i].certificate_id, id) == 0) {
            if (thumbprint)
                *thumbprint = ring->v[i].thumbprint;
            return ring->v[i].certificate;
        }
    return NULL;
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

/* What RSA-OAEP may unwrap: keys are at most 4096 bits, 512 bytes. */
#define GR_UNWRAPPED_MAX 512

/* RSA-OAEP with SHA-1 and MGF1-SHA-1, as Graph encrypts dataKey: the one
 * RSA private-key operation graphrouter does, counted in
 * graphrouter_rsa_private_operations_total. */
static bool unwrap_key(EVP_PKEY *pkey, const unsigned char *in, size_t in_len,
                       unsigned char *out, size_t *out_len)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
    bool ok = ctx && EVP_PKEY_decrypt_init(ctx) == 1 &&
              EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) == 1 &&
              EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1()) == 1 &&
              EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha1()) == 1;
    if (ok) {
        gr_metrics_rsa_private_op();
        ok = EVP_PKEY_decrypt(ctx, out, out_len, in, in_len) == 1;
    }
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
    return gr_decrypt_cached(ring, NULL, ec, content, NULL);
}

/* The content key of an item: from the cache when a candidate key unwrapped
 * this dataKey before (*found_at: its id's index), else unwrapped with RSA
 * (each candidate in turn; *unwrapped_by: the one that did). */
static bool content_key(const struct ring_key *const *candidates, size_t ncandidates,
                        struct gr_keycache *cache, const char *key64,
                        unsigned char ids[][GR_KEYCACHE_ID_LEN], unsigned char *key,
                        size_t *key_len, bool *malformed, size_t *found_at,
                        size_t *unwrapped_by)
{
    *found_at = *unwrapped_by = SIZE_MAX;
    if (cache) {
        size_t len = strlen(key64);
        for (size_t i = 0; i < ncandidates; i++) {
            gr_keycache_id(candidates[i]->identity, key64, len, ids[i]);
            if (gr_keycache_get(cache, ids[i], key, key_len)) {
                gr_metrics_content_key_cache(true);
                *found_at = i;
                return true;
            }
        }
        gr_metrics_content_key_cache(false);
    }
    size_t wrapped_len = 0;
    unsigned char *wrapped = gr_base64_decode(key64, strlen(key64), &wrapped_len);
    if (!wrapped) {
        *malformed = true;
        return false;
    }
    bool unwrapped = false;
    for (size_t i = 0; i < ncandidates && !unwrapped; i++) {
        *key_len = GR_UNWRAPPED_MAX;
        unwrapped = unwrap_key(candidates[i]->pkey, wrapped, wrapped_len, key, key_len) &&
                    (*key_len == 16 || *key_len == 24 || *key_len == 32);
        if (unwrapped)
            *unwrapped_by = i;
    }
    free(wrapped);
    return unwrapped;
}

enum gr_decrypt_result gr_decrypt_cached(const struct gr_keyring *ring, struct gr_keycache *cache,
                                         const json_t *ec, json_t **content,
                                         struct gr_keycache_ref *ref)
{
    if (ref)
        ref->set = false;
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
    size_t data_len = 0, sig_len = 0, key_len = 0, plain_len = 0;
    unsigned char *data = gr_base64_decode(data64, strlen(data64), &data_len);
    unsigned char *sig = gr_base64_decode(sig64, strlen(sig64), &sig_len);
    unsigned char key[GR_UNWRAPPED_MAX];
    unsigned char (*ids)[GR_KEYCACHE_ID_LEN] = gr_xcalloc(ncandidates, sizeof *ids);
    unsigned char *plain = NULL;
    EVP_CIPHER_CTX *aes = NULL;
    if (!data || !sig)
        goto out;

    bool malformed = false;
    size_t found_at, unwrapped_by;
    if (!content_key(candidates, ncandidates, cache, key64, ids, key, &key_len, &malformed,
                     &found_at, &unwrapped_by)) {
        rc = malformed ? GR_DECRYPT_MALFORMED : GR_DECRYPT_BAD_KEY; /* a failed key is not cached */
        goto out;
    }

    /* The MAC first: tampered ciphertext is never decrypted. */
    rc = GR_DECRYPT_BAD_SIGNATURE;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (!HMAC(EVP_sha256(), key, (int)key_len, data, data_len, mac, &mac_len) ||
        sig_len != mac_len || CRYPTO_memcmp(mac, sig, mac_len) != 0)
        goto out;
    /* Kept once the MAC proves it is the key this item was encrypted with;
     * the MAC is checked again at every use. */
    if (cache && unwrapped_by != SIZE_MAX)
        gr_keycache_put(cache, ids[unwrapped_by], key, key_len);
    size_t at = found_at != SIZE_MAX ? found_at : unwrapped_by;
    if (cache && ref && at != SIZE_MAX) {
        ref->set = true;
        memcpy(ref->id, ids[at], GR_KEYCACHE_ID_LEN);
    }

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
    free(ids);
    EVP_CIPHER_CTX_free(aes);
    OPENSSL_cleanse(key, sizeof key);
    if (plain) {
        OPENSSL_cleanse(plain, data_len + 16);
        free(plain);
    }
    free(data);
    free(sig);
    ERR_clear_error();
    return rc;
}
