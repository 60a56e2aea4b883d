/*
 * The HTTP listener (libmicrohttpd, internal thread pool, epoll).
 *
 *   POST <notification or lifecycle path>?validationToken=...  handshake echo
 *   POST <notification or lifecycle path>                      ingest -> 202
 *   GET  /healthz, /metrics
 *
 * The request path parses and authenticates, appends accepted items to the
 * store and answers; it never calls plugins or the network. The listener is
 * started once and never restarted: a reload only changes the generation
 * each request pins.
 */
#ifndef GR_HTTP_H
#define GR_HTTP_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "store/store.h"

struct gr_http;

/* Bind and start serving. On failure returns NULL with *err (malloc'd). */
struct gr_http *gr_http_start(const struct gr_config *cfg, struct gr_store *store, char **err);
/* The bound port (useful with "port": 0). */
unsigned gr_http_port(const struct gr_http *h);
/* Stop accepting connections; requests that start from now on get 503. */
void gr_http_quiesce(struct gr_http *h);
/* Wait until no request is in progress, or the deadline (monotonic ms). */
bool gr_http_wait_idle(struct gr_http *h, int64_t deadline_ms);
/* Close every connection and free. */
void gr_http_stop(struct gr_http *h);

#endif
