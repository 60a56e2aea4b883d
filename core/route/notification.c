/* Building routed notifications (see notification.h). */
#define _GNU_SOURCE
#include "route/notification.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

json_t *gr_json_get_ci(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (v || !json_is_object(obj))
        return v;
    const char *k;
    json_object_foreach((json_t *)obj, k, v) {
        if (strcasecmp(k, key) == 0)
            return v;
    }
    return NULL;
}

const char *gr_json_string_ci(const json_t *obj, const char *key)
{
    return json_string_value(gr_json_get_ci(obj, key));
}

static json_t *string_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

json_t *gr_notification_build(const json_t *item, int64_t received_ms, json_t *content,
                              struct gr_classification *cls)
{
    const json_t *resource_data = gr_json_get_ci(item, "resourceData");
    const char *resource = gr_json_string_ci(item, "resource");
    const char *lifecycle = gr_json_string_ci(item, "lifecycleEvent");
    gr_classify(resource, gr_json_string_ci(resource_data, "@odata.type"), lifecycle, cls);

    const char *tenant = gr_json_string_ci(item, "tenantId");
    if (!tenant)
        tenant = gr_json_string_ci(item, "organizationId"); /* presence items carry both */

    char *change = NULL;
    const char *ct = gr_json_string_ci(item, "changeType");
    if (ct) {
        change = gr_xstrdup(ct);
        for (char *p = change; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    }

    json_t *ids = json_object();
    for (size_t i = 0; i < cls->nids; i++)
        json_object_set_new(ids, cls->ids[i].role, json_string(cls->ids[i].value));

    char received[GR_RFC3339_LEN];
    gr_rfc3339(received_ms, received);

    json_t *n = json_object();
    json_object_set_new(n, "id", string_or_null(gr_json_string_ci(item, "id")));
    json_object_set_new(n, "subscription_id",
                        string_or_null(gr_json_string_ci(item, "subscriptionId")));
    json_object_set_new(n, "tenant_id", string_or_null(tenant));
    json_object_set_new(n, "change_type", string_or_null(change));
    json_object_set_new(n, "resource", string_or_null(resource));
    json_object_set_new(n, "resource_type", json_string(gr_rtype_name(cls->type)));
    json_object_set_new(n, "resource_ids", ids);
    json_object_set(n, "resource_data", resource_data ? (json_t *)resource_data : json_null());
    if (content)
        json_object_set_new(n, "content", content);
    json_object_set_new(n, "subscription_expiration",
                        string_or_null(gr_json_string_ci(item, "subscriptionExpirationDateTime")));
    if (lifecycle)
        json_object_set_new(n, "lifecycle_event", json_string(lifecycle));
    const char *resync = gr_json_string_ci(item, "resyncReason");
    if (resync && change && strcmp(change, "resync") == 0) /* graph/actions.c makes these */
        json_object_set_new(n, "resync_reason", json_string(resync));
    json_object_set_new(n, "received_at", json_string(received));
    free(change);
    return n;
}

void gr_notification_route_input(const json_t *n, enum gr_rtype type, struct gr_route_input *in)
{
    in->type = type;
    in->change_type = json_string_value(json_object_get(n, "change_type"));
    in->tenant_id = json_string_value(json_object_get(n, "tenant_id"));
    in->subscription_id = json_string_value(json_object_get(n, "subscription_id"));
    in->resource = json_string_value(json_object_get(n, "resource"));
}
