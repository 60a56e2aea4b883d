/* Keys, certificates, encryption and token signing for graphrouter-simulate. */
#define _GNU_SOURCE
#include "simcrypto.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto/base64.h"
#include "crypto/jwt.h"
#include "crypto/keyfile.h"
#include "util.h"

EVP_PKEY *sim_rsa_key(int bits)
{
    return EVP_RSA_gen((unsigned)bits);
}

X509 *sim_self_signed(EVP_PKEY *key, const char *common_name, int days)
{
    X509 *cert = X509_new();
    unsigned char serial[16];
    RAND_bytes(serial, sizeof serial);
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
    BN_free(bn);
    X509_set_version(cert, 2);
    X509_gmtime_adj(X509_getm_notBefore(cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert), (long)days * 86400);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)common_name, -1,
                               -1, 0);
    X509_set_issuer_name(cert, name);
    X509_set_pubkey(cert, key);
    if (!X509_sign(cert, key, EVP_sha256())) {
        X509_free(cert);
        return NULL;
    }
    return cert;
}

static FILE *create(const char *path, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return NULL;
    fchmod(fd, mode); /* also when the file existed */
    FILE *f = fdopen(fd, "w");
    if (!f)
        close(fd);
    return f;
}

int sim_write_key(const char *path, EVP_PKEY *key)
{
    FILE *f = create(path, 0600);
    if (!f)
        return -1;
    int ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    return fclose(f) == 0 && ok ? 0 : -1;
}

int sim_write_cert(const char *path, X509 *cert)
{
    FILE *f = create(path, 0644);
    if (!f)
        return -1;
    int ok = PEM_write_X509(f, cert);
    return fclose(f) == 0 && ok ? 0 : -1;
}

EVP_PKEY *sim_read_key(const char *path)
{
    FILE *f = fopen(path, "r");
    EVP_PKEY *key = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    return key;
}

X509 *sim_read_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *cert = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    return cert;
}

static char *bn_param_b64url(EVP_PKEY *key, const char *name)
{
    BIGNUM *bn = NULL;
    if (!EVP_PKEY_get_bn_param(key, name, &bn))
        return NULL;
    int len = BN_num_bytes(bn);
    unsigned char *buf = gr_xmalloc((size_t)len + 1);
    BN_bn2bin(bn, buf);
    char *out = gr_base64url_encode(buf, (size_t)len);
    free(buf);
    BN_free(bn);
    return out;
}

json_t *sim_jwks(EVP_PKEY *key, const char *kid)
{
    char *n = bn_param_b64url(key, OSSL_PKEY_PARAM_RSA_N);
    char *e = bn_param_b64url(key, OSSL_PKEY_PARAM_RSA_E);
    json_t *doc = json_pack("{s:[{s:s,s:s,s:s,s:s,s:s,s:s}]}", "keys", "kty", "RSA", "use", "sig",
                            "alg", "RS256", "kid", kid, "n", n, "e", e);
    free(n);
    free(e);
    return doc;
}

