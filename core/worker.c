/* The worker pool (see worker.h). Workers share nothing but the store and
 * the generation pointer; all per-job state is on the stack. */
#define _GNU_SOURCE
#include "worker.h"

#include <errno.h>
#include <graphrouter/plugin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "generation.h"
#include "log.h"
#include "metrics.h"
#include "notification.h"
#include "rich.h"
#include "util.h"

#define GR_WORKER_NICE 10

struct gr_workers {
    struct gr_store *store;
    pthread_t *threads;
    unsigned n;
};

int64_t gr_backoff_ms(const struct gr_retry_policy *p, unsigned attempts)
{
    int64_t cap = p->initial_backoff_ms;
    for (unsigned i = 1; i < attempts && cap < p->max_backoff_ms; i++)
        cap *= 2;
    if (cap > p->max_backoff_ms)
        cap = p->max_backoff_ms;
    if (cap <= 0)
        return 0;
    return (int64_t)arc4random_uniform((uint32_t)cap + 1);
}

static void route(struct gr_store *store, struct gr_job *job)
{
    json_t *item = json_loadb(job->payload, job->len, 0, NULL);
    if (!item) { /* cannot happen for what ingest stored; never lose it silently */
        gr_error("stored item is not JSON; dropping it");
        gr_metrics_item_routed(false);
        gr_store_complete(store, job, NULL, 0);
        return;
    }
    struct gr_generation *g = gr_generation_pin();
    json_t *content = NULL;
    enum gr_drop_reason why;
    switch (gr_rich_open(g, item, job->tokens, job->received_ms, &content, &why)) {
    case GR_RICH_WAIT: {
        /* A kid not yet known while keys are refreshed: again in 1, 2, 4 ... 60 s. */
        int64_t delay = job->attempts < 6 ? INT64_C(1000) << job->attempts : 60000;
        job->attempts++;
        gr_debug("rich item waits %lld ms for validation-token keys", (long long)delay);
        json_decref(item);
        gr_generation_unpin(g);
        gr_store_retry(store, job, delay);
        return;
    }
    case GR_RICH_DROP:
        gr_metrics_item_dropped(why);
        json_decref(item);
        gr_generation_unpin(g);
        gr_store_complete(store, job, NULL, 0);
        return;
    default:
        break;
    }
    struct gr_classification cls;
    json_t *n = gr_notification_build(item, job->received_ms, content, &cls);
    json_decref(item);
    struct gr_route_input in;
    gr_notification_route_input(n, cls.type, &in);

    bool *targets = gr_xcalloc(g->nhandlers ? g->nhandlers : 1, sizeof *targets);
    bool *fired = gr_xcalloc(g->cfg->routes.n ? g->cfg->routes.n : 1, sizeof *fired);
    size_t nfired = gr_router_match(&g->cfg->routes, &in, targets, fired);
    for (size_t r = 0; r < g->cfg->routes.n; r++)
        if (fired[r])
            atomic_fetch_add_explicit(&g->route_stats[r]->fired, 1, memory_order_relaxed);
    gr_metrics_item_routed(nfired > 0);

    struct gr_job **out = gr_xcalloc(g->nhandlers ? g->nhandlers : 1, sizeof *out);
    size_t nout = 0;
    if (nfired) {
        char *text = json_dumps(n, JSON_COMPACT);
        size_t len = strlen(text);
        for (size_t i = 0; i < g->nhandlers; i++) {
            if (!targets[i])
                continue;
            struct gr_job *d = gr_job_new(GR_JOB_DELIVER, text, len, g->handlers[i].name);
            d->msg_kind = GR_MSG_NOTIFICATION;
            d->received_ms = job->received_ms;
            out[nout++] = d;
        }
        free(text);
    } else {
        gr_info("item not routed: no route matched; resource_type=%s subscription=%.80s",
                gr_rtype_name(cls.type), in.subscription_id ? in.subscription_id : "(none)");
    }
    gr_generation_unpin(g);
    gr_classification_free(&cls);
    json_decref(n);
    gr_store_complete(store, job, out, nout);
    free(out);
    free(fired);
    free(targets);
}

/* What a delivery was, for log lines (parses the message only when one is written). */
static const char *delivery_kind(struct gr_msg *msg)
{
    const char *type = json_string_value(json_object_get(gr_msg_root(msg), "resource_type"));
    return type ? type : msg->kind == GR_MSG_EVENT ? "event" : "message";
}

