/* The managed subscriptions' snapshot (see managed.h). */
#define _GNU_SOURCE
#include "graph/managed.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static struct gr_managed *current;

struct gr_managed *gr_managed_new(void)
{
    struct gr_managed *m = gr_xcalloc(1, sizeof *m);
    atomic_init(&m->refs, 1);
    return m;
}

void gr_managed_add(struct gr_managed *m, const char *id, const unsigned char secret[32],
                    const char *key, const char *tenant, const char *resource)
{
    m->v = gr_xrealloc(m->v, (m->n + 1) * sizeof *m->v);
    struct gr_managed_sub *s = &m->v[m->n++];
    s->id = gr_xstrdup(id);
    memcpy(s->secret.digest, secret, sizeof s->secret.digest);
    s->key = gr_xstrdup(key);
    s->tenant = gr_xstrdup(tenant);
    s->resource = gr_xstrdup(resource);
}

void gr_managed_add_pending(struct gr_managed *m, const unsigned char secret[32])
{
    m->pending = gr_xrealloc(m->pending, (m->npending + 1) * sizeof *m->pending);
    memcpy(m->pending[m->npending++].digest, secret, GR_SECRET_DIGEST_LEN);
}

static void destroy(struct gr_managed *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->v[i].id);
        free(m->v[i].key);
        free(m->v[i].tenant);
        free(m->v[i].resource);
    }
    free(m->v);
    free(m->pending);
    free(m);
}

static int cmp_sub(const void *a, const void *b)
{
    return strcasecmp(((const struct gr_managed_sub *)a)->id,
                      ((const struct gr_managed_sub *)b)->id);
}

void gr_managed_publish(struct gr_managed *m)
{
    if (m && m->n)
        qsort(m->v, m->n, sizeof *m->v, cmp_sub);
    pthread_mutex_lock(&current_lock);
    struct gr_managed *old = current;
    current = m;
    pthread_mutex_unlock(&current_lock);
    gr_managed_unpin(old); /* its reference for being current */
}

struct gr_managed *gr_managed_pin(void)
{
    pthread_mutex_lock(&current_lock);
    struct gr_managed *m = current;
    if (m)
        atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&current_lock);
    return m;
}

void gr_managed_unpin(struct gr_managed *m)
{
    if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1)
        destroy(m);
}

const struct gr_managed_sub *gr_managed_find(const struct gr_managed *m, const char *id)
{
    if (!m || !m->n || !id)
        return NULL;
    struct gr_managed_sub key = {.id = (char *)id};
    return bsearch(&key, m->v, m->n, sizeof key, cmp_sub);
}

bool gr_managed_pending_match(const struct gr_managed *m, const char *cs, size_t len)
{
    if (!m || !m->npending)
        return false;
    struct gr_secret presented; /* digested once, compared with each */
    gr_secret_digest(cs, len, &presented);
    bool match = false;
    for (size_t i = 0; i < m->npending; i++)
        match |= CRYPTO_memcmp(presented.digest, m->pending[i].digest,
                               sizeof presented.digest) == 0;
    return match;
}
