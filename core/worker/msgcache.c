/* Notifications built while routing, kept for the deliveries (see msgcache.h). */
#include "worker/msgcache.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void gr_msgcache_init(struct gr_msgcache *c, size_t nslots, size_t max_len)
{
    pthread_mutex_init(&c->lock, NULL);
    c->nslots = nslots ? nslots : 1;
    c->max_len = max_len;
    c->slots = gr_xcalloc(c->nslots, sizeof *c->slots);
}

void gr_msgcache_destroy(struct gr_msgcache *c)
{
    for (size_t i = 0; i < c->nslots; i++)
        free(c->slots[i].text);
    free(c->slots);
    c->slots = NULL;
    pthread_mutex_destroy(&c->lock);
}

static struct gr_msgcache_slot *slot_of(struct gr_msgcache *c, int64_t id)
{
    return &c->slots[(uint64_t)id % c->nslots];
}

void gr_msgcache_put(struct gr_msgcache *c, int64_t id, int64_t received_ms, char *text,
                     size_t len, unsigned uses)
{
    bool keep = text && uses && len <= c->max_len;
    pthread_mutex_lock(&c->lock);
    struct gr_msgcache_slot *s = slot_of(c, id);
    char *evicted = s->text;
    *s = keep ? (struct gr_msgcache_slot){id, received_ms, text, len, uses}
              : (struct gr_msgcache_slot){0};
    pthread_mutex_unlock(&c->lock);
    free(evicted);
    if (!keep)
        free(text);
}

char *gr_msgcache_take(struct gr_msgcache *c, int64_t id, int64_t received_ms, size_t *len)
{
    char *out = NULL;
    pthread_mutex_lock(&c->lock);
    struct gr_msgcache_slot *s = slot_of(c, id);
    if (s->text && s->id == id && s->received_ms == received_ms) {
        *len = s->len;
        if (s->uses > 1) {
            s->uses--;
            out = gr_xmalloc(s->len + 1);
            memcpy(out, s->text, s->len + 1);
        } else {
            out = s->text;
            *s = (struct gr_msgcache_slot){0};
        }
    }
    pthread_mutex_unlock(&c->lock);
    return out;
}
