/*
 * The signing keys that validation tokens are checked against (JWKS), and
 * the token cache that goes with them.
 *
 * Keys come from a file (read when the configuration is loaded, and again on
 * a refresh) or from an https URL fetched with libcurl (TLS verification
 * always on; ca_file adds trust anchors for a private PKI or tests). A
 * background thread refreshes them every refresh_s, and sooner when a token
 * names a kid nobody knows, but at most once per min_refresh_s for that
 * reason. A failed fetch leaves the keys in force (logged and counted).
 * Nothing here runs on the HTTP request path: workers call it.
 *
 * One gr_jwks lives as long as some generation uses it; a reload that keeps
 * the same source keeps the same object, its keys and its token cache.
 * Thread-safety: the key set is swapped under a mutex and read with a new
 * reference to the key; all functions may be called from any thread.
 */
#ifndef GR_JWKS_H
#define GR_JWKS_H

#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>

#include "crypto/jwt.h"

struct gr_jwks_options {
    const char *url;     /* https://... ; or */
    const char *file;    /* a local JWKS document */
    const char *ca_file; /* optional, for url */
    int64_t refresh_s;
    int64_t min_refresh_s;
};

struct gr_jwks;

/* Parse a JWKS document into a new key-set object (no refreshing). Returns
 * NULL with *err when the text is not a JWKS with at least one usable key. */
struct gr_jwks *gr_jwks_new(const struct gr_jwks_options *o, char **err);
bool gr_jwks_same_source(const struct gr_jwks *j, const struct gr_jwks_options *o);
/* Start the refresh thread (a URL source fetches at once). Idempotent. */
void gr_jwks_start(struct gr_jwks *j);
struct gr_jwks *gr_jwks_ref(struct gr_jwks *j);
void gr_jwks_unref(struct gr_jwks *j);

/* A new reference to the key for `kid`, or NULL (usable as gr_key_lookup_fn). */
EVP_PKEY *gr_jwks_key(void *jwks, const char *kid);

/* Verify a token through this key set's cache (see gr_token_cache_verify). */
enum gr_token_result gr_jwks_verify(struct gr_jwks *j, const char *token, size_t len,
                                    int64_t now, struct gr_token_claims *claims,
                                    bool *first_seen);

/* A token named an unknown kid in an item received at `received_ms` (wall
 * clock). Returns true if the item should wait for a refresh (one is
 * running, or was started now), false if the keys are fresh enough that
 * the kid is simply unknown. */
bool gr_jwks_wait_for_kid(struct gr_jwks *j, int64_t received_ms);

#endif
