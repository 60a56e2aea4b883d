/* Generation build, teardown and the current-generation pointer (see
 * generation.h). */
#define _GNU_SOURCE
#include "generation.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "plugin/plugin_job.h"
#include "util.h"

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static struct gr_generation *current;
static void (*idle_hook)(void);

struct gr_generation *gr_generation_swap(struct gr_generation *g)
{
    if (g)
        atomic_store(&g->refs, 1);
    pthread_mutex_lock(&current_lock);
    struct gr_generation *old = current;
    current = g;
    pthread_mutex_unlock(&current_lock);
    return old;
}

struct gr_generation *gr_generation_pin(void)
{
    pthread_mutex_lock(&current_lock);
    struct gr_generation *g = current;
    if (g)
        atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&current_lock);
    return g;
}

void gr_generation_unpin(struct gr_generation *g)
{
    if (g && atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1 && idle_hook)
        idle_hook();
}

void gr_generation_set_idle_hook(void (*hook)(void))
{
    idle_hook = hook;
}

struct gr_handler *gr_generation_handler(struct gr_generation *g, const char *name)
{
    for (size_t i = 0; i < g->nhandlers; i++)
        if (strcmp(g->handlers[i].name, name) == 0)
            return &g->handlers[i];
    return NULL;
}

static struct gr_plugin_lib *load_lib(struct gr_generation *g, const char *path, char **why)
{
    for (size_t i = 0; i < g->nlibs; i++)
        if (strcmp(g->libs[i].path, path) == 0)
            return &g->libs[i];
    struct gr_plugin_lib lib;
    if (gr_plugin_lib_load(path, &lib, why) < 0)
        return NULL;
    g->libs[g->nlibs] = lib;
    return &g->libs[g->nlibs++];
}

/* Resolve every GR_CONFIG_HANDLER_LIST key of handler i into indices. */
static int resolve_emit(struct gr_check *c, struct gr_generation *g, struct gr_handler *h)
{
    const struct gr_config_key *keys = h->lib->desc.config_keys;
    for (size_t k = 0; keys && keys[k].name; k++) {
        const json_t *v = json_object_get(h->conf->config, keys[k].name);
        if (keys[k].type != GR_CONFIG_HANDLER_LIST || !v || json_is_null(v))
            continue;
        struct gr_emit_targets t = {.key = keys[k].name};
        size_t n = json_is_string(v) ? 1 : json_array_size(v);
        t.handlers = gr_xcalloc(n, sizeof *t.handlers);
        for (size_t i = 0; i < n; i++) {
            const char *name = json_is_string(v) ? json_string_value(v)
                                                 : json_string_value(json_array_get(v, i));
            int idx = gr_config_handler_index(g->cfg, name);
            if (idx < 0) {
                free(t.handlers);
                if (json_is_array(v))
                    return gr_check_fail_element(c, v, i,
                                                 "handler \"%s\": \"%s\" names handler \"%s\", "
                                                 "which is not defined in \"handlers\"",
                                                 h->name, t.key, name);
                return gr_check_fail_member(c, h->conf->config, t.key,
                                            "handler \"%s\": \"%s\" names handler \"%s\", which "
                                            "is not defined in \"handlers\"",
                                            h->name, t.key, name);
            }
            t.handlers[t.n++] = (size_t)idx;
        }
        h->emit = gr_xrealloc(h->emit, (h->nemit + 1) * sizeof *h->emit);
        h->emit[h->nemit++] = t;
    }
    return 0;
}

/* Depth-first search for an emit cycle through handler i. */
static bool find_cycle(struct gr_generation *g, size_t i, int *color, size_t *path, size_t depth,
                       struct gr_buf *out)
{
    color[i] = 1;
    path[depth] = i;
    struct gr_handler *h = &g->handlers[i];
    for (size_t e = 0; e < h->nemit; e++) {
        for (size_t k = 0; k < h->emit[e].n; k++) {
            size_t j = h->emit[e].handlers[k];
            if (color[j] == 1) {
                size_t start = 0;
                while (path[start] != j)
                    start++;
                for (size_t p = start; p <= depth; p++)
                    gr_buf_printf(out, "%s -> ", g->handlers[path[p]].name);
                gr_buf_puts(out, g->handlers[j].name);
                return true;
            }
            if (color[j] == 0 && find_cycle(g, j, color, path, depth + 1, out))
                return true;
        }
    }
    color[i] = 2;
    return false;
}

