/*
 * http: POST every notification or event it receives, as JSON, to a URL.
 *
 *   "webhook": {"plugin": "http", "config": {
 *       "url": "https://hooks.example.com/graph",
 *       "headers": {"Authorization": "Bearer ..."},
 *       "secret": "shared-hmac-key"}}
 *
 * The body is the message's JSON text, byte for byte. Every request carries
 * Content-Type: application/json and User-Agent: graphrouter/<version>; with
 * "secret", also X-Graphrouter-Signature: sha256=<hex HMAC-SHA256 of the body>.
 * "secret" is a GR_CONFIG_SECRET: it may also be {"file": ...} or {"env": ...},
 * which the router reads; the plugin borrows the secret until fini and the
 * router wipes it after.
 * TLS peer and host verification are always on ("ca_file" adds a private CA);
 * redirects are never followed.
 *
 * Outcome: 2xx is GR_OK; 408, 429, 5xx and network errors (timeouts, refused
 * connections, TLS failures) are GR_RETRY, honouring a Retry-After header;
 * every other status is GR_FAIL (a dead letter).
 *
 * handle() runs on several workers at once: each call borrows a libcurl easy
 * handle from a small mutex-protected pool, so connections are kept alive and
 * reused between calls. Neither the secret, nor header values, nor bodies, nor
 * the URL (it may hold credentials) are ever logged.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <graphrouter/plugin.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#if LIBCURL_VERSION_NUM < 0x075500
#error "the http plugin needs libcurl 7.85 or newer (CURLOPT_PROTOCOLS_STR, CURLINFO_RETRY_AFTER)"
#endif

#define HTTP_POOL_MAX 8 /* idle easy handles kept for reuse */
#define HTTP_MAX_TIMEOUT_MS 3600000
#define HTTP_MAX_SECRET 4096
#define HTTP_SIG_HEADER "X-Graphrouter-Signature: sha256="

static const struct gr_host *host;

/* One pooled easy handle, with its own error buffer. */
struct http_conn {
    struct http_conn *next;
    CURL *curl;
    char error[CURL_ERROR_SIZE];
};

struct http_state {
    struct gr_handler *h;
    const char *url;    /* config strings: valid until fini */
    const char *secret; /* NULL: no signature */
    size_t secret_len;
    const char *ca_file;
    long timeout_ms, connect_timeout_ms;
    char *user_agent;
    struct curl_slist *headers; /* fixed headers, shared read-only by every handle */

    pthread_mutex_t lock;
    struct http_conn *idle;
    int nidle;

    struct gr_metric *ok, *retry, *fail;
};

/* ---- configuration ------------------------------------------------------ */

/* An RFC 9110 token: what a header name may be made of. */
static int is_token(const char *s)
{
    if (!*s)
        return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *p)))
            return 0;
    return 1;
}

/* Field values: visible characters, spaces and tabs; never CR, LF or NUL. */
static int is_field_value(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
    }
    return 1;
}

/* Headers the plugin sets itself, or that belong to the transport. */
static const char *const reserved_headers[] = {
    "Content-Type", "Content-Length", "Transfer-Encoding",       "Host",
    "User-Agent",   "Expect",         "X-Graphrouter-Signature", "Connection",
    NULL,
};

static int append_header(struct curl_slist **list, const char *line)
{
    struct curl_slist *l = curl_slist_append(*list, line);
    if (!l)
        return -1;
    *list = l;
    return 0;
}

