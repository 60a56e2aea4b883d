/*
 * The subscriptions graphrouter manages, as the request path and the
 * workers see them: an immutable snapshot that the manager publishes after
 * every change (graph/manager.c), which ingest checks clientStates against
 * and workers look lifecycle items up in. Like a generation, a snapshot is
 * pinned for as long as it is read: pinning takes a mutex for a pointer copy
 * and an increment, never a lock the manager holds while it works.
 */
#ifndef GR_MANAGED_H
#define GR_MANAGED_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"

struct gr_managed_sub {
    char *id; /* Graph's subscription id */
    struct gr_secret secret;
    char *key, *tenant, *resource;
};

struct gr_managed {
    atomic_int refs;
    struct gr_managed_sub *v; /* sorted by id, ignoring case */
    size_t n;
    /* The secrets of subscriptions being created: Graph may deliver before
     * its answer to the create gives their id. */
    struct gr_secret *pending;
    size_t npending;
};

/* A new, empty snapshot to fill (gr_managed_add, gr_managed_add_pending). */
struct gr_managed *gr_managed_new(void);
void gr_managed_add(struct gr_managed *m, const char *id, const unsigned char secret[32],
                    const char *key, const char *tenant, const char *resource);
void gr_managed_add_pending(struct gr_managed *m, const unsigned char secret[32]);
/* Make `m` the snapshot readers get (sorting it; NULL: none). */
void gr_managed_publish(struct gr_managed *m);

/* The current snapshot (NULL before the first publish), and its release. */
struct gr_managed *gr_managed_pin(void);
void gr_managed_unpin(struct gr_managed *m);

/* The managed subscription with this id, or NULL (m may be NULL). */
const struct gr_managed_sub *gr_managed_find(const struct gr_managed *m, const char *id);
/* Does `client_state` match a subscription being created? Constant time
 * per secret. */
bool gr_managed_pending_match(const struct gr_managed *m, const char *client_state, size_t len);

#endif
