/*
 * The router's side of the plugin ABI (include/graphrouter/plugin.h):
 * loading shared objects, checking their ABI, the host service table, and
 * the private definitions of the handles plugins see as opaque.
 *
 * Loading: glibc's dlopen returns the already-loaded object for a path it has
 * seen, even after the file was replaced, so a reload could never pick up a
 * rebuilt plugin. Each load therefore goes through a fresh, uniquely named
 * symlink in a private directory (removed right after dlopen): an unchanged
 * file (same inode) still resolves to the loaded object, a file replaced by
 * rename loads anew. Install plugins by rename (install(1), mv), never by
 * writing into the loaded file.
 */
#ifndef GR_PLUGIN_HOST_H
#define GR_PLUGIN_HOST_H

#include <graphrouter/plugin.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/types.h>

#include "config.h"
#include "graph/client.h"
#include "metrics.h"
#include "store/store.h"

struct gr_generation;

/* One loaded shared object. */
struct gr_plugin_lib {
    char *path; /* as configured (resolved against plugin_dir) */
    void *dl;
    struct gr_plugin desc; /* the plugin's descriptor, zero-filled past its size */
};

/* The targets of one GR_CONFIG_HANDLER_LIST key. */
struct gr_emit_targets {
    const char *key;
    size_t *handlers; /* indices in the generation */
    size_t n;
};

/* One configured handler (opaque to plugins). */
struct gr_handler {
    const char *name;
    const struct gr_handler_conf *conf;
    struct gr_plugin_lib *lib;
    struct gr_generation *gen;
    void *state;
    bool initialized;
    bool serial;
    pthread_mutex_t serial_lock;
    struct gr_handler_stats *stats;
    struct gr_emit_targets *emit;
    size_t nemit;
    char *init_error;          /* set through host->init_error during init */
    pthread_mutex_t json_lock; /* guards json_cache */
    struct gr_json_cache *json_cache;
};

/* One emitted event, for one target handler. */
struct gr_emitted {
    size_t target;
    char *json;
    size_t len;
};

/* One delivery (opaque to plugins as struct gr_msg). Used by one thread. */
struct gr_msg {
    int kind;
    const char *json;
    size_t len;
    json_t *root; /* parsed on first use: most plugins only read the text */
    struct gr_handler *handler;
    struct gr_emitted *emitted;
    size_t nemitted, cap;
    char *error; /* set through host->set_error */
    int64_t retry_after_ms; /* set through host->retry_after; 0: none */
    /* ABI 1.2 services (plugin/services.c), set up by the worker */
    struct gr_store *store;      /* handler state is read from it */
    int64_t started_mono;        /* when handle() began: Graph calls end within timeout_s */
    struct gr_graph_response *answer; /* the last Graph answer, until the next or the end */
    struct gr_state_write *writes;    /* this call's puts and deletes, one per key */
    size_t nwrites;
    char **reads;                /* values state_get handed out */
    size_t nreads;
    struct gr_state_lock **locks; /* the keys this call locked */
    size_t nlocks;
};

/* After delivered() (the call's puts are visible then): free what the
 * services gave the call, and release its state lock. */
void gr_msg_finish(struct gr_msg *m);

/* The ABI 1.2 host functions (services.c), for the host table. */
int gr_host_graph_available(const struct gr_handler *h);
int gr_host_graph_request(struct gr_msg *m, const char *method, const char *target,
                          const char *body, struct gr_graph_answer *answer);
const char *gr_host_state_get(struct gr_msg *m, const char *key, size_t *len);
int gr_host_state_put(struct gr_msg *m, const char *key, const void *value, size_t len);
int gr_host_state_delete(struct gr_msg *m, const char *key);
int gr_host_state_lock(struct gr_msg *m, const char *key, int wait);

const struct gr_host *gr_plugin_host(void);

/* The message's JSON object, parsed on first use (NULL if it is not JSON). */
json_t *gr_msg_root(struct gr_msg *m);

/* Load and check a plugin; *err gets "PATH: reason" on failure. */
int gr_plugin_lib_load(const char *path, struct gr_plugin_lib *lib, char **err);
void gr_plugin_lib_unload(struct gr_plugin_lib *lib);

/* Check a handler's "config" against its plugin's schema (with positions).
 * A GR_CONFIG_SECRET key is resolved (secret.h) and its value replaced by
 * the secret as a string, noted in `secrets` to be wiped with the config. */
int gr_plugin_check_config(struct gr_check *c, const struct gr_handler_conf *hc,
                           const struct gr_plugin *desc, struct gr_secret_nodes *secrets);

/* Release a handler's caches (after fini). */
void gr_handler_release(struct gr_handler *h);

/* Remove the private symlink directory (at exit). */
void gr_plugin_host_cleanup(void);
/* Give the private symlink directory to the user graphrouter is about to
 * become, so that reloads can still load plugins through it. -1 with *why. */
int gr_plugin_host_set_owner(uid_t uid, gid_t gid, char **why);

#endif
