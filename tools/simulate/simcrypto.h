/*
 * The cryptography graphrouter-simulate needs to play Microsoft Graph: key
 * pairs and a self-signed certificate for subscribers, encryptedContent
 * (RSA-OAEP-SHA1 wrapped AES-CBC key, HMAC-SHA256 over the ciphertext),
 * RS256 validation tokens and the JWKS that publishes their key.
 */
#ifndef GRSIM_CRYPTO_H
#define GRSIM_CRYPTO_H

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>

/* A new RSA key of `bits`. */
EVP_PKEY *sim_rsa_key(int bits);
/* A self-signed certificate for `key`, valid `days` from now. */
X509 *sim_self_signed(EVP_PKEY *key, const char *common_name, int days);

/* Write PEM files; private keys get mode 0600. 0 or -1 (errno set). */
int sim_write_key(const char *path, EVP_PKEY *key);
int sim_write_cert(const char *path, X509 *cert);
EVP_PKEY *sim_read_key(const char *path);
X509 *sim_read_cert(const char *path);

/* A JWKS document publishing `key` under `kid`. */
json_t *sim_jwks(EVP_PKEY *key, const char *kid);

/* What to spoil in an encryptedContent, for tests. */
enum sim_tamper {
    SIM_TAMPER_NONE,
    SIM_TAMPER_DATA,   /* flip a ciphertext bit after the MAC: the MAC must catch it */
    SIM_TAMPER_MAC,    /* flip a MAC bit */
    SIM_TAMPER_KEY,    /* flip a bit of the wrapped key: RSA-OAEP must refuse it */
    SIM_TAMPER_PADDING /* a correct MAC over a ciphertext whose PKCS#7 padding is wrong */
};

/* encryptedContent for `plaintext`, encrypted to `cert` with an AES key of
 * `aes_bits` (128, 192 or 256; Graph uses 256). Which identifiers it
 * carries: the certificate id, the thumbprint, or both. */
json_t *sim_encrypt(const char *plaintext, X509 *cert, const char *cert_id, bool with_id,
                    bool with_thumbprint, enum sim_tamper tamper, int aes_bits);

/* A signed JWT: header {"typ":"JWT","alg":alg,"kid":kid} and `claims`,
 * signed RS256 with `key`. Attacks for testing receivers: alg "none" gets no
 * signature; alg "HS256" is signed HMAC-SHA256 keyed with the PEM of `key`'s
 * public half (the key-confusion attack on verifiers that let the token
 * choose the algorithm); any other alg is signed RS256 under a lying header. */
char *sim_jwt(EVP_PKEY *key, const char *kid, const char *alg, const json_t *claims);

#endif
