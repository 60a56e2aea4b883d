/* What graphrouter reads from a parsed request head (see request.h). */
#define _GNU_SOURCE
#include "http/request.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void gr_head_fields_add(struct gr_head_fields *f, const char *key, size_t key_len,
                        const char *value, size_t value_len)
{
    if (!value)
        value = "", value_len = 0;
    if (key_len == 14 && strncasecmp(key, "content-length", 14) == 0) {
        if (!f->n_cl++)
            f->cl = value, f->cl_len = value_len;
    } else if (key_len == 17 && strncasecmp(key, "transfer-encoding", 17) == 0) {
        if (!f->n_te++)
            f->te = value, f->te_len = value_len;
    } else if (key_len == 4 && strncasecmp(key, "host", 4) == 0) {
        f->n_host++;
    } else if (key_len == 15 && strncasecmp(key, "x-forwarded-for", 15) == 0) {
        if (f->xff.len)
            gr_buf_append(&f->xff, ",", 1);
        gr_buf_append(&f->xff, value, value_len);
    }
}

void gr_head_fields_free(struct gr_head_fields *f)
{
    gr_buf_free(&f->xff);
}

bool gr_head_fields_check(const struct gr_head_fields *f, bool http10, struct gr_head_verdict *v)
{
    /* In gr_head_check's order (Host, then framing), so that a head gets the
     * same answer whether it opens its connection or follows on it. */
    if (!http10 && f->n_host != 1) {
        *v = (struct gr_head_verdict){GR_HEAD_HOST, 400,
                                      "HTTP/1.1 request needs exactly one Host header"};
        return false;
    }
    return gr_framing_check(f->n_cl, f->cl, f->cl_len, f->n_te,
                            f->n_te && gr_is_plain_chunked(f->te, f->te_len), v);
}

enum gr_endpoint gr_endpoint_of(const struct gr_config *cfg, const char *url)
{
    for (size_t i = 0; i < cfg->n_notification_paths; i++)
        if (strcmp(url, cfg->notification_paths[i]) == 0)
            return GR_EP_NOTIFICATIONS;
    for (size_t i = 0; i < cfg->n_lifecycle_paths; i++)
        if (strcmp(url, cfg->lifecycle_paths[i]) == 0)
            return GR_EP_LIFECYCLE;
    return GR_EP_OTHER;
}

bool gr_content_length_exceeds(const char *cl, size_t max_body, unsigned long long *n)
{
    char *end;
    errno = 0;
    *n = strtoull(cl, &end, 10);
    return errno == 0 && *end == '\0' && *n > max_body;
}

const char *gr_handshake_refusal(const char *token, size_t len)
{
    if (len == 0)
        return "validationToken is empty";
    if (len > GR_MAX_VALIDATION_TOKEN)
        return "validationToken is longer than 1024 bytes";
    if (memchr(token, '<', len) || memchr(token, '>', len))
        return "validationToken contains '<' or '>'";
    if (memchr(token, '\0', len))
        return "validationToken contains a NUL byte";
    return NULL;
}
