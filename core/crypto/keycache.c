/* Unwrapped content keys of rich items (see keycache.h). */
#define _GNU_SOURCE
#include "crypto/keycache.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "log.h"
#include "util.h"

struct entry {
    unsigned char id[GR_KEYCACHE_ID_LEN];
    unsigned char key[GR_KEYCACHE_KEY_MAX];
    uint64_t used; /* the set's clock at its last use; 0: empty */
    unsigned char key_len;
    bool awaiting; /* put and not got since: its item's deliveries are still to come */
};

struct set {
    pthread_mutex_t lock;
    uint64_t clock;
    struct entry e[GR_KEYCACHE_WAYS];
};

struct gr_keycache {
    struct set *sets; /* an anonymous mapping of `bytes` */
    size_t nsets;     /* a power of two */
    size_t bytes;
};

struct gr_keycache *gr_keycache_new(size_t entries)
{
    struct gr_keycache *c = gr_xcalloc(1, sizeof *c);
    c->nsets = 1;
    while (c->nsets * GR_KEYCACHE_WAYS < entries)
        c->nsets *= 2;
    c->bytes = c->nsets * sizeof *c->sets;
    /* A mapping of its own, so that it can be kept out of core dumps and
     * locked in memory without touching the heap around it. */
    void *p = mmap(NULL, c->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        gr_error("cannot map %zu bytes for the content key cache: %s", c->bytes, strerror(errno));
        abort();
    }
    (void)madvise(p, c->bytes, MADV_DONTDUMP);
    (void)mlock(p, c->bytes); /* best effort: RLIMIT_MEMLOCK may be too small */
    c->sets = p; /* zero-filled: every entry empty */
    for (size_t i = 0; i < c->nsets; i++)
        pthread_mutex_init(&c->sets[i].lock, NULL);
    return c;
}

static void wipe(struct entry *e)
{
    OPENSSL_cleanse(e, sizeof *e);
}

void gr_keycache_clear(struct gr_keycache *c)
{
    for (size_t i = 0; i < c->nsets; i++) {
        struct set *s = &c->sets[i];
        pthread_mutex_lock(&s->lock);
        for (size_t w = 0; w < GR_KEYCACHE_WAYS; w++)
            wipe(&s->e[w]);
        s->clock = 0;
        pthread_mutex_unlock(&s->lock);
    }
}

void gr_keycache_free(struct gr_keycache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nsets; i++)
        pthread_mutex_destroy(&c->sets[i].lock);
    OPENSSL_cleanse(c->sets, c->bytes);
    munlock(c->sets, c->bytes);
    munmap(c->sets, c->bytes);
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

static struct set *set_of(struct gr_keycache *c, const unsigned char *id)
{
    uint64_t h;
    memcpy(&h, id, sizeof h); /* a SHA-256: uniform */
    return &c->sets[h & (c->nsets - 1)];
}

/* The entry of `id` in `s`, or NULL; under s->lock. The ids are digests of
 * public data, compared in constant time anyway. */
static struct entry *find(struct set *s, const unsigned char *id)
{
    struct entry *found = NULL;
    for (size_t w = 0; w < GR_KEYCACHE_WAYS; w++)
        if (s->e[w].used && CRYPTO_memcmp(s->e[w].id, id, GR_KEYCACHE_ID_LEN) == 0)
            found = &s->e[w];
    return found;
}

bool gr_keycache_get(struct gr_keycache *c, const unsigned char id[GR_KEYCACHE_ID_LEN],
                     unsigned char *key, size_t *key_len)
{
    struct set *s = set_of(c, id);
    pthread_mutex_lock(&s->lock);
    struct entry *e = find(s, id);
    if (e) {
        e->used = ++s->clock;
        e->awaiting = false;
        memcpy(key, e->key, e->key_len);
        *key_len = e->key_len;
    }
    pthread_mutex_unlock(&s->lock);
    return e != NULL;
}

void gr_keycache_put(struct gr_keycache *c, const unsigned char id[GR_KEYCACHE_ID_LEN],
                     const unsigned char *key, size_t key_len)
{
    if (key_len == 0 || key_len > GR_KEYCACHE_KEY_MAX)
        return;
    struct set *s = set_of(c, id);
    pthread_mutex_lock(&s->lock);
    struct entry *e = find(s, id);
    if (!e) {
        /* An empty entry (used 0), else the least recently used of those got
         * since they were put, else the least recently used: a key whose
         * deliveries are still to come goes only from a set of such keys. */
        struct entry *used = NULL, *any = NULL;
        for (size_t w = 0; w < GR_KEYCACHE_WAYS; w++) {
            struct entry *x = &s->e[w];
            if (!x->awaiting && (!used || x->used < used->used))
                used = x;
            if (!any || x->used < any->used)
                any = x;
        }
        e = used ? used : any;
    }
    wipe(e); /* what it held, evicted or replaced */
    memcpy(e->id, id, GR_KEYCACHE_ID_LEN);
    memcpy(e->key, key, key_len);
    e->key_len = (unsigned char)key_len;
    e->used = ++s->clock;
    e->awaiting = true;
    pthread_mutex_unlock(&s->lock);
}

void gr_keycache_forget(struct gr_keycache *c, const struct gr_keycache_ref *ref)
{
    if (!c || !ref || !ref->set)
        return;
    struct set *s = set_of(c, ref->id);
    pthread_mutex_lock(&s->lock);
    struct entry *e = find(s, ref->id);
    if (e)
        wipe(e);
    pthread_mutex_unlock(&s->lock);
}

size_t gr_keycache_capacity(const struct gr_keycache *c)
{
    return c->nsets * GR_KEYCACHE_WAYS;
}

size_t gr_keycache_count(struct gr_keycache *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->nsets; i++) {
        struct set *s = &c->sets[i];
        pthread_mutex_lock(&s->lock);
        for (size_t w = 0; w < GR_KEYCACHE_WAYS; w++)
            n += s->e[w].used != 0;
        pthread_mutex_unlock(&s->lock);
    }
    return n;
}

bool gr_keycache_memory_holds(struct gr_keycache *c, const void *bytes, size_t n)
{
    bool found = false;
    for (size_t i = 0; i < c->nsets && !found; i++) {
        struct set *s = &c->sets[i];
        pthread_mutex_lock(&s->lock);
        found = memmem(s->e, sizeof s->e, bytes, n) != NULL;
        pthread_mutex_unlock(&s->lock);
    }
    return found;
}
