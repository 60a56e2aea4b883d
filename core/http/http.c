/*
 * HTTP request handling (see http.h). Runs on libmicrohttpd's pool threads.
 * Per-request state lives in struct request; the only shared state is the
 * store (its own lock), the pinned generation and atomic counters.
 */
#define _GNU_SOURCE
#include "http/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "generation.h"
#include "http/ingest.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define GR_MAX_VALIDATION_TOKEN 1024
#define GR_RETRY_AFTER_S "5"

struct gr_http {
    struct MHD_Daemon *daemon;
    struct gr_store *store;
    unsigned port;
    atomic_int inflight;
    atomic_int suspended; /* requests suspended for their store commit, until answered */
    atomic_bool draining;
};

struct request {
    enum gr_endpoint ep;
    int64_t start_ns;
    size_t max_body;
    size_t received; /* body bytes so far */
    bool too_large;
    struct gr_buf body;
    /* While the store commits the accepted items, the connection is
     * suspended; the store's writer resumes it with the outcome. */
    struct MHD_Connection *conn;
    struct gr_http *http;
    struct gr_append *append;
    bool committed;
    enum gr_append_result result;
};

static void free_append(struct gr_append *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++)
        free(a->items[i].body);
    free(a->items);
    gr_token_list_unref(a->tokens);
    free(a);
}

/* On the store's writer thread: the items are stored, or not. */
static void on_appended(void *ctx, enum gr_append_result result)
{
    struct request *r = ctx;
    r->result = result;
    r->committed = true;
    MHD_resume_connection(r->conn);
}

/* The request left its suspension for good (answered, or its connection
 * closed): libmicrohttpd no longer lists it as suspended. */
static void unsuspend(struct request *r)
{
    if (r->http) {
        atomic_fetch_sub(&r->http->suspended, 1);
        r->http = NULL;
    }
}

static enum MHD_Result respond(struct MHD_Connection *c, struct gr_http *h, struct request *r,
                               unsigned status, const char *body, const char *content_type)
{
    size_t len = body ? strlen(body) : 0;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    if (content_type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (status == 405)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
                                r->ep == GR_EP_HEALTHZ || r->ep == GR_EP_METRICS ? "GET, HEAD"
                                                                                 : "POST");
    if (status == 503)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, GR_RETRY_AFTER_S);
    if (atomic_load(&h->draining))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result rc = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    gr_metrics_request(r->ep, status);
    if (status == 202)
        gr_metrics_ack_latency(gr_mono_ns() - r->start_ns);
    return rc;
}

static enum MHD_Result text(struct MHD_Connection *c, struct gr_http *h, struct request *r,
                            unsigned status, const char *line)
{
    char *body = gr_xprintf("%s\n", line);
    enum MHD_Result rc = respond(c, h, r, status, body, "text/plain; charset=utf-8");
    free(body);
    return rc;
}

/* The endpoint-validation handshake: echo the token, decoded exactly once
 * (libmicrohttpd already turned '+' into ' ' and decoded %HH). */
static enum MHD_Result handshake(struct MHD_Connection *c, struct gr_http *h, struct request *r,
                                 const char *token, size_t len)
{
    const char *why = NULL;
    if (len == 0)
        why = "validationToken is empty";
    else if (len > GR_MAX_VALIDATION_TOKEN)
        why = "validationToken is longer than 1024 bytes";
    else if (memchr(token, '<', len) || memchr(token, '>', len))
        why = "validationToken contains '<' or '>'";
    else if (memchr(token, '\0', len))
        why = "validationToken contains a NUL byte";
    if (why) {
        gr_warn_limited("validation handshake refused: %s", why);
        return text(c, h, r, 400, why);
    }
    gr_info("validation handshake answered on the %s endpoint",
            r->ep == GR_EP_LIFECYCLE ? "lifecycle" : "notifications");
    return respond(c, h, r, 200, token, "text/plain"); /* no NUL inside: checked above */
}

static enum gr_endpoint endpoint_of(const struct gr_config *cfg, const char *url)
{
    for (size_t i = 0; i < cfg->n_notification_paths; i++)
        if (strcmp(url, cfg->notification_paths[i]) == 0)
            return GR_EP_NOTIFICATIONS;
    for (size_t i = 0; i < cfg->n_lifecycle_paths; i++)
        if (strcmp(url, cfg->lifecycle_paths[i]) == 0)
            return GR_EP_LIFECYCLE;
    return GR_EP_OTHER;
}

static enum MHD_Result serve_metrics(struct MHD_Connection *c, struct gr_http *h,
                                     struct request *r)
{
    struct gr_store_stats st;
    gr_store_stats(h->store, &st);
    struct gr_generation *g = gr_generation_pin();
    struct gr_metrics_gauges gauges = {&st, g ? g->id : 0};
    gr_generation_unpin(g);
    struct gr_buf out = {0};
    gr_metrics_render(&out, &gauges);
    gr_store_stats_free(&st);
    enum MHD_Result rc = respond(c, h, r, 200, out.data, "text/plain; version=0.0.4; charset=utf-8");
    gr_buf_free(&out);
    return rc;
}

