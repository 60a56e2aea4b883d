/* Plugin calls watched from another thread (see callwatch.h). */
#include "plugin/callwatch.h"

#include <stdio.h>

#include "config.h"
#include "util.h"

void gr_callwatch_init(struct gr_callwatch *w)
{
    *w = (struct gr_callwatch){0};
    pthread_mutex_init(&w->lock, NULL);
}

void gr_callwatch_destroy(struct gr_callwatch *w)
{
    pthread_mutex_destroy(&w->lock);
}

void gr_callwatch_begin(struct gr_callwatch *w, const struct gr_handler *h, const char *what,
                        int64_t id, int64_t item)
{
    pthread_mutex_lock(&w->lock);
    snprintf(w->call.handler, sizeof w->call.handler, "%s", h->name);
    w->call.what = what;
    w->call.id = id;
    w->call.item = item;
    w->call.timeout_s = h->conf->timeout_s;
    w->reported = false;
    w->since_ms = gr_mono_ms();
    pthread_mutex_unlock(&w->lock);
}

bool gr_callwatch_end(struct gr_callwatch *w)
{
    pthread_mutex_lock(&w->lock);
    w->since_ms = 0;
    bool reported = w->reported;
    pthread_mutex_unlock(&w->lock);
    return reported;
}

bool gr_callwatch_late(struct gr_callwatch *w, struct gr_late_call *out)
{
    pthread_mutex_lock(&w->lock);
    int64_t ran = w->since_ms ? gr_mono_ms() - w->since_ms : 0;
    bool late = w->since_ms && w->call.timeout_s && !w->reported &&
                ran > (int64_t)w->call.timeout_s * 1000;
    if (late) {
        w->reported = true;
        *out = w->call;
        out->running_ms = ran;
    }
    pthread_mutex_unlock(&w->lock);
    return late;
}
