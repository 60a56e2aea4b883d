/*
 * Fuzz the request head as graphrouter meets it: first as bytes, in the
 * gate's strict parser gr_head_check() (core/http/head.c, with
 * gr_framing_check()), then as libmicrohttpd hands it over, in what
 * core/http/request.c makes of that (the framing and Host rules applied to
 * every request of a kept-alive connection, the endpoint of the path, the
 * Content-Length limit, the validationToken of a handshake), and the
 * client address behind a trusted proxy (core/http/addr.c:
 * gr_forwarded_client(), gr_cidr_parse(), gr_cidr_match(), gr_addr_parse(),
 * gr_addr_format()).
 *
 * The config is parsed once: notification paths /notifications, /notify and
 * /webhooks/onedrive, lifecycle path /lifecycle, max_body_bytes 1 MiB,
 * trusted proxies 10.0.0.0/8, 2001:db8::/32 and 192.0.2.1. The first input
 * byte picks the mode:
 *   0: the rest is the bytes a client sent, in a buffer of exactly their
 *      size (no NUL after them);
 *   1: bytes 1-2 choose a padding length near GR_HEAD_MAX_BYTES, and the head
 *      is "POST /notifications HTTP/1.1", a Host line, an X-Pad line of that
 *      many bytes, then the rest: heads at the size limit;
 *   2: the rest is a comma-separated list of CIDR ranges, a newline, and an
 *      X-Forwarded-For value.
 *
 * Checks, beyond "no crash, leak or UB". gr_head_check: a refused head has
 * an error, a 4xx/5xx status and a one-line reason; an accepted one is at
 * most GR_HEAD_MAX_BYTES long, ends with an empty line and is accepted alone;
 * "incomplete" is never the answer to GR_HEAD_MAX_BYTES bytes or more (the
 * gate reads no more than GR_HEAD_MAX_BYTES + 1 before deciding); a prefix of
 * the input is either incomplete or judged as the whole input is (bytes
 * that arrive later never change a verdict). Then a complete head is split
 * as libmicrohttpd splits it (request line; path and query arguments
 * decoded with '+' as space and MHD_http_unescape; header names and
 * trimmed values) and: gr_head_fields_check() gives the gate's verdict on
 * framing and Host (accepted, or the same refusal); an endpoint is one of
 * the configured paths; a validationToken that may be echoed is 1 to 1024
 * bytes without '<', '>' or NUL, so the echo (a C string) is exactly the
 * token; gr_content_length_exceeds() agrees with the number. Mode 2: a
 * parsed range has its host bits clear and contains its own network
 * address; addresses survive format and parse; gr_forwarded_client() gives
 * what a walk of the list from the right gives, never a trusted address.
 */
#define _GNU_SOURCE
#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "http/addr.h"
#include "http/head.h"
#include "http/request.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char config_text[] =
    "{\"paths\": {\"notifications\": [\"/notifications\", \"/notify\", \"/webhooks/onedrive\"],\n"
    "           \"lifecycle\": [\"/lifecycle\"]},\n"
    " \"limits\": {\"max_body_bytes\": 1048576,\n"
    "            \"trusted_proxies\": [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.1\"]},\n"
    " \"handlers\": {}, \"routes\": []}\n";

static struct gr_config *cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char *err = NULL;
    if (gr_config_parse("fuzz-head.json", config_text, strlen(config_text), &cfg, &err) != 0) {
        fprintf(stderr, "fuzz_head: bad built-in config: %s\n", err ? err : "(no message)");
        abort();
    }
    return 0;
}

