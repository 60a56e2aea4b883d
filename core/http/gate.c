/*
 * The gate: accept loop, admission limits, strict first heads and deadlines
 * (see gate.h). One thread; libmicrohttpd's threads call in through
 * gr_gate_notify, gr_gate_phase and the forwarded-address accounting.
 *
 * Every open connection has a record in by_fd, indexed by its socket, from
 * accept until close: HELD (the gate waits for its first head), SERVER
 * (libmicrohttpd has it; freed by libmicrohttpd's CLOSED notification, which
 * comes before it closes the socket) or LINGER (the gate answered it and
 * drains it before closing). `lock` guards by_fd, the counters and the
 * address tables; deadlines are atomics, set by the thread serving the
 * connection and read by the sweep.
 */
#define _GNU_SOURCE
#include "http/gate.h"

#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "generation.h"
#include "http/head.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define GATE_TICK_MS 250         /* how often deadlines are looked at */
#define LINGER_MS 2000           /* how long an answered socket is drained */
#define MAX_LINGERING 512        /* past this, answered sockets are closed at once */
#define FD_RESERVE 128           /* descriptors kept for the store, plugins and logs */
#define ACCEPT_PAUSE_MS 100      /* after EMFILE: let closing connections free descriptors */
#define IP_BUCKETS 1024
#define RETRY_AFTER_S "5"

enum conn_state { HELD, SERVER, LINGER };

struct gr_gate_conn {
    int fd;
    enum conn_state state;
    bool proxy; /* from limits.trusted_proxies: no per-address cap on the connection */
    struct gr_addr addr;
    struct sockaddr_storage ss;
    socklen_t sslen;
    atomic_int_fast64_t deadline_ms; /* monotonic; 0: none */
    atomic_int phase;                /* enum gr_gate_phase, for the timeout's label */
    struct gr_gate *gate;
    void *kept; /* gr_gate_conn_keep: released when the record is */
    void (*release)(void *);
};

struct ipcount {
    struct gr_addr addr;
    unsigned n;
    struct ipcount *next;
};

struct iptable {
    struct ipcount *bucket[IP_BUCKETS];
};

struct gr_gate {
    int lfd, epfd, wakefd;
    unsigned port;
    bool tls;
    struct MHD_Daemon *daemon;
    pthread_t thread;
    bool started;
    atomic_bool stop, quiesce, closed_listener;
    int64_t accept_paused_until;

    /* limits, refreshed from the current generation on every turn */
    atomic_uint head_s, body_s, idle_s;

    pthread_mutex_t lock;
    struct gr_gate_conn **by_fd;
    unsigned nfd, fd_cap; /* by_fd's size; connections allowed by the open-file limit */
    unsigned total, held, in_server, lingering;
    struct iptable conns_by_ip, fwd_by_ip;

    char peek[GR_HEAD_MAX_BYTES + 1];
};

/* ---- per-address counts --------------------------------------------------- */

static unsigned ip_hash(const struct gr_addr *a)
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ a->b[i]) * 16777619u;
    return h % IP_BUCKETS;
}

static struct ipcount **ip_find(struct iptable *t, const struct gr_addr *a)
{
    struct ipcount **p = &t->bucket[ip_hash(a)];
    while (*p && memcmp((*p)->addr.b, a->b, 16) != 0)
        p = &(*p)->next;
    return p;
}

static unsigned ip_count(struct iptable *t, const struct gr_addr *a)
{
    struct ipcount **p = ip_find(t, a);
    return *p ? (*p)->n : 0;
}

static void ip_add(struct iptable *t, const struct gr_addr *a)
{
    struct ipcount **p = ip_find(t, a);
    if (!*p) {
        *p = gr_xcalloc(1, sizeof **p);
        (*p)->addr = *a;
    }
    (*p)->n++;
}

static void ip_sub(struct iptable *t, const struct gr_addr *a)
{
    struct ipcount **p = ip_find(t, a);
    if (!*p)
        return;
    if (--(*p)->n == 0) {
        struct ipcount *gone = *p;
        *p = gone->next;
        free(gone);
    }
}

static void ip_free(struct iptable *t)
{
    for (size_t i = 0; i < IP_BUCKETS; i++)
        while (t->bucket[i]) {
            struct ipcount *n = t->bucket[i]->next;
            free(t->bucket[i]);
            t->bucket[i] = n;
        }
}

/* ---- records ------------------------------------------------------------ */

