/*
 * The routed notification: what handlers receive for a change notification
 * (README "The routed notification"). Built by a worker from the item as it
 * was received. Pure functions; thread-safe.
 */
#ifndef GR_NOTIFICATION_H
#define GR_NOTIFICATION_H

#include <jansson.h>
#include <stdint.h>

#include "route/classify.h"
#include "route/router.h"

/* Member `key` of `obj`, exact match first, then ignoring ASCII case
 * (historic payloads carry "Id" and "ChangeType"). */
json_t *gr_json_get_ci(const json_t *obj, const char *key);
/* Same, as a string (NULL when absent or not a string). */
const char *gr_json_string_ci(const json_t *obj, const char *key);

/* Build the routed notification for `item`, received at `received_ms` (wall
 * clock), with `content` (its decrypted resource, or NULL; the reference is
 * taken). Returns a new object; `cls` receives the classification (free it
 * with gr_classification_free). */
json_t *gr_notification_build(const json_t *item, int64_t received_ms, json_t *content,
                              struct gr_classification *cls);

/* The fields routes match on, borrowed from a built notification. */
void gr_notification_route_input(const json_t *notification, enum gr_rtype type,
                                 struct gr_route_input *in);

#endif