static void deliver(struct gr_store *store, struct gr_job *job)
{
    struct gr_generation *g = gr_generation_pin();
    struct gr_handler *h = gr_generation_handler(g, job->handler);
    if (!h) {
        gr_warn("delivery to handler \"%s\" dropped: the reloaded configuration has no such "
                "handler",
                job->handler);
        gr_metrics_delivery_abandoned(GR_ABANDON_HANDLER_REMOVED);
        gr_generation_unpin(g);
        gr_store_complete(store, job, NULL, 0);
        return;
    }
    struct gr_msg msg = {.kind = job->msg_kind, .json = job->payload, .len = job->len, .handler = h};
    job->attempts++;
    if (h->serial)
        pthread_mutex_lock(&h->serial_lock);
    int rc = h->lib->desc.handle(h->state, &msg);
    if (h->serial)
        pthread_mutex_unlock(&h->serial_lock);

    struct gr_job **out = NULL;
    size_t nout = 0;
    int64_t retry_in = -1;
    if (rc == GR_OK) {
        atomic_fetch_add_explicit(&h->stats->handled, 1, memory_order_relaxed);
        out = gr_xcalloc(msg.nemitted ? msg.nemitted : 1, sizeof *out);
        for (size_t i = 0; i < msg.nemitted; i++) {
            struct gr_job *e = gr_job_new(GR_JOB_DELIVER, msg.emitted[i].json, msg.emitted[i].len,
                                          g->handlers[msg.emitted[i].target].name);
            e->msg_kind = GR_MSG_EVENT;
            e->received_ms = job->received_ms;
            out[nout++] = e;
        }
    } else if (rc == GR_RETRY && job->attempts < h->conf->retry.max_attempts) {
        atomic_fetch_add_explicit(&h->stats->retried, 1, memory_order_relaxed);
        retry_in = gr_backoff_ms(&h->conf->retry, job->attempts);
        gr_info("handler \"%s\" asked to retry a %s (attempt %u of %u); next try in %lld ms",
                h->name, delivery_kind(&msg), job->attempts, h->conf->retry.max_attempts, (long long)retry_in);
    } else {
        atomic_fetch_add_explicit(&h->stats->failed, 1, memory_order_relaxed);
        if (rc == GR_RETRY)
            gr_warn("handler \"%s\" gave up on a %s after %u attempts", h->name, delivery_kind(&msg),
                    job->attempts);
        else if (rc == GR_FAIL)
            gr_warn("handler \"%s\" failed a %s (GR_FAIL)", h->name, delivery_kind(&msg));
        else
            gr_error("handler \"%s\" returned %d, which is not GR_OK, GR_RETRY or GR_FAIL; "
                     "treated as GR_FAIL",
                     h->name, rc);
    }
    for (size_t i = 0; i < msg.nemitted; i++)
        free(msg.emitted[i].json);
    free(msg.emitted);
    json_decref(msg.root);
    gr_generation_unpin(g);
    if (retry_in >= 0)
        gr_store_retry(store, job, retry_in);
    else
        gr_store_complete(store, job, out, nout);
    free(out);
}

static void *worker_main(void *arg)
{
    struct gr_workers *w = arg;
    /* Workers yield the CPU to the HTTP threads: Graph times the 202, while
     * queued work can wait (the queue bound turns lasting overload into 503s).
     * Measured with bench/ingest.sh on 2 cores at half load: ack p99 fell
     * from 5-11 ms to 1-3 ms. Raising one's nice value needs no privilege. */
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), GR_WORKER_NICE) != 0)
        gr_debug("worker priority unchanged: %s", strerror(errno));
    struct gr_job *job;
    while ((job = gr_store_take(w->store)) != NULL) {
        if (job->kind == GR_JOB_ROUTE)
            route(w->store, job);
        else
            deliver(w->store, job);
    }
    return NULL;
}

struct gr_workers *gr_workers_start(struct gr_store *store, unsigned n)
{
    struct gr_workers *w = gr_xcalloc(1, sizeof *w);
    w->store = store;
    w->threads = gr_xcalloc(n, sizeof *w->threads);
    for (unsigned i = 0; i < n; i++) {
        if (pthread_create(&w->threads[i], NULL, worker_main, w) != 0) {
            gr_error("cannot start worker thread %u", i);
            break;
        }
        w->n++;
    }
    return w;
}

bool gr_workers_join(struct gr_workers *w, int64_t deadline_wall_ms)
{
    struct timespec until = {.tv_sec = deadline_wall_ms / 1000,
                             .tv_nsec = (deadline_wall_ms % 1000) * 1000000};
    for (unsigned i = 0; i < w->n; i++) {
        if (pthread_timedjoin_np(w->threads[i], NULL, &until) != 0) {
            gr_error("worker %u did not finish by the shutdown deadline: a handler is stuck", i);
            return false;
        }
    }
    free(w->threads);
    free(w);
    return true;
}