/* First call for a request: the headers are in, the body is not. */
static enum MHD_Result begin(struct MHD_Connection *c, struct gr_http *h, struct request *r,
                             const char *url, const char *method)
{
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (strcmp(url, "/healthz") == 0 || strcmp(url, "/metrics") == 0) {
        r->ep = url[1] == 'h' ? GR_EP_HEALTHZ : GR_EP_METRICS;
        if (!get)
            return text(c, h, r, 405, "method not allowed; use GET");
        return r->ep == GR_EP_HEALTHZ ? text(c, h, r, 200, "ok") : serve_metrics(c, h, r);
    }
    struct gr_generation *g = gr_generation_pin();
    r->ep = endpoint_of(g->cfg, url);
    r->max_body = g->cfg->max_body_bytes;
    gr_generation_unpin(g);
    if (r->ep == GR_EP_OTHER)
        return text(c, h, r, 404, "no such endpoint");
    if (atomic_load(&h->draining))
        return text(c, h, r, 503, "graphrouter is shutting down; retry");
    if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
        return text(c, h, r, 405, "method not allowed; Graph delivers notifications with POST");

    const char *token = NULL;
    size_t token_len = 0;
    if (MHD_lookup_connection_value_n(c, MHD_GET_ARGUMENT_KIND, "validationToken", 15, &token,
                                      &token_len) == MHD_YES)
        return handshake(c, h, r, token ? token : "", token ? token_len : 0);

    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        /* Only refuse here; the buffer grows with the bytes that really
         * arrive, so a client cannot reserve memory by announcing a length. */
        if (errno == 0 && *end == '\0' && n > r->max_body) {
            gr_warn_limited("notification POST refused: Content-Length %llu exceeds "
                            "max_body_bytes %zu",
                            n, r->max_body);
            return text(c, h, r, 413, "request body is larger than limits.max_body_bytes");
        }
    }
    return MHD_YES;
}

/* The store has answered: 202, or 503 when nothing could be stored. */
static enum MHD_Result answer_committed(struct MHD_Connection *c, struct gr_http *h,
                                        struct request *r)
{
    unsuspend(r);
    size_t n = r->append->n;
    free_append(r->append);
    r->append = NULL;
    if (r->result == GR_APPEND_OK) {
        gr_metrics_items_accepted(n);
        return respond(c, h, r, 202, NULL, NULL);
    }
    bool full = r->result == GR_APPEND_FULL;
    gr_metrics_store_rejected(full);
    gr_warn_limited("notification POST refused with 503: %s; Graph will retry",
                    full ? "the store is full (store.max_pending, max_pending_bytes or "
                           "max_db_bytes)"
                         : "the store cannot write");
    return text(c, h, r, 503, full ? "store full; retry later" : "store unavailable; retry later");
}

/* Last call: the whole body is in (or, resumed, the store has answered). */
static enum MHD_Result finish(struct MHD_Connection *c, struct gr_http *h, struct request *r)
{
    if (r->committed)
        return answer_committed(c, h, r);
    if (r->too_large) {
        gr_warn_limited("notification POST refused: body exceeds max_body_bytes %zu", r->max_body);
        return text(c, h, r, 413, "request body is larger than limits.max_body_bytes");
    }
    int64_t received_ms = gr_wall_ms();
    struct gr_generation *g = gr_generation_pin();
    struct gr_managed *managed = gr_managed_pin();
    struct gr_ingest in;
    gr_ingest_parse(g->cfg, managed, r->body.data ? r->body.data : "", r->body.len, &in);
    gr_managed_unpin(managed);
    gr_generation_unpin(g);
    gr_buf_free(&r->body);

