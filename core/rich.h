/*
 * Rich notifications on the worker: an item with encryptedContent is routed
 * only if a valid validation token of its POST covers it (the token's tid is
 * the item's tenantId, its aud one of validation_tokens.app_ids) and its
 * content decrypts. Runs on workers, against the item's pinned generation;
 * never on the HTTP request path.
 */
#ifndef GR_RICH_H
#define GR_RICH_H

#include <jansson.h>
#include <stdint.h>

#include "generation.h"
#include "metrics.h"

enum gr_rich_outcome {
    GR_RICH_PLAIN, /* no encryptedContent: route as it is */
    GR_RICH_OK,    /* covered and decrypted: *content is set */
    GR_RICH_DROP,  /* not routed: *reason says why (logged here) */
    GR_RICH_WAIT   /* a token names a kid not yet known and keys are being
                      refreshed: try the item again a little later */
};

/* How long an item may wait for keys before it is dropped. */
#define GR_RICH_MAX_WAIT_MS (10 * 60 * 1000)

/* `tokens` is the POST's validationTokens as JSON text, or NULL. */
enum gr_rich_outcome gr_rich_open(struct gr_generation *g, const json_t *item, const char *tokens,
                                  int64_t received_ms, json_t **content,
                                  enum gr_drop_reason *reason);

#endif
