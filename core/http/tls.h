/*
 * Native HTTPS: the listener's certificate and key ("tls" in the config).
 *
 * libmicrohttpd does the TLS (GnuTLS underneath, as Debian builds it); it
 * asks for the certificate on every handshake through a callback, so the
 * credential in use is the current generation's: a SIGHUP that loads a new
 * certificate and key serves them from the next handshake on, without
 * restarting the listener, and a reload that cannot load them fails like any
 * other broken configuration, leaving the old generation (and certificate)
 * serving.
 *
 * A credential is reference-counted: the generation holds one reference and
 * every TLS connection that was given it holds another until it closes, so a
 * reload never frees a certificate a handshake is still using.
 */
#ifndef GR_TLS_H
#define GR_TLS_H

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <stdint.h>

/* TLS 1.2 and 1.3 only; forward secrecy (ECDHE) and AEAD ciphers only. */
#define GR_TLS_PRIORITIES                                                                   \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"   \
    "+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:%SERVER_PRECEDENCE"

struct gr_tls_cred;

/* Read a PEM certificate chain (the server's certificate first, then its
 * intermediates) and the PEM private key that matches it. The key file must
 * not be readable or writable by group or others. NULL with *why (malloc'd,
 * naming the file and what is wrong; never any key material) on failure. */
struct gr_tls_cred *gr_tls_cred_load(const char *cert_file, const char *key_file, char **why);
struct gr_tls_cred *gr_tls_cred_ref(struct gr_tls_cred *c);
/* Drop a reference; the last one wipes and frees the key. NULL is a no-op. */
void gr_tls_cred_unref(struct gr_tls_cred *c);

/* What a handshake is given: the chain and the key (owned by the credential). */
void gr_tls_cred_get(struct gr_tls_cred *c, gnutls_pcert_st **chain, unsigned *n,
                     gnutls_privkey_t *key);
/* The server certificate's notAfter (Unix seconds) and its subject, for logs
 * and the metrics. */
int64_t gr_tls_cred_not_after(const struct gr_tls_cred *c);
const char *gr_tls_cred_subject(const struct gr_tls_cred *c);

#endif