/* Under lock: the record no longer counts as an open connection. */
static void uncount(struct gr_gate *g, struct gr_gate_conn *c)
{
    if (c->state == LINGER) {
        g->lingering--;
        return;
    }
    g->total--;
    if (c->state == HELD)
        g->held--;
    else
        g->in_server--;
    if (!c->proxy)
        ip_sub(&g->conns_by_ip, &c->addr);
}

/* Under lock: forget a record (its socket is closed by the caller or MHD). */
static void forget(struct gr_gate *g, struct gr_gate_conn *c)
{
    if (c->release)
        c->release(c->kept);
    uncount(g, c);
    if ((unsigned)c->fd < g->nfd && g->by_fd[c->fd] == c)
        g->by_fd[c->fd] = NULL;
    free(c);
}

static void set_deadline(struct gr_gate_conn *c, unsigned seconds)
{
    atomic_store(&c->deadline_ms, seconds ? gr_mono_ms() + (int64_t)seconds * 1000 : 0);
}

/* ---- answers written by the gate ------------------------------------------ */

static void client_text(const struct gr_addr *a, char out[GR_ADDR_TEXT])
{
    gr_addr_format(a, out);
}

/* Write a whole short answer to a fresh socket: plain HTTP only. The text is
 * one of graphrouter's constants, never client input. */
static void write_answer(int fd, unsigned status, const char *reason)
{
    char *msg = gr_xprintf("HTTP/1.1 %u %s\r\n"
                           "Content-Type: text/plain; charset=utf-8\r\n"
                           "X-Content-Type-Options: nosniff\r\n"
                           "%s"
                           "Connection: close\r\n"
                           "Content-Length: %zu\r\n"
                           "\r\n"
                           "%s\n",
                           status, gr_status_phrase(status),
                           status == 503 ? "Retry-After: " RETRY_AFTER_S "\r\n" : "",
                           strlen(reason) + 1, reason);
    /* A new socket's send buffer takes a few hundred bytes at once; a client
     * that is not reading loses only its own answer. */
    ssize_t n = send(fd, msg, strlen(msg), MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)n;
    free(msg);
}

/* Under lock: the socket was answered (or is refused silently with TLS):
 * shut it for writing and drain it for LINGER_MS before closing, so that the
 * client reads the answer rather than a reset. c may be NULL (not yet
 * recorded) or a HELD record, which stops counting as open. */
