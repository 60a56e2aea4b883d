/*
 * In-memory store (see store.h): a FIFO of ready jobs and a min-heap of
 * delayed ones ordered by due time, under one mutex with one condition
 * variable on the monotonic clock.
 */
#define _GNU_SOURCE
#include "store.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

struct gr_store {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    size_t max_pending;
    struct gr_job *head, *tail; /* ready, FIFO */
    size_t nready;
    struct gr_job **heap; /* delayed, by due_ms */
    size_t ndelayed, heap_cap;
    size_t running;
    bool closed;
    int64_t deadline_ms;
};

struct gr_job *gr_job_new(enum gr_job_kind kind, const char *payload, size_t len,
                          const char *handler)
{
    struct gr_job *job = gr_xcalloc(1, sizeof *job);
    job->kind = kind;
    job->payload = gr_xstrndup(payload, len);
    job->len = len;
    job->handler = handler ? gr_xstrdup(handler) : NULL;
    return job;
}

void gr_job_free(struct gr_job *job)
{
    if (!job)
        return;
    free(job->payload);
    free(job->handler);
    gr_token_list_unref(job->tokens);
    free(job);
}

struct gr_store *gr_store_new(size_t max_pending)
{
    struct gr_store *s = gr_xcalloc(1, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &attr);
    pthread_condattr_destroy(&attr);
    s->max_pending = max_pending;
    return s;
}

size_t gr_store_free(struct gr_store *s)
{
    size_t left = 0;
    for (struct gr_job *j = s->head, *next; j; j = next) {
        next = j->next;
        gr_job_free(j);
        left++;
    }
    for (size_t i = 0; i < s->ndelayed; i++, left++)
        gr_job_free(s->heap[i]);
    free(s->heap);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
    return left;
}

static void push_ready(struct gr_store *s, struct gr_job *job)
{
    job->next = NULL;
    if (s->tail)
        s->tail->next = job;
    else
        s->head = job;
    s->tail = job;
    s->nready++;
}

static void heap_push(struct gr_store *s, struct gr_job *job)
{
    if (s->ndelayed == s->heap_cap) {
        s->heap_cap = s->heap_cap ? s->heap_cap * 2 : 64;
        s->heap = gr_xrealloc(s->heap, s->heap_cap * sizeof *s->heap);
    }
    size_t i = s->ndelayed++;
    while (i > 0 && s->heap[(i - 1) / 2]->due_ms > job->due_ms) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i] = job;
}

static struct gr_job *heap_pop(struct gr_store *s)
{
    struct gr_job *top = s->heap[0], *last = s->heap[--s->ndelayed];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->ndelayed)
            break;
        if (c + 1 < s->ndelayed && s->heap[c + 1]->due_ms < s->heap[c]->due_ms)
            c++;
        if (last->due_ms <= s->heap[c]->due_ms)
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (s->ndelayed)
        s->heap[i] = last;
    return top;
}

int gr_store_append(struct gr_store *s, struct gr_job **jobs, size_t n)
{
    pthread_mutex_lock(&s->lock);
    size_t pending = s->nready + s->ndelayed + s->running;
    if (s->closed || pending + n > s->max_pending) {
        pthread_mutex_unlock(&s->lock);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        push_ready(s, jobs[i]);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static void wait_until(struct gr_store *s, int64_t until_ms)
{
    if (until_ms == INT64_MAX) {
        pthread_cond_wait(&s->cond, &s->lock);
        return;
    }
    struct timespec ts = {.tv_sec = until_ms / 1000, .tv_nsec = (until_ms % 1000) * 1000000};
    pthread_cond_timedwait(&s->cond, &s->lock, &ts);
}

struct gr_job *gr_store_take(struct gr_store *s)
{
    pthread_mutex_lock(&s->lock);
    struct gr_job *job = NULL;
    for (;;) {
        int64_t now = gr_mono_ms();
        while (s->ndelayed && s->heap[0]->due_ms <= now)
            push_ready(s, heap_pop(s));
        if (s->closed && now >= s->deadline_ms)
            break;
        if (s->head) {
            job = s->head;
            s->head = job->next;
            if (!s->head)
                s->tail = NULL;
            s->nready--;
            s->running++;
            break;
        }
        if (s->closed && !s->ndelayed && !s->running)
            break;
        int64_t until = s->ndelayed ? s->heap[0]->due_ms : INT64_MAX;
        if (s->closed && s->deadline_ms < until)
            until = s->deadline_ms;
        wait_until(s, until);
    }
    if (!job)
        pthread_cond_broadcast(&s->cond); /* let the other workers see the end too */
    pthread_mutex_unlock(&s->lock);
    return job;
}

void gr_store_complete(struct gr_store *s, struct gr_job *job, struct gr_job **follow_up,
                       size_t n)
{
    pthread_mutex_lock(&s->lock);
    s->running--;
    for (size_t i = 0; i < n; i++)
        push_ready(s, follow_up[i]);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    gr_job_free(job);
}

void gr_store_retry(struct gr_store *s, struct gr_job *job, int64_t delay_ms)
{
    job->due_ms = gr_mono_ms() + delay_ms;
    pthread_mutex_lock(&s->lock);
    s->running--;
    heap_push(s, job);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

void gr_store_close(struct gr_store *s, int64_t deadline_ms)
{
    pthread_mutex_lock(&s->lock);
    s->closed = true;
    s->deadline_ms = deadline_ms;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

void gr_store_stats(struct gr_store *s, struct gr_store_stats *out)
{
    pthread_mutex_lock(&s->lock);
    *out = (struct gr_store_stats){s->nready, s->ndelayed, s->running};
    pthread_mutex_unlock(&s->lock);
}