static int check_cycles(struct gr_check *c, struct gr_generation *g)
{
    int *color = gr_xcalloc(g->nhandlers, sizeof *color);
    size_t *path = gr_xcalloc(g->nhandlers + 1, sizeof *path);
    struct gr_buf cycle = {0};
    int rc = 0;
    for (size_t i = 0; i < g->nhandlers && rc == 0; i++) {
        if (color[i] == 0 && find_cycle(g, i, color, path, 0, &cycle)) {
            const json_t *handlers = json_object_get(g->cfg->root, "handlers");
            rc = gr_check_fail_member(c, handlers, g->handlers[path[0]].name,
                                      "handlers emit to each other in a cycle (%s); an event "
                                      "would circulate forever",
                                      cycle.data);
        }
    }
    gr_buf_free(&cycle);
    free(path);
    free(color);
    return rc;
}

/* The validation-token keys and the decryption keys of a configuration. */
static int build_rich(struct gr_check *c, struct gr_generation *g, struct gr_generation *prev)
{
    const struct gr_config *cfg = g->cfg;
    if (cfg->ndecryption_keys &&
        gr_keyring_load(c, cfg->decryption_keys, cfg->ndecryption_keys, &g->keyring) < 0)
        return -1;
    if (!cfg->has_tokens)
        return 0;
    const struct gr_tokens_conf *t = &cfg->tokens;
    struct gr_jwks_options o = {.url = t->jwks_file ? NULL : t->jwks_url,
                                .file = t->jwks_file,
                                .ca_file = t->ca_file,
                                .refresh_s = t->refresh_s,
                                .min_refresh_s = t->min_refresh_s};
    if (!o.file && prev && prev->jwks && gr_jwks_same_source(prev->jwks, &o)) {
        g->jwks = gr_jwks_ref(prev->jwks);
    } else {
        char *why = NULL;
        if (!(g->jwks = gr_jwks_new(&o, &why))) {
            gr_check_fail_member(c, json_object_get(cfg->root, "validation_tokens"), "jwks_file",
                                 "validation_tokens: %s", why);
            free(why);
            return -1;
        }
    }
    g->token_policy = (struct gr_token_policy){t->app_ids, t->napp_ids, t->tenant_ids,
                                               t->ntenant_ids};
    return 0;
}

/* The listener's certificate and key, read now: a reload that cannot read
 * them fails and the running generation keeps serving its own. */
static int build_tls(struct gr_check *c, struct gr_generation *g)
{
    const struct gr_config *cfg = g->cfg;
    if (!cfg->tls_cert_file)
        return 0;
    char *why = NULL;
    if (!(g->tls = gr_tls_cred_load(cfg->tls_cert_file, cfg->tls_key_file, &why))) {
        gr_check_fail_member(c, cfg->tls_node, "cert_file", "tls: %s", why);
        free(why);
        return -1;
    }
    return 0;
}

/* The Graph client (its credentials read now), and the certificates the
 * declared subscriptions with resource data name. */
static int build_graph(struct gr_check *c, struct gr_generation *g)
{
    const struct gr_config *cfg = g->cfg;
    for (size_t i = 0; i < cfg->ndeclarations; i++) {
        const struct gr_declaration *d = &cfg->declarations[i];
        if (d->rich && !gr_keyring_certificate(g->keyring, d->certificate_id, NULL))
            return gr_check_fail_member(c, d->node, "certificate_id",
                                        "subscription \"%s\": the decryption key \"%s\" has no "
                                        "certificate to give Graph (add its certificate_file)",
                                        d->resource, d->certificate_id);
    }
    if (!cfg->graph.present)
        return 0;
    return gr_graph_client_build(c, &cfg->graph, &g->graph);
}

