/*
 * Fuzz gr_token_verify() and gr_token_policy_check() (core/crypto/jwt.c) with
 * untrusted validation tokens.
 *
 * The key lookup knows one RSA-2048 key (kid "fuzz-kid"), made once in
 * LLVMFuzzerInitialize. The first input byte picks the mode:
 *   even: the rest is a token, in a buffer of exactly its size (no NUL after
 *         it), so a read past its end is caught by ASan;
 *   odd:  the rest is the claims JSON, which the harness signs (RS256, with
 *         the known key): random bytes never forge a signature, and this is
 *         how the claim checks behind it get fuzzed.
 *
 * Checks, beyond "no crash, leak or UB": the result is a valid enum value; a
 * token is valid only if it is three dot-separated parts; on success the
 * claims are filled (tid, at least one audience) and the policy check gives a
 * valid result; on failure the claims are empty.
 */
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/jwt.h"
#include "simcrypto.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static EVP_PKEY *key;

static EVP_PKEY *lookup(void *ctx, const char *kid)
{
    (void)ctx;
    return strcmp(kid, "fuzz-kid") == 0 && EVP_PKEY_up_ref(key) == 1 ? key : NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    key = EVP_RSA_gen(2048);
    return key ? 0 : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    char *token;
    if (data[0] & 1) { /* claims, signed here */
        json_t *claims = json_loadb((const char *)data + 1, size - 1, 0, NULL);
        if (!json_is_object(claims)) {
            json_decref(claims);
            return 0;
        }
        token = sim_jwt(key, "fuzz-kid", "RS256", claims);
        json_decref(claims);
        size = strlen(token);
    } else {
        size--;
        token = malloc(size ? size : 1);
        if (!token)
            abort();
        if (size)
            memcpy(token, data + 1, size);
    }
    struct gr_token_claims claims;
    enum gr_token_result r = gr_token_verify(token, size, lookup, NULL, &claims);
    if ((unsigned)r >= GR_TOKEN_RESULT_COUNT)
        abort();
    if (r == GR_TOKEN_VALID) {
        size_t dots = 0;
        for (size_t i = 0; i < size; i++)
            dots += token[i] == '.';
        if (dots != 2 || !claims.tid || claims.naud == 0)
            abort();
        static const char *const apps[] = {"app"};
        struct gr_token_policy p = {apps, 1, NULL, 0};
        if ((unsigned)gr_token_policy_check(&claims, &p, 1700000000) >= GR_TOKEN_RESULT_COUNT)
            abort();
        gr_token_claims_free(&claims);
    } else if (claims.tid || claims.aud || claims.naud) {
        abort();
    }
    free(token);
    return 0;
}
