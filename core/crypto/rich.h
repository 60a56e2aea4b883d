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

struct gr_keycache;

/* `tokens` is the item's POST's validationTokens (NULL: none usable).
 * Tokens are judged as of `received_ms`, when Graph delivered them. The
 * content key unwrapped is kept in `keys` (crypto/keycache.h; NULL: not
 * kept) for the deliveries; *key names its entry (set once the MAC
 * verified), to forget once the item needs it no more. */
struct gr_keycache_ref;
enum gr_rich_outcome gr_rich_open(struct gr_generation *g, struct gr_keycache *keys,
                                  const json_t *item, const struct gr_token_list *tokens,
                                  int64_t received_ms, json_t **content,
                                  enum gr_drop_reason *reason, struct gr_keycache_ref *key);

/* At delivery: the content of an item routed earlier (its tokens were checked
 * then), decrypted again with the keys of g, its content key taken from
 * `keys` when kept there. GR_DECRYPT_OK with *content NULL for a basic item. */
enum gr_decrypt_result gr_rich_content(struct gr_generation *g, struct gr_keycache *keys,
                                       const json_t *item, json_t **content);

/* An item is checked against at most this many tokens claiming its tenant
 * (Graph sends one per tenant and app). */
#define GR_RICH_MAX_CANDIDATES 16

#endif
