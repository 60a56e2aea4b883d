/*
 * openloop: a tiny open-loop HTTP/1.1 load generator for bench/ingest.sh.
 *
 * wrk is closed-loop: each connection sends its next request only when the
 * previous answer is in, so it measures the maximum rate but cannot hold a
 * fixed rate, and a server stall simply makes it send less (coordinated
 * omission). wrk2 fixes that but is not in Debian, so this is the part of
 * wrk2 that the benchmark needs:
 *
 *   - request j is *scheduled* at t0 + j / RATE (a constant-rate schedule,
 *     timed with an absolute CLOCK_MONOTONIC timerfd, not millisecond sleeps);
 *   - it is sent on the first idle keep-alive connection (at most -c in
 *     flight: HTTP/1.1 without pipelining); if none is idle it waits;
 *   - its latency is measured from its *scheduled* time to the end of its
 *     answer, so time spent waiting for a busy server counts (the wrk2
 *     correction). The latency from the actual send ("service") is reported
 *     too.
 *
 * One thread, epoll, every sample kept (RATE * SECONDS of them) and sorted,
 * so the percentiles are exact. Requests still unsent when the schedule ends
 * are reported as "unsent": a non-zero value means the server (or this
 * generator) did not keep up with RATE.
 *
 * Every request is distinct: the 16 bytes "@@@@@@@@@@@@@@@@" in the body, if
 * present, are replaced per request by 16 hex digits, the -s SEED (4 digits)
 * then a counter (12 digits), so a receiver that drops duplicates stores each.
 *
 * usage: openloop -H HOST -p PORT -u PATH -b BODYFILE -r RATE -d SECONDS -c CONNS [-s SEED]
 * Prints one line of key=value pairs (latencies in microseconds) on stdout.
 * Answers are parsed by Content-Length (both servers under test send it);
 * a chunked answer is counted as an error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define INBUF 16384

struct conn {
    int fd;
    int busy;
    size_t out_off;   /* bytes of the request written so far */
    int64_t sched_ns; /* scheduled time of the request in flight */
    int64_t sent_ns;  /* when its first byte was written */
    char *req;        /* this connection's copy of the request */
    size_t inlen;
    char in[INBUF];
};

static struct conn *conns;
static int nconns = 16;
#define MARKER "@@@@@@@@@@@@@@@@"
static char *req;
static size_t reqlen;
static long marker_off = -1; /* of MARKER in req, or -1 */
static unsigned seed;
static uint64_t sequence;
static int ep;
static struct sockaddr_in addr;

static int64_t *lat, *svc; /* per completed request, ns */
static size_t cap, ncompleted, n202, nother, nerrors, nreconnects;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "openloop: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void conn_open(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket");
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) != 0)
        die("connect");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0)
        die("fcntl");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
        die("epoll_ctl");
    c->busy = 0;
    c->inlen = 0;
    c->out_off = 0;
}

static void conn_reset(struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->busy)
        nerrors++;
    nreconnects++;
    conn_open(c);
}

