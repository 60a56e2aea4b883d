/*
 * decrypt-bench: how many rich items graphrouter decrypts per second on one
 * core. Builds N encryptedContent objects (RSA-2048 certificate, a ~1 KiB
 * chat message each, every item with its own AES key, as Graph sends them),
 * loads the key the way the router does (gr_keyring_load), then calls
 * gr_decrypt on them round-robin for the given number of seconds. Prints
 * "items_per_s <n>". bench/decrypt.sh sets it beside openssl speed.
 *
 *   decrypt-bench [seconds] [items]
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "crypto/decrypt.h"
#include "simcrypto.h"
#include "util.h"

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 5;
    size_t n = argc > 2 ? (size_t)atol(argv[2]) : 1000;
    char dir[] = "/tmp/gr-decrypt-bench-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    char *key_path = gr_xprintf("%s/key.pem", dir);
    EVP_PKEY *key = sim_rsa_key(2048);
    X509 *cert = sim_self_signed(key, "bench", 1);
    sim_write_key(key_path, key);

    struct gr_buf body = {0}; /* a Teams message of about 1 KiB */
    gr_buf_puts(&body, "{\"messageType\":\"message\",\"body\":{\"contentType\":\"html\",\"content\":\"");
    while (body.len < 1000)
        gr_buf_puts(&body, "the build is green and the release can go out today. ");
    gr_buf_puts(&body, "\"},\"from\":{\"user\":{\"id\":\"8ea0e38b\",\"displayName\":\"Megan\"}}}");
    json_t **items = gr_xcalloc(n, sizeof *items);
    for (size_t i = 0; i < n; i++)
        items[i] = sim_encrypt(body.data, cert, "bench", true, true, SIM_TAMPER_NONE, 256);

    char *text = gr_xprintf("{\"decryption_keys\": [{\"certificate_id\": \"bench\", "
                            "\"private_key_file\": \"%s\"}], \"handlers\": {}, \"routes\": []}",
                            key_path);
    struct gr_config *cfg;
    char *err = NULL;
    struct gr_keyring *ring = NULL;
    if (gr_config_parse("bench.json", text, strlen(text), &cfg, &err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    struct gr_check c = {.file = "bench.json", .pos = cfg->pos};
    if (gr_keyring_load(&c, cfg->decryption_keys, cfg->ndecryption_keys, &ring) != 0) {
        fprintf(stderr, "%s\n", c.err);
        return 1;
    }

    int64_t start = gr_mono_ns(), end = start + (int64_t)(seconds * 1e9), now = start;
    unsigned long done = 0;
    while (now < end) {
        for (int k = 0; k < 16; k++, done++) {
            json_t *content;
            if (gr_decrypt(ring, items[done % n], &content) != GR_DECRYPT_OK) {
                fprintf(stderr, "decryption failed\n");
                return 1;
            }
            json_decref(content);
        }
        now = gr_mono_ns();
    }
    printf("items_per_s %.1f\n", (double)done / ((double)(now - start) / 1e9));

    gr_keyring_free(ring);
    gr_config_free(cfg);
    for (size_t i = 0; i < n; i++)
        json_decref(items[i]);
    free(items);
    free(text);
    gr_buf_free(&body);
    unlink(key_path);
    rmdir(dir);
    free(key_path);
    X509_free(cert);
    EVP_PKEY_free(key);
    return 0;
}
