/*
 * Key and secret files: private keys (PEM PKCS#1/PKCS#8, optionally
 * encrypted, or PKCS#12, legacy algorithms included), the certificates that
 * go with them (PEM or DER), and secret files, which must not be readable or
 * writable by group or others. Used for the decryption keys of rich
 * notifications (decrypt.c) and the Graph app's credentials (graph/).
 *
 * What these functions read is wiped from memory before it is freed. Called
 * while a configuration generation is built; thread-safe.
 */
#ifndef GR_KEYFILE_H
#define GR_KEYFILE_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>

#define GR_KEY_FILE_MAX (1u << 20)

/* The whole file, NUL-terminated (free with gr_keyfile_free). With
 * `private`, a file readable or writable by group or others is refused.
 * NULL with *why (malloc'd) on failure. */
unsigned char *gr_keyfile_read(const char *path, bool private, size_t *len, char **why);
/* Wipe and free what gr_keyfile_read returned (NULL is fine). */
void gr_keyfile_free(unsigned char *buf, size_t len);

struct gr_keyfile_spec {
    const char *private_key_file;
    const char *certificate_file; /* optional: else a certificate in the key file, if any */
    const char *password_file;    /* optional: its first line */
};

/* Load a private key and its certificate (*cert NULL when there is none);
 * a certificate that does not belong to the key is refused. -1 with *why
 * on failure. */
int gr_keyfile_load(const struct gr_keyfile_spec *spec, EVP_PKEY **key, X509 **cert, char **why);

/* Upper-case hex SHA-1 of the certificate's DER (Graph's thumbprint). */
void gr_keyfile_thumbprint(X509 *cert, char out[41]);
/* base64 of the certificate's DER (a subscription's encryptionCertificate);
 * base64url of its DER's SHA-1 (a JWT's x5t). Both malloc'd. */
char *gr_keyfile_cert_base64(X509 *cert);
char *gr_keyfile_x5t(X509 *cert);

#endif
