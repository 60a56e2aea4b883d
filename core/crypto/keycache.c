/* Unwrapped content keys of rich items (see keycache.h). */
#define _GNU_SOURCE
#include "crypto/keycache.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "log.h"
#include "util.h"

#define NIL UINT32_MAX

enum { L_FREE, L_IDLE, L_PENDING }; /* the lists an entry can be on */

struct entry {
    unsigned char id[GR_KEYCACHE_ID_LEN];
    unsigned char key[GR_KEYCACHE_KEY_MAX];
    uint8_t key_len;
    uint8_t list;
    uint16_t pending;      /* deliveries still expected to use it */
    uint32_t prev, next;   /* on its list, most recently used first */
    uint32_t chain;        /* the next entry of its hash bucket */
    int64_t expected_ms;   /* monotonic: when its deliveries were last expected or used */
};

struct list {
    uint32_t head, tail;
    size_t n;
};

struct gr_keycache {
    pthread_mutex_t lock;
    struct entry *e;  /* cap entries, then the buckets, in one mapping */
    uint32_t *bucket; /* nbuckets heads of hash chains */
    size_t cap, nbuckets;
    int64_t pending_ttl_ms;
    struct list lists[3];
    void *map;
    size_t bytes;
};

/* ---- lists and buckets (under the lock) ------------------------------------ */

static void unlink_entry(struct gr_keycache *c, uint32_t i)
{
    struct entry *x = &c->e[i];
    struct list *l = &c->lists[x->list];
    if (x->prev != NIL)
        c->e[x->prev].next = x->next;
    else
        l->head = x->next;
    if (x->next != NIL)
        c->e[x->next].prev = x->prev;
    else
        l->tail = x->prev;
    l->n--;
}

static void push_front(struct gr_keycache *c, uint32_t i, int list)
{
    struct entry *x = &c->e[i];
    struct list *l = &c->lists[list];
    x->list = (uint8_t)list;
    x->prev = NIL;
    x->next = l->head;
    if (l->head != NIL)
        c->e[l->head].prev = i;
    else
        l->tail = i;
    l->head = i;
    l->n++;
}

static void move_front(struct gr_keycache *c, uint32_t i, int list)
{
    unlink_entry(c, i);
    push_front(c, i, list);
}

static uint32_t *bucket_of(struct gr_keycache *c, const unsigned char *id)
{
    uint64_t h;
    memcpy(&h, id, sizeof h); /* a SHA-256: uniform */
    return &c->bucket[h & (c->nbuckets - 1)];
}

/* The entry of `id`, or NIL. The ids are digests of public data, compared
 * in constant time anyway. */
static uint32_t find(struct gr_keycache *c, const unsigned char *id)
{
    for (uint32_t i = *bucket_of(c, id); i != NIL; i = c->e[i].chain)
        if (CRYPTO_memcmp(c->e[i].id, id, GR_KEYCACHE_ID_LEN) == 0)
            return i;
    return NIL;
}

/* Take entry i out of its bucket and list, wipe it, and free it. */
static void drop(struct gr_keycache *c, uint32_t i)
{
    uint32_t *p = bucket_of(c, c->e[i].id);
    while (*p != i)
        p = &c->e[*p].chain;
    *p = c->e[i].chain;
    unlink_entry(c, i);
    OPENSSL_cleanse(&c->e[i], sizeof c->e[i]);
    push_front(c, i, L_FREE);
}

static void reset(struct gr_keycache *c)
{
    OPENSSL_cleanse(c->e, c->cap * sizeof *c->e);
    for (size_t b = 0; b < c->nbuckets; b++)
        c->bucket[b] = NIL;
    for (int l = 0; l < 3; l++)
        c->lists[l] = (struct list){NIL, NIL, 0};
    for (size_t i = c->cap; i-- > 0;)
        push_front(c, (uint32_t)i, L_FREE);
}

/* ---- the interface ------------------------------------------------------------ */

