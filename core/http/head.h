/*
 * Strict HTTP/1.1 request heads (RFC 9112), checked before libmicrohttpd
 * parses them, so that a request libmicrohttpd would read differently than
 * a proxy in front of it, or answer itself, is answered by graphrouter and
 * its connection closed:
 *
 *   - request line: METHOD SP origin-form SP HTTP/1.1 (or HTTP/1.0), single
 *     spaces, CRLF line ends only (a bare LF or CR is refused);
 *   - header lines: a token, ':' with no space before it, a value without
 *     control characters; obsolete line folding is refused; at most
 *     GR_HEAD_MAX_FIELDS lines and GR_HEAD_MAX_BYTES bytes in all, the
 *     empty line included (so the first GR_HEAD_MAX_BYTES bytes always
 *     decide: never "incomplete" after so many);
 *   - HTTP/1.1 needs exactly one Host;
 *   - message framing (gr_framing_check): one Content-Length of digits only,
 *     never together with Transfer-Encoding; a chunked body is refused with
 *     411 (graphrouter reads bodies by Content-Length only, which every Graph
 *     delivery and every buffering proxy sends), any other transfer coding
 *     with 501.
 */
#ifndef GR_HEAD_H
#define GR_HEAD_H

#include <stdbool.h>
#include <stddef.h>

#define GR_HEAD_MAX_BYTES 16384
#define GR_HEAD_MAX_FIELDS 100
#define GR_HEAD_MAX_TARGET 8192

/* Why a head was refused: the label of graphrouter_http_refused_total. */
enum gr_head_error {
    GR_HEAD_OK = 0,
    GR_HEAD_MALFORMED,      /* 400: request line or a header line */
    GR_HEAD_TOO_LARGE,      /* 431 */
    GR_HEAD_URI_TOO_LONG,   /* 414 */
    GR_HEAD_VERSION,        /* 505 */
    GR_HEAD_HOST,           /* 400: HTTP/1.1 without exactly one Host */
    GR_HEAD_LENGTH,         /* 400: malformed, repeated, or beside Transfer-Encoding */
    GR_HEAD_CHUNKED,        /* 411 */
    GR_HEAD_CODING,         /* 501: a transfer coding other than chunked, or stacked */
    GR_HEAD_ERROR_COUNT
};

struct gr_head_verdict {
    enum gr_head_error error;
    unsigned status;    /* HTTP status to answer with, when error */
    const char *reason; /* one line for the answer's body and the log; constant text */
};

const char *gr_head_error_name(enum gr_head_error e);

/*
 * Check the bytes received so far on a new connection. Returns 0 while the
 * head is incomplete and could still be valid, 1 when it is complete and
 * valid (*head_len is its length, the blank line included), -1 when it is
 * refused (*v says why). Leading empty lines are skipped, as RFC 9112 allows.
 */
int gr_head_check(const char *buf, size_t len, size_t *head_len, struct gr_head_verdict *v);

/*
 * The framing rules alone, over the Content-Length and Transfer-Encoding
 * fields of a head (n_cl/n_te: how many there are; cl: the first
 * Content-Length's value, trimmed; te_chunked: the first Transfer-Encoding is
 * exactly "chunked"). Used for every request on a kept-alive connection too,
 * whose heads libmicrohttpd parses. Returns true when acceptable.
 */
bool gr_framing_check(size_t n_cl, const char *cl, size_t cl_len, size_t n_te, bool te_chunked,
                      struct gr_head_verdict *v);
/* A Transfer-Encoding value that is one "chunked" and nothing else. */
bool gr_is_plain_chunked(const char *value, size_t len);

/* Text of a status line's reason phrase for the statuses answered here. */
const char *gr_status_phrase(unsigned status);

#endif
