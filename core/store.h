/*
 * The store: where accepted items and pending deliveries wait for a worker.
 *
 * Units of work are jobs. A ROUTE job is one accepted item, exactly as it
 * arrived; a worker classifies and routes it against the configuration
 * generation current at that moment and completes it with one DELIVER job per
 * target handler. A DELIVER job is one (message, handler) pair; completing it
 * adds the events the handler emitted as new DELIVER jobs, in the same step.
 *
 * This implementation keeps jobs in memory: bounded by max_pending, so a POST
 * that would exceed it is refused (503) instead of accepted and lost, but not
 * durable across a crash. The interface is what a durable backend needs:
 * append is all-or-nothing and happens before the HTTP answer, and
 * completing a job and adding its follow-up jobs is one step.
 *
 * Thread-safety: every function may be called from any thread; one mutex
 * guards the queues, held only for list and heap operations.
 */
#ifndef GR_STORE_H
#define GR_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jwt.h"

enum gr_job_kind { GR_JOB_ROUTE = 1, GR_JOB_DELIVER = 2 };

struct gr_job {
    enum gr_job_kind kind;
    int msg_kind;        /* DELIVER: GR_MSG_NOTIFICATION or GR_MSG_EVENT */
    char *payload;       /* ROUTE: the item's JSON; DELIVER: the message's JSON */
    size_t len;
    char *handler;       /* DELIVER: the handler's name */
    struct gr_token_list *tokens; /* ROUTE, rich items: their POST's validationTokens (shared) */
    unsigned attempts;   /* DELIVER: handle() calls made so far; ROUTE: waits for keys */
    int64_t received_ms; /* wall clock when the item was accepted */
    int64_t due_ms;      /* monotonic; when a delayed job becomes ready */
    struct gr_job *next; /* store-private */
};

/* Allocate a job; the payload (and handler, if any) are copied. */
struct gr_job *gr_job_new(enum gr_job_kind kind, const char *payload, size_t len,
                          const char *handler);
void gr_job_free(struct gr_job *job);

struct gr_store;

struct gr_store *gr_store_new(size_t max_pending);
/* Frees whatever is left; returns how many jobs that was. */
size_t gr_store_free(struct gr_store *s);

/* Accept all `n` jobs or none: -1 (and nothing taken) when they would push
 * the store past max_pending or it is closed. On success the store owns them. */
int gr_store_append(struct gr_store *s, struct gr_job **jobs, size_t n);

/* Wait for the next ready job. NULL once the store is closed and either
 * empty with nothing running, or past its close deadline. */
struct gr_job *gr_store_take(struct gr_store *s);

/* Finish a taken job, adding its follow-up jobs (owned by the store now;
 * never refused, since they belong to work already accepted). Frees `job`. */
void gr_store_complete(struct gr_store *s, struct gr_job *job, struct gr_job **follow_up,
                       size_t n);
/* Put a taken job back, ready again after delay_ms. */
void gr_store_retry(struct gr_store *s, struct gr_job *job, int64_t delay_ms);

/* Stop accepting appends; take() drains what is left until deadline_ms
 * (monotonic), then returns NULL. */
void gr_store_close(struct gr_store *s, int64_t deadline_ms);

struct gr_store_stats {
    size_t ready, delayed, running;
};
void gr_store_stats(struct gr_store *s, struct gr_store_stats *out);

#endif
