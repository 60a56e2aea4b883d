/* The "graph" section and declared subscriptions (see graph_conf.h). Runs
 * on the control thread, while a configuration is parsed. */
#define _GNU_SOURCE
#include "graph/graph_conf.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "graph/lifetime.h"
#include "route/router.h"
#include "util.h"

#define GR_GRAPH_BASE_URL "https://graph.microsoft.com/v1.0"
#define GR_GRAPH_LOGIN_URL "https://login.microsoftonline.com"

static bool loopback_host(const char *host)
{
    static const char *const names[] = {"127.0.0.1", "localhost", "[::1]"};
    for (size_t i = 0; i < GR_ARRAY_LEN(names); i++) {
        size_t n = strlen(names[i]);
        if (strncasecmp(host, names[i], n) != 0)
            continue;
        const char *p = host + n;
        if (*p == ':') /* a port: digits only */
            for (p++; *p >= '0' && *p <= '9'; p++) {
            }
        if (*p == '\0' || *p == '/' || *p == '?')
            return true;
    }
    return false;
}

bool gr_graph_url_allowed(const char *url)
{
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f || *p == '#' || *p == '\\')
            return false;
    bool https = gr_has_prefix_ci(url, "https://");
    if (!https && !gr_has_prefix_ci(url, "http://"))
        return false;
    const char *host = url + (https ? 8 : 7);
    size_t authority = strcspn(host, "/?");
    /* no user:password@ (nor a host hidden behind one), and a host */
    if (authority == 0 || memchr(host, '@', authority) || host[0] == ':')
        return false;
    return https || loopback_host(host);
}

/* A URL key: allowed as above, without a query; copied without trailing '/'. */
static int url_member(struct gr_check *c, const json_t *obj, const char *key, const char *dflt,
                      char **out)
{
    const char *v = dflt;
    if (gr_check_string(c, obj, key, false, &v) < 0)
        return -1;
    if (!v)
        return 0;
    if (!gr_graph_url_allowed(v) || strchr(v, '?'))
        return gr_check_fail_member(c, obj, key,
                                    "\"%s\" is \"%s\": it must be an https:// URL (http:// only "
                                    "to 127.0.0.1, ::1 or localhost), without a query or fragment",
                                    key, v);
    size_t n = strlen(v);
    while (n && v[n - 1] == '/')
        n--;
    *out = gr_xstrndup(v, n);
    return 0;
}

static int parse_tenant(struct gr_check *c, const json_t *list, size_t i,
                        struct gr_graph_tenant_conf *t)
{
    static const char *const keys[] = {"id", "client_secret", "client_secret_file",
                                       "client_secret_env", "client_certificate_file",
                                       "private_key_file", "password_file", NULL};
    const json_t *o = json_array_get(list, i);
    if (!json_is_object(o))
        return gr_check_fail_element(c, list, i,
                                     "each of graph.tenants must be an object like {\"id\": "
                                     "\"<tenant id>\", \"client_secret_file\": \"secret.txt\"}");
    t->node = o;
    if (gr_check_keys(c, o, "a graph tenant", keys) < 0 ||
        gr_check_string(c, o, "id", true, &t->id) < 0 ||
        gr_check_string(c, o, "client_secret_file", false, &t->client_secret_file) < 0 ||
        gr_check_string(c, o, "client_secret_env", false, &t->client_secret_env) < 0 ||
        gr_check_string(c, o, "client_certificate_file", false, &t->client_certificate_file) < 0 ||
        gr_check_string(c, o, "private_key_file", false, &t->private_key_file) < 0 ||
        gr_check_string(c, o, "password_file", false, &t->password_file) < 0)
        return -1;
    if (!*t->id)
        return gr_check_fail_member(c, o, "id", "a graph tenant's \"id\" is empty");
    /* read, and its shape checked, with the other credentials (graph/client.c) */
    const json_t *secret = json_object_get(o, "client_secret");
    t->client_secret = secret && !json_is_null(secret);
    int kinds = t->client_secret + (t->client_secret_file != NULL) +
                (t->client_secret_env != NULL) + (t->client_certificate_file || t->private_key_file);
    if (kinds != 1)
        return gr_check_fail_element(c, list, i,
                                     "graph tenant \"%s\" needs exactly one credential: "
                                     "\"client_secret\" (a string, {\"file\": ...} or "
                                     "{\"env\": ...}), \"client_secret_file\", "
                                     "\"client_secret_env\", or \"client_certificate_file\" "
                                     "with \"private_key_file\"",
                                     t->id);
    if (!t->client_certificate_file != !t->private_key_file)
        return gr_check_fail_element(c, list, i,
                                     "graph tenant \"%s\": \"client_certificate_file\" and "
                                     "\"private_key_file\" go together",
                                     t->id);
    if (t->password_file && !t->private_key_file)
        return gr_check_fail_member(c, o, "password_file",
                                    "\"password_file\" is for an encrypted \"private_key_file\"");
    if (t->client_secret_env && !*t->client_secret_env)
        return gr_check_fail_member(c, o, "client_secret_env",
                                    "\"client_secret_env\" names no variable");
    return 0;
}

