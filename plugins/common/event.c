/* Shared event helpers (see grp_event.h). Stateless; thread-safe. */
#define _GNU_SOURCE
#include "grp_event.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const struct gr_host *grp_host;

int grp_init(struct gr_handler *h, void **state)
{
    *state = h;
    return 0;
}

int grp_note_open(const struct gr_handler *h, struct gr_msg *msg, const char *const *types,
                  struct grp_note *note)
{
    const struct gr_host *host = grp_host;
    note->root = NULL;
    if (host->msg_kind(msg) != GR_MSG_NOTIFICATION) {
        host->log(h, GR_LOG_WARN,
                  "received an event; this handler takes routed notifications only (check who "
                  "emits to it)");
        return -1;
    }
    const char *type = host->msg_field(msg, "resource_type");
    for (const char *const *t = types; type && *t; t++) {
        if (strcmp(type, *t) != 0)
            continue;
        size_t len;
        const char *json = host->msg_json(msg, &len);
        note->root = json_loadb(json, len, 0, NULL);
        note->resource_type = *t;
        return note->root ? 0 : -1;
    }
    host->log(h, GR_LOG_WARN,
              "received a notification of resource_type \"%s\", which this plugin does not "
              "handle; narrow the route's match.resource_type",
              type ? type : "(none)");
    return -1;
}

void grp_note_close(struct grp_note *note)
{
    json_decref(note->root);
    note->root = NULL;
}

static json_t *field(const struct grp_note *note, const char *name)
{
    json_t *v = json_object_get(note->root, name);
    return v ? json_incref(v) : json_null();
}

json_t *grp_event_new(const struct grp_note *note, const char *area)
{
    const char *change = json_string_value(json_object_get(note->root, "change_type"));
    char name[128];
    if (strcasecmp(area, note->resource_type) == 0)
        snprintf(name, sizeof name, "%s.%s", area, change ? change : "unknown");
    else
        snprintf(name, sizeof name, "%s.%s.%s", area, note->resource_type,
                 change ? change : "unknown");
    json_t *e = json_object();
    json_object_set_new(e, "event", json_string(name));
    json_object_set_new(e, "resource_type", json_string(note->resource_type));
    json_object_set_new(e, "change_type", field(note, "change_type"));
    json_object_set_new(e, "tenant_id", field(note, "tenant_id"));
    json_object_set_new(e, "subscription_id", field(note, "subscription_id"));
    json_object_set_new(e, "resource", field(note, "resource"));
    json_object_set_new(e, "notification_id", field(note, "id"));
    json_object_set_new(e, "received_at", field(note, "received_at"));
    return e;
}

static const char *resource_id(const struct grp_note *note, const char *role)
{
    return json_string_value(json_object_get(json_object_get(note->root, "resource_ids"), role));
}

void grp_event_id(json_t *event, const struct grp_note *note, const char *key, const char *role)
{
    const char *v = resource_id(note, role);
    json_object_set_new(event, key, v ? json_string(v) : json_null());
}

void grp_event_id_or_data(json_t *event, const struct grp_note *note, const char *key,
                          const char *const *roles)
{
    for (const char *const *r = roles; *r; r++) {
        const char *v = resource_id(note, *r);
        if (v) {
            json_object_set_new(event, key, json_string(v));
            return;
        }
    }
    /* resourceData.id ("Id" in historic payloads) */
    const json_t *data = json_object_get(note->root, "resource_data");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)data, k, v) {
        if (strcasecmp(k, "id") == 0 && json_is_string(v)) {
            json_object_set_new(event, key, json_string(json_string_value(v)));
            return;
        }
    }
    json_object_set_new(event, key, json_null());
}

const json_t *grp_note_content(const struct grp_note *note)
{
    const json_t *c = json_object_get(note->root, "content");
    return json_is_object(c) ? c : NULL;
}

void grp_event_copy(json_t *event, const char *key, const json_t *from, ...)
{
    va_list ap;
    va_start(ap, from);
    const json_t *v = from;
    for (const char *name = va_arg(ap, const char *); name && v; name = va_arg(ap, const char *))
        v = json_object_get(v, name);
    va_end(ap);
    json_object_set_new(event, key, v ? json_deep_copy(v) : json_null());
}

int grp_event_emit(struct gr_msg *msg, json_t *event)
{
    char *text = json_dumps(event, JSON_COMPACT);
    json_decref(event);
    if (!text)
        return GR_RETRY;
    int rc = grp_host->emit(msg, "emit_to", text, strlen(text));
    free(text);
    return rc == 0 ? GR_OK : GR_FAIL;
}
