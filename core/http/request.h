/*
 * What graphrouter reads from a request once libmicrohttpd has parsed its
 * head: the header fields that decide its framing and its client, the
 * endpoint its path names, a Content-Length over the body limit and the
 * validation handshake's token. Pure functions over the values
 * libmicrohttpd hands over (names as sent, values trimmed, the path and
 * query arguments %-decoded); http.c calls them on libmicrohttpd's threads,
 * and the fuzz_head harness with heads the gate accepted.
 */
#ifndef GR_REQUEST_H
#define GR_REQUEST_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "http/head.h"
#include "metrics.h"
#include "util.h"

/* The fields of a head that decide its framing and its client. */
struct gr_head_fields {
    size_t n_cl, n_te, n_host;
    const char *cl, *te; /* the first of each (borrowed) */
    size_t cl_len, te_len;
    struct gr_buf xff; /* every X-Forwarded-For, joined by commas */
};

/* Take one header field into account (value NULL: empty). */
void gr_head_fields_add(struct gr_head_fields *f, const char *key, size_t key_len,
                        const char *value, size_t value_len);
void gr_head_fields_free(struct gr_head_fields *f);
/* The gate's Host and framing rules (head.h) over these fields, checked in
 * the gate's order so a refusal is the one gr_head_check gives; false with
 * *v set when the request must be refused. */
bool gr_head_fields_check(const struct gr_head_fields *f, bool http10, struct gr_head_verdict *v);

/* GR_EP_NOTIFICATIONS or GR_EP_LIFECYCLE for one of the configured paths
 * (compared exactly), else GR_EP_OTHER. */
enum gr_endpoint gr_endpoint_of(const struct gr_config *cfg, const char *url);

/* True when a Content-Length value (as libmicrohttpd hands it) is a number
 * larger than max_body; *n is then that number. */
bool gr_content_length_exceeds(const char *cl, size_t max_body, unsigned long long *n);

#define GR_MAX_VALIDATION_TOKEN 1024
/* Why a validationToken (decoded, len bytes) is not echoed, or NULL when it
 * may be: it is not empty, at most GR_MAX_VALIDATION_TOKEN bytes, and has no
 * '<', '>' or NUL byte. */
const char *gr_handshake_refusal(const char *token, size_t len);

#endif
