/*
 * Unwrapped content keys of rich items, kept in memory so that each item
 * costs one RSA private-key operation however many handlers it goes to.
 *
 * A rich item's AES key (encryptedContent.dataKey) is wrapped with RSA-OAEP
 * to the subscription's certificate. Routing the item unwraps it; each of
 * its deliveries decrypts the content again (the plaintext is never kept),
 * and finds the key here instead of unwrapping it once more. Only the RSA
 * step is saved: the HMAC over the data is checked with the cached key at
 * every use, so tampered data under a reused dataKey still fails with
 * bad_signature. A restart, or an entry evicted before its item's last
 * delivery, costs one more RSA operation, nothing else.
 *
 * An entry is keyed by SHA-256(identity || dataKey text), where identity is
 * the SHA-256 of the unwrapping key's public key (SubjectPublicKeyInfo DER;
 * decrypt.c). Keying by the key itself, not by flushing on reload: a reload
 * that keeps a key keeps its entries; one that removes or replaces a key
 * (even under the same certificate id) leaves its entries unreachable,
 * because a lookup only forms ids from the keys of the ring in force. They
 * stay, wiped, until evicted.
 *
 * An item that needs its key no more (delivered to every target as it was
 * routed, or dropped) has it wiped at once (gr_keycache_forget): the table
 * holds the keys of items whose deliveries are still to come (a retry, a
 * handler with concurrency 1, an item routed again after a restart).
 *
 * Bounded and evicting: a fixed table of 8-way sets (the set chosen by the
 * id). A put replaces an empty entry, else the set's least recently used
 * entry among those got since they were put (their item has been delivered
 * at least once), else the set's least recently used: keys whose items are
 * routed and not yet delivered are the last to go. Every key that leaves
 * the table (evicted, replaced, cleared, freed) is wiped with
 * OPENSSL_cleanse first. The table is excluded from core dumps
 * (MADV_DONTDUMP) and locked in memory when RLIMIT_MEMLOCK allows it (else
 * it could be swapped, like OpenSSL's copy of the private key itself). Keys
 * are never written anywhere, never logged. Thread-safe: one mutex per set.
 */
#ifndef GR_KEYCACHE_H
#define GR_KEYCACHE_H

#include <stdbool.h>
#include <stddef.h>

#define GR_KEYCACHE_ID_LEN 32  /* SHA-256 */
#define GR_KEYCACHE_KEY_MAX 32 /* AES-256 */
#define GR_KEYCACHE_WAYS 8

struct gr_keycache;

/* A table of at least `entries` entries (rounded up to a power-of-two
 * number of sets of GR_KEYCACHE_WAYS). */
struct gr_keycache *gr_keycache_new(size_t entries);
/* Wipes every key, then frees. NULL is allowed. */
void gr_keycache_free(struct gr_keycache *c);
/* Wipes every key; the table stays usable. */
void gr_keycache_clear(struct gr_keycache *c);

/* The id of the content key that `wrapped` (dataKey as received, base64
 * text of `len` bytes) unwraps to with the key of this identity. */
void gr_keycache_id(const unsigned char identity[GR_KEYCACHE_ID_LEN], const char *wrapped,
                    size_t len, unsigned char id[GR_KEYCACHE_ID_LEN]);

/* Copy the key kept for `id` into key (GR_KEYCACHE_KEY_MAX bytes) and mark
 * it used; false if none is kept. */
bool gr_keycache_get(struct gr_keycache *c, const unsigned char id[GR_KEYCACHE_ID_LEN],
                     unsigned char *key, size_t *key_len);
/* Keep `key` (1 to GR_KEYCACHE_KEY_MAX bytes; others are not kept) for
 * `id`, replacing what `id` had or evicting an entry as described above. */
void gr_keycache_put(struct gr_keycache *c, const unsigned char id[GR_KEYCACHE_ID_LEN],
                     const unsigned char *key, size_t key_len);

/* Which entry a decryption used or filled (gr_decrypt_cached): set only
 * once the item's MAC verified with the key. */
struct gr_keycache_ref {
    bool set;
    unsigned char id[GR_KEYCACHE_ID_LEN];
};
/* Wipe the entry `ref` names, if it is still there (its item needs it no
 * more: delivered, dropped). Nothing if ref is not set. */
void gr_keycache_forget(struct gr_keycache *c, const struct gr_keycache_ref *ref);

/* Entries the table can hold, and holds now. */
size_t gr_keycache_capacity(const struct gr_keycache *c);
size_t gr_keycache_count(struct gr_keycache *c);

/* For the unit test of the wiping: whether these bytes occur anywhere in
 * the table's memory, live entries or not. */
bool gr_keycache_memory_holds(struct gr_keycache *c, const void *bytes, size_t n);

#endif