static int check(const char *buf, size_t len, size_t *head_len, struct gr_head_verdict *v)
{
    char *copy = malloc(len ? len : 1); /* exactly len bytes: ASan sees any overread */
    if (!copy)
        abort();
    memcpy(copy, buf, len);
    *head_len = 0;
    int r = gr_head_check(copy, len, head_len, v);
    free(copy);
    if (r < -1 || r > 1)
        abort();
    if (r == -1) {
        if (v->error == GR_HEAD_OK || v->error >= GR_HEAD_ERROR_COUNT || v->status < 400 ||
            v->status > 599 || !v->reason || !*v->reason || strpbrk(v->reason, "\r\n") ||
            strcmp(gr_status_phrase(v->status), "Error") == 0 ||
            strcmp(gr_head_error_name(v->error), "?") == 0)
            abort();
    } else if (v->error != GR_HEAD_OK) {
        abort();
    }
    if (r == 0 && len >= GR_HEAD_MAX_BYTES)
        abort(); /* the gate would wait for bytes it never reads */
    if (r == 1 && (*head_len > len || *head_len > GR_HEAD_MAX_BYTES || *head_len < 4 ||
                   memcmp(buf + *head_len - 4, "\r\n\r\n", 4) != 0))
        abort();
    return r;
}

/* ---- the head as libmicrohttpd hands it over --------------------------- */

/* '+' as space, then %HH, as libmicrohttpd decodes query arguments. */
static char *decode_arg(const char *s, size_t len, size_t *out_len)
{
    char *d = strndup(s, len);
    if (!d)
        abort();
    for (char *p = d; *p; p++)
        if (*p == '+')
            *p = ' ';
    *out_len = MHD_http_unescape(d);
    return d;
}

struct parsed {
    bool http10;
    char *path;
    size_t path_len;
    char *token; /* NULL: no validationToken argument */
    size_t token_len;
    struct gr_head_fields fields;
};

/* Split a head that is well-formed up to its empty line (gr_head_check
 * accepted it, or refused it only for its framing or Host). */
static void split_head(const char *buf, size_t len, struct parsed *p)
{
    *p = (struct parsed){0};
    size_t pos = 0;
    while (pos + 1 < len && buf[pos] == '\r' && buf[pos + 1] == '\n')
        pos += 2;
    const char *end = memmem(buf + pos, len - pos, "\r\n", 2);
    const char *line = buf + pos;
    const char *sp1 = end ? memchr(line, ' ', (size_t)(end - line)) : NULL;
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(end - sp1 - 1)) : NULL;
    if (!sp2)
        abort();
    p->http10 = memcmp(sp2 + 1, "HTTP/1.0", 8) == 0;
    const char *target = sp1 + 1;
    size_t target_len = (size_t)(sp2 - target);
    const char *q = memchr(target, '?', target_len);
    size_t path_len = q ? (size_t)(q - target) : target_len;
    p->path = strndup(target, path_len);
    if (!p->path)
        abort();
    p->path_len = MHD_http_unescape(p->path);
    for (const char *a = q ? q + 1 : NULL; a && a < sp2;) {
        const char *amp = memchr(a, '&', (size_t)(sp2 - a));
        const char *arg_end = amp ? amp : sp2;
        const char *eq = memchr(a, '=', (size_t)(arg_end - a));
        size_t klen;
        char *key = decode_arg(a, (size_t)((eq ? eq : arg_end) - a), &klen);
        if (!p->token && klen == 15 && strncasecmp(key, "validationToken", 15) == 0) {
            if (eq)
                p->token = decode_arg(eq + 1, (size_t)(arg_end - eq - 1), &p->token_len);
            else
                p->token = strdup(""), p->token_len = 0; /* libmicrohttpd: a NULL value */
        }
        free(key);
        a = amp ? amp + 1 : NULL;
    }
    pos = (size_t)(end - buf) + 2;
    for (;;) {
        end = memmem(buf + pos, len - pos, "\r\n", 2);
        if (!end)
            abort();
        line = buf + pos;
        size_t llen = (size_t)(end - line);
        pos += llen + 2;
        if (!llen)
            break;
        const char *colon = memchr(line, ':', llen);
        if (!colon)
            abort();
        const char *v = colon + 1, *ve = end;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        gr_head_fields_add(&p->fields, line, (size_t)(colon - line), v, (size_t)(ve - v));
    }
}