/* Build the fixed header list: ours, then "headers" from the config. */
static int build_headers(struct http_state *s)
{
    if (append_header(&s->headers, "Content-Type: application/json") < 0 ||
        append_header(&s->headers, "Expect:") < 0) { /* no 100-continue round trip */
        host->init_error(s->h, "out of memory");
        return -1;
    }
    const char *text = host->config_json(s->h, "headers");
    if (!text || strcmp(text, "null") == 0)
        return 0;
    json_t *obj = json_loads(text, 0, NULL);
    if (!json_is_object(obj)) {
        json_decref(obj);
        host->init_error(s->h, "\"headers\" must be an object of header names to string values");
        return -1;
    }
    int rc = 0;
    const char *name;
    json_t *value;
    json_object_foreach(obj, name, value) {
        if (!is_token(name)) {
            host->init_error(s->h,
                             "\"headers\": \"%s\" is not a valid header name (letters, digits and "
                             "!#$%%&'*+-.^_`|~ only; no ':', spaces, CR or LF)",
                             name);
            rc = -1;
            break;
        }
        int reserved = 0;
        for (const char *const *r = reserved_headers; *r && !reserved; r++)
            reserved = strcasecmp(name, *r) == 0;
        if (reserved) {
            host->init_error(s->h, "\"headers\": \"%s\" is set by the plugin itself", name);
            rc = -1;
            break;
        }
        if (!json_is_string(value) ||
            !is_field_value(json_string_value(value), json_string_length(value))) {
            /* the value may be a credential: never echo it */
            host->init_error(s->h,
                             "\"headers\": the value of \"%s\" must be a string without CR, LF "
                             "or other control characters",
                             name);
            rc = -1;
            break;
        }
        const char *v = json_string_value(value);
        /* "Name;" is libcurl's way of sending a header with an empty value */
        size_t n = strlen(name) + strlen(v) + 3;
        char *line = malloc(n);
        if (!line) {
            host->init_error(s->h, "out of memory");
            rc = -1;
            break;
        }
        if (*v)
            snprintf(line, n, "%s: %s", name, v);
        else
            snprintf(line, n, "%s;", name);
        rc = append_header(&s->headers, line);
        free(line);
        if (rc < 0) {
            host->init_error(s->h, "out of memory");
            break;
        }
    }
    json_decref(obj);
    return rc;
}

static int check_url(struct http_state *s)
{
    const char *url = s->url;
    CURLU *u = curl_url();
    if (!u) {
        host->init_error(s->h, "out of memory");
        return -1;
    }
    char *scheme = NULL, *hostname = NULL;
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
    int rc = -1;
    if (uc != CURLUE_OK)
        host->init_error(s->h, "\"url\" is not a valid URL: %s", curl_url_strerror(uc));
    else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
             (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
        host->init_error(s->h, "\"url\" must start with http:// or https://");
    else if (curl_url_get(u, CURLUPART_HOST, &hostname, 0) != CURLUE_OK || !*hostname)
        host->init_error(s->h, "\"url\" has no host");
    else
        rc = 0;
    if (rc == 0) /* the scheme and host only: the rest may carry credentials */
        host->log(s->h, GR_LOG_DEBUG, "posting to %s://%s", scheme, hostname);
    curl_free(scheme);
    curl_free(hostname);
    curl_url_cleanup(u);
    return rc;
}

static int config_ms(struct http_state *s, const char *key, long dflt, long *out)
{
    int64_t v = host->config_int(s->h, key, dflt);
    if (v < 1 || v > HTTP_MAX_TIMEOUT_MS) {
        host->init_error(s->h, "\"%s\" must be between 1 and %d (milliseconds)", key,
                         HTTP_MAX_TIMEOUT_MS);
        return -1;
    }
    *out = (long)v;
    return 0;
}

/* ---- the handle pool ----------------------------------------------------- */

static size_t discard(char *data, size_t size, size_t n, void *arg)
{
    (void)data;
    (void)arg;
    return size * n;
}

static void conn_free(struct http_conn *c)
{
    if (c) {
        curl_easy_cleanup(c->curl);
        free(c);
    }
}

static struct http_conn *conn_new(struct http_state *s)
{
    struct http_conn *c = calloc(1, sizeof *c);
    if (!c || !(c->curl = curl_easy_init())) {
        free(c);
        return NULL;
    }
    CURL *e = c->curl;
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (rc == CURLE_OK)                                                                        \
            rc = curl_easy_setopt(e, opt, val);                                                    \
    } while (0)
    SET(CURLOPT_URL, s->url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_NOSIGNAL, 1L); /* several threads: no SIGALRM-based DNS timeouts */
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    if (s->ca_file)
        SET(CURLOPT_CAINFO, s->ca_file);
    SET(CURLOPT_TIMEOUT_MS, s->timeout_ms);
    SET(CURLOPT_CONNECTTIMEOUT_MS, s->connect_timeout_ms);
    SET(CURLOPT_USERAGENT, s->user_agent);
    SET(CURLOPT_HTTPHEADER, s->headers);
    SET(CURLOPT_ERRORBUFFER, c->error);
    SET(CURLOPT_WRITEFUNCTION, discard);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
#undef SET
    if (rc != CURLE_OK) {
        host->log(s->h, GR_LOG_ERROR, "cannot set up a libcurl handle: %s",
                  curl_easy_strerror(rc));
        conn_free(c);
        return NULL;
    }
    return c;
}