static void linger(struct gr_gate *g, int fd, struct gr_gate_conn *c)
{
    shutdown(fd, SHUT_WR);
    if (g->lingering >= MAX_LINGERING || (unsigned)fd >= g->nfd) {
        if (c)
            forget(g, c);
        close(fd);
        return;
    }
    if (c) {
        uncount(g, c);
    } else {
        c = gr_xcalloc(1, sizeof *c);
        c->fd = fd;
        c->gate = g;
        g->by_fd[fd] = c;
    }
    c->state = LINGER;
    g->lingering++;
    atomic_store(&c->deadline_ms, gr_mono_ms() + LINGER_MS);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fd};
    if (epoll_ctl(g->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 &&
        epoll_ctl(g->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        forget(g, c);
        close(fd);
    }
}

/* Under lock: answer and close (plain), or close (TLS: no answer possible
 * before the handshake). */
static void refuse(struct gr_gate *g, int fd, struct gr_gate_conn *c, unsigned status,
                   const char *reason)
{
    if (!g->tls)
        write_answer(fd, status, reason);
    linger(g, fd, c);
}

/* ---- accept ----------------------------------------------------------------- */

struct limits {
    unsigned max_connections, per_ip;
    const struct gr_cidr *allow_from, *trusted;
    size_t n_allow_from, n_trusted;
};

static void hand_over(struct gr_gate *g, struct gr_gate_conn *c);

static void admit(struct gr_gate *g, const struct limits *lim, int fd,
                  const struct sockaddr_storage *ss, socklen_t sslen)
{
    struct gr_addr addr;
    if (!gr_addr_from_sockaddr((const struct sockaddr *)ss, &addr) || (unsigned)fd >= g->nfd) {
        close(fd);
        return;
    }
    char who[GR_ADDR_TEXT];
    bool proxy = gr_cidr_list_match(lim->trusted, lim->n_trusted, &addr);
    if (lim->allow_from && !proxy && !gr_cidr_list_match(lim->allow_from, lim->n_allow_from, &addr)) {
        gr_metrics_conn_refused(GR_REFUSED_ALLOW_FROM);
        client_text(&addr, who);
        gr_warn_limited("connection refused: client=%s is not in limits.allow_from", who);
        close(fd); /* no answer: this address may not talk to graphrouter at all */
        return;
    }
    pthread_mutex_lock(&g->lock);
    if (g->by_fd[fd]) /* MHD closed this descriptor without telling; its record is stale */
        forget(g, g->by_fd[fd]);
    unsigned cap = lim->max_connections < g->fd_cap ? lim->max_connections : g->fd_cap;
    if (g->total >= cap) {
        refuse(g, fd, NULL, 503, "too many connections; retry later");
        pthread_mutex_unlock(&g->lock);
        gr_metrics_conn_refused(GR_REFUSED_MAX_CONNECTIONS);
        client_text(&addr, who);
        gr_warn_limited("connection refused with 503: %u connections open (limits.max_connections "
                        "%u); client=%s",
                        cap, lim->max_connections, who);
        return;
    }
    if (!proxy && ip_count(&g->conns_by_ip, &addr) >= lim->per_ip) {
        refuse(g, fd, NULL, 429, "too many connections from this address");
        pthread_mutex_unlock(&g->lock);
        gr_metrics_conn_refused(GR_REFUSED_PER_IP);
        client_text(&addr, who);
        gr_warn_limited("connection refused with 429: client=%s has %u connections open "
                        "(limits.max_connections_per_ip)",
                        who, lim->per_ip);
        return;
    }
    struct gr_gate_conn *c = gr_xcalloc(1, sizeof *c);
    c->fd = fd;
    c->gate = g;
    c->addr = addr;
    c->proxy = proxy;
    memcpy(&c->ss, ss, sslen);
    c->sslen = sslen;
    c->state = HELD;
    atomic_store(&c->phase, GR_PHASE_HEAD);
    set_deadline(c, atomic_load(&g->head_s));
    g->by_fd[fd] = c;
    g->total++;
    g->held++;
    if (!proxy)
        ip_add(&g->conns_by_ip, &addr);
    if (g->tls) { /* the head is encrypted: libmicrohttpd takes it from here */
        hand_over(g, c);
        pthread_mutex_unlock(&g->lock);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.fd = fd};
    if (epoll_ctl(g->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        forget(g, c);
        close(fd);
    }
    pthread_mutex_unlock(&g->lock);
}

static void accept_all(struct gr_gate *g, const struct limits *lim)
{
    for (int i = 0; i < 256; i++) {
        struct sockaddr_storage ss;
        socklen_t sslen = sizeof ss;
        int fd = accept4(g->lfd, (struct sockaddr *)&ss, &sslen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            admit(g, lim, fd, &ss, sslen);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* The listening socket stays readable: pause instead of spinning. */
            gr_warn_limited("cannot accept connections: %s; pausing for %d ms", strerror(errno),
                            ACCEPT_PAUSE_MS);
            epoll_ctl(g->epfd, EPOLL_CTL_DEL, g->lfd, NULL);
            g->accept_paused_until = gr_mono_ms() + ACCEPT_PAUSE_MS;
        }
        return;
    }
}

/* Under lock: the record goes to libmicrohttpd. Its socket is no longer the
 * gate's to read; MHD's STARTED notification finds the record by fd. */
static void hand_over(struct gr_gate *g, struct gr_gate_conn *c)
{
    if (!g->tls)
        epoll_ctl(g->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    c->state = SERVER;
    g->held--;
    g->in_server++;
    int fd = c->fd;
    struct sockaddr_storage ss = c->ss;
    socklen_t sslen = c->sslen;
    /* MHD_add_connection only queues the socket for a pool thread, whose
     * STARTED notification takes the lock: it must not be held here. */
    pthread_mutex_unlock(&g->lock);
    enum MHD_Result ok = MHD_add_connection(g->daemon, fd, (struct sockaddr *)&ss, sslen);
    pthread_mutex_lock(&g->lock);
    if (ok != MHD_YES) { /* MHD closed the socket */
        gr_warn_limited("libmicrohttpd refused a connection: %s", strerror(errno));
        if (g->by_fd[fd] == c)
            forget(g, c);
    }
}

/* ---- held connections: the first head -------------------------------------- */

static void held_event(struct gr_gate *g, struct gr_gate_conn *c, uint32_t events)
{
    ssize_t n = recv(c->fd, g->peek, sizeof g->peek, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) { /* the client left before its head was complete */
        int fd = c->fd;
        epoll_ctl(g->epfd, EPOLL_CTL_DEL, fd, NULL);
        forget(g, c);
        close(fd);
        return;
    }
    size_t head_len;
    struct gr_head_verdict v;
    int rc = gr_head_check(g->peek, (size_t)n, &head_len, &v);
    if (rc == 0 && (events & (EPOLLRDHUP | EPOLLHUP)))
        rc = -1, v = (struct gr_head_verdict){GR_HEAD_MALFORMED, 400,
                                              "connection closed before the request head "
                                              "was complete"};
    if (rc == 0)
        return; /* wait for more (edge-triggered: the next bytes wake us) */
    if (rc > 0) {
        hand_over(g, c);
        return;
    }
    gr_metrics_head_refused(v.error);
    char who[GR_ADDR_TEXT];
    client_text(&c->addr, who);
    gr_warn_limited("request refused with %u: %s; client=%s", v.status, v.reason, who);
    refuse(g, c->fd, c, v.status, v.reason);
}

static void linger_event(struct gr_gate *g, struct gr_gate_conn *c)
{
    char sink[4096];
    for (;;) {
        ssize_t n = recv(c->fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        int fd = c->fd; /* EOF or error: the client has read what it will */
        forget(g, c);
        close(fd);
        return;
    }
}

/* ---- deadlines ---------------------------------------------------------------- */

static const char *const phase_names[] = {"head", "body", "wait"};

static void expire(struct gr_gate *g, struct gr_gate_conn *c)
{
    char who[GR_ADDR_TEXT];
    if (c->state == LINGER) {
        int fd = c->fd;
        forget(g, c);
        close(fd);
        return;
    }
    int phase = atomic_load(&c->phase);
    gr_metrics_http_timeout(phase);
    client_text(&c->addr, who);
    gr_warn_limited("request timed out with 408: its %s was not complete within "
                    "limits.%s; client=%s",
                    phase_names[phase], phase == GR_PHASE_BODY ? "body_timeout_s" : "header_timeout_s",
                    who);
    if (c->state == HELD) {
        refuse(g, c->fd, c, 408, "request head not complete in time (limits.header_timeout_s)");
        return;
    }
    /* In libmicrohttpd, which is only reading from this socket now: answer,
     * then shut it down; libmicrohttpd sees the client gone and closes it. */
    atomic_store(&c->deadline_ms, 0);
    if (!g->tls)
        write_answer(c->fd, 408,
                     phase == GR_PHASE_BODY
                         ? "request body not complete in time (limits.body_timeout_s)"
                         : "request head not complete in time (limits.header_timeout_s)");
    shutdown(c->fd, SHUT_RDWR);
}

static void sweep(struct gr_gate *g)
{
    int64_t now = gr_mono_ms();
    pthread_mutex_lock(&g->lock);
    for (unsigned fd = 0; fd < g->nfd; fd++) {
        struct gr_gate_conn *c = g->by_fd[fd];
        if (!c)
            continue;
        int64_t d = atomic_load(&c->deadline_ms);
        if (d && now >= d)
            expire(g, c);
    }
    pthread_mutex_unlock(&g->lock);
}

/* ---- the thread ---------------------------------------------------------------- */

static void refresh_limits(struct gr_gate *g, const struct gr_config *cfg, struct limits *lim)
{
    atomic_store(&g->head_s, cfg->header_timeout_s);
    atomic_store(&g->body_s, cfg->body_timeout_s);
    atomic_store(&g->idle_s, cfg->connection_timeout_s);
    *lim = (struct limits){cfg->max_connections, cfg->max_connections_per_ip, cfg->allow_from,
                           cfg->trusted_proxies, cfg->n_allow_from, cfg->n_trusted_proxies};
}

static void *gate_main(void *arg)
{
    struct gr_gate *g = arg;
    struct epoll_event ev[64];
    int64_t next_sweep = gr_mono_ms() + GATE_TICK_MS;
    while (!atomic_load(&g->stop)) {
        int n = epoll_wait(g->epfd, ev, 64, GATE_TICK_MS);
        struct gr_generation *gen = gr_generation_pin();
        struct limits lim;
        refresh_limits(g, gen->cfg, &lim);
        if (atomic_load(&g->quiesce) && g->lfd >= 0) {
            epoll_ctl(g->epfd, EPOLL_CTL_DEL, g->lfd, NULL);
            close(g->lfd);
            g->lfd = -1;
            atomic_store(&g->closed_listener, true);
        }
        for (int i = 0; i < n; i++) {
            int fd = ev[i].data.fd;
            if (fd == g->wakefd) {
                uint64_t v;
                ssize_t r = read(g->wakefd, &v, sizeof v);
                (void)r;
            } else if (fd == g->lfd) {
                accept_all(g, &lim);
            } else {
                pthread_mutex_lock(&g->lock);
                struct gr_gate_conn *c = (unsigned)fd < g->nfd ? g->by_fd[fd] : NULL;
                if (c && c->state == HELD)
                    held_event(g, c, ev[i].events);
                else if (c && c->state == LINGER)
                    linger_event(g, c);
                pthread_mutex_unlock(&g->lock);
            }
        }
        int64_t now = gr_mono_ms();
        if (g->accept_paused_until && now >= g->accept_paused_until && g->lfd >= 0) {
            struct epoll_event lev = {.events = EPOLLIN, .data.fd = g->lfd};
            epoll_ctl(g->epfd, EPOLL_CTL_ADD, g->lfd, &lev);
            g->accept_paused_until = 0;
        }
        if (now >= next_sweep) {
            sweep(g);
            next_sweep = now + GATE_TICK_MS;
        }
        gr_generation_unpin(gen);
    }
    return NULL;
}

/* ---- public ---------------------------------------------------------------- */

static unsigned raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 1024;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max > (1u << 20) ? (1u << 20) : rl.rlim_max;
        struct rlimit up = {want, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            rl.rlim_cur = want;
    }
    return rl.rlim_cur > (1u << 20) ? (1u << 20) : (unsigned)rl.rlim_cur;
}

struct gr_gate *gr_gate_open(const struct gr_config *cfg, bool tls, char **err)
{
    struct sockaddr_storage ss = {0};
    socklen_t sslen;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, cfg->listen_address, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)cfg->listen_port);
        sslen = sizeof *v4;
    } else if (inet_pton(AF_INET6, cfg->listen_address, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)cfg->listen_port);
        sslen = sizeof *v6;
    } else {
        *err = gr_xprintf("cannot listen on %s: not an IPv4 or IPv6 address", cfg->listen_address);
        return NULL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&ss, sslen) < 0 || listen(fd, SOMAXCONN) < 0) {
        *err = gr_xprintf("cannot listen on %s:%u: %s (is the address local and the port free?)",
                          cfg->listen_address, cfg->listen_port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    getsockname(fd, (struct sockaddr *)&bound, &blen);

    struct gr_gate *g = gr_xcalloc(1, sizeof *g);
    g->lfd = fd;
    g->tls = tls;
    g->port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                               : ((struct sockaddr_in6 *)&bound)->sin6_port);
    g->nfd = raise_fd_limit();
    g->fd_cap = g->nfd > 2 * FD_RESERVE ? g->nfd - FD_RESERVE : g->nfd / 2;
    if (cfg->max_connections > g->fd_cap)
        gr_warn("limits.max_connections is %u, but the open-file limit (%u) leaves room for %u "
                "connections; raise LimitNOFILE to allow more",
                cfg->max_connections, g->nfd, g->fd_cap);
    g->by_fd = gr_xcalloc(g->nfd, sizeof *g->by_fd);
    pthread_mutex_init(&g->lock, NULL);
    atomic_store(&g->head_s, cfg->header_timeout_s);
    atomic_store(&g->body_s, cfg->body_timeout_s);
    atomic_store(&g->idle_s, cfg->connection_timeout_s);
    g->epfd = epoll_create1(EPOLL_CLOEXEC);
    g->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = g->lfd};
    struct epoll_event wev = {.events = EPOLLIN, .data.fd = g->wakefd};
    if (g->epfd < 0 || g->wakefd < 0 || epoll_ctl(g->epfd, EPOLL_CTL_ADD, g->lfd, &lev) < 0 ||
        epoll_ctl(g->epfd, EPOLL_CTL_ADD, g->wakefd, &wev) < 0) {
        *err = gr_xprintf("cannot set up the accept loop: %s", strerror(errno));
        gr_gate_close(g);
        return NULL;
    }
    return g;
}