static bool framing_error(enum gr_head_error e)
{
    return e == GR_HEAD_HOST || e == GR_HEAD_LENGTH || e == GR_HEAD_CHUNKED || e == GR_HEAD_CODING;
}

static void as_handed_over(const char *buf, size_t len, int r, const struct gr_head_verdict *gate)
{
    struct parsed p;
    split_head(buf, len, &p);

    struct gr_head_verdict v = {0};
    bool ok = gr_head_fields_check(&p.fields, p.http10, &v);
    if (ok != (r == 1) ||
        (!ok && (v.error != gate->error || v.status != gate->status ||
                 strcmp(v.reason, gate->reason) != 0))) {
        fprintf(stderr, "fuzz_head: gate %d (%s), request fields %s\n", r,
                gate->reason ? gate->reason : "ok", ok ? "ok" : v.reason);
        abort();
    }
    if (ok) {
        enum gr_endpoint ep = gr_endpoint_of(cfg, p.path);
        bool listed = false;
        for (size_t i = 0; i < cfg->n_notification_paths; i++)
            listed |= ep == GR_EP_NOTIFICATIONS && strcmp(p.path, cfg->notification_paths[i]) == 0;
        for (size_t i = 0; i < cfg->n_lifecycle_paths; i++)
            listed |= ep == GR_EP_LIFECYCLE && strcmp(p.path, cfg->lifecycle_paths[i]) == 0;
        if (ep != GR_EP_OTHER && !listed)
            abort();

        if (p.token && !gr_handshake_refusal(p.token, p.token_len) &&
            (p.token_len == 0 || p.token_len > 1024 || strlen(p.token) != p.token_len ||
             strpbrk(p.token, "<>")))
            abort();

        if (p.fields.n_cl) {
            char *cl = strndup(p.fields.cl, p.fields.cl_len);
            unsigned long long n = 0, want = strtoull(cl, NULL, 10);
            if (gr_content_length_exceeds(cl, cfg->max_body_bytes, &n) !=
                    (want > cfg->max_body_bytes) ||
                (want > cfg->max_body_bytes && n != want))
                abort();
            free(cl);
        }
        struct gr_addr client;
        if (p.fields.xff.len &&
            gr_forwarded_client(p.fields.xff.data, cfg->trusted_proxies, cfg->n_trusted_proxies,
                                &client) &&
            gr_cidr_list_match(cfg->trusted_proxies, cfg->n_trusted_proxies, &client))
            abort();
    }
    gr_head_fields_free(&p.fields);
    free(p.path);
    free(p.token);
}

static void head_mode(const char *buf, size_t len)
{
    size_t head_len;
    struct gr_head_verdict v;
    int r = check(buf, len, &head_len, &v);

    /* Bytes that arrive later never change a verdict. */
    size_t cuts = len < 16 ? len : 16;
    for (size_t i = 1; i <= cuts; i++) {
        size_t k = i == cuts ? (len ? len - 1 : 0) : len * i / (cuts + 1);
        size_t hk;
        struct gr_head_verdict vk;
        int rk = check(buf, k, &hk, &vk);
        if ((rk != 0 && rk != r) || (rk == -1 && (vk.error != v.error || vk.status != v.status)) ||
            (rk == 1 && hk != head_len) || (r == 1 && k >= head_len && rk != 1)) {
            fprintf(stderr, "fuzz_head: %zu of %zu bytes: %d, all of them: %d\n", k, len, rk, r);
            abort();
        }
    }
    if (r == 1) {
        size_t again;
        struct gr_head_verdict va;
        if (check(buf, head_len, &again, &va) != 1 || again != head_len)
            abort();
    }
    if (r == 1 || (r == -1 && framing_error(v.error)))
        as_handed_over(buf, r == 1 ? head_len : len, r, &v);
}

/* ---- addresses ---------------------------------------------------------- */

