/*
 * The log lines of a delivery's retry and of its dead letter, written where
 * the delivery's id is known: by the worker for a unit it ran, by the store
 * for a direct delivery (store.h: completed()), which gets its unit, and so
 * its id, only when the store writes the outcome.
 */
#ifndef GR_OUTCOME_LOG_H
#define GR_OUTCOME_LOG_H

#include <stdint.h>

/* `kind` says what was delivered ("message", "event" ...); `error` is the
 * handler's, and `attempt` this attempt's number of `max`. */
void gr_log_retry(const char *handler, int64_t delivery, const char *kind, unsigned attempt,
                  unsigned max, const char *error, int64_t delay_ms);
void gr_log_dead_letter(const char *handler, int64_t delivery, const char *kind,
                        const char *error);

#endif
