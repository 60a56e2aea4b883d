/*
 * Fuzz gr_config_parse() (core/config.c, core/jsonpos.c, core/route/router.c) with
 * operator-written configuration text.
 *
 * The text is copied into a malloc'd buffer of exactly `size` bytes (no NUL
 * after it), as gr_config_parse takes (text, len): ASan reports any read past
 * len by the core code, e.g. the position scanner (the system jansson is not
 * instrumented).
 *
 * Checks, beyond "no crash, leak or UB":
 *   - failure: -1, *out NULL, and a non-NULL, non-empty message that starts
 *     with "f.json:" (the documented "FILE:LINE:COL: message" / "FILE: message");
 *   - success: 0, *err NULL, and a config whose pieces agree: every listed
 *     subscription is found by gr_config_subscription (case-insensitively),
 *     every handler by gr_config_handler_index, every route's "to" names a
 *     handler, at most one default route, every declared subscription has
 *     its own key, a configured tenant and a lifetime; then the routes are matched
 *     against a few notifications, as a worker would.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "route/classify.h"
#include "config.h"
#include "route/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct gr_route_input inputs[] = {
    {GR_RT_MESSAGE, "created", "84bd8158-6d4d-4958-8b9f-9d6445542f95",
     "4f2b8c1e-0000-4000-8000-000000000001",
     "Users/622eaaff-0683-4862-9de4-f2ec83c2bd98/Messages/AAMkAGUwNjQ4ZjIxAAA="},
    {GR_RT_CHAT_MESSAGE, "Updated", "t", "s",
     "teams('fbe2')/channels('19:4a95@thread.tacv2')/messages('1612293113399')"},
    {GR_RT_LIFECYCLE, NULL, NULL, "00000000-0000-0000-0000-000000000000", NULL},
    {GR_RT_UNKNOWN, "deleted", NULL, NULL, ""},
};

static void check_config(const struct gr_config *cfg)
{
    for (size_t i = 0; i < cfg->nsubscriptions; i++) {
        const struct gr_subscription *s = gr_config_subscription(cfg, cfg->subscriptions[i].id);
        if (!s || strcasecmp(s->id, cfg->subscriptions[i].id) != 0)
            abort();
        if (i > 0 && strcasecmp(cfg->subscriptions[i - 1].id, cfg->subscriptions[i].id) >= 0)
            abort(); /* sorted, no duplicates */
    }
    for (size_t i = 0; i < cfg->nhandlers; i++) {
        const struct gr_handler_conf *h = &cfg->handlers[i];
        if (!h->name || !h->plugin || !h->plugin_path || !json_is_object(h->config))
            abort();
        if (gr_config_handler_index(cfg, h->name) != (int)i)
            abort();
    }
    if (cfg->n_notification_paths == 0 || cfg->n_lifecycle_paths == 0)
        abort();
    size_t ndefault = 0;
    for (size_t r = 0; r < cfg->routes.n; r++) {
        const struct gr_route *route = &cfg->routes.v[r];
        if (!route->name)
            abort();
        ndefault += route->is_default;
        for (size_t i = 0; i < route->nto; i++)
            if (route->to[i] >= cfg->nhandlers)
                abort();
    }
    if (ndefault > 1)
        abort();
    /* declared subscriptions: a key each, distinct, a tenant of graph.tenants, a lifetime */
    for (size_t i = 0; i < cfg->ndeclarations; i++) {
        const struct gr_declaration *d = &cfg->declarations[i];
        if (!cfg->graph.present || !cfg->graph.public_url || !d->key || !d->tenant ||
            !d->resource || !d->change_type || d->expiration_minutes == 0 ||
            (d->rich && !d->certificate_id))
            abort();
        bool tenant = false;
        for (size_t t = 0; t < cfg->graph.ntenants; t++)
            tenant |= d->tenant == cfg->graph.tenants[t].id;
        if (!tenant)
            abort();
        for (size_t j = 0; j < i; j++)
            if (strcmp(cfg->declarations[j].key, d->key) == 0)
                abort();
    }

    bool *targets = calloc(cfg->nhandlers ? cfg->nhandlers : 1, sizeof *targets);
    bool *fired = calloc(cfg->routes.n ? cfg->routes.n : 1, sizeof *fired);
    if (!targets || !fired)
        abort();
    for (size_t k = 0; k < sizeof inputs / sizeof inputs[0]; k++) {
        memset(targets, 0, (cfg->nhandlers ? cfg->nhandlers : 1) * sizeof *targets);
        memset(fired, 0, (cfg->routes.n ? cfg->routes.n : 1) * sizeof *fired);
        size_t n = gr_router_match(&cfg->routes, &inputs[k], targets, fired);
        size_t nfired = 0;
        for (size_t r = 0; r < cfg->routes.n; r++)
            nfired += fired[r];
        if (n != nfired)
            abort();
    }
    free(targets);
    free(fired);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1);
    if (!text)
        abort();
    if (size)
        memcpy(text, data, size);

    struct gr_config *cfg = (struct gr_config *)(uintptr_t)1; /* must be overwritten */
    char *err = (char *)(uintptr_t)1;
    int rc = gr_config_parse("f.json", text, size, &cfg, &err);
    if (rc == 0) {
        if (!cfg || err)
            abort();
        check_config(cfg);
        gr_config_free(cfg);
    } else {
        if (rc != -1 || cfg || !err)
            abort();
        if (strncmp(err, "f.json:", 7) != 0 || strlen(err) <= 8)
            abort();
        free(err);
    }
    free(text);
    return 0;
}