int gr_graph_conf_parse(struct gr_check *c, const json_t *root, struct gr_graph_conf *g)
{
    *g = (struct gr_graph_conf){0};
    json_t *obj = NULL;
    if (gr_check_object(c, root, "graph", false, &obj) < 0)
        return -1;
    if (!obj)
        return 0;
    static const char *const keys[] = {"app_id", "tenants", "public_url", "base_url",
                                       "login_url", "ca_file", "connect_timeout_s", "timeout_s",
                                       "write_budget", "write_budget_window_s",
                                       "reconcile_interval_s", NULL};
    uint64_t connect = 10, timeout = 60, budget = 1000, window = 20, reconcile = 3600;
    g->present = true;
    g->node = obj;
    if (gr_check_keys(c, obj, "\"graph\"", keys) < 0 ||
        gr_check_string(c, obj, "app_id", true, &g->app_id) < 0 ||
        url_member(c, obj, "public_url", NULL, &g->public_url) < 0 ||
        url_member(c, obj, "base_url", GR_GRAPH_BASE_URL, &g->base_url) < 0 ||
        url_member(c, obj, "login_url", GR_GRAPH_LOGIN_URL, &g->login_url) < 0 ||
        gr_check_string(c, obj, "ca_file", false, &g->ca_file) < 0 ||
        gr_check_uint(c, obj, "connect_timeout_s", 1, 300, &connect) < 0 ||
        gr_check_uint(c, obj, "timeout_s", 1, 600, &timeout) < 0 ||
        gr_check_uint(c, obj, "write_budget", 1, 100000, &budget) < 0 ||
        gr_check_uint(c, obj, "write_budget_window_s", 1, 3600, &window) < 0 ||
        gr_check_uint(c, obj, "reconcile_interval_s", 10, 86400, &reconcile) < 0)
        return -1;
    if (!*g->app_id)
        return gr_check_fail_member(c, obj, "app_id", "\"app_id\" is empty");
    if (connect > timeout)
        return gr_check_fail_member(c, obj, "connect_timeout_s",
                                    "\"connect_timeout_s\" (%llu) is longer than \"timeout_s\" "
                                    "(%llu), which bounds the whole call",
                                    (unsigned long long)connect, (unsigned long long)timeout);
    g->connect_timeout_s = (unsigned)connect;
    g->timeout_s = (unsigned)timeout;
    g->write_budget = (unsigned)budget;
    g->write_budget_window_s = (unsigned)window;
    g->reconcile_interval_s = (unsigned)reconcile;

    const json_t *list = json_object_get(obj, "tenants");
    if (!json_is_array(list) || json_array_size(list) == 0)
        return list ? gr_check_fail_member(c, obj, "tenants",
                                           "\"tenants\" must be a non-empty list")
                    : gr_check_fail_value(c, obj,
                                          "missing required key \"tenants\" (the tenants to "
                                          "subscribe in, each with its credential)");
    g->ntenants = json_array_size(list);
    g->tenants = gr_xcalloc(g->ntenants, sizeof *g->tenants);
    for (size_t i = 0; i < g->ntenants; i++) {
        if (parse_tenant(c, list, i, &g->tenants[i]) < 0)
            return -1;
        for (size_t j = 0; j < i; j++)
            if (strcasecmp(g->tenants[j].id, g->tenants[i].id) == 0)
                return gr_check_fail_element(c, list, i, "graph tenant \"%s\" is listed twice",
                                             g->tenants[i].id);
    }
    return 0;
}

static const struct gr_graph_tenant_conf *find_tenant(const struct gr_graph_conf *g,
                                                      const char *id)
{
    for (size_t i = 0; i < g->ntenants; i++)
        if (strcasecmp(g->tenants[i].id, id) == 0)
            return &g->tenants[i];
    return NULL;
}

