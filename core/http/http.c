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
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "generation.h"
#include "http/addr.h"
#include "http/gate.h"
#include "http/head.h"
#include "http/ingest.h"
#include "http/request.h"
#include "http/tls.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define GR_RETRY_AFTER_S "5"

struct gr_http {
    struct MHD_Daemon *daemon;
    struct gr_gate *gate; /* accepts, admits and times connections (gate.h) */
    struct gr_store *store;
    atomic_int inflight;
    atomic_int suspended; /* requests suspended for their store commit, until answered */
    atomic_bool draining;
};

struct request {
    enum gr_endpoint ep;
    int64_t start_ns;
    struct gr_gate_conn *conn_limits; /* the gate's record of this connection; may be NULL */
    struct gr_addr client;            /* socket peer, or the forwarded client (trusted proxy) */
    bool forwarded_counted;           /* client holds one of its per-address slots */
    struct gr_gate *gate;
    size_t max_body;
    struct gr_buf body;
    /* While the store commits the accepted items, the connection is
     * suspended; the store's writer resumes it with the outcome. */
    struct MHD_Connection *conn;
    struct gr_http *http;
    struct gr_append *append;
    bool committed;
    enum gr_append_result result;
    bool close; /* answer with Connection: close */
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
    if (r->close || atomic_load(&h->draining))
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

/* Answer and close the connection: the rest of what the client sent is not
 * read as another request. */
static enum MHD_Result close_with(struct MHD_Connection *c, struct gr_http *h, struct request *r,
                                  unsigned status, const char *line)
{
    r->close = true;
    return text(c, h, r, status, line);
}

/* The endpoint-validation handshake: echo the token, decoded exactly once
 * (libmicrohttpd already turned '+' into ' ' and decoded %HH). */
static enum MHD_Result handshake(struct MHD_Connection *c, struct gr_http *h, struct request *r,
                                 const char *token, size_t len)
{
    const char *why = gr_handshake_refusal(token, len);
    if (why) {
        gr_warn_limited("validation handshake refused: %s", why);
        return text(c, h, r, 400, why);
    }
    gr_info_limited("validation handshake answered on the %s endpoint",
                    r->ep == GR_EP_LIFECYCLE ? "lifecycle" : "notifications");
    return respond(c, h, r, 200, token, "text/plain"); /* no NUL inside: checked above */
}

static enum MHD_Result serve_metrics(struct MHD_Connection *c, struct gr_http *h,
                                     struct request *r)
{
    struct gr_store_stats st;
    gr_store_stats(h->store, &st);
    struct gr_generation *g = gr_generation_pin();
    struct gr_gate_stats gs;
    gr_gate_stats(h->gate, &gs);
    struct gr_metrics_gauges gauges = {&st, g ? g->id : 0, gs.held, gs.in_server};
    gr_generation_unpin(g);
    struct gr_buf out = {0};
    gr_metrics_render(&out, &gauges);
    gr_store_stats_free(&st);
    enum MHD_Result rc = respond(c, h, r, 200, out.data, "text/plain; version=0.0.4; charset=utf-8");
    gr_buf_free(&out);
    return rc;
}

static enum MHD_Result collect_field(void *cls, enum MHD_ValueKind kind, const char *key,
                                     size_t key_len, const char *value, size_t value_len)
{
    (void)kind;
    gr_head_fields_add(cls, key, key_len, value, value_len);
    return MHD_YES;
}

static void client_text(const struct request *r, char out[GR_ADDR_TEXT])
{
    gr_addr_format(&r->client, out);
}

/*
 * Who the client is, and whether the head's framing is one graphrouter reads
 * the same way as any proxy in front of it. The gate checked the first head
 * of the connection byte by byte; libmicrohttpd parsed the later ones of a
 * kept-alive connection, so their framing is checked again here. Returns 0,
 * or the status of the refusal already queued.
 */
static int admit_request(struct MHD_Connection *c, struct gr_http *h, struct request *r,
                         const char *version, enum MHD_Result *rc)
{
    struct gr_head_fields f = {0};
    MHD_get_connection_values_n(c, MHD_HEADER_KIND, collect_field, &f);
    struct gr_head_verdict v;
    if (!gr_head_fields_check(&f, strcmp(version, MHD_HTTP_VERSION_1_0) == 0, &v)) {
        gr_head_fields_free(&f);
        gr_metrics_head_refused(v.error);
        char who[GR_ADDR_TEXT];
        client_text(r, who);
        gr_warn_limited("request refused with %u: %s; client=%s", v.status, v.reason, who);
        *rc = close_with(c, h, r, v.status, v.reason);
        return (int)v.status;
    }
    bool proxy = false;
    if (r->conn_limits)
        gr_gate_peer(r->conn_limits, &proxy);
    if (!proxy) {
        gr_head_fields_free(&f);
        return 0;
    }
    /* Through a trusted proxy: the client is the forwarded address, and the
     * limits that apply to a socket's address apply to it instead. */
    struct gr_generation *g = gr_generation_pin();
    const struct gr_config *cfg = g->cfg;
    struct gr_addr fwd;
    bool have = f.xff.len && gr_forwarded_client(f.xff.data, cfg->trusted_proxies,
                                                 cfg->n_trusted_proxies, &fwd);
    gr_head_fields_free(&f);
    unsigned status = 0;
    const char *why = NULL;
    if (have)
        r->client = fwd; /* else the proxy's own address stands */
    if (cfg->allow_from && !gr_cidr_list_match(cfg->allow_from, cfg->n_allow_from, &r->client)) {
        status = 403, why = "this client address is not in limits.allow_from";
        gr_metrics_conn_refused(GR_REFUSED_ALLOW_FROM);
    } else if (!gr_gate_forwarded_acquire(h->gate, &r->client, cfg->max_connections_per_ip)) {
        status = 429, why = "too many requests in progress from this address";
        gr_metrics_conn_refused(GR_REFUSED_PER_IP);
    } else {
        r->forwarded_counted = true;
        r->gate = h->gate;
    }
    gr_generation_unpin(g);
    if (!status)
        return 0;
    char who[GR_ADDR_TEXT];
    client_text(r, who);
    gr_warn_limited("request refused with %u: %s; client=%s (forwarded)", status, why, who);
    *rc = close_with(c, h, r, status, why);
    return (int)status;
}

/* First call for a request: the headers are in, the body is not. */
static enum MHD_Result begin(struct MHD_Connection *c, struct gr_http *h, struct request *r,
                             const char *url, const char *method, const char *version)
{
    enum MHD_Result refused;
    if (admit_request(c, h, r, version, &refused))
        return refused;
    gr_gate_phase(r->conn_limits, GR_PHASE_BODY);
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (strcmp(url, "/healthz") == 0 || strcmp(url, "/metrics") == 0) {
        r->ep = url[1] == 'h' ? GR_EP_HEALTHZ : GR_EP_METRICS;
        if (!get)
            return text(c, h, r, 405, "method not allowed; use GET");
        return r->ep == GR_EP_HEALTHZ ? text(c, h, r, 200, "ok") : serve_metrics(c, h, r);
    }
    struct gr_generation *g = gr_generation_pin();
    r->ep = gr_endpoint_of(g->cfg, url);
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
    unsigned long long n;
    /* Only refuse here; the buffer grows with the bytes that really arrive,
     * so a client cannot reserve memory by announcing a length. */
    if (cl && gr_content_length_exceeds(cl, r->max_body, &n)) {
        char who[GR_ADDR_TEXT];
        client_text(r, who);
        gr_warn_limited("notification POST refused: Content-Length %llu exceeds "
                        "max_body_bytes %zu; client=%s",
                        n, r->max_body, who);
        return close_with(c, h, r, 413, "request body is larger than limits.max_body_bytes");
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
    gr_gate_phase(r->conn_limits, GR_PHASE_WAIT);
    MHD_suspend_connection(c); /* before the store can answer */
    gr_store_append(h->store, a);
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **req_cls)
{
    struct gr_http *h = cls;
    struct request *r = *req_cls;
    if (!r) {
        r = gr_xcalloc(1, sizeof *r);
        r->start_ns = gr_mono_ns();
        r->ep = GR_EP_OTHER;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        r->conn_limits = ci ? ci->socket_context : NULL;
        if (r->conn_limits) {
            bool proxy;
            r->client = *gr_gate_peer(r->conn_limits, &proxy);
        }
        *req_cls = r;
        atomic_fetch_add(&h->inflight, 1);
        return begin(c, h, r, url, method, version);
    }
    if (*upload_size) {
        /* Bodies come by Content-Length only, checked against max_body_bytes
         * before the first byte (begin), and libmicrohttpd reads no more
         * than that length. */
        gr_buf_append(&r->body, upload_data, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    return finish(c, h, r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)c;
    struct gr_http *h = cls;
    struct request *r = *req_cls;
    if (!r)
        return;
    unsuspend(r);
    if (r->forwarded_counted)
        gr_gate_forwarded_release(r->gate, &r->client);
    /* The connection waits for its next head (a no-op when it is closing). */
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
        gr_gate_phase(r->conn_limits, GR_PHASE_HEAD);
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

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    gr_gate_notify(cls, c, socket_context, (int)toe);
}

/* libmicrohttpd aborts on an internal inconsistency; say where first. */
static void on_mhd_panic(void *cls, const char *file, unsigned int line, const char *reason)
{
    (void)cls;
    gr_error("libmicrohttpd panic at %s:%u: %s", file ? file : "?", line,
             reason ? reason : "(no reason)");
    abort();
}

static void release_cred(void *cred)
{
    gr_tls_cred_unref(cred);
}

/* libmicrohttpd asks for the certificate on every TLS handshake (GnuTLS's
 * retrieve function): the current generation's, which the connection keeps
 * a reference to until it closes, so a reload in the middle of a handshake
 * frees nothing it uses. MHD makes the session's pointer its connection. */
static int tls_certificate(gnutls_session_t session, const gnutls_datum_t *req_ca_dn, int nreqs,
                           const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
                           gnutls_pcert_st **chain, unsigned int *n, gnutls_privkey_t *key)
{
    (void)req_ca_dn, (void)nreqs, (void)pk_algos, (void)pk_algos_length;
    struct MHD_Connection *mc = gnutls_session_get_ptr(session);
    const union MHD_ConnectionInfo *info =
        mc ? MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT) : NULL;
    struct gr_gate_conn *conn = info ? info->socket_context : NULL;
    if (!conn)
        return -1;
    struct gr_generation *g = gr_generation_pin();
    struct gr_tls_cred *cred = g->tls ? gr_tls_cred_ref(g->tls) : NULL;
    gr_generation_unpin(g);
    if (!cred)
        return -1;
    gr_gate_conn_keep(conn, cred, release_cred);
    gr_tls_cred_get(cred, chain, n, key);
    return 0;
}

struct gr_http *gr_http_start(const struct gr_config *cfg, struct gr_store *store, char **err)
{
    MHD_set_panic_func(on_mhd_panic, NULL);
    bool tls = cfg->tls_cert_file != NULL;
    if (tls && MHD_is_feature_supported(MHD_FEATURE_HTTPS_CERT_CALLBACK) != MHD_YES) {
        *err = gr_xprintf("\"tls\" needs libmicrohttpd built with GnuTLS 3 (its certificate "
                          "callback); this one is not");
        return NULL;
    }
    struct gr_http *h = gr_xcalloc(1, sizeof *h);
    h->store = store;
    h->gate = gr_gate_open(cfg, tls, err);
    if (!h->gate) {
        free(h);
        return NULL;
    }
    /* The gate owns the listening socket and hands each admitted connection
     * over with MHD_add_connection; it enforces the connection limits, so
     * libmicrohttpd's own is only the open-file limit. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC |
                     MHD_USE_NO_LISTEN_SOCKET | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    /* Plain HTTP passes no TLS options (MHD_OPTION_END ends the list there). */
    struct MHD_OptionItem tls_options[] = {
        {MHD_OPTION_HTTPS_CERT_CALLBACK, 0, (void *)tls_certificate},
        {MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)GR_TLS_PRIORITIES},
        {MHD_OPTION_END, 0, NULL},
    };
    if (tls)
        flags |= MHD_USE_TLS;
    h->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->http_threads, MHD_OPTION_CONNECTION_LIMIT,
        gr_gate_fd_limit(h->gate), MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)cfg->connection_timeout_s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h->gate, MHD_OPTION_ARRAY,
        tls ? tls_options : tls_options + 2, MHD_OPTION_END);
    if (!h->daemon) {
        *err = gr_xprintf("cannot start the HTTP server (libmicrohttpd)");
        gr_gate_close(h->gate);
        free(h);
        return NULL;
    }
    if (!gr_gate_run(h->gate, h->daemon)) {
        *err = gr_xprintf("cannot start the accept thread");
        MHD_stop_daemon(h->daemon);
        gr_gate_close(h->gate);
        free(h);
        return NULL;
    }
    return h;
}

unsigned gr_http_port(const struct gr_http *h)
{
    return gr_gate_port(h->gate);
}

void gr_http_quiesce(struct gr_http *h)
{
    atomic_store(&h->draining, true);
    gr_gate_quiesce(h->gate);
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
    gr_gate_close(h->gate);
    free(h);
}
