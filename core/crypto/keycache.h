/*
 * Unwrapped content keys of rich items, kept in memory so that each item
 * costs one RSA private-key operation however many handlers it goes to.
 *
 * A rich item's AES key (encryptedContent.dataKey) is wrapped with RSA-OAEP
 * to the subscription's certificate. Routing the item unwraps it. A delivery
 * made as the item is routed uses the text routing built; a delivery that
 * rebuilds the notification from the stored item (a retry, a target of
 * concurrency 1, an item routed again after a restart) decrypts the content
 * again (the plaintext is never kept) and finds the key here instead of
 * unwrapping it once more. Only the RSA step is saved: the HMAC over the data
 * is checked with the cached key at every use, so tampered data under a
 * reused dataKey still fails with bad_signature. A restart, or a key evicted
 * before its item's last delivery, costs one more RSA operation, nothing else.
 *
 * An entry is keyed by SHA-256(identity || dataKey text), where identity is
 * the SHA-256 of the unwrapping key's public key (SubjectPublicKeyInfo DER;
 * decrypt.c). Keying by the key itself, not by flushing on reload: a reload
 * that keeps a key keeps its entries; one that removes or replaces a key
 * (even under the same certificate id) leaves its entries unreachable,
 * because a lookup only forms ids from the keys of the ring in force. They
 * stay until evicted, and are wiped then.
 *
 * Routing says how many deliveries will still want a key
 * (gr_keycache_expect), and forgets it when none will (gr_keycache_forget:
 * all its targets returned GR_OK as it was routed, or it was dropped). So the
 * table holds the keys of items whose deliveries are still to come, plus the
 * most recently used others.
 *
 * Bounded, fully associative, exact: a fixed number of entries, allocated
 * once. When it is full, a put evicts the least recently used key that no
 * delivery is expected for; else the least recently expected key whose
 * deliveries have been expected for longer than pending_ttl_ms (they are
 * stuck or will never come: a handler removed, a dead letter); else it keeps
 * nothing, so that a backlog longer than the table costs one RSA operation
 * for each item past the first `entries`, instead of evicting the oldest
 * items, which are the next to be delivered, one after the other. Every key
 * that leaves the table (evicted, replaced, forgotten, cleared, freed) is
 * wiped with OPENSSL_cleanse first. The table is excluded from core dumps
 * (MADV_DONTDUMP) and locked in memory when RLIMIT_MEMLOCK allows it (else it
 * could be swapped, like OpenSSL's copy of the private key itself). Keys are
 * never written anywhere, never logged. Thread-safe: one mutex, held for a
 * hash lookup and a few list moves.
 */
#ifndef GR_KEYCACHE_H
#define GR_KEYCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GR_KEYCACHE_ID_LEN 32  /* SHA-256 */
#define GR_KEYCACHE_KEY_MAX 32 /* AES-256 */

struct gr_keycache;

/* A table of exactly `entries` entries (at least 1, at most 2^24). */
struct gr_keycache *gr_keycache_new(size_t entries, int64_t pending_ttl_ms);
/* Wipes every key, then frees. NULL is allowed. */
void gr_keycache_free(struct gr_keycache *c);
/* Wipes every key; the table stays usable. */
void gr_keycache_clear(struct gr_keycache *c);

/* The id of the content key that `wrapped` (dataKey as received, base64
 * text of `len` bytes) unwraps to with the key of this identity. */
void gr_keycache_id(const unsigned char identity[GR_KEYCACHE_ID_LEN], const char *wrapped,
                    size_t len, unsigned char id[GR_KEYCACHE_ID_LEN]);

/* Copy the key kept for `id` into key (GR_KEYCACHE_KEY_MAX bytes), mark it
 * used and count one expected delivery done; false if none is kept. */
bool gr_keycache_get(struct gr_keycache *c, const unsigned char id[GR_KEYCACHE_ID_LEN],
                     unsigned char *key, size_t *key_len);
/* Keep `key` (1 to GR_KEYCACHE_KEY_MAX bytes; others are not kept) for `id`,
 * with no delivery expected yet, replacing what `id` had, or in a free or
 * evicted entry (above); when none can be had, nothing is kept. */
void gr_keycache_put(struct gr_keycache *c, const unsigned char id[GR_KEYCACHE_ID_LEN],
                     const unsigned char *key, size_t key_len);

/* An entry a decryption used or filled (gr_decrypt_cached): set only once
 * the item's MAC verified with the key. */
struct gr_keycache_ref {
    bool set;
    unsigned char id[GR_KEYCACHE_ID_LEN];
};
/* `deliveries` deliveries will want the key of `ref` (0: none is expected;
 * it may still be used). Nothing if ref is not set or the key is gone. */
void gr_keycache_expect(struct gr_keycache *c, const struct gr_keycache_ref *ref,
                        unsigned deliveries);
/* Wipe the entry `ref` names, if it is still there. */
void gr_keycache_forget(struct gr_keycache *c, const struct gr_keycache_ref *ref);

/* Entries the table can hold, holds now, and holds with deliveries expected. */
size_t gr_keycache_capacity(const struct gr_keycache *c);
size_t gr_keycache_count(struct gr_keycache *c);
size_t gr_keycache_pending(struct gr_keycache *c);

/* For the unit test of the wiping: whether these bytes occur anywhere in
 * the table's memory, live entries or not. */
bool gr_keycache_memory_holds(struct gr_keycache *c, const void *bytes, size_t n);

#endif