/* "change_type": created, updated and deleted, each once, in Graph's order. */
static int parse_change_types(struct gr_check *c, const json_t *o, char **out)
{
    const char **list;
    size_t n;
    if (gr_check_string_list(c, o, "change_type", &list, &n) < 0)
        return -1;
    if (!n)
        return gr_check_fail_value(c, o,
                                   "missing required key \"change_type\" (created, updated, "
                                   "deleted: a string or a list)");
    unsigned bits = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned bit = gr_change_type_bit(list[i]);
        if (!bit || bit == GR_CHANGE_RESYNC || (bits & bit)) {
            const json_t *v = json_object_get(o, "change_type");
            int rc = json_is_array(v)
                         ? gr_check_fail_element(c, v, i,
                                                 "change_type \"%s\": use created, updated or "
                                                 "deleted, each once",
                                                 list[i])
                         : gr_check_fail_member(c, o, "change_type",
                                                "change_type \"%s\": use created, updated or "
                                                "deleted",
                                                list[i]);
            free(list);
            return rc;
        }
        bits |= bit;
    }
    free(list);
    struct gr_buf b = {0};
    static const struct {
        unsigned bit;
        const char *name;
    } order[] = {{GR_CHANGE_CREATED, "created"}, {GR_CHANGE_UPDATED, "updated"},
                 {GR_CHANGE_DELETED, "deleted"}};
    for (size_t i = 0; i < GR_ARRAY_LEN(order); i++)
        if (bits & order[i].bit)
            gr_buf_printf(&b, "%s%s", b.len ? "," : "", order[i].name);
    *out = b.data;
    return 0;
}

static bool has_select(const char *resource)
{
    const char *q = strchr(resource, '?');
    return q && strcasestr(q, "$select=") != NULL;
}

int gr_declaration_parse(struct gr_check *c, const json_t *o, const struct gr_graph_conf *g,
                         struct gr_declaration *d)
{
    static const char *const keys[] = {"resource", "change_type", "tenant",
                                       "include_resource_data", "certificate_id",
                                       "expiration_minutes", NULL};
    *d = (struct gr_declaration){.node = o};
    if (gr_check_keys(c, o, "a declared subscription", keys) < 0 ||
        gr_check_string(c, o, "resource", true, &d->resource) < 0 ||
        gr_check_string(c, o, "tenant", false, &d->tenant) < 0 ||
        gr_check_bool(c, o, "include_resource_data", &d->rich) < 0 ||
        gr_check_string(c, o, "certificate_id", false, &d->certificate_id) < 0 ||
        parse_change_types(c, o, &d->change_type) < 0)
        return -1;
    if (!g->present)
        return gr_check_fail_member(c, o, "resource",
                                    "subscription \"%s\" is declared for graphrouter to create, "
                                    "which needs a \"graph\" section (the app and its tenants)",
                                    d->resource);
    if (!g->public_url)
        return gr_check_fail_value(c, g->node,
                                   "\"graph\" needs \"public_url\" (where Graph reaches this "
                                   "router) to create the declared subscriptions");
    /* Spaces only in the query: "/communications/presences?$filter=id in ('a','b')" */
    const char *query = strchr(d->resource, '?');
    size_t path_len = query ? (size_t)(query - d->resource) : strlen(d->resource);
    bool controls = false;
    for (const char *p = d->resource; *p; p++)
        controls |= (unsigned char)*p < 0x20 || *p == 0x7f;
    if (!path_len || controls || memchr(d->resource, ' ', path_len) ||
        strstr(d->resource, "://"))
        return gr_check_fail_member(c, o, "resource",
                                    "\"resource\" is \"%s\": a Graph path such as "
                                    "/users/{id}/messages, relative to base_url",
                                    d->resource);
    if (!d->tenant) {
        if (g->ntenants != 1)
            return gr_check_fail_value(c, o,
                                       "subscription \"%s\" needs \"tenant\": graph.tenants lists "
                                       "more than one",
                                       d->resource);
        d->tenant = g->tenants[0].id;
    } else {
        const struct gr_graph_tenant_conf *t = find_tenant(g, d->tenant);
        if (!t)
            return gr_check_fail_member(c, o, "tenant",
                                        "subscription \"%s\": tenant \"%s\" is not in "
                                        "graph.tenants",
                                        d->resource, d->tenant);
        d->tenant = t->id;
    }
    if (d->rich && !d->certificate_id)
        return gr_check_fail_value(c, o,
                                   "subscription \"%s\" includes resource data: it needs "
                                   "\"certificate_id\", a decryption_keys entry's, whose "
                                   "certificate Graph encrypts to",
                                   d->resource);
    if (!d->rich && d->certificate_id)
        return gr_check_fail_member(c, o, "certificate_id",
                                    "\"certificate_id\" is for subscriptions with "
                                    "\"include_resource_data\": true");
    unsigned max = gr_lifetime_max_minutes(d->resource, d->rich, &d->type);
    if ((d->type == GR_RT_DRIVE_ITEM || d->type == GR_RT_LIST) &&
        strcmp(d->change_type, "updated") != 0)
        return gr_check_fail_member(c, o, "change_type",
                                    "subscription \"%s\": Graph notifies %s subscriptions of "
                                    "\"updated\" only",
                                    d->resource, gr_rtype_name(d->type));
    if (d->rich && (d->type == GR_RT_MESSAGE || d->type == GR_RT_EVENT ||
                    d->type == GR_RT_CONTACT) && !has_select(d->resource))
        return gr_check_fail_member(c, o, "resource",
                                    "subscription \"%s\": Outlook includes resource data only "
                                    "with a $select in the resource (e.g. "
                                    "/users/{id}/messages?$select=subject,from)",
                                    d->resource);
    uint64_t minutes = max;
    const json_t *given = json_object_get(o, "expiration_minutes");
    if (!max && (!given || json_is_null(given)))
        return gr_check_fail_value(c, o,
                                   "subscription \"%s\": graphrouter does not know the longest "
                                   "lifetime Graph allows for this resource; set "
                                   "\"expiration_minutes\"",
                                   d->resource);
    if (gr_check_uint(c, o, "expiration_minutes", 1, max ? max : 525600, &minutes) < 0) {
        if (max) { /* say why this maximum */
            free(c->err);
            c->err = NULL;
            return gr_check_fail_member(c, o, "expiration_minutes",
                                        "\"expiration_minutes\" of subscription \"%s\" must be "
                                        "between 1 and %u: Graph keeps a %s subscription%s at "
                                        "most %u minutes",
                                        d->resource, max, gr_rtype_name(d->type),
                                        d->rich ? " (with resource data)" : "", max);
        }
        return -1;
    }
    d->expiration_minutes = (unsigned)minutes;
    d->key = gr_xprintf("%s\n%s\n%s\n%s", d->tenant, d->resource + (d->resource[0] == '/'),
                        d->change_type, d->rich ? "rich" : "basic");
    return 0;
}