json_t *sim_encrypt(const char *plaintext, X509 *cert, const char *cert_id, bool with_id,
                    bool with_thumbprint, enum sim_tamper tamper, int aes_bits)
{
    unsigned char key[32];
    size_t key_len = aes_bits == 128 ? 16 : aes_bits == 192 ? 24 : 32;
    const EVP_CIPHER *aes_cipher = key_len == 16   ? EVP_aes_128_cbc()
                                   : key_len == 24 ? EVP_aes_192_cbc()
                                                   : EVP_aes_256_cbc();
    RAND_bytes(key, sizeof key);
    size_t plen = strlen(plaintext);
    unsigned char *cipher = gr_xmalloc(plen + 32);
    int n1 = 0, n2 = 0;
    EVP_CIPHER_CTX *aes = EVP_CIPHER_CTX_new();
    EVP_EncryptInit_ex(aes, aes_cipher, NULL, key, key); /* IV = first 16 bytes */
    if (tamper == SIM_TAMPER_PADDING) {
        /* one block ending in 0x00, encrypted without padding */
        unsigned char block[16] = "{\"x\":1}       ";
        block[15] = 0;
        EVP_CIPHER_CTX_set_padding(aes, 0);
        EVP_EncryptUpdate(aes, cipher, &n1, block, sizeof block);
    } else {
        EVP_EncryptUpdate(aes, cipher, &n1, (const unsigned char *)plaintext, (int)plen);
    }
    EVP_EncryptFinal_ex(aes, cipher + n1, &n2);
    EVP_CIPHER_CTX_free(aes);
    size_t clen = (size_t)(n1 + n2);

    unsigned char mac[32];
    unsigned int mac_len = 0;
    HMAC(EVP_sha256(), key, (int)key_len, cipher, clen, mac, &mac_len);

    EVP_PKEY_CTX *rsa = EVP_PKEY_CTX_new(X509_get0_pubkey(cert), NULL);
    unsigned char wrapped[1024];
    size_t wrapped_len = sizeof wrapped;
    EVP_PKEY_encrypt_init(rsa);
    EVP_PKEY_CTX_set_rsa_padding(rsa, RSA_PKCS1_OAEP_PADDING);
    EVP_PKEY_CTX_set_rsa_oaep_md(rsa, EVP_sha1());
    EVP_PKEY_CTX_set_rsa_mgf1_md(rsa, EVP_sha1());
    EVP_PKEY_encrypt(rsa, wrapped, &wrapped_len, key, key_len);
    EVP_PKEY_CTX_free(rsa);

    if (tamper == SIM_TAMPER_DATA)
        cipher[clen / 2] ^= 0x01; /* one bit: the MAC must catch it */
    else if (tamper == SIM_TAMPER_MAC)
        mac[0] ^= 0x01;
    else if (tamper == SIM_TAMPER_KEY)
        wrapped[wrapped_len / 2] ^= 0x01;

    char *data = gr_base64_encode(cipher, clen), *sig = gr_base64_encode(mac, mac_len);
    char *dk = gr_base64_encode(wrapped, wrapped_len);
    json_t *ec = json_pack("{s:s,s:s,s:s}", "data", data, "dataSignature", sig, "dataKey", dk);
    if (with_id)
        json_object_set_new(ec, "encryptionCertificateId", json_string(cert_id));
    if (with_thumbprint) {
        char tp[41];
        gr_keyfile_thumbprint(cert, tp);
        json_object_set_new(ec, "encryptionCertificateThumbprint", json_string(tp));
    }
    free(data);
    free(sig);
    free(dk);
    free(cipher);
    OPENSSL_cleanse(key, sizeof key);
    return ec;
}

static char *segment(const json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT);
    char *out = gr_base64url_encode((const unsigned char *)text, strlen(text));
    free(text);
    return out;
}

char *sim_jwt(EVP_PKEY *key, const char *kid, const char *alg, const json_t *claims)
{
    json_t *header = json_pack("{s:s,s:s,s:s}", "typ", "JWT", "alg", alg, "kid", kid);
    if (strcmp(alg, "none") != 0 && strcmp(alg, "HS256") != 0) {
        char *token = gr_jwt_sign_rs256(key, header, claims); /* RS256, whatever alg says */
        json_decref(header);
        return token;
    }
    char *h = segment(header), *p = segment(claims);
    json_decref(header);
    char *input = gr_xprintf("%s.%s", h, p);
    free(h);
    free(p);
    if (strcmp(alg, "none") == 0) {
        char *token = gr_xprintf("%s.", input);
        free(input);
        return token;
    }
    BIO *pem = BIO_new(BIO_s_mem());
    char *pub = NULL;
    PEM_write_bio_PUBKEY(pem, key);
    long pub_len = BIO_get_mem_data(pem, &pub);
    unsigned int mac_len = 0;
    unsigned char sig[EVP_MAX_MD_SIZE];
    HMAC(EVP_sha256(), pub, (int)pub_len, (const unsigned char *)input, strlen(input), sig,
         &mac_len);
    BIO_free(pem);
    char *s64 = gr_base64url_encode(sig, mac_len);
    char *token = gr_xprintf("%s.%s", input, s64);
    free(s64);
    free(input);
    return token;
}
