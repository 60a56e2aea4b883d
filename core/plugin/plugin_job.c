/* Supervised jobs for plugin code off the control thread (see plugin_job.h). */
#define _GNU_SOURCE
#include "plugin/plugin_job.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

struct job {
    pthread_mutex_t lock;
    pthread_cond_t finished;
    void (*fn)(void *);
    void (*abandoned_fn)(void *);
    void *arg;
    bool done, abandoned;
    struct gr_callwatch call; /* the plugin call in progress */
};

static _Thread_local struct job *current_job;
static atomic_int abandoned_running;

void gr_job_call_begin(const struct gr_handler *h, const char *what)
{
    if (current_job)
        gr_callwatch_begin(&current_job->call, h, what, 0, 0);
}

void gr_job_call_end(void)
{
    if (current_job)
        gr_callwatch_end(&current_job->call);
}

static void job_free(struct job *j)
{
    gr_callwatch_destroy(&j->call);
    pthread_cond_destroy(&j->finished);
    pthread_mutex_destroy(&j->lock);
    free(j);
}

static void *job_main(void *arg)
{
    struct job *j = arg;
    current_job = j;
    j->fn(j->arg);
    current_job = NULL;
    pthread_mutex_lock(&j->lock);
    j->done = true;
    bool abandoned = j->abandoned;
    pthread_cond_signal(&j->finished);
    pthread_mutex_unlock(&j->lock);
    if (abandoned) { /* nobody waits: this thread cleans up */
        gr_info("a plugin job given up on has finished (last call: %s of handler \"%s\"); "
                "what it held is released",
                j->call.call.what ? j->call.call.what : "none", j->call.call.handler);
        if (j->abandoned_fn)
            j->abandoned_fn(j->arg);
        job_free(j);
        atomic_fetch_sub(&abandoned_running, 1);
    }
    return NULL;
}

bool gr_job_run(void (*fn)(void *arg), void *arg, void (*abandoned)(void *arg),
                bool (*give_up)(void *ctx), void *ctx, struct gr_job_stuck *stuck)
{
    struct job *j = gr_xcalloc(1, sizeof *j);
    j->fn = fn;
    j->arg = arg;
    j->abandoned_fn = abandoned;
    pthread_mutex_init(&j->lock, NULL);
    gr_cond_init_mono(&j->finished);
    gr_callwatch_init(&j->call);
    pthread_t t;
    pthread_attr_t ta;
    pthread_attr_init(&ta);
    pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &ta, job_main, j);
    pthread_attr_destroy(&ta);
    if (rc != 0) { /* no thread: run it here, unsupervised */
        gr_warn("cannot start a thread for plugin calls (%s); running them unsupervised",
                strerror(rc));
        current_job = NULL;
        fn(arg);
        job_free(j);
        return true;
    }
    pthread_mutex_lock(&j->lock);
    while (!j->done) {
        int64_t until = gr_mono_ms() + 250;
        struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (until % 1000) * 1000000};
        pthread_cond_timedwait(&j->finished, &j->lock, &ts);
        if (j->done)
            break;
        bool late = gr_callwatch_late(&j->call, &stuck->call);
        if (!late && give_up) {
            pthread_mutex_unlock(&j->lock); /* give_up may take its time */
            bool quit = give_up(ctx);
            pthread_mutex_lock(&j->lock);
            if (!quit || j->done)
                continue;
        } else if (!late) {
            continue;
        }
        j->abandoned = true;
        stuck->given_up = !late;
        atomic_fetch_add(&abandoned_running, 1);
        pthread_mutex_unlock(&j->lock);
        if (late)
            gr_metrics_plugin_call_stuck(stuck->call.what);
        return false;
    }
    pthread_mutex_unlock(&j->lock);
    job_free(j);
    return true;
}

bool gr_job_abandoned_running(void)
{
    return atomic_load(&abandoned_running) > 0;
}