int gr_declaration_check_rich(struct gr_check *c, const struct gr_declaration *d,
                              const struct gr_graph_conf *g, const char *const *cert_ids,
                              size_t ncert_ids, const char *const *app_ids, size_t napp_ids)
{
    if (!d->rich)
        return 0;
    bool known = false;
    for (size_t i = 0; i < ncert_ids && !known; i++)
        known = strcmp(cert_ids[i], d->certificate_id) == 0;
    if (!known)
        return gr_check_fail_member(c, d->node, "certificate_id",
                                    "subscription \"%s\": certificate_id \"%s\" names no "
                                    "entry of \"decryption_keys\"",
                                    d->resource, d->certificate_id);
    bool ours = false;
    for (size_t i = 0; i < napp_ids && !ours; i++)
        ours = strcasecmp(app_ids[i], g->app_id) == 0;
    if (!ours)
        return gr_check_fail_member(c, d->node, "resource",
                                    "subscription \"%s\" includes resource data: "
                                    "\"validation_tokens\" with graph.app_id among its "
                                    "\"app_ids\" is needed to accept what Graph sends",
                                    d->resource);
    return 0;
}

bool gr_declaration_same_subscription(const struct gr_declaration *a,
                                      const struct gr_declaration *b)
{
    const char *ra = a->resource + (a->resource[0] == '/');
    const char *rb = b->resource + (b->resource[0] == '/');
    return strcasecmp(a->tenant, b->tenant) == 0 && strcasecmp(ra, rb) == 0 &&
           strcmp(a->change_type, b->change_type) == 0;
}

void gr_declaration_free(struct gr_declaration *d)
{
    free(d->key);
    free(d->change_type);
}

void gr_graph_conf_free(struct gr_graph_conf *g)
{
    free(g->tenants);
    free(g->public_url);
    free(g->base_url);
    free(g->login_url);
}
