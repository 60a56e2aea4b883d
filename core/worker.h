/*
 * Workers: threads that take jobs from the store and do the slow part.
 *
 *   ROUTE   pin the current generation, classify the item, match the routes,
 *           complete the job with one DELIVER job per target handler.
 *   DELIVER pin the current generation, call the handler's handle():
 *           GR_OK    -> done; the events it emitted become DELIVER jobs
 *           GR_RETRY -> again after exponential backoff with full jitter,
 *                       until the handler's retry.max_attempts
 *           GR_FAIL  -> given up, counted and logged
 * Each job runs entirely on the generation it pinned.
 */
#ifndef GR_WORKER_H
#define GR_WORKER_H

#include <stdbool.h>

#include "config.h"
#include "store.h"

struct gr_workers;

struct gr_workers *gr_workers_start(struct gr_store *store, unsigned n);
/* Wait until wall-clock deadline_ms for every worker to exit (they do once
 * the store is closed and drained, see gr_store_close). Returns false if one
 * is still running (stuck in a handler); then nothing is freed. */
bool gr_workers_join(struct gr_workers *w, int64_t deadline_wall_ms);

/* Delay before attempt number `attempts + 1`, full jitter: uniform in
 * [0, min(max, initial * 2^(attempts - 1))]. */
int64_t gr_backoff_ms(const struct gr_retry_policy *p, unsigned attempts);

#endif
