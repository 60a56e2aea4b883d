/*
 * Ingest: what the request path does with a notification POST's body.
 *
 * Check the changeNotificationCollection; a body that is not JSON, or not an
 * object with a "value" array, is refused (400, one-line reason). No tree is
 * built: the body is checked by a scanner that accepts exactly what jansson
 * accepts (jsonscan.h), and each item's members are read from its text as a
 * worker later reads them from jansson's tree. Each item is judged on its
 * own: its clientState must match its subscription's own secret if the
 * subscription is listed in the configuration or managed by graphrouter
 * (graph/managed.h), else the top-level client_state (those never accept
 * the fallback). Items that pass become store
 * items: the item's own text, without its clientState members (members are
 * joined by a comma; values are untouched, so encrypted content stays as
 * sent), with its duplicate key, for the HTTP layer to append; the others are
 * counted by reason and logged (never a secret or the presented value).
 * Nothing here does I/O beyond logging. Thread-safe: reads only the immutable
 * config.
 */
#ifndef GR_INGEST_H
#define GR_INGEST_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "graph/managed.h"
#include "metrics.h"
#include "store/store.h"

struct gr_ingest {
    int status;   /* 202, or 400 with `reason` */
    char *reason; /* one line, for a 400 */
    struct gr_store_item *items; /* accepted, to append */
    size_t nitems;
    struct gr_token_list *tokens; /* the POST's validationTokens, if a rich item needs them */
    size_t received;
    size_t dropped[GR_DROP_COUNT];
    size_t tokens_skipped; /* validationTokens entries that are not usable tokens */
};

/* `managed` may be NULL (no managed subscriptions). */
void gr_ingest_parse(const struct gr_config *cfg, const struct gr_managed *managed,
                     const char *body, size_t len, struct gr_ingest *out);
/* Frees the reason, the tokens and any items still held (set nitems = 0
 * and tokens = NULL after handing them to the store). */
void gr_ingest_free(struct gr_ingest *in);

/* The identity of a change, for dropping Graph's duplicate deliveries:
 * SHA-256 over subscriptionId, changeType, resource and the item's id,
 * resourceData's @odata.etag and sequenceNumber. Returns false (no identity:
 * never treated as a duplicate) when none of the last three is present. */
bool gr_ingest_dedupe_key(const json_t *item, unsigned char key[32]);

#endif
