/* Strict HTTP/1.1 request heads (see head.h). */
#include "http/head.h"

#include <string.h>
#include <strings.h>

static const char *const error_names[GR_HEAD_ERROR_COUNT] = {
    "ok", "malformed", "head_too_large", "uri_too_long", "version",
    "host", "content_length", "chunked", "transfer_coding"};

const char *gr_head_error_name(enum gr_head_error e)
{
    return e < GR_HEAD_ERROR_COUNT ? error_names[e] : "?";
}

const char *gr_status_phrase(unsigned status)
{
    switch (status) {
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

static int refuse(struct gr_head_verdict *v, enum gr_head_error e, unsigned status,
                  const char *reason)
{
    v->error = e;
    v->status = status;
    v->reason = reason;
    return -1;
}

/* RFC 9110 tchar. */
static bool is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A field value byte: VCHAR, SP, HTAB or obs-text. */
static bool is_value_char(unsigned char c)
{
    return c == ' ' || c == '\t' || (c >= 0x21 && c != 0x7f);
}

static bool name_is(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && strncasecmp(name, want, len) == 0;
}

bool gr_is_plain_chunked(const char *value, size_t len)
{
    return len == 7 && strncasecmp(value, "chunked", 7) == 0;
}

bool gr_framing_check(size_t n_cl, const char *cl, size_t cl_len, size_t n_te, bool te_chunked,
                      struct gr_head_verdict *v)
{
    if (n_te && n_cl) {
        refuse(v, GR_HEAD_LENGTH, 400, "request has both Content-Length and Transfer-Encoding");
        return false;
    }
    if (n_te > 1 || (n_te && !te_chunked)) {
        refuse(v, GR_HEAD_CODING, 501,
               "unsupported Transfer-Encoding; send the body with a Content-Length");
        return false;
    }
    if (n_te) {
        refuse(v, GR_HEAD_CHUNKED, 411,
               "Transfer-Encoding is not accepted; send the body with a Content-Length");
        return false;
    }
    if (n_cl > 1) {
        refuse(v, GR_HEAD_LENGTH, 400, "request has more than one Content-Length");
        return false;
    }
    if (n_cl) {
        if (cl_len == 0 || cl_len > 18) {
            refuse(v, GR_HEAD_LENGTH, 400, "Content-Length is not a number of up to 18 digits");
            return false;
        }
        for (size_t i = 0; i < cl_len; i++)
            if (cl[i] < '0' || cl[i] > '9') {
                refuse(v, GR_HEAD_LENGTH, 400, "Content-Length is not a decimal number");
                return false;
            }
    }
    return true;
}

/* The request line, up to (not including) its CRLF. */
static int check_request_line(const char *p, size_t len, bool *http10, struct gr_head_verdict *v)
{
    size_t i = 0;
    while (i < len && is_tchar((unsigned char)p[i]))
        i++;
    if (i == 0 || i >= len || p[i] != ' ')
        return refuse(v, GR_HEAD_MALFORMED, 400, "malformed request line");
    size_t t = ++i;
    while (i < len && (unsigned char)p[i] > 0x20 && (unsigned char)p[i] != 0x7f)
        i++;
    if (i == t || i >= len || p[i] != ' ')
        return refuse(v, GR_HEAD_MALFORMED, 400, "malformed request line");
    if (p[t] != '/')
        return refuse(v, GR_HEAD_MALFORMED, 400, "request target must be a path (origin-form)");
    const char *ver = p + i + 1;
    size_t vlen = len - i - 1;
    if (vlen == 8 && memcmp(ver, "HTTP/1.1", 8) == 0)
        *http10 = false;
    else if (vlen == 8 && memcmp(ver, "HTTP/1.0", 8) == 0)
        *http10 = true;
    else if (vlen == 8 && memcmp(ver, "HTTP/", 5) == 0 && ver[5] >= '0' && ver[5] <= '9' &&
             ver[6] == '.' && ver[7] >= '0' && ver[7] <= '9')
        return refuse(v, GR_HEAD_VERSION, 505, "only HTTP/1.1 and HTTP/1.0 are supported");
    else
        return refuse(v, GR_HEAD_MALFORMED, 400, "malformed request line");
    return 0;
}

int gr_head_check(const char *buf, size_t len, size_t *head_len, struct gr_head_verdict *v)
{
    v->error = GR_HEAD_OK;
    v->status = 0;
    v->reason = NULL;
    size_t pos = 0;
    while (pos + 1 < len && buf[pos] == '\r' && buf[pos + 1] == '\n')
        pos += 2;
    if (pos < len && buf[pos] == '\n')
        return refuse(v, GR_HEAD_MALFORMED, 400, "bare LF in the request head");

    bool http10 = false, line1 = true;
    size_t fields = 0, n_host = 0, n_cl = 0, n_te = 0, cl_len = 0;
    bool te_chunked = false;
    const char *cl = NULL;
    for (;;) {
        if (pos >= GR_HEAD_MAX_BYTES)
            return line1 ? refuse(v, GR_HEAD_URI_TOO_LONG, 414, "request line is too long")
                         : refuse(v, GR_HEAD_TOO_LARGE, 431, "request head is too large");
        /* Find this line's end; every byte is checked, so a NUL or a bare
         * CR/LF cannot hide a second line from a proxy. */
        size_t e = pos;
        while (e < len && buf[e] != '\r' && buf[e] != '\n')
            e++;
        /* The line and its CRLF must fit, so a head is at most
         * GR_HEAD_MAX_BYTES, the empty line included, and so many bytes
         * always decide: the gate reads no more before it answers. */
        if (e + 2 > GR_HEAD_MAX_BYTES || (line1 && e - pos > GR_HEAD_MAX_TARGET))
            return line1 ? refuse(v, GR_HEAD_URI_TOO_LONG, 414, "request line is too long")
                         : refuse(v, GR_HEAD_TOO_LARGE, 431, "request head is too large");
        if (e >= len)
            return 0; /* incomplete */
        if (buf[e] == '\n')
            return refuse(v, GR_HEAD_MALFORMED, 400, "bare LF in the request head");
        if (e + 1 >= len)
            return 0;
        if (buf[e + 1] != '\n')
            return refuse(v, GR_HEAD_MALFORMED, 400, "bare CR in the request head");
        const char *line = buf + pos;
        size_t llen = e - pos;
        pos = e + 2;

        if (line1) {
            if (check_request_line(line, llen, &http10, v) < 0)
                return -1;
            line1 = false;
            continue;
        }
        if (llen == 0)
            break; /* the blank line: the head is complete */
        if (++fields > GR_HEAD_MAX_FIELDS)
            return refuse(v, GR_HEAD_TOO_LARGE, 431, "request has too many header fields");
        if (line[0] == ' ' || line[0] == '\t')
            return refuse(v, GR_HEAD_MALFORMED, 400, "obsolete header line folding");
        size_t n = 0;
        while (n < llen && is_tchar((unsigned char)line[n]))
            n++;
        if (n == 0 || n >= llen || line[n] != ':')
            return refuse(v, GR_HEAD_MALFORMED, 400, "malformed header field name");
        size_t a = n + 1, b = llen;
        for (size_t k = a; k < b; k++)
            if (!is_value_char((unsigned char)line[k]))
                return refuse(v, GR_HEAD_MALFORMED, 400, "control character in a header value");
        while (a < b && (line[a] == ' ' || line[a] == '\t'))
            a++;
        while (b > a && (line[b - 1] == ' ' || line[b - 1] == '\t'))
            b--;
        if (name_is(line, n, "host"))
            n_host++;
        else if (name_is(line, n, "content-length")) {
            if (!n_cl++) {
                cl = line + a;
                cl_len = b - a;
            }
        } else if (name_is(line, n, "transfer-encoding")) {
            if (!n_te++)
                te_chunked = gr_is_plain_chunked(line + a, b - a);
        }
    }
    if (!http10 && n_host != 1)
        return refuse(v, GR_HEAD_HOST, 400, "HTTP/1.1 request needs exactly one Host header");
    if (!gr_framing_check(n_cl, cl, cl_len, n_te, te_chunked, v))
        return -1;
    *head_len = pos;
    return 1;
}
