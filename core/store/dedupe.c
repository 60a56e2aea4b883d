/* Duplicate keys in memory (see dedupe.h). */
#include "store/dedupe.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

#define MIN_CAP 1024

/* Key's slot, or where it would go: the first slot out of the window on its
 * probe path, else the empty slot that ends the path. Slots are never
 * emptied, only reused, so a key is always found before the first empty one. */
static struct gr_dedupe_slot *probe(struct gr_dedupe *d, uint64_t a, uint64_t b, int64_t cutoff_ms)
{
    struct gr_dedupe_slot *reusable = NULL;
    for (size_t i = a & (d->cap - 1);; i = (i + 1) & (d->cap - 1)) {
        struct gr_dedupe_slot *sl = &d->slot[i];
        if (!sl->seen_ms)
            return reusable ? reusable : sl;
        if (sl->a == a && sl->b == b)
            return sl;
        if (sl->seen_ms < cutoff_ms && !reusable)
            reusable = sl;
    }
}

#define MOVE_STEP 64 /* old slots moved per call while a table takes over */

/* Put a key of the old table into the current one, unless it is there
 * already (seen again since the move began: the current one is newer). */
static void move_in(struct gr_dedupe *d, const struct gr_dedupe_slot *from)
{
    struct gr_dedupe_slot *to = probe(d, from->a, from->b, INT64_MIN);
    if (to->seen_ms)
        return;
    *to = *from;
    d->used++;
}

/* Move the next MOVE_STEP slots of the old table; free it after its last. */
static void move_step(struct gr_dedupe *d)
{
    size_t end = d->moved + MOVE_STEP < d->old_cap ? d->moved + MOVE_STEP : d->old_cap;
    for (; d->moved < end; d->moved++)
        if (d->old[d->moved].seen_ms >= d->old_cutoff)
            move_in(d, &d->old[d->moved]);
    if (d->moved == d->old_cap) {
        free(d->old);
        d->old = NULL;
        d->old_cap = d->moved = 0;
    }
}

/* A new table of at least min_cap slots takes over; the keys seen since
 * cutoff_ms move into it call by call (move_step). */
static void grow(struct gr_dedupe *d, size_t min_cap, int64_t cutoff_ms)
{
    size_t cap = MIN_CAP;
    while (cap < min_cap)
        cap *= 2;
    d->old = d->slot;
    d->old_cap = d->cap;
    d->moved = 0;
    d->old_cutoff = cutoff_ms;
    d->slot = gr_xcalloc(cap, sizeof *d->slot); /* zeroed lazily by the kernel: no stall */
    d->cap = cap;
    d->used = 0;
    if (!d->old_cap) { /* the first table: nothing to move */
        free(d->old);
        d->old = NULL;
    }
}

/* Key's slot in the old table, if it is still there (not yet moved). */
static struct gr_dedupe_slot *in_old(struct gr_dedupe *d, uint64_t a, uint64_t b)
{
    if (!d->old)
        return NULL;
    for (size_t i = a & (d->old_cap - 1);; i = (i + 1) & (d->old_cap - 1)) {
        struct gr_dedupe_slot *sl = &d->old[i];
        if (!sl->seen_ms)
            return NULL;
        if (sl->a == a && sl->b == b)
            return i >= d->moved && sl->seen_ms >= d->old_cutoff ? sl : NULL;
    }
}

/* Key's slot; a new key gets one (seen_ms 0), room made first if need be. */
static struct gr_dedupe_slot *find(struct gr_dedupe *d, const unsigned char key[32],
                                   int64_t cutoff_ms)
{
    if (d->old)
        move_step(d);
    else if ((d->used + 1) * 4 > d->cap * 3) {
        size_t live = 0; /* one pass over 32-byte slots: some ms for a million keys */
        for (size_t i = 0; i < d->cap; i++)
            live += d->slot[i].seen_ms >= cutoff_ms;
        grow(d, (live + 1) * 3, cutoff_ms);
    }
    uint64_t a, b;
    memcpy(&a, key, sizeof a);
    memcpy(&b, key + sizeof a, sizeof b);
    struct gr_dedupe_slot *sl = probe(d, a, b, cutoff_ms);
    if (!sl->seen_ms)
        d->used++;
    if (sl->a != a || sl->b != b || !sl->seen_ms) {
        struct gr_dedupe_slot *was = in_old(d, a, b);
        if (was) { /* moved now, ahead of its turn */
            *sl = *was;
            was->seen_ms = 1; /* left behind: out of every window */
        } else {
            *sl = (struct gr_dedupe_slot){.a = a, .b = b};
        }
    }
    return sl;
}

bool gr_dedupe_check(struct gr_dedupe *d, const unsigned char key[32], int64_t item,
                     int64_t received_ms, int64_t now_ms, int64_t window_ms)
{
    struct gr_dedupe_slot *sl = find(d, key, now_ms - window_ms);
    if (sl->seen_ms && sl->item != item && sl->seen_ms >= received_ms - window_ms)
        return true;
    sl->seen_ms = received_ms;
    sl->item = item;
    return false;
}

void gr_dedupe_set(struct gr_dedupe *d, const unsigned char key[32], int64_t item,
                   int64_t received_ms, int64_t cutoff_ms)
{
    struct gr_dedupe_slot *sl = find(d, key, cutoff_ms);
    sl->seen_ms = received_ms;
    sl->item = item;
}

void gr_dedupe_forget(struct gr_dedupe *d, const unsigned char key[32], int64_t item)
{
    if (!d->cap)
        return;
    uint64_t a, b;
    memcpy(&a, key, sizeof a);
    memcpy(&b, key + sizeof a, sizeof b);
    struct gr_dedupe_slot *sl = probe(d, a, b, INT64_MIN), *was = in_old(d, a, b);
    if (sl->seen_ms && sl->a == a && sl->b == b && sl->item == item)
        sl->seen_ms = 1; /* out of every window: reused, never matched */
    if (was && was->item == item)
        was->seen_ms = 1;
}

void gr_dedupe_free(struct gr_dedupe *d)
{
    free(d->old);
    free(d->slot);
    *d = (struct gr_dedupe){0};
}
