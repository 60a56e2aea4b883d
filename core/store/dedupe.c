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

/* A table of at least min_cap slots holding the keys seen since cutoff_ms. */
static void rebuild(struct gr_dedupe *d, size_t min_cap, int64_t cutoff_ms)
{
    struct gr_dedupe n = {.cap = MIN_CAP};
    while (n.cap < min_cap)
        n.cap *= 2;
    n.slot = gr_xcalloc(n.cap, sizeof *n.slot);
    for (size_t i = 0; i < d->cap; i++) {
        const struct gr_dedupe_slot *sl = &d->slot[i];
        if (sl->seen_ms >= cutoff_ms) {
            *probe(&n, sl->a, sl->b, INT64_MIN) = *sl;
            n.used++;
        }
    }
    free(d->slot);
    *d = n;
}

/* Key's slot; a new key gets one (seen_ms 0), room made first if need be. */
static struct gr_dedupe_slot *find(struct gr_dedupe *d, const unsigned char key[32],
                                   int64_t cutoff_ms)
{
    if ((d->used + 1) * 4 > d->cap * 3) {
        size_t live = 0;
        for (size_t i = 0; i < d->cap; i++)
            live += d->slot[i].seen_ms >= cutoff_ms;
        rebuild(d, (live + 1) * 3, cutoff_ms);
    }
    uint64_t a, b;
    memcpy(&a, key, sizeof a);
    memcpy(&b, key + sizeof a, sizeof b);
    struct gr_dedupe_slot *sl = probe(d, a, b, cutoff_ms);
    if (!sl->seen_ms)
        d->used++;
    if (sl->a != a || sl->b != b || !sl->seen_ms)
        *sl = (struct gr_dedupe_slot){.a = a, .b = b};
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
    struct gr_dedupe_slot *sl = probe(d, a, b, INT64_MIN);
    if (sl->seen_ms && sl->a == a && sl->b == b && sl->item == item)
        sl->seen_ms = 1; /* out of every window: reused, never matched */
}

void gr_dedupe_free(struct gr_dedupe *d)
{
    free(d->slot);
    *d = (struct gr_dedupe){0};
}