int gr_generation_build(const char *file, uint64_t id, struct gr_generation *prev,
                        struct gr_generation **out, char **err)
{
    *out = NULL;
    struct gr_config *cfg;
    if (gr_config_load(file, &cfg, err) < 0) {
        if (prev)
            gr_generation_unpin(prev);
        return -1;
    }
    struct gr_generation *g = gr_xcalloc(1, sizeof *g);
    g->id = id;
    g->cfg = cfg;
    g->libs = gr_xcalloc(cfg->nhandlers, sizeof *g->libs);
    g->handlers = gr_xcalloc(cfg->nhandlers, sizeof *g->handlers);
    struct gr_check c = {.file = cfg->file, .pos = cfg->pos};
    const json_t *handlers_obj = json_object_get(cfg->root, "handlers");
    int rich = build_tls(&c, g);
    if (rich == 0)
        rich = build_rich(&c, g, prev);
    if (rich == 0)
        rich = build_graph(&c, g);
    if (prev) /* released before any plugin code runs, which might never return */
        gr_generation_unpin(prev);
    if (rich < 0)
        goto fail;

    for (size_t i = 0; i < cfg->nhandlers; i++) {
        struct gr_handler *h = &g->handlers[i];
        const struct gr_handler_conf *hc = &cfg->handlers[i];
        g->nhandlers = i + 1;
        h->name = hc->name;
        h->conf = hc;
        h->gen = g;
        pthread_mutex_init(&h->serial_lock, NULL);
        pthread_mutex_init(&h->json_lock, NULL);
        char *why = NULL;
        h->lib = load_lib(g, hc->plugin_path, &why);
        if (!h->lib) {
            gr_check_fail_member(&c, handlers_obj, hc->name, "handler \"%s\": %s", hc->name, why);
            free(why);
            goto fail;
        }
        h->serial = h->lib->desc.flags & GR_PLUGIN_SERIAL;
        if (gr_plugin_check_config(&c, hc, &h->lib->desc, &cfg->secrets) < 0)
            goto fail;
    }
    for (size_t i = 0; i < g->nhandlers; i++)
        if (resolve_emit(&c, g, &g->handlers[i]) < 0)
            goto fail;
    if (check_cycles(&c, g) < 0)
        goto fail;

    for (size_t i = 0; i < g->nhandlers; i++) {
        struct gr_handler *h = &g->handlers[i];
        h->stats = gr_metrics_handler(h->name);
        if (!h->lib->desc.init) {
            h->initialized = true;
            continue;
        }
        gr_job_call_begin(h, "init");
        int rc = h->lib->desc.init(h, &h->state);
        gr_job_call_end();
        if (rc < 0) {
            gr_check_fail_member(&c, handlers_obj, h->name,
                                 "handler \"%s\" (plugin %s): init failed: %s", h->name,
                                 h->lib->path, h->init_error ? h->init_error : "no reason given");
            goto fail;
        }
        h->initialized = true;
    }
    g->store_handlers = gr_xcalloc(g->nhandlers ? g->nhandlers : 1, sizeof *g->store_handlers);
    for (size_t i = 0; i < g->nhandlers; i++)
        g->store_handlers[i] = (struct gr_store_handler){g->handlers[i].name,
                                                         g->handlers[i].conf->concurrency,
                                                         g->handlers[i].conf->retry.max_attempts};
    g->route_stats = gr_xcalloc(cfg->routes.n, sizeof *g->route_stats);
    for (size_t r = 0; r < cfg->routes.n; r++)
        g->route_stats[r] = gr_metrics_route(cfg->routes.v[r].name);
    *out = g;
    return 0;

fail:
    *err = c.err ? c.err : gr_xprintf("%s: building the configuration failed", cfg->file);
    gr_generation_destroy(g);
    return -1;
}

void gr_generation_destroy(struct gr_generation *g)
{
    if (!g)
        return;
    for (size_t i = g->nhandlers; i-- > 0;) {
        struct gr_handler *h = &g->handlers[i];
        if (h->initialized && h->lib->desc.fini) {
            gr_job_call_begin(h, "fini");
            h->lib->desc.fini(h->state);
            gr_job_call_end();
        }
        gr_handler_release(h);
        pthread_mutex_destroy(&h->serial_lock);
        pthread_mutex_destroy(&h->json_lock);
    }
    for (size_t i = 0; i < g->nlibs; i++)
        gr_plugin_lib_unload(&g->libs[i]);
    gr_jwks_unref(g->jwks);
    gr_keyring_free(g->keyring);
    gr_tls_cred_unref(g->tls);
    gr_graph_client_free(g->graph);
    free(g->libs);
    free(g->handlers);
    free(g->route_stats);
    free(g->store_handlers);
    gr_config_free(g->cfg);
    free(g);
}