static struct http_conn *conn_get(struct http_state *s)
{
    pthread_mutex_lock(&s->lock);
    struct http_conn *c = s->idle;
    if (c) {
        s->idle = c->next;
        s->nidle--;
    }
    pthread_mutex_unlock(&s->lock);
    return c ? c : conn_new(s);
}

static void conn_put(struct http_state *s, struct http_conn *c)
{
    pthread_mutex_lock(&s->lock);
    if (s->nidle < HTTP_POOL_MAX) {
        c->next = s->idle;
        s->idle = c;
        s->nidle++;
        c = NULL;
    }
    pthread_mutex_unlock(&s->lock);
    conn_free(c); /* the pool is full */
}

/* ---- lifecycle ------------------------------------------------------------ */

static void state_free(struct http_state *s)
{
    while (s->idle) {
        struct http_conn *c = s->idle;
        s->idle = c->next;
        conn_free(c);
    }
    pthread_mutex_destroy(&s->lock);
    curl_slist_free_all(s->headers);
    free(s->user_agent);
    free(s);
}

static int http_init(struct gr_handler *h, void **state)
{
    struct http_state *s = calloc(1, sizeof *s);
    if (!s) {
        host->init_error(h, "out of memory");
        return -1;
    }
    s->h = h;
    pthread_mutex_init(&s->lock, NULL);
    s->url = host->config_string(h, "url");
    s->secret = host->config_string(h, "secret");
    s->ca_file = host->config_string(h, "ca_file");
    size_t ua_len = strlen("graphrouter/") + strlen(host->version) + 1;
    if (check_url(s) < 0 || config_ms(s, "timeout_ms", 10000, &s->timeout_ms) < 0 ||
        config_ms(s, "connect_timeout_ms", 5000, &s->connect_timeout_ms) < 0)
        goto fail;
    if (s->secret && !*s->secret) {
        host->init_error(h, "\"secret\" is empty (leave it out to send no signature)");
        goto fail;
    }
    s->secret_len = s->secret ? strlen(s->secret) : 0;
    if (s->secret_len > HTTP_MAX_SECRET) {
        host->init_error(h, "\"secret\" is longer than %d bytes", HTTP_MAX_SECRET);
        goto fail;
    }
    if (s->ca_file && access(s->ca_file, R_OK) != 0) {
        host->init_error(h, "\"ca_file\": cannot read %s: %s", s->ca_file, strerror(errno));
        goto fail;
    }
    if (!(s->user_agent = malloc(ua_len))) {
        host->init_error(h, "out of memory");
        goto fail;
    }
    snprintf(s->user_agent, ua_len, "graphrouter/%s", host->version);
    if (build_headers(s) < 0)
        goto fail;
    /* One handle now, so a libcurl that cannot be set up fails the config. */
    struct http_conn *c = conn_new(s);
    if (!c) {
        host->init_error(h, "cannot set up libcurl");
        goto fail;
    }
    conn_put(s, c);
    s->ok = host->metric(h, "http_requests_ok_total", "POSTs answered 2xx (delivered).", 0);
    s->retry = host->metric(h, "http_requests_retry_total",
                            "POSTs to be retried: 408, 429, 5xx or a network error.", 0);
    s->fail = host->metric(h, "http_requests_fail_total",
                           "POSTs answered another status (a dead letter).", 0);
    *state = s;
    return 0;
fail:
    state_free(s);
    return -1;
}

static void http_fini(void *state)
{
    state_free(state);
}

/* ---- delivery --------------------------------------------------------------- */

/* "sha256=" and the lower-case hex HMAC-SHA256 of the body under the secret,
 * after HTTP_SIG_HEADER; returns 0, or -1 if OpenSSL fails. */
static int sign(const struct http_state *s, const char *body, size_t len,
                char out[sizeof HTTP_SIG_HEADER + 2 * EVP_MAX_MD_SIZE])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (!HMAC(EVP_sha256(), s->secret, (int)s->secret_len, (const unsigned char *)body, len, mac,
              &mac_len))
        return -1;
    static const char hex[] = "0123456789abcdef";
    size_t n = strlen(HTTP_SIG_HEADER);
    memcpy(out, HTTP_SIG_HEADER, n);
    for (unsigned i = 0; i < mac_len; i++) {
        out[n++] = hex[mac[i] >> 4];
        out[n++] = hex[mac[i] & 15];
    }
    out[n] = '\0';
    return 0;
}