unsigned gr_gate_port(const struct gr_gate *g)
{
    return g->port;
}

unsigned gr_gate_fd_limit(const struct gr_gate *g)
{
    return g->nfd;
}

bool gr_gate_run(struct gr_gate *g, struct MHD_Daemon *d)
{
    g->daemon = d;
    g->started = pthread_create(&g->thread, NULL, gate_main, g) == 0;
    if (g->started)
        pthread_setname_np(g->thread, "gr-gate");
    return g->started;
}

static void wake(struct gr_gate *g)
{
    uint64_t one = 1;
    ssize_t r = write(g->wakefd, &one, sizeof one);
    (void)r;
}

void gr_gate_quiesce(struct gr_gate *g)
{
    atomic_store(&g->quiesce, true);
    wake(g);
    for (int i = 0; i < 200 && g->started && !atomic_load(&g->closed_listener); i++)
        usleep(5000);
}

void gr_gate_close(struct gr_gate *g)
{
    if (!g)
        return;
    if (g->started) {
        atomic_store(&g->stop, true);
        wake(g);
        pthread_join(g->thread, NULL);
    }
    for (unsigned fd = 0; fd < g->nfd; fd++) {
        struct gr_gate_conn *c = g->by_fd[fd];
        if (c && c->state != SERVER) {
            forget(g, c);
            close((int)fd);
        } else if (c) { /* MHD is stopped: it told us of every close */
            forget(g, c);
        }
    }
    if (g->lfd >= 0)
        close(g->lfd);
    if (g->epfd >= 0)
        close(g->epfd);
    if (g->wakefd >= 0)
        close(g->wakefd);
    ip_free(&g->conns_by_ip);
    ip_free(&g->fwd_by_ip);
    pthread_mutex_destroy(&g->lock);
    free(g->by_fd);
    free(g);
}

