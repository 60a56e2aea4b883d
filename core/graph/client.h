/*
 * The Graph client: app-only calls to Microsoft Graph, per tenant, through
 * libcurl (TLS verification always on; graph.ca_file adds trust anchors).
 *
 * Tokens come from the identity platform's client-credentials grant at
 * {login_url}/{tenant}/oauth2/v2.0/token, with a client secret or with a
 * certificate (a client-assertion JWT, RS256, signed here). A token is
 * cached until shortly before it expires; a 401 fetches a new one once and
 * tries again. graph.ca_file, when given, replaces the system's CAs. A 429 or 503 with Retry-After keeps every call to that tenant
 * back until it passes (the call is not made: GR_GRAPH_THROTTLED says how
 * long to wait), and subscription writes stay under graph.write_budget per
 * graph.write_budget_window_s. Retrying anything else, with backoff, is the
 * caller's choice.
 *
 * A client belongs to a configuration generation (built with it, so
 * --check reads every credential); what Graph said of a tenant (its token,
 * a Retry-After, its recent writes, that it cannot be reached) is shared by
 * every generation's client, so a reload forgets none of it. A tenant that
 * gives no answer (or no token) is held back, 1 s doubling to a minute, so
 * that it does not hold up the other tenants' calls. Thread-safe; no lock is
 * held during I/O but a tenant's token fetch, which only callers needing
 * that token wait for. Never logs or returns a secret or a token.
 */
#ifndef GR_GRAPH_CLIENT_H
#define GR_GRAPH_CLIENT_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "check.h"
#include "graph/graph_conf.h"

struct gr_graph_client;

enum gr_graph_outcome {
    GR_GRAPH_ANSWERED,  /* Graph answered: see status */
    GR_GRAPH_THROTTLED, /* not sent: the tenant waits (Retry-After, or the write budget) */
    GR_GRAPH_FAILED,    /* no answer (network, TLS, timeout), or no token could be had */
};

struct gr_graph_response {
    long status;            /* the HTTP status; 0: none */
    json_t *body;           /* the answer's JSON, or NULL */
    char *text;             /* the answer's body as sent (NUL-terminated), or NULL */
    size_t len;
    char *location;         /* the Location header, or NULL */
    int64_t retry_after_ms; /* 429/503: its Retry-After; THROTTLED: how long to wait */
    char *error;            /* why it failed, for logs: Graph's error code and message,
                             * the network error, or the token endpoint's answer */
};
void gr_graph_response_free(struct gr_graph_response *r);

/* Read every tenant's credential (secret files must not be readable by
 * group or others; a certificate must match its key). Errors go to `c`. */
int gr_graph_client_build(struct gr_check *c, const struct gr_graph_conf *conf,
                          struct gr_graph_client **out);
void gr_graph_client_free(struct gr_graph_client *c);

/* One call for `tenant`: `target` is a path under base_url ("/subscriptions")
 * or an absolute URL that starts with base_url + "/" (an @odata.nextLink);
 * `body` (JSON text, may be NULL) is sent as application/json. `write`
 * counts it against the write budget. A transfer in progress is aborted
 * once *cancel (may be NULL) is set; with `deadline_mono` (gr_mono_ms; 0:
 * none) the call, token included, ends by then. Fills *out (free it) and
 * returns what happened. */
enum gr_graph_outcome gr_graph_call(struct gr_graph_client *c, const char *tenant,
                                    const char *method, const char *target, const char *body,
                                    bool write, const atomic_bool *cancel, int64_t deadline_mono,
                                    struct gr_graph_response *out);

/* Is `tenant` one of graph.tenants (ignoring case)? */
bool gr_graph_has_tenant(struct gr_graph_client *c, const char *tenant);

/* A new clientState: 43 characters of base64url from 32 bytes of OpenSSL's
 * CSPRNG (Graph allows 128). Wipe it (OPENSSL_cleanse) before freeing. */
char *gr_graph_new_client_state(void);

/* Graph's time stamps ("2026-12-03T14:05:09.1234567Z", 0-7 fractional
 * digits, Z or an offset) as wall-clock ms; false if it is not one. */
bool gr_graph_parse_time(const char *s, int64_t *ms);
/* (The other way, as Graph takes them, is gr_rfc3339 in util.h.) */
/* A Retry-After value (seconds or an HTTP date) as ms from now, at most a
 * day; -1 if it is neither. */
int64_t gr_graph_retry_after_ms(const char *value, int64_t now_wall_ms);

#endif
