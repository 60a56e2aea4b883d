/*
 * The subscription manager's private parts, shared by manager.c (the thread,
 * the records, the schedule) and actions.c (what it asks Graph). Everything
 * here but the flags under `lock` belongs to the manager's thread.
 */
#ifndef GR_MANAGER_INT_H
#define GR_MANAGER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "generation.h"
#include "store/store.h"

struct gr_mgr_sub {
    struct gr_sub_record r;
    char *client_state; /* while creating: the secret the create sends (memory only) */
};

struct gr_manager {
    struct gr_store *store;
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool poke_flag, reconcile_flag; /* under lock: set by other threads */
    atomic_bool stopping;           /* also aborts a Graph call in progress */

    struct gr_mgr_sub *v; /* the records, in no order */
    size_t n;
    bool poked;           /* lifecycle events to look at */
    bool changed;         /* publish the snapshot again */
    uint64_t generation;  /* the generation reconciled last */
    int64_t reconcile_due; /* wall ms; 0: none wanted */
    unsigned reconcile_failures;
};

/* One round of work, on one generation. */
struct gr_mgr_ctx {
    struct gr_manager *m;
    struct gr_generation *g;
    const struct gr_config *cfg;
    char *notification_url, *lifecycle_url; /* NULL without graph.public_url */
};

/* manager.c */
double gr_mgr_jitter(void); /* uniform in [0, 1] */
struct gr_mgr_sub *gr_mgr_find_key(struct gr_manager *m, const char *key);
struct gr_mgr_sub *gr_mgr_find_id(struct gr_manager *m, const char *id);
/* Adding or dropping a record moves others: pointers to records do not last. */
struct gr_mgr_sub *gr_mgr_add(struct gr_manager *m, const struct gr_sub_record *r);
void gr_mgr_drop(struct gr_manager *m, struct gr_mgr_sub *s); /* and from the store */
int gr_mgr_save(struct gr_manager *m, struct gr_mgr_sub *s, const int64_t *consumed,
                size_t nconsumed, const struct gr_store_item *resync);
void gr_mgr_forget_secret(struct gr_mgr_sub *s);
void gr_mgr_publish(struct gr_manager *m, const struct gr_config *cfg);

/* actions.c */
void gr_mgr_ctx_init(struct gr_mgr_ctx *ctx, struct gr_manager *m, struct gr_generation *g);
void gr_mgr_ctx_free(struct gr_mgr_ctx *ctx);
void gr_mgr_reconcile(struct gr_mgr_ctx *ctx);
void gr_mgr_act(struct gr_mgr_ctx *ctx, struct gr_mgr_sub *s);
/* Mark it to be created again, then to resync for `reason`. */
void gr_mgr_recreate(struct gr_mgr_sub *s, const char *reason, int64_t now);
/* The resync item for `r` (out->body malloc'd). */
void gr_mgr_resync_item(const struct gr_sub_record *r, const char *reason,
                        struct gr_store_item *out);

#endif