struct gr_keycache *gr_keycache_new(size_t entries, int64_t pending_ttl_ms)
{
    struct gr_keycache *c = gr_xcalloc(1, sizeof *c);
    c->cap = entries < 1 ? 1 : entries > (1u << 24) ? (1u << 24) : entries;
    c->nbuckets = 1;
    while (c->nbuckets < c->cap)
        c->nbuckets *= 2;
    c->pending_ttl_ms = pending_ttl_ms;
    c->bytes = c->cap * sizeof *c->e + c->nbuckets * sizeof *c->bucket;
    /* A mapping of its own, so that it can be kept out of core dumps and
     * locked in memory without touching the heap around it. */
    c->map = mmap(NULL, c->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (c->map == MAP_FAILED) {
        gr_error("cannot map %zu bytes for the content key cache: %s", c->bytes, strerror(errno));
        abort();
    }
    (void)madvise(c->map, c->bytes, MADV_DONTDUMP);
    (void)mlock(c->map, c->bytes); /* best effort: RLIMIT_MEMLOCK may be too small */
    c->e = c->map;
    c->bucket = (uint32_t *)(c->e + c->cap);
    pthread_mutex_init(&c->lock, NULL);
    reset(c);
    return c;
}

void gr_keycache_clear(struct gr_keycache *c)
{
    pthread_mutex_lock(&c->lock);
    reset(c);
    pthread_mutex_unlock(&c->lock);
}

void gr_keycache_free(struct gr_keycache *c)
{
    if (!c)
        return;
    pthread_mutex_destroy(&c->lock);
    OPENSSL_cleanse(c->map, c->bytes);
    munlock(c->map, c->bytes);
    munmap(c->map, c->bytes);
    free(c);
}

void gr_keycache_id(const unsigned char identity[GR_KEYCACHE_ID_LEN], const char *wrapped,
                    size_t len, unsigned char id[GR_KEYCACHE_ID_LEN])
{
    /* identity is of fixed length, so (identity, text) pairs cannot collide
     * by shifting bytes between the two */
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n = 0;
    if (!ctx || EVP_DigestInit_ex(ctx, gr_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, identity, GR_KEYCACHE_ID_LEN) != 1 ||
        EVP_DigestUpdate(ctx, wrapped, len) != 1 || EVP_DigestFinal_ex(ctx, id, &n) != 1 ||
        n != GR_KEYCACHE_ID_LEN)
        abort(); /* SHA-256 fails only without memory */
    EVP_MD_CTX_free(ctx);
}

bool gr_keycache_get(struct gr_keycache *c, const unsigned char id[GR_KEYCACHE_ID_LEN],
                     unsigned char *key, size_t *key_len)
{
    pthread_mutex_lock(&c->lock);
    uint32_t i = find(c, id);
    if (i != NIL) {
        struct entry *x = &c->e[i];
        memcpy(key, x->key, x->key_len);
        *key_len = x->key_len;
        if (x->pending && --x->pending) {
            x->expected_ms = gr_mono_ms(); /* its deliveries are coming */
            move_front(c, i, L_PENDING);
        } else {
            move_front(c, i, L_IDLE);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return i != NIL;
}

/* An entry for a new key: a free one, else an evicted one (keycache.h), else NIL. */
static uint32_t room(struct gr_keycache *c)
{
    uint32_t i = c->lists[L_FREE].tail;
    if (i == NIL)
        i = c->lists[L_IDLE].tail;
    if (i == NIL) {
        uint32_t old = c->lists[L_PENDING].tail;
        if (old != NIL && gr_mono_ms() - c->e[old].expected_ms >= c->pending_ttl_ms)
            i = old;
    }
    if (i != NIL && c->e[i].list != L_FREE)
        drop(c, i);
    return i;
}

void gr_keycache_put(struct gr_keycache *c, const unsigned char id[GR_KEYCACHE_ID_LEN],
                     const unsigned char *key, size_t key_len)
{
    if (key_len == 0 || key_len > GR_KEYCACHE_KEY_MAX)
        return;
    pthread_mutex_lock(&c->lock);
    uint32_t i = find(c, id);
    if (i != NIL) { /* the same id again (two workers missed it at once): the same key */
        OPENSSL_cleanse(c->e[i].key, sizeof c->e[i].key);
        move_front(c, i, c->e[i].list);
    } else if ((i = room(c)) != NIL) {
        struct entry *x = &c->e[i];
        memcpy(x->id, id, GR_KEYCACHE_ID_LEN);
        x->pending = 0;
        uint32_t *b = bucket_of(c, id);
        x->chain = *b;
        *b = i;
        move_front(c, i, L_IDLE);
    }
    if (i != NIL) {
        memcpy(c->e[i].key, key, key_len);
        c->e[i].key_len = (uint8_t)key_len;
    }
    pthread_mutex_unlock(&c->lock);
}

void gr_keycache_expect(struct gr_keycache *c, const struct gr_keycache_ref *ref,
                        unsigned deliveries)
{
    if (!c || !ref || !ref->set)
        return;
    pthread_mutex_lock(&c->lock);
    uint32_t i = find(c, ref->id);
    if (i != NIL) {
        struct entry *x = &c->e[i];
        x->pending = (uint16_t)(deliveries > UINT16_MAX ? UINT16_MAX : deliveries);
        x->expected_ms = gr_mono_ms();
        move_front(c, i, x->pending ? L_PENDING : L_IDLE);
    }
    pthread_mutex_unlock(&c->lock);
}

void gr_keycache_forget(struct gr_keycache *c, const struct gr_keycache_ref *ref)
{
    if (!c || !ref || !ref->set)
        return;
    pthread_mutex_lock(&c->lock);
    uint32_t i = find(c, ref->id);
    if (i != NIL)
        drop(c, i);
    pthread_mutex_unlock(&c->lock);
}

size_t gr_keycache_capacity(const struct gr_keycache *c)
{
    return c->cap;
}

size_t gr_keycache_count(struct gr_keycache *c)
{
    pthread_mutex_lock(&c->lock);
    size_t n = c->cap - c->lists[L_FREE].n;
    pthread_mutex_unlock(&c->lock);
    return n;
}

size_t gr_keycache_pending(struct gr_keycache *c)
{
    pthread_mutex_lock(&c->lock);
    size_t n = c->lists[L_PENDING].n;
    pthread_mutex_unlock(&c->lock);
    return n;
}

bool gr_keycache_memory_holds(struct gr_keycache *c, const void *bytes, size_t n)
{
    pthread_mutex_lock(&c->lock);
    bool found = memmem(c->map, c->bytes, bytes, n) != NULL;
    pthread_mutex_unlock(&c->lock);
    return found;
}
