/* Private keys, certificates and secret files (see keyfile.h). */
#define _GNU_SOURCE
#include "crypto/keyfile.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "crypto/base64.h"
#include "util.h"

unsigned char *gr_keyfile_read(const char *path, bool private, size_t *len, char **why)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        *why = gr_xprintf("cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    if (private && (st.st_mode & (S_IRGRP | S_IROTH | S_IWGRP | S_IWOTH))) {
        *why = gr_xprintf("%s is readable or writable by group or others (mode %04o); it holds "
                          "a secret: chmod 600 it",
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
        gr_keyfile_free(buf, n);
        *why = gr_xprintf("%s is larger than %u bytes", path, GR_KEY_FILE_MAX);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

void gr_keyfile_free(unsigned char *buf, size_t len)
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
    unsigned char *buf = gr_keyfile_read(path, false, &len, why);
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

int gr_keyfile_load(const struct gr_keyfile_spec *spec, EVP_PKEY **key, X509 **cert, char **why)
{
    *key = NULL;
    *cert = NULL;
    char *pass = NULL;
    size_t pass_len = 0, key_len = 0;
    if (spec->password_file) {
        pass = (char *)gr_keyfile_read(spec->password_file, true, &pass_len, why);
        if (!pass)
            return -1;
        pass[strcspn(pass, "\r\n")] = '\0'; /* the first line */
    }
    unsigned char *buf = gr_keyfile_read(spec->private_key_file, true, &key_len, why);
    EVP_PKEY *pkey = buf ? read_key(buf, key_len, pass, cert) : NULL;
    gr_keyfile_free(buf, key_len);
    gr_keyfile_free((unsigned char *)pass, pass_len);
    if (!buf)
        goto fail;
    if (!pkey) {
        *why = gr_xprintf("%s: no private key could be read (PEM PKCS#1/PKCS#8 or PKCS#12%s)",
                          spec->private_key_file,
                          spec->password_file ? "; is the password right?"
                                              : "; encrypted? set password_file");
        goto fail;
    }
    if (spec->certificate_file) {
        X509_free(*cert);
        if (!(*cert = read_certificate(spec->certificate_file, why)))
            goto fail;
    }
    if (*cert && EVP_PKEY_eq(X509_get0_pubkey(*cert), pkey) != 1) {
        *why = gr_xprintf("the certificate %s does not belong to the private key %s",
                          spec->certificate_file ? spec->certificate_file : "in the key file",
                          spec->private_key_file);
        goto fail;
    }
    *key = pkey;
    return 0;
fail:
    X509_free(*cert);
    *cert = NULL;
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return -1;
}

static bool sha1_of(X509 *cert, unsigned char md[20])
{
    unsigned char buf[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (X509_digest(cert, EVP_sha1(), buf, &n) != 1 || n != 20)
        return false;
    memcpy(md, buf, 20);
    return true;
}

void gr_keyfile_thumbprint(X509 *cert, char out[41])
{
    unsigned char md[20];
    out[0] = '\0';
    if (sha1_of(cert, md))
        for (unsigned i = 0; i < 20; i++)
            snprintf(out + 2 * i, 3, "%02X", md[i]);
}

char *gr_keyfile_cert_base64(X509 *cert)
{
    unsigned char *der = NULL;
    int n = i2d_X509(cert, &der);
    if (n <= 0)
        return NULL;
    char *out = gr_base64_encode(der, (size_t)n);
    OPENSSL_free(der);
    return out;
}

char *gr_keyfile_x5t(X509 *cert)
{
    unsigned char md[20];
    return sha1_of(cert, md) ? gr_base64url_encode(md, sizeof md) : NULL;
}
