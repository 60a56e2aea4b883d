/*
 * Duplicate keys (see ingest.c for what a key is made of): which changes were
 * seen within the window, in memory.
 *
 * An open-addressing table (linear probing) of the first 16 bytes of each
 * key (SHA-256: uniform, and 128 bits make a false match negligible), with
 * when its item was received and which item it was. A slot whose key has
 * left the window is reused in place; when three quarters of the slots are
 * taken, a new table a third full for the keys still in the window takes
 * over, and the old table's keys move into it MOVE_STEP slots per call
 * (dedupe.c), so that no call stalls the store's writer: moving 700,000
 * keys at once took 130 ms. Until the move ends, a key is looked for in both.
 * Memory: 32-byte slots, 45 to 100 bytes per item received within the window
 * (at 100 items a second and the 4-hour default, 65 to 145 MB).
 *
 * The SQLite store keeps one, used by its writer thread only (no locking
 * here), and rebuilds it at start from the keys stored with the items.
 */
#ifndef GR_DEDUPE_H
#define GR_DEDUPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gr_dedupe_slot {
    uint64_t a, b;   /* the key's first 16 bytes */
    int64_t seen_ms; /* when its item was received; 0: an empty slot */
    int64_t item;    /* that item's id */
};

struct gr_dedupe {
    struct gr_dedupe_slot *slot;
    size_t cap, used; /* cap: a power of two, or 0; used: slots not empty */
    struct gr_dedupe_slot *old; /* the table whose keys are moving into `slot`, or NULL */
    size_t old_cap, moved;      /* its size, and how many of its slots were moved */
    int64_t old_cutoff;         /* its keys seen before this are left behind */
};

/* Whether key was seen within window_ms before received_ms by another item
 * (true: a duplicate, and the set is left as it was). If not, item is
 * recorded as its first sighting at received_ms. The same item checked again
 * (its routing retried after a failed write) is not its own duplicate. */
bool gr_dedupe_check(struct gr_dedupe *d, const unsigned char key[32], int64_t item,
                     int64_t received_ms, int64_t now_ms, int64_t window_ms);

/* Record key as seen by item at received_ms, whatever was recorded before
 * (loading: the caller decides which sighting counts). Keys seen before
 * cutoff_ms may make room. */
void gr_dedupe_set(struct gr_dedupe *d, const unsigned char key[32], int64_t item,
                   int64_t received_ms, int64_t cutoff_ms);

/* Forget key's sighting by item, if it is the one recorded (the item was
 * not delivered after all: dropped, unrouted, or waiting for keys). */
void gr_dedupe_forget(struct gr_dedupe *d, const unsigned char key[32], int64_t item);

void gr_dedupe_free(struct gr_dedupe *d);

#endif
