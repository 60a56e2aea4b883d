/*
 * Workers: threads that take work from the store and do the slow part.
 *
 *   ROUTE    pin the current generation; for a rich item check its tokens and
 *            decrypt it (rich.c); classify; match the routes; record one
 *            delivery per target handler, or why the item was dropped.
 *   DELIVER  pin the current generation; rebuild the notification from the
 *            stored item (decrypting again: content never touches disk) or
 *            take the stored event; call the handler's handle():
 *            GR_OK    -> done; the events it emitted are stored with that
 *            GR_RETRY -> again after exponential backoff with full jitter,
 *                        until the handler's retry.max_attempts
 *            GR_FAIL  -> a dead letter, with the handler's error
 * Each piece of work runs entirely on the generation it pinned.
 */
#ifndef GR_WORKER_H
#define GR_WORKER_H

#include <stdbool.h>

#include "plugin/callwatch.h"
#include "config.h"
#include "store/store.h"

struct gr_workers;

struct gr_workers *gr_workers_start(struct gr_store *store, unsigned n);
/* Wait until wall-clock deadline_ms for every worker to exit (they do once
 * gr_store_stop_taking was called and their work is handed back). Returns
 * false if one is still running (stuck in a handler); then nothing is freed. */
bool gr_workers_join(struct gr_workers *w, int64_t deadline_wall_ms);

/* A handle() call past its handler's timeout_s, not reported yet: fills
 * *out and returns true (once per call). In-process code cannot be stopped,
 * so the caller restarts graphrouter: the delivery, recorded as running,
 * then counts a failed attempt, and one that hangs every time ends as a
 * dead letter. */
bool gr_workers_overdue(struct gr_workers *w, struct gr_late_call *out);

/* Delay before attempt number `attempts + 1`, full jitter: uniform in
 * [0, min(max, initial * 2^(attempts - 1))]. */
int64_t gr_backoff_ms(const struct gr_retry_policy *p, unsigned attempts);

#endif
