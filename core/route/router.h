/*
 * Routes: ordered rules that send each notification to handlers.
 *
 * Semantics (README "Routing"): routes are evaluated in order; every route
 * whose `match` holds fires and adds its `to` handlers (each handler gets a
 * notification at most once); a route with "continue": false stops the
 * evaluation after it fires; the default route fires only when no other
 * route did; a notification no route fires for is "unrouted".
 *
 * Routes are compiled once per generation (gr_routes_parse) into bitmasks,
 * handler indices and borrowed strings; matching allocates nothing. A
 * compiled route set is immutable and safe to match from any thread.
 */
#ifndef GR_ROUTER_H
#define GR_ROUTER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "route/classify.h"

struct gr_check;

/* "resync": a notification graphrouter makes when a managed subscription
 * may have missed changes (graph/manager.c), never one Graph sends. */
enum { GR_CHANGE_CREATED = 1, GR_CHANGE_UPDATED = 2, GR_CHANGE_DELETED = 4, GR_CHANGE_RESYNC = 8 };
/* Case-insensitive "created" / "updated" / "deleted" / "resync" -> bit, or 0. */
unsigned gr_change_type_bit(const char *s);

struct gr_route {
    const char *name;
    bool is_default;
    bool stop;         /* "continue": false */
    uint32_t types;    /* GR_RTYPE_BIT()s; 0 = any */
    unsigned changes;  /* GR_CHANGE_*; 0 = any */
    const char **tenants;
    size_t ntenants;
    const char **subscriptions;
    size_t nsubscriptions;
    const char *resource_glob; /* NULL = any */
    size_t *to;                /* handler indices */
    size_t nto;
};

struct gr_routes {
    struct gr_route *v;
    size_t n;
};

/* What a route can match on; strings may be NULL. */
struct gr_route_input {
    enum gr_rtype type;
    const char *change_type;
    const char *tenant_id;
    const char *subscription_id;
    const char *resource;
};

/* Compile the "routes" array. `handler_names` lists the configured
 * handlers; a route's `to` must name them. */
int gr_routes_parse(struct gr_check *c, const json_t *routes, const char *const *handler_names,
                    size_t nhandlers, struct gr_routes *out);
void gr_routes_free(struct gr_routes *routes);

/* Set targets[i] for every handler the input goes to (targets must hold
 * nhandlers entries, zeroed by the caller) and fired[r] for every route that
 * fired (fired may be NULL). Returns the number of routes that fired. */
size_t gr_router_match(const struct gr_routes *routes, const struct gr_route_input *in,
                       bool *targets, bool *fired);

#endif