    enum MHD_Result rc;
    if (in.status == 400) {
        gr_warn_limited("notification POST refused: %s", in.reason);
        rc = text(c, h, r, 400, in.reason);
        gr_ingest_free(&in);
        return rc;
    }
    gr_metrics_items_received(in.received);
    for (int d = 0; d < GR_DROP_COUNT; d++)
        for (size_t k = 0; k < in.dropped[d]; k++)
            gr_metrics_item_dropped((enum gr_drop_reason)d);
    for (size_t k = 0; k < in.tokens_skipped; k++)
        gr_metrics_token(GR_TOKEN_MALFORMED);
    if (!in.nitems) { /* nothing to keep: answered at once */
        gr_ingest_free(&in);
        return respond(c, h, r, 202, NULL, NULL);
    }
    /* Counted as suspended before looking at draining: gr_http_stop either
     * sees this request and waits for it, or this request sees the shutdown. */
    atomic_fetch_add(&h->suspended, 1);
    if (atomic_load(&h->draining)) {
        atomic_fetch_sub(&h->suspended, 1);
        gr_ingest_free(&in);
        return text(c, h, r, 503, "graphrouter is shutting down; retry");
    }
    struct gr_append *a = gr_xcalloc(1, sizeof *a);
    *a = (struct gr_append){.items = in.items, .n = in.nitems, .tokens = in.tokens,
                            .received_ms = received_ms, .done = on_appended, .ctx = r};
    in.items = NULL;
    in.nitems = 0;
    in.tokens = NULL;
    gr_ingest_free(&in);
    r->append = a;
    r->conn = c;
    r->http = h; /* counted in h->suspended until answered (unsuspend) */
    MHD_suspend_connection(c); /* before the store can answer */
    gr_store_append(h->store, a);
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **req_cls)
{
    (void)version;
    struct gr_http *h = cls;
    struct request *r = *req_cls;
    if (!r) {
        r = gr_xcalloc(1, sizeof *r);
        r->start_ns = gr_mono_ns();
        r->ep = GR_EP_OTHER;
        *req_cls = r;
        atomic_fetch_add(&h->inflight, 1);
        return begin(c, h, r, url, method);
    }
    if (*upload_size) {
        /* libmicrohttpd 0.9.75 cannot answer before the body is read, so an
         * oversized chunked body is read and discarded, then answered 413;
         * past twice the limit the connection is closed instead. */
        r->received += *upload_size;
        if (!r->too_large && r->received > r->max_body) {
            r->too_large = true;
            gr_buf_free(&r->body);
        }
        if (!r->too_large)
            gr_buf_append(&r->body, upload_data, *upload_size);
        *upload_size = 0;
        if (r->received / 2 > r->max_body) {
            gr_warn_limited("notification POST cut off: body passed twice max_body_bytes %zu; "
                            "connection closed",
                            r->max_body);
            gr_metrics_request(r->ep, 413);
            return MHD_NO;
        }
        return MHD_YES;
    }
    return finish(c, h, r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)c;
    (void)toe;
    struct gr_http *h = cls;
    struct request *r = *req_cls;
    if (!r)
        return;
    unsuspend(r);
    gr_buf_free(&r->body);
    free_append(r->append);
    free(r);
    *req_cls = NULL;
    atomic_fetch_sub(&h->inflight, 1);
}

__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt,
                                                           va_list ap)
{
    (void)cls;
    char *msg = gr_xvprintf(fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    gr_warn_limited("libmicrohttpd: %s", msg);
    free(msg);
}

/* libmicrohttpd aborts on an internal inconsistency; say where first. */
static void on_mhd_panic(void *cls, const char *file, unsigned int line, const char *reason)
{
    (void)cls;
    gr_error("libmicrohttpd panic at %s:%u: %s", file ? file : "?", line,
             reason ? reason : "(no reason)");
    abort();
}

struct gr_http *gr_http_start(const struct gr_config *cfg, struct gr_store *store, char **err)
{
    MHD_set_panic_func(on_mhd_panic, NULL);
    struct sockaddr_storage ss = {0};
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, cfg->listen_address, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)cfg->listen_port);
    } else {
        inet_pton(AF_INET6, cfg->listen_address, &v6->sin6_addr);
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)cfg->listen_port);
        flags |= MHD_USE_IPv6;
    }
    struct gr_http *h = gr_xcalloc(1, sizeof *h);
    h->store = store;
    h->daemon = MHD_start_daemon(
        flags, (uint16_t)cfg->listen_port, NULL, NULL, on_request, h,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, MHD_OPTION_SOCK_ADDR, &ss,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->http_threads, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)cfg->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)cfg->connection_timeout_s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u,
        MHD_OPTION_END);
    if (!h->daemon) {
        *err = gr_xprintf("cannot listen on %s:%u (is the address local and the port free?)",
                          cfg->listen_address, cfg->listen_port);
        free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : cfg->listen_port;
    return h;
}

unsigned gr_http_port(const struct gr_http *h)
{
    return h->port;
}

void gr_http_quiesce(struct gr_http *h)
{
    atomic_store(&h->draining, true);
    MHD_socket fd = MHD_quiesce_daemon(h->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

bool gr_http_wait_idle(struct gr_http *h, int64_t deadline_ms)
{
    while (atomic_load(&h->inflight) > 0) {
        if (gr_mono_ms() >= deadline_ms)
            return false;
        usleep(10000);
    }
    return true;
}

void gr_http_stop(struct gr_http *h)
{
    if (!h)
        return;
    /* A request suspended for its commit is resumed by the store, which
     * answers every append, then answered; libmicrohttpd must not be
     * stopped before (it aborts when a connection is still suspended). */
    if (atomic_load(&h->suspended) > 0)
        gr_warn("waiting for %d POSTs whose items are being committed",
                atomic_load(&h->suspended));
    while (atomic_load(&h->suspended) > 0)
        usleep(1000);
    MHD_stop_daemon(h->daemon);
    free(h);
}
