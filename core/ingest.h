/*
 * Ingest: what the request path does with a notification POST's body.
 *
 * Parse the changeNotificationCollection; a body that is not a JSON object
 * with a "value" array is refused (400, one-line reason). Each item is then
 * judged on its own: its clientState must match its subscription's own
 * secret if the subscription is listed, else the top-level client_state (a
 * listed subscription never accepts the fallback). Items that pass become
 * ROUTE jobs holding the item exactly as received; the others are counted by
 * reason and logged (never a secret or the presented value). Nothing here
 * does I/O beyond logging. Thread-safe: reads only the immutable config.
 */
#ifndef GR_INGEST_H
#define GR_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "metrics.h"
#include "store.h"

struct gr_ingest {
    int status;   /* 202, or 400 with `reason` */
    char *reason; /* one line, for a 400 */
    struct gr_job **jobs;
    size_t njobs;
    size_t received;
    size_t dropped[GR_DROP_COUNT];
    size_t tokens_skipped; /* validationTokens entries that are not usable tokens */
};

void gr_ingest_parse(const struct gr_config *cfg, const char *body, size_t len,
                     int64_t received_ms, struct gr_ingest *out);
/* Frees the reason and any jobs still held (set njobs = 0 after handing the
 * jobs to the store). */
void gr_ingest_free(struct gr_ingest *in);

#endif
