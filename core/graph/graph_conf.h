/*
 * The control plane's configuration: the "graph" section (the app, its
 * tenants and their credentials, where Graph and Entra ID are, where Graph
 * reaches this router) and the subscriptions graphrouter manages, declared
 * in "subscriptions" (README "Managed subscriptions").
 *
 * Parsed with the rest of the configuration (config.c) and immutable
 * afterwards; strings are borrowed from the configuration's JSON unless
 * marked owned. Credentials are only named here; graph/client.c reads them
 * when a generation is built, so --check reads them too.
 */
#ifndef GR_GRAPH_CONF_H
#define GR_GRAPH_CONF_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "check.h"
#include "route/classify.h"

struct gr_graph_tenant_conf {
    const char *id;
    bool client_secret;                  /* one of: "client_secret" (secret.h), */
    const char *client_secret_file;      /* a secret in a file, */
    const char *client_secret_env;       /* a secret in the environment, */
    const char *client_certificate_file; /* or a certificate and its key */
    const char *private_key_file;
    const char *password_file;           /* optional, for an encrypted key */
    const json_t *node;
};

struct gr_graph_conf {
    bool present; /* the configuration has a "graph" section */
    const char *app_id;
    struct gr_graph_tenant_conf *tenants;
    size_t ntenants;
    char *public_url; /* owned; no trailing '/'; NULL when not given */
    char *base_url;   /* owned; no trailing '/' */
    char *login_url;  /* owned; no trailing '/' */
    const char *ca_file;
    unsigned connect_timeout_s, timeout_s;
    unsigned write_budget, write_budget_window_s; /* subscription writes per tenant */
    unsigned reconcile_interval_s; /* how often Graph's lists are compared again */
    const json_t *node;
};

/* A subscription graphrouter creates and keeps alive. */
struct gr_declaration {
    char *key;           /* owned: what identifies it in the store (tenant, resource
                          * without a leading '/', change types, with or without
                          * resource data) */
    const char *tenant;  /* the graph.tenants id, as written there */
    const char *resource;
    char *change_type;   /* owned: "created,updated,deleted" order, as Graph takes it */
    bool rich;           /* include_resource_data */
    const char *certificate_id; /* rich only: a decryption_keys certificate_id */
    unsigned expiration_minutes;
    enum gr_rtype type;  /* the resource's classification */
    const json_t *node;
};

/* The "graph" section of `root` (absent: out->present false). */
int gr_graph_conf_parse(struct gr_check *c, const json_t *root, struct gr_graph_conf *out);
/* One entry of "subscriptions" that declares a subscription (it has a
 * "resource"); checked against the parsed graph section. */
int gr_declaration_parse(struct gr_check *c, const json_t *entry, const struct gr_graph_conf *g,
                         struct gr_declaration *out);
/* What needs the rest of the configuration: a rich declaration's
 * certificate_id among `cert_ids`, validation tokens for graph.app_id. */
int gr_declaration_check_rich(struct gr_check *c, const struct gr_declaration *d,
                              const struct gr_graph_conf *g, const char *const *cert_ids,
                              size_t ncert_ids, const char *const *token_app_ids,
                              size_t ntoken_app_ids);
/* Would Graph take the two for one subscription (a 409)? The same tenant,
 * resource (ignoring a leading '/' and case) and change types, whatever
 * include_resource_data says. */
bool gr_declaration_same_subscription(const struct gr_declaration *a,
                                      const struct gr_declaration *b);
void gr_declaration_free(struct gr_declaration *d);
void gr_graph_conf_free(struct gr_graph_conf *g);

/* A URL graphrouter may call or give out: https://, or http:// to
 * 127.0.0.1, ::1 or localhost (tests, a proxy on the same host). */
bool gr_graph_url_allowed(const char *url);

#endif