/* Write what is left of the request; wait for EPOLLOUT if the socket is full. */
static void conn_write(struct conn *c)
{
    while (c->out_off < reqlen) {
        ssize_t n = write(c->fd, c->req + c->out_off, reqlen - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            return;
        }
        conn_reset(c);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_send(struct conn *c, int64_t sched)
{
    c->busy = 1;
    c->sched_ns = sched;
    c->sent_ns = now_ns();
    c->out_off = 0;
    if (marker_off >= 0) {
        char digits[17];
        snprintf(digits, sizeof digits, "%04x%012llx", seed & 0xffffu,
                 (unsigned long long)(sequence++ & 0xffffffffffffULL));
        memcpy(c->req + marker_off, digits, 16);
    }
    conn_write(c);
}

/* Parse as many complete answers as the buffer holds. Returns 1 if the
 * connection became idle, 0 if not, -1 if it must be reset. */
static int conn_parse(struct conn *c, int64_t now)
{
    int became_idle = 0;
    for (;;) {
        char *end = memmem(c->in, c->inlen, "\r\n\r\n", 4);
        if (!end)
            return c->inlen == INBUF ? -1 : became_idle;
        size_t hlen = (size_t)(end - c->in) + 4;
        if (hlen < 12 || strncmp(c->in, "HTTP/1.", 7) != 0)
            return -1;
        int status = atoi(c->in + 9);
        size_t clen = 0;
        int close_after = 0;
        for (char *p = c->in; p < end;) {
            char *nl = memmem(p, (size_t)(end - p) + 2, "\r\n", 2);
            if (!nl)
                break;
            size_t l = (size_t)(nl - p);
            if (l > 15 && strncasecmp(p, "content-length:", 15) == 0)
                clen = strtoul(p + 15, NULL, 10);
            else if (l > 18 && strncasecmp(p, "transfer-encoding:", 18) == 0)
                return -1; /* chunked: not expected from the servers under test */
            else if (l >= 17 && strncasecmp(p, "connection:", 11) == 0 &&
                     memmem(p, l, "close", 5))
                close_after = 1;
            p = nl + 2;
        }
        if (hlen + clen > INBUF)
            return -1;
        if (c->inlen < hlen + clen)
            return became_idle;
        if (!c->busy)
            return -1; /* an answer nobody asked for */
        if (ncompleted < cap) {
            lat[ncompleted] = now - c->sched_ns;
            svc[ncompleted] = now - c->sent_ns;
        }
        ncompleted++;
        if (status == 202)
            n202++;
        else
            nother++;
        c->busy = 0;
        became_idle = 1;
        memmove(c->in, c->in + hlen + clen, c->inlen - hlen - clen);
        c->inlen -= hlen + clen;
        if (close_after) {
            conn_reset(c);
            return 1;
        }
    }
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_us(const int64_t *v, size_t n, double p)
{
    if (!n)
        return 0;
    size_t i = (size_t)(p / 100.0 * (double)n);
    if (i >= n)
        i = n - 1;
    return (double)v[i] / 1000.0;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *path = "/", *bodyfile = NULL;
    int port = 0;
    double rate = 1000, seconds = 10;
    int opt;
    while ((opt = getopt(argc, argv, "H:p:u:b:r:d:c:s:")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'u': path = optarg; break;
        case 'b': bodyfile = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'c': nconns = atoi(optarg); break;
        case 's': seed = (unsigned)strtoul(optarg, NULL, 10); break;
        default:
            fprintf(stderr, "usage: openloop -H HOST -p PORT -u PATH -b BODYFILE -r RATE "
                            "-d SECONDS -c CONNS [-s SEED]\n");
            return 2;
        }
    }
    if (!bodyfile || port <= 0 || rate <= 0 || seconds <= 0 || nconns <= 0) {
        fprintf(stderr, "openloop: -b, -p, and positive -r, -d, -c are required\n");
        return 2;
    }
    FILE *f = fopen(bodyfile, "rb");
    if (!f)
        die(bodyfile);
    struct stat st;
    fstat(fileno(f), &st);
    size_t blen = (size_t)st.st_size;
    char *body = malloc(blen + 1);
    if (!body || fread(body, 1, blen, f) != blen)
        die("reading the body");
    fclose(f);
    size_t hcap = 512 + strlen(path) + strlen(host);
    req = malloc(hcap + blen);
    int hl = snprintf(req, hcap,
                      "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      path, host, port, blen);
    memcpy(req + hl, body, blen);
    reqlen = (size_t)hl + blen;
    free(body);
    char *m = memmem(req, reqlen, MARKER, strlen(MARKER));
    marker_off = m ? (long)(m - req) : -1;

    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "openloop: -H takes a numeric IPv4 address\n");
        return 2;
    }
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* timers fire within ~1 us, not 50 us */

    size_t total = (size_t)(rate * seconds);
    cap = total;
    lat = malloc((cap ? cap : 1) * sizeof *lat);
    svc = malloc((cap ? cap : 1) * sizeof *svc);
    if (!lat || !svc)
        die("malloc");

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    conns = calloc((size_t)nconns, sizeof *conns);
    if (!conns)
        die("calloc");
    for (int i = 0; i < nconns; i++) {
        conns[i].req = malloc(reqlen);
        if (!conns[i].req)
            die("malloc");
        memcpy(conns[i].req, req, reqlen);
        conn_open(&conns[i]);
    }
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0)
        die("timerfd_create");
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);

    const double interval = 1e9 / rate;
    const int64_t t0 = now_ns() + 1000000; /* 1 ms from now */
    const int64_t t_end = t0 + (int64_t)(seconds * 1e9);
    const int64_t drain_until = t_end + 2000000000LL; /* in-flight answers get 2 s */
    size_t dispatched = 0; /* requests sent so far: every j < dispatched */
    struct epoll_event evs[64];

    for (;;) {
        int64_t now = now_ns();
        /* due: how many requests are scheduled at or before now */
        size_t due = now < t0 ? 0 : (size_t)((double)(now - t0) / interval) + 1;
        if (due > total)
            due = total;
        for (int i = 0; i < nconns && dispatched < due; i++)
            if (!conns[i].busy)
                conn_send(&conns[i], t0 + (int64_t)((double)dispatched++ * interval));
        size_t inflight = 0;
        for (int i = 0; i < nconns; i++)
            inflight += (size_t)conns[i].busy;
        if (due == total && dispatched == total && inflight == 0)
            break;
        if (now >= t_end && (inflight == 0 || now >= drain_until))
            break;
        if (due < total) {
            int64_t next = t0 + (int64_t)((double)due * interval);
            struct itimerspec its = {.it_value = {.tv_sec = next / 1000000000,
                                                  .tv_nsec = next % 1000000000}};
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        }
        int n = epoll_wait(ep, evs, 64, 100);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        now = now_ns();
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            if (!c) {
                uint64_t exp;
                if (read(tfd, &exp, sizeof exp) < 0 && errno != EAGAIN)
                    die("read timerfd");
                continue;
            }
            if (evs[k].events & EPOLLOUT)
                conn_write(c);
            if (!(evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            ssize_t r = read(c->fd, c->in + c->inlen, INBUF - c->inlen);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                conn_reset(c);
                continue;
            }
            if (r < 0)
                continue;
            c->inlen += (size_t)r;
            int rc = conn_parse(c, now);
            if (rc < 0)
                conn_reset(c);
        }
    }
    int64_t elapsed = now_ns() - t0;
    size_t inflight = 0;
    for (int i = 0; i < nconns; i++)
        inflight += (size_t)conns[i].busy;
    size_t unsent = total - dispatched;

    size_t ns = ncompleted < cap ? ncompleted : cap;
    qsort(lat, ns, sizeof *lat, cmp64);
    qsort(svc, ns, sizeof *svc, cmp64);
    printf("target_rps=%.0f sent=%zu completed=%zu rps=%.1f status202=%zu other_status=%zu "
           "errors=%zu reconnects=%zu unsent=%zu unanswered=%zu "
           "p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f "
           "svc_p50_us=%.1f svc_p99_us=%.1f svc_p999_us=%.1f\n",
           rate, dispatched, ncompleted, (double)ncompleted / ((double)elapsed / 1e9), n202,
           nother, nerrors, nreconnects, unsent, inflight, pct_us(lat, ns, 50), pct_us(lat, ns, 99),
           pct_us(lat, ns, 99.9), ns ? (double)lat[ns - 1] / 1000.0 : 0.0, pct_us(svc, ns, 50),
           pct_us(svc, ns, 99), pct_us(svc, ns, 99.9));
    return 0;
}
