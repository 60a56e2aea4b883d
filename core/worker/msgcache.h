/*
 * Notifications built while routing, kept for the deliveries that follow.
 *
 * Routing an item builds its notification (parse the stored item, classify,
 * build the message); each delivery used to build it again from the stored
 * item. A worker that routes an item now keeps the text here, once per
 * target handler, and the delivery takes it instead of rebuilding: the
 * result is the same bytes, since the notification of an item without
 * encrypted content depends on nothing but the stored item and its receive
 * time. Rich items are not kept here: decrypted content is held no longer
 * than one delivery (or, delivered as routed, than its routing). A delivery
 * that rebuilds a rich item decrypts its content again, with the decryption
 * keys of that moment, but not with RSA: the content key unwrapped when the
 * item was routed is kept in memory, bounded and wiped on eviction
 * (crypto/keycache.h), so an item costs one RSA operation at any fan-out
 * until a restart or an eviction.
 *
 * A direct-mapped table of items: a slot holds the latest text put there; a
 * put evicts what the slot held. An entry is the item's only if both its id
 * and its receive time match: SQLite reuses the id of a purged item, and an
 * entry whose deliveries never came (a duplicate, a handler since removed)
 * may outlive its item. Routing an item also empties its slot when it keeps
 * nothing (a rich item, a long text, no handler), so a delivery never finds
 * an older item's text. A miss costs nothing but the rebuild, so a retry, a
 * replay or a delivery after a restart simply rebuilds. Memory is bounded by
 * slots * max_len. Thread-safe.
 */
#ifndef GR_MSGCACHE_H
#define GR_MSGCACHE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

struct gr_msgcache_slot {
    int64_t id;
    int64_t received_ms;
    char *text;
    size_t len;
    unsigned uses; /* deliveries still to take it */
};

struct gr_msgcache {
    pthread_mutex_t lock;
    size_t nslots;
    size_t max_len; /* longer texts are not kept */
    struct gr_msgcache_slot *slots;
};

void gr_msgcache_init(struct gr_msgcache *c, size_t nslots, size_t max_len);
void gr_msgcache_destroy(struct gr_msgcache *c);

/* Keep `text` (NUL-terminated, len bytes; ownership passes to the cache,
 * which frees it when it is not kept) for `uses` deliveries of the item with
 * this id and receive time. Whatever the item's slot held is evicted, even
 * when the text is not kept (text NULL, uses 0 or len over max_len). */
void gr_msgcache_put(struct gr_msgcache *c, int64_t id, int64_t received_ms, char *text,
                     size_t len, unsigned uses);

/* The text kept for that item, to be freed by the caller, or NULL. Each
 * take uses one of the uses given to put; the last one empties the slot. */
char *gr_msgcache_take(struct gr_msgcache *c, int64_t id, int64_t received_ms, size_t *len);

#endif
