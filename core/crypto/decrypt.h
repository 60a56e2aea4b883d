/*
 * Decrypting encryptedContent (graph-protocol.md §5).
 *
 *   K = RSA-OAEP(SHA-1, MGF1-SHA-1)-decrypt(base64(dataKey)), 16/24/32 bytes
 *   check HMAC-SHA256(K, base64(data)) == base64(dataSignature), in constant
 *         time, BEFORE decrypting anything
 *   plaintext = AES-CBC(K, IV = K[0..16)) with PKCS#7 padding; a JSON object
 *
 * The key is chosen by encryptionCertificateId, else by
 * encryptionCertificateThumbprint (upper-case hex SHA-1 of the certificate's
 * DER). A key ring is loaded with its generation and immutable afterwards;
 * gr_decrypt may run on any number of threads at once. Decrypted content and
 * keys are never logged here.
 */
#ifndef GR_DECRYPT_H
#define GR_DECRYPT_H

#include <jansson.h>
#include <stddef.h>

struct gr_check;

/* One entry of the "decryption_keys" config list (strings borrowed). */
struct gr_decryption_key_conf {
    const char *certificate_id;
    const char *private_key_file;
    const char *certificate_file; /* optional */
    const char *password_file;    /* optional: for encrypted PEM or PKCS#12 */
    const json_t *node;           /* for error positions */
};

enum gr_decrypt_result {
    GR_DECRYPT_OK = 0,
    GR_DECRYPT_MALFORMED,
    GR_DECRYPT_UNKNOWN_KEY,
    GR_DECRYPT_BAD_KEY,
    GR_DECRYPT_BAD_SIGNATURE,
    GR_DECRYPT_BAD_PADDING,
    GR_DECRYPT_NOT_JSON,
};
const char *gr_decrypt_result_name(enum gr_decrypt_result r);

struct gr_keyring;

/* Load every key: private key files must not be readable by group or
 * others; PEM (PKCS#1, PKCS#8, optionally encrypted) and PKCS#12 are
 * accepted; a certificate (its own file, or beside the key) gives the
 * thumbprint and must match the key. Errors go to `c` with the entry's
 * position. */
int gr_keyring_load(struct gr_check *c, const struct gr_decryption_key_conf *keys, size_t n,
                    struct gr_keyring **out);
void gr_keyring_free(struct gr_keyring *ring);
size_t gr_keyring_size(const struct gr_keyring *ring);
/* The certificate (base64 DER) of the first key with certificate id `id`
 * that has one, and its thumbprint; NULL if none has (a subscription's
 * encryptionCertificate). Valid as long as the ring. */
const char *gr_keyring_certificate(const struct gr_keyring *ring, const char *id,
                                   const char **thumbprint);

/* Decrypt one item's encryptedContent; on GR_DECRYPT_OK *content is a new
 * JSON object. */
enum gr_decrypt_result gr_decrypt(const struct gr_keyring *ring, const json_t *encrypted_content,
                                  json_t **content);

/* The same, taking the content key from `cache` (keycache.h; NULL: none)
 * when one of the item's candidate keys unwrapped its dataKey before, and
 * keeping it there once unwrapped and its MAC verified. The MAC is checked
 * with the key at every call, cached or not. `ref` (may be NULL) is set to
 * the cache entry once the MAC verified, for gr_keycache_forget. Every RSA
 * decryption is counted in graphrouter_rsa_private_operations_total, every
 * lookup in graphrouter_content_key_cache_total. */
struct gr_keycache;
struct gr_keycache_ref;
enum gr_decrypt_result gr_decrypt_cached(const struct gr_keyring *ring, struct gr_keycache *cache,
                                         const json_t *encrypted_content, json_t **content,
                                         struct gr_keycache_ref *ref);

#endif