void gr_gate_notify(void *cls, struct MHD_Connection *mc, void **socket_context, int toe)
{
    struct gr_gate *g = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        int fd = info ? info->connect_fd : -1;
        pthread_mutex_lock(&g->lock);
        struct gr_gate_conn *c = fd >= 0 && (unsigned)fd < g->nfd ? g->by_fd[fd] : NULL;
        *socket_context = c && c->state == SERVER ? c : NULL;
        pthread_mutex_unlock(&g->lock);
        return;
    }
    struct gr_gate_conn *c = *socket_context;
    if (!c)
        return;
    pthread_mutex_lock(&g->lock);
    forget(g, c);
    pthread_mutex_unlock(&g->lock);
    *socket_context = NULL;
}

void gr_gate_conn_keep(struct gr_gate_conn *c, void *ref, void (*release)(void *))
{
    struct gr_gate *g = c->gate;
    pthread_mutex_lock(&g->lock);
    void *old = c->kept;
    void (*old_release)(void *) = c->release;
    c->kept = ref;
    c->release = release;
    pthread_mutex_unlock(&g->lock);
    if (old_release)
        old_release(old);
}

void gr_gate_phase(struct gr_gate_conn *c, enum gr_gate_phase phase)
{
    if (!c)
        return;
    struct gr_gate *g = c->gate;
    atomic_store(&c->phase, (int)phase);
    switch (phase) {
    case GR_PHASE_HEAD: /* after an answer: idle, then the next head */
        set_deadline(c, atomic_load(&g->idle_s) + atomic_load(&g->head_s));
        break;
    case GR_PHASE_BODY:
        set_deadline(c, atomic_load(&g->body_s));
        break;
    case GR_PHASE_WAIT:
        set_deadline(c, 0);
        break;
    }
}

const struct gr_addr *gr_gate_peer(const struct gr_gate_conn *c, bool *trusted_proxy)
{
    *trusted_proxy = c->proxy;
    return &c->addr;
}

bool gr_gate_forwarded_acquire(struct gr_gate *g, const struct gr_addr *addr, unsigned limit)
{
    pthread_mutex_lock(&g->lock);
    bool ok = ip_count(&g->fwd_by_ip, addr) < limit;
    if (ok)
        ip_add(&g->fwd_by_ip, addr);
    pthread_mutex_unlock(&g->lock);
    return ok;
}

void gr_gate_forwarded_release(struct gr_gate *g, const struct gr_addr *addr)
{
    pthread_mutex_lock(&g->lock);
    ip_sub(&g->fwd_by_ip, addr);
    pthread_mutex_unlock(&g->lock);
}

void gr_gate_stats(struct gr_gate *g, struct gr_gate_stats *out)
{
    pthread_mutex_lock(&g->lock);
    out->held = g->held;
    out->in_server = g->in_server;
    pthread_mutex_unlock(&g->lock);
}
