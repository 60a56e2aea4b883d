/* The listener's TLS certificate and key (see tls.h). */
#include "http/tls.h"

#include <gnutls/x509.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto/keyfile.h"
#include "util.h"

#define CHAIN_MAX 16 /* certificates in one chain file */

struct gr_tls_cred {
    atomic_int refs;
    gnutls_pcert_st chain[CHAIN_MAX];
    unsigned n;
    gnutls_privkey_t key;
    int64_t not_after;
    char *subject;
};

static void cred_free(struct gr_tls_cred *c)
{
    for (unsigned i = 0; i < c->n; i++)
        gnutls_pcert_deinit(&c->chain[i]);
    if (c->key)
        gnutls_privkey_deinit(c->key); /* GnuTLS wipes the key's parameters */
    free(c->subject);
    free(c);
}

static char *tls_error(const char *file, const char *what, int rc)
{
    return gr_xprintf("%s: %s (%s)", file, what, gnutls_strerror(rc));
}

/* The DER encoding of a public key, to compare two of them. */
static bool pubkey_der(gnutls_pubkey_t pub, gnutls_datum_t *out)
{
    return gnutls_pubkey_export2(pub, GNUTLS_X509_FMT_DER, out) == 0;
}

static bool key_matches(gnutls_privkey_t key, gnutls_pubkey_t cert_pub)
{
    gnutls_pubkey_t pub;
    if (gnutls_pubkey_init(&pub) < 0)
        return false;
    gnutls_datum_t a = {0}, b = {0};
    bool same = gnutls_pubkey_import_privkey(pub, key, 0, 0) == 0 && pubkey_der(pub, &a) &&
                pubkey_der(cert_pub, &b) && a.size == b.size &&
                memcmp(a.data, b.data, a.size) == 0;
    gnutls_free(a.data);
    gnutls_free(b.data);
    gnutls_pubkey_deinit(pub);
    return same;
}

/* notAfter and subject of the server certificate (the chain's first). */
static char *describe(struct gr_tls_cred *c, const char *cert_file)
{
    gnutls_x509_crt_t crt;
    if (gnutls_x509_crt_init(&crt) < 0)
        return gr_xprintf("%s: out of memory", cert_file);
    int rc = gnutls_x509_crt_import(crt, &c->chain[0].cert, GNUTLS_X509_FMT_DER);
    if (rc < 0) {
        gnutls_x509_crt_deinit(crt);
        return tls_error(cert_file, "cannot read the certificate", rc);
    }
    c->not_after = (int64_t)gnutls_x509_crt_get_expiration_time(crt);
    gnutls_datum_t dn = {0};
    if (gnutls_x509_crt_get_dn3(crt, &dn, 0) == 0) {
        c->subject = gr_xstrndup((const char *)dn.data, dn.size);
        gnutls_free(dn.data);
    } else {
        c->subject = gr_xstrdup("(no subject)");
    }
    gnutls_x509_crt_deinit(crt);
    if (c->not_after <= (int64_t)time(NULL)) {
        char when[GR_RFC3339_LEN];
        gr_rfc3339(c->not_after * 1000, when);
        return gr_xprintf("%s: the certificate (%s) expired on %s", cert_file, c->subject, when);
    }
    return NULL;
}

struct gr_tls_cred *gr_tls_cred_load(const char *cert_file, const char *key_file, char **why)
{
    *why = NULL;
    struct gr_tls_cred *c = gr_xcalloc(1, sizeof *c);
    atomic_init(&c->refs, 1);
    size_t cert_len = 0, key_len = 0;
    unsigned char *cert = gr_keyfile_read(cert_file, false, &cert_len, why);
    unsigned char *key = cert ? gr_keyfile_read(key_file, true, &key_len, why) : NULL;
    if (!key)
        goto fail;

    gnutls_datum_t cd = {cert, (unsigned)cert_len}, kd = {key, (unsigned)key_len};
    unsigned n = CHAIN_MAX;
    int rc = gnutls_pcert_list_import_x509_raw(c->chain, &n, &cd, GNUTLS_X509_FMT_PEM,
                                               GNUTLS_X509_CRT_LIST_FAIL_IF_UNSORTED);
    if (rc < 0) {
        *why = rc == GNUTLS_E_SHORT_MEMORY_BUFFER
                   ? gr_xprintf("%s: more than %d certificates in the chain", cert_file, CHAIN_MAX)
                   : tls_error(cert_file, "not a PEM certificate chain (server certificate first)",
                               rc);
        goto fail;
    }
    c->n = n;
    if (n == 0) {
        *why = gr_xprintf("%s: no certificate in the file", cert_file);
        goto fail;
    }
    if ((rc = gnutls_privkey_init(&c->key)) < 0) {
        *why = tls_error(key_file, "cannot hold the key", rc);
        goto fail;
    }
    if ((rc = gnutls_privkey_import_x509_raw(c->key, &kd, GNUTLS_X509_FMT_PEM, NULL, 0)) < 0) {
        *why = tls_error(key_file, "not an unencrypted PEM private key", rc);
        goto fail;
    }
    if (!key_matches(c->key, c->chain[0].pubkey)) {
        *why = gr_xprintf("%s: the key does not belong to the first certificate of %s", key_file,
                          cert_file);
        goto fail;
    }
    if ((*why = describe(c, cert_file)))
        goto fail;
    gr_keyfile_free(cert, cert_len);
    gr_keyfile_free(key, key_len);
    return c;
fail:
    gr_keyfile_free(cert, cert_len);
    gr_keyfile_free(key, key_len);
    cred_free(c);
    return NULL;
}

struct gr_tls_cred *gr_tls_cred_ref(struct gr_tls_cred *c)
{
    atomic_fetch_add(&c->refs, 1);
    return c;
}

void gr_tls_cred_unref(struct gr_tls_cred *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1)
        cred_free(c);
}

void gr_tls_cred_get(struct gr_tls_cred *c, gnutls_pcert_st **chain, unsigned *n,
                     gnutls_privkey_t *key)
{
    *chain = c->chain;
    *n = c->n;
    *key = c->key;
}

int64_t gr_tls_cred_not_after(const struct gr_tls_cred *c)
{
    return c->not_after;
}

const char *gr_tls_cred_subject(const struct gr_tls_cred *c)
{
    return c->subject;
}
