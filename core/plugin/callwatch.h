/*
 * A plugin call in progress on one thread (a worker's handle(), a control
 * job's init, reopen or fini), as another thread sees it: which handler, since
 * when, and whether it has run past the handler's "timeout_s". In-process
 * code cannot be stopped; the watcher decides what to do about a late call
 * (worker.c, plugin_job.c).
 */
#ifndef GR_CALLWATCH_H
#define GR_CALLWATCH_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "plugin/plugin_host.h"

/* What a late call was. */
struct gr_late_call {
    char handler[65];
    const char *what;   /* "handle", "init", "reopen", "fini" */
    int64_t id;         /* handle(): the delivery; 0: none (yet), see item */
    int64_t item;       /* handle() of an item delivered as it was routed: the item */
    int64_t running_ms; /* how long it had run */
    unsigned timeout_s;
};

struct gr_callwatch {
    pthread_mutex_t lock;
    int64_t since_ms; /* monotonic; 0: no call */
    struct gr_late_call call;
    bool reported;
};

void gr_callwatch_init(struct gr_callwatch *w);
void gr_callwatch_destroy(struct gr_callwatch *w);
/* Around each call; the clock starts at begin. `what` is a string literal. */
void gr_callwatch_begin(struct gr_callwatch *w, const struct gr_handler *h, const char *what,
                        int64_t id, int64_t item);
/* True if the call was reported late (gr_callwatch_late) while it ran. */
bool gr_callwatch_end(struct gr_callwatch *w);
/* True, once per call, when the call in progress has run past its handler's
 * timeout_s (0: never); *out then describes it. */
bool gr_callwatch_late(struct gr_callwatch *w, struct gr_late_call *out);

#endif
