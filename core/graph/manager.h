/*
 * The subscription manager: the control plane's one owner. It makes Graph
 * match the subscriptions the configuration declares, and keeps them alive:
 *
 *   - reconcile (at start, after every reload, after a 409): list each
 *     tenant's subscriptions and compare them with the declarations and the
 *     store: adopt what exists, create what is missing, delete what is no
 *     longer declared and what carries this router's notification URL
 *     without being known (its clientState cannot be known); anything at
 *     another URL is never touched;
 *   - renew each subscription once two thirds of the lifetime Graph granted
 *     have passed (up to 5 % earlier, at random), rotating its encryption
 *     certificate in the same PATCH when the configuration changed it;
 *   - act on lifecycle events routed by the workers (from the store, so a
 *     202 is acted on even after a crash): reauthorizationRequired renews,
 *     subscriptionRemoved creates it again, missed resyncs;
 *   - recreate after a renewal answered 404 or an expiry, and route a
 *     resync notification (change_type "resync") for every case in which
 *     changes may have been missed.
 *
 * Every action is recorded in the store before and after it, and failures
 * are retried with exponential backoff (about 1 s, doubling to 5 minutes),
 * so a crash anywhere is repaired by the next start. One thread runs it all;
 * other threads only wake it. The secrets it makes are published for ingest
 * through graph/managed.h.
 */
#ifndef GR_MANAGER_H
#define GR_MANAGER_H

#include "store/store.h"

struct gr_manager;

/* Load the records from the store and publish their secrets, so that ingest
 * knows them before the listener starts. Returns NULL with *err if the
 * store cannot be read. */
struct gr_manager *gr_manager_new(struct gr_store *store, char **err);
/* Start working (once the listener serves: Graph validates the URLs during
 * a create) on the current generation. */
void gr_manager_start(struct gr_manager *m);
/* The configuration changed: reconcile at once. */
void gr_manager_reconcile(struct gr_manager *m);
/* A lifecycle event of a managed subscription was just routed (any thread):
 * look at the store's events at once (the manager's thread, or its start, will).
 * No-op without a manager. */
void gr_manager_poke(void);
/* Stop (a Graph call in progress is aborted) and free. NULL is fine. */
void gr_manager_stop(struct gr_manager *m);

/* The next renewal of a subscription Graph granted at renewed_ms until
 * expires_ms: two thirds of the way, minus `jitter` (0..1) of 5 % of it;
 * never before now + 1 s. */
int64_t gr_manager_renewal_due(int64_t renewed_ms, int64_t expires_ms, double jitter,
                               int64_t now_ms);
/* The wait before retry n (1, 2, ...): 1 s doubling to a 5-minute cap,
 * between half of that and all of it (`jitter` 0..1). */
int64_t gr_manager_backoff_ms(unsigned failures, double jitter);

#endif