static bool bit(const struct gr_addr *a, unsigned i)
{
    return a->b[i / 8] & (0x80u >> (i % 8));
}

static void address_mode(const char *text, size_t len)
{
    const char *nl = memchr(text, '\n', len);
    char *list = strndup(text, nl ? (size_t)(nl - text) : len);
    char *xff = nl ? strndup(nl + 1, len - (size_t)(nl + 1 - text)) : strdup("");
    if (!list || !xff)
        abort();
    struct gr_cidr trusted[8];
    size_t n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok && n < 8; tok = strtok_r(NULL, ",", &save)) {
        struct gr_cidr c;
        if (!gr_cidr_parse(tok, &c))
            continue;
        if (c.bits > 128 || !gr_cidr_match(&c, &c.net))
            abort();
        for (unsigned i = c.bits; i < 128; i++)
            if (bit(&c.net, i))
                abort();
        char shown[GR_ADDR_TEXT];
        struct gr_addr back;
        gr_addr_format(&c.net, shown);
        if (!gr_addr_parse(shown, strlen(shown), &back) || memcmp(&back, &c.net, sizeof back) != 0)
            abort();
        trusted[n++] = c;
    }

    /* The model: split the list left to right into its entries (trimmed of
     * spaces and tabs), then take the last entry that is not a trusted
     * proxy, stopping at the first (from the right) that is not an address. */
    size_t nentries = 1;
    for (const char *p = xff; *p; p++)
        nentries += *p == ',';
    struct gr_addr *entries = calloc(nentries, sizeof *entries);
    bool *parsed = calloc(nentries, sizeof *parsed);
    if (!entries || !parsed)
        abort();
    const char *p = xff;
    for (size_t i = 0; i < nentries; i++) {
        const char *comma = strchr(p, ',');
        size_t elen = comma ? (size_t)(comma - p) : strlen(p);
        size_t skip = strspn(p, " \t");
        if (skip > elen)
            skip = elen;
        size_t keep = elen - skip;
        while (keep && (p[skip + keep - 1] == ' ' || p[skip + keep - 1] == '\t'))
            keep--;
        parsed[i] = gr_addr_parse(p + skip, keep, &entries[i]);
        p += elen + (comma != NULL);
    }
    bool want = false;
    struct gr_addr want_addr = {{0}};
    for (size_t i = nentries; i-- > 0 && parsed[i];)
        if (!gr_cidr_list_match(trusted, n, &entries[i])) {
            want = true, want_addr = entries[i];
            break;
        }
    free(entries);
    free(parsed);
    struct gr_addr got;
    bool have = gr_forwarded_client(xff, trusted, n, &got);
    if (have != want || (have && (memcmp(&got, &want_addr, sizeof got) != 0 ||
                                  gr_cidr_list_match(trusted, n, &got))))
        abort();
    free(list);
    free(xff);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *rest = (const char *)data + 1;
    size_t rest_len = size - 1;
    switch (data[0] % 3) {
    case 0: head_mode(rest, rest_len); break;
    case 1: {
        if (rest_len < 2)
            return 0;
        static const char start[] = "POST /notifications HTTP/1.1\r\nHost: h\r\nX-Pad: ";
        size_t pad = GR_HEAD_MAX_BYTES - 600 + (((size_t)data[1] << 8 | data[2]) % 700);
        size_t n = sizeof start - 1 + pad + 2 + rest_len - 2;
        char *buf = malloc(n);
        if (!buf)
            abort();
        memcpy(buf, start, sizeof start - 1);
        memset(buf + sizeof start - 1, 'a', pad);
        memcpy(buf + sizeof start - 1 + pad, "\r\n", 2);
        memcpy(buf + sizeof start - 1 + pad + 2, rest + 2, rest_len - 2);
        head_mode(buf, n);
        free(buf);
        break;
    }
    default: address_mode(rest, rest_len); break;
    }
    return 0;
}