static int outcome(struct http_state *s, int result)
{
    host->metric_add(result == GR_OK ? s->ok : result == GR_RETRY ? s->retry : s->fail, 1);
    return result;
}

static int http_handle(void *state, struct gr_msg *msg)
{
    struct http_state *s = state;
    int can_explain = GR_HOST_HAS(host, set_error);
    size_t len;
    const char *body = host->msg_json(msg, &len);

    /* The signature goes first, in a list node of our own that links to the
     * shared fixed headers: nothing to copy, nothing to free. */
    char sig[sizeof HTTP_SIG_HEADER + 2 * EVP_MAX_MD_SIZE];
    struct curl_slist sig_node = {sig, s->headers};
    if (s->secret && sign(s, body, len, sig) < 0) {
        if (can_explain)
            host->set_error(msg, "cannot compute the HMAC signature");
        return outcome(s, GR_RETRY);
    }

    struct http_conn *c = conn_get(s);
    if (!c) {
        if (can_explain)
            host->set_error(msg, "cannot set up a libcurl handle");
        return outcome(s, GR_RETRY);
    }
    CURL *e = c->curl;
    c->error[0] = '\0';
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, s->secret ? &sig_node : s->headers);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CURLcode rc = curl_easy_perform(e);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (long)(t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    long status = 0;
    curl_off_t retry_after = 0;
    if (rc == CURLE_OK) {
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(e, CURLINFO_RETRY_AFTER, &retry_after);
    }
    char network[CURL_ERROR_SIZE + 1];
    if (rc != CURLE_OK)
        snprintf(network, sizeof network, "%s", c->error[0] ? c->error : curl_easy_strerror(rc));
    /* nothing of this call may outlive it on the pooled handle */
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, s->headers);
    conn_put(s, c);

    if (rc != CURLE_OK) {
        host->log(s->h, GR_LOG_DEBUG, "POST failed after %ld ms: %s", ms, network);
        if (can_explain)
            host->set_error(msg, "network: %s", network);
        return outcome(s, GR_RETRY);
    }
    host->log(s->h, GR_LOG_DEBUG, "POST answered HTTP %ld in %ld ms", status, ms);
    if (status >= 200 && status < 300)
        return outcome(s, GR_OK);
    if (status == 408 || status == 429 || (status >= 500 && status < 600)) {
        if (can_explain)
            host->set_error(msg, "HTTP %ld", status);
        if (retry_after > 0 && GR_HOST_HAS(host, retry_after)) {
            /* the host caps it at a day; stay clear of overflow before that */
            int64_t secs = retry_after > 86400 * 2 ? 86400 * 2 : (int64_t)retry_after;
            host->retry_after(msg, secs * 1000);
        }
        return outcome(s, GR_RETRY);
    }
    if (can_explain) {
        if (status >= 300 && status < 400)
            host->set_error(msg, "HTTP %ld (redirects are not followed)", status);
        else
            host->set_error(msg, "HTTP %ld", status);
    }
    return outcome(s, GR_FAIL);
}

static const struct gr_config_key http_keys[] = {
    {"url", GR_CONFIG_STRING, 1, "the http:// or https:// URL to POST each message to"},
    {"headers", GR_CONFIG_JSON, 0, "an object of extra header names to string values"},
    {"secret", GR_CONFIG_SECRET, 0, "HMAC-SHA256 key: signs each body in X-Graphrouter-Signature"},
    {"timeout_ms", GR_CONFIG_INT, 0, "the whole request's time limit, default 10000"},
    {"connect_timeout_ms", GR_CONFIG_INT, 0, "the connection's time limit, default 5000"},
    {"ca_file", GR_CONFIG_STRING, 0, "a PEM bundle of CAs to trust for https (a private PKI)"},
    {NULL, 0, 0, NULL},
};

static const struct gr_plugin http_plugin = {
    .abi_major = GR_PLUGIN_ABI_MAJOR,
    .abi_minor = GR_PLUGIN_ABI_MINOR,
    .size = sizeof(struct gr_plugin),
    .name = "http",
    .version = "1.0",
    .description = "POSTs each notification or event as JSON to a URL, optionally HMAC-signed",
    .config_keys = http_keys,
    .init = http_init,
    .handle = http_handle,
    .fini = http_fini,
};

GR_PLUGIN_EXPORT const struct gr_plugin *gr_plugin_entry(const struct gr_host *h)
{
    host = h;
    return &http_plugin;
}
