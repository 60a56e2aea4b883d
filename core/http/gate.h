/*
 * The gate: graphrouter's own accept loop in front of libmicrohttpd.
 *
 * The notification URL is on the public internet, so the gate decides, per
 * connection and before libmicrohttpd spends anything on it:
 *
 *   accept ─┬─ not in limits.allow_from ............... closed at once
 *           ├─ limits.max_connections reached ......... 503 + Retry-After, closed
 *           ├─ limits.max_connections_per_ip reached .. 429, closed
 *           └─ held until its first request head is complete (peeked, not
 *              read: the bytes stay in the socket for libmicrohttpd), then
 *                ├─ head refused by the strict parser (head.h): 4xx/5xx, closed
 *                ├─ head not complete within limits.header_timeout_s: 408, closed
 *                └─ handed to libmicrohttpd (MHD_add_connection)
 *
 * A connection that is held costs one epoll entry and no thread, so a flood
 * of idle or slow connections never reaches libmicrohttpd's threads. With TLS
 * the head is encrypted, so a TLS connection is handed over at accept and only
 * the deadlines below apply to it.
 *
 * Once in libmicrohttpd, a connection's deadlines are still the gate's: the
 * body must be complete within limits.body_timeout_s of its head, and the
 * next request's head on a kept-alive connection within
 * connection_timeout_s + header_timeout_s of the previous answer. A client
 * past a deadline gets 408 (plain HTTP; libmicrohttpd is only reading then)
 * and its socket is shut down, which libmicrohttpd sees as the client leaving
 * and closes. The gate knows each connection through libmicrohttpd's
 * connection notifications and shuts a socket down only while libmicrohttpd
 * still holds it open (both under one lock), so it never touches a reused fd.
 *
 * Answers the gate writes itself are complete HTTP/1.1 responses with
 * X-Content-Type-Options: nosniff and Connection: close; the socket is then
 * shut for writing and drained for a moment (a "lingering close"), so the
 * client reads the answer instead of a reset.
 */
#ifndef GR_GATE_H
#define GR_GATE_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "http/addr.h"

struct MHD_Daemon;
struct MHD_Connection;
struct gr_gate;
struct gr_gate_conn;

/* Bind and listen (not yet accepting). NULL with *err (malloc'd) on failure. */
struct gr_gate *gr_gate_open(const struct gr_config *cfg, bool tls, char **err);
unsigned gr_gate_port(const struct gr_gate *g);
/* How many connections libmicrohttpd may have to hold (its own limit). */
unsigned gr_gate_fd_limit(const struct gr_gate *g);
/* Start the accept thread, handing connections to d; false if it cannot. */
bool gr_gate_run(struct gr_gate *g, struct MHD_Daemon *d);
/* Stop accepting: the listening socket is closed. */
void gr_gate_quiesce(struct gr_gate *g);
/* Stop the thread and close what the gate still holds (after MHD_stop_daemon). */
void gr_gate_close(struct gr_gate *g);

/* libmicrohttpd's MHD_OPTION_NOTIFY_CONNECTION callback; cls is the gate. */
void gr_gate_notify(void *cls, struct MHD_Connection *c, void **socket_context, int toe);

/* Keep `ref` for as long as the connection is open: release(ref) is called
 * when it closes, or when another ref replaces it. From a libmicrohttpd
 * callback on that connection (the TLS certificate callback). */
void gr_gate_conn_keep(struct gr_gate_conn *conn, void *ref, void (*release)(void *));

/* What a request is doing on its connection; each sets its deadline. */
enum gr_gate_phase {
    GR_PHASE_HEAD, /* waiting for a request head */
    GR_PHASE_BODY, /* head read, body arriving */
    GR_PHASE_WAIT, /* the request is complete; graphrouter is answering */
};
/* From a libmicrohttpd callback: conn is the socket_context. */
void gr_gate_phase(struct gr_gate_conn *conn, enum gr_gate_phase phase);
/* The peer address of a connection and whether it is a trusted proxy. */
const struct gr_addr *gr_gate_peer(const struct gr_gate_conn *conn, bool *trusted_proxy);

/*
 * Per-address accounting of requests that arrive through a trusted proxy
 * (their connections all come from the proxy, so they are counted per
 * forwarded client address instead). Returns false when addr already has
 * `limit` requests in progress.
 */
bool gr_gate_forwarded_acquire(struct gr_gate *g, const struct gr_addr *addr, unsigned limit);
void gr_gate_forwarded_release(struct gr_gate *g, const struct gr_addr *addr);

struct gr_gate_stats {
    unsigned held;      /* waiting for their first head, in the gate */
    unsigned in_server; /* handed to libmicrohttpd */
};
void gr_gate_stats(struct gr_gate *g, struct gr_gate_stats *out);

#endif
