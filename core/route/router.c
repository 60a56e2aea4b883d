/* Route compilation and matching (see router.h). */
#define _GNU_SOURCE
#include "route/router.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "check.h"
#include "util.h"

unsigned gr_change_type_bit(const char *s)
{
    if (!s)
        return 0;
    if (strcasecmp(s, "created") == 0)
        return GR_CHANGE_CREATED;
    if (strcasecmp(s, "updated") == 0)
        return GR_CHANGE_UPDATED;
    if (strcasecmp(s, "deleted") == 0)
        return GR_CHANGE_DELETED;
    if (strcasecmp(s, "resync") == 0)
        return GR_CHANGE_RESYNC;
    return 0;
}

static int parse_match(struct gr_check *c, const json_t *match, struct gr_route *r)
{
    static const char *const keys[] = {"resource_type", "change_type", "tenant_id",
                                       "subscription_id", "resource", NULL};
    char *what = gr_xprintf("the match of route \"%s\"", r->name);
    int rc = gr_check_keys(c, match, what, keys);
    free(what);
    if (rc < 0)
        return -1;

    const char **list = NULL;
    size_t n = 0;
    if (gr_check_string_list(c, match, "resource_type", &list, &n) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int t = gr_rtype_parse(list[i]);
        if (t < 0) {
            const char *bad = list[i]; /* jansson's string; only the array is ours */
            free(list);
            return gr_check_fail_member(
                c, match, "resource_type",
                "route \"%s\": unknown resource_type \"%s\" (known: message, event, contact, "
                "user, group, conversation, chatMessage, chat, channel, team, "
                "conversationMember, presence, callRecord, driveItem, list, alert, todoTask, "
                "onlineMeeting, callRecording, callTranscript, lifecycle, unknown)",
                r->name, bad);
        }
        r->types |= GR_RTYPE_BIT(t);
    }
    free(list);

    if (gr_check_string_list(c, match, "change_type", &list, &n) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned bit = gr_change_type_bit(list[i]);
        if (!bit) {
            const char *bad = list[i];
            free(list);
            return gr_check_fail_member(
                c, match, "change_type",
                "route \"%s\": unknown change_type \"%s\" (known: created, updated, deleted, "
                "resync)",
                r->name, bad);
        }
        r->changes |= bit;
    }
    free(list);

    if (gr_check_string_list(c, match, "tenant_id", &r->tenants, &r->ntenants) < 0 ||
        gr_check_string_list(c, match, "subscription_id", &r->subscriptions,
                             &r->nsubscriptions) < 0 ||
        gr_check_string(c, match, "resource", false, &r->resource_glob) < 0)
        return -1;
    return 0;
}

static int parse_route(struct gr_check *c, const json_t *routes, size_t index,
                       const char *const *handler_names, size_t nhandlers, struct gr_route *r)
{
    const json_t *obj = json_array_get(routes, index);
    if (!json_is_object(obj))
        return gr_check_fail_element(c, routes, index, "each route must be an object");
    static const char *const keys[] = {"name", "match", "to", "default", "continue", NULL};
    if (gr_check_keys(c, obj, "a route", keys) < 0 ||
        gr_check_string(c, obj, "name", true, &r->name) < 0)
        return -1;
    bool cont = true;
    json_t *match = NULL;
    if (gr_check_bool(c, obj, "default", &r->is_default) < 0 ||
        gr_check_bool(c, obj, "continue", &cont) < 0 ||
        gr_check_object(c, obj, "match", false, &match) < 0)
        return -1;
    r->stop = !cont;
    if (match && r->is_default)
        return gr_check_fail_member(c, obj, "match",
                                    "route \"%s\" is the default route, which fires when no "
                                    "other route matched; it cannot have a \"match\"",
                                    r->name);
    if (match && parse_match(c, match, r) < 0)
        return -1;

    const char **to = NULL;
    if (!json_object_get(obj, "to"))
        return gr_check_fail_value(c, obj, "route \"%s\" has no \"to\" (the handlers it sends to)",
                                   r->name);
    if (gr_check_string_list(c, obj, "to", &to, &r->nto) < 0)
        return -1;
    r->to = gr_xcalloc(r->nto, sizeof *r->to);
    for (size_t i = 0; i < r->nto; i++) {
        size_t h = 0;
        while (h < nhandlers && strcmp(handler_names[h], to[i]) != 0)
            h++;
        if (h == nhandlers) {
            const json_t *arr = json_object_get(obj, "to");
            int rc = json_is_array(arr)
                         ? gr_check_fail_element(c, arr, i,
                                                 "route \"%s\" sends to handler \"%s\", which is "
                                                 "not defined in \"handlers\"",
                                                 r->name, to[i])
                         : gr_check_fail_member(c, obj, "to",
                                                "route \"%s\" sends to handler \"%s\", which is "
                                                "not defined in \"handlers\"",
                                                r->name, to[i]);
            free(to);
            return rc;
        }
        r->to[i] = h;
    }
    free(to);
    return 0;
}

