/*
 * Generations: one complete, immutable set of configuration, loaded plugins,
 * initialised handlers and compiled routes.
 *
 * A reload builds a new generation beside the running one; if any step
 * fails, the new one is torn down and the old one keeps serving. On success
 * the current-generation pointer is swapped. Work pins the generation it
 * starts on (a reference count) and finishes on it; a retired generation is
 * destroyed (fini, dlclose) once its count is zero; the control thread runs
 * builds and destroys as supervised jobs (plugin_job.h).
 *
 * Locking: `current` is read and swapped under a mutex held only for a
 * pointer copy and an atomic increment, so pinning never waits for a reload.
 */
#ifndef GR_GENERATION_H
#define GR_GENERATION_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "crypto/decrypt.h"
#include "crypto/jwks.h"
#include "crypto/jwt.h"
#include "graph/client.h"
#include "http/tls.h"
#include "metrics.h"
#include "plugin/plugin_host.h"
#include "store/store.h"

struct gr_generation {
    atomic_int refs;
    uint64_t id;
    struct gr_config *cfg;
    struct gr_plugin_lib *libs;
    size_t nlibs;
    struct gr_handler *handlers; /* same order as cfg->handlers */
    size_t nhandlers;
    struct gr_route_stats **route_stats; /* one per cfg->routes entry */
    struct gr_jwks *jwks;                /* NULL without "validation_tokens" */
    struct gr_token_policy token_policy;
    struct gr_keyring *keyring;          /* NULL without "decryption_keys" */
    struct gr_graph_client *graph;       /* NULL without "graph" */
    struct gr_tls_cred *tls;             /* NULL without "tls" */
    struct gr_store_handler *store_handlers; /* what workers may take, per handler */
    struct gr_generation *next_retired;  /* control thread's list */
};

/* Build a complete generation from a config file. `prev` (may be NULL) is
 * the generation it will replace, pinned by the caller for the build, which
 * unpins it before any plugin code runs: an unchanged JWKS URL source is
 * shared with it, keys, cache and all. On failure returns -1 with
 * *err = "FILE:LINE:COL: what is wrong" (malloc'd). Run by the control
 * thread's jobs, one at a time, except beside one abandoned inside a
 * plugin's init (plugin_job.h): what builds share is locked. */
int gr_generation_build(const char *file, uint64_t id, struct gr_generation *prev,
                        struct gr_generation **out, char **err);
/* fini every handler, unload plugins, free. The count must be zero. */
void gr_generation_destroy(struct gr_generation *g);

struct gr_handler *gr_generation_handler(struct gr_generation *g, const char *name);

/* Make `g` current (holding one reference for being current); returns the
 * previous one, whose "current" reference the caller must drop with unpin.
 * Swapping in NULL (at exit) leaves no current generation. */
struct gr_generation *gr_generation_swap(struct gr_generation *g);
/* Pin the current generation (never NULL after the first swap). */
struct gr_generation *gr_generation_pin(void);
void gr_generation_unpin(struct gr_generation *g);
/* Called (from any thread) when a generation's count drops to zero. */
void gr_generation_set_idle_hook(void (*hook)(void));

#endif