int gr_routes_parse(struct gr_check *c, const json_t *routes, const char *const *handler_names,
                    size_t nhandlers, struct gr_routes *out)
{
    *out = (struct gr_routes){0};
    size_t n = json_array_size(routes);
    out->v = gr_xcalloc(n, sizeof *out->v);
    const char *default_name = NULL;
    for (size_t i = 0; i < n; i++) {
        struct gr_route *r = &out->v[i];
        out->n = i + 1;
        if (parse_route(c, routes, i, handler_names, nhandlers, r) < 0)
            goto fail;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(out->v[j].name, r->name) == 0) {
                gr_check_fail_element(c, routes, i, "two routes are named \"%s\"", r->name);
                goto fail;
            }
        }
        if (r->is_default) {
            if (default_name) {
                gr_check_fail_element(c, routes, i,
                                      "route \"%s\" is a second default route (\"%s\" is one "
                                      "already); only one route can be the default",
                                      r->name, default_name);
                goto fail;
            }
            default_name = r->name;
        }
    }
    return 0;
fail:
    gr_routes_free(out);
    return -1;
}

void gr_routes_free(struct gr_routes *routes)
{
    for (size_t i = 0; i < routes->n; i++) {
        free(routes->v[i].tenants);
        free(routes->v[i].subscriptions);
        free(routes->v[i].to);
    }
    free(routes->v);
    *routes = (struct gr_routes){0};
}

static bool in_list_ci(const char *s, const char *const *list, size_t n)
{
    if (!n)
        return true;
    if (!s)
        return false;
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(s, list[i]) == 0)
            return true;
    return false;
}

static bool route_matches(const struct gr_route *r, const struct gr_route_input *in)
{
    if (r->types && !(r->types & GR_RTYPE_BIT(in->type)))
        return false;
    if (r->changes && !(r->changes & gr_change_type_bit(in->change_type)))
        return false;
    if (!in_list_ci(in->tenant_id, r->tenants, r->ntenants) ||
        !in_list_ci(in->subscription_id, r->subscriptions, r->nsubscriptions))
        return false;
    if (r->resource_glob &&
        (!in->resource || fnmatch(r->resource_glob, in->resource, FNM_CASEFOLD) != 0))
        return false;
    return true;
}

static void fire(const struct gr_route *r, bool *targets)
{
    for (size_t i = 0; i < r->nto; i++)
        targets[r->to[i]] = true;
}

size_t gr_router_match(const struct gr_routes *routes, const struct gr_route_input *in,
                       bool *targets, bool *fired)
{
    size_t nfired = 0;
    const struct gr_route *dflt = NULL;
    size_t dflt_index = 0;
    for (size_t i = 0; i < routes->n; i++) {
        const struct gr_route *r = &routes->v[i];
        if (r->is_default) {
            dflt = r;
            dflt_index = i;
            continue;
        }
        if (!route_matches(r, in))
            continue;
        fire(r, targets);
        if (fired)
            fired[i] = true;
        nfired++;
        if (r->stop)
            break;
    }
    if (!nfired && dflt) {
        fire(dflt, targets);
        if (fired)
            fired[dflt_index] = true;
        nfired++;
    }
    return nfired;
}
