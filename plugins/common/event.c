/* Shared event helpers (see grp_event.h). Stateless; thread-safe. */
#define _GNU_SOURCE
#include "grp_event.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const struct gr_host *grp_host;

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

const char *grp_note_change(const struct grp_note *note)
{
    const char *c = json_string_value(json_object_get(note->root, "change_type"));
    return c ? c : "";
}

json_t *grp_resync_event(const struct grp_note *note, const char *area)
{
    json_t *e = grp_event_new(note, area);
    char name[64];
    snprintf(name, sizeof name, "%s.resync", area);
    json_object_set_new(e, "event", json_string(name));
    json_object_set_new(e, "resync_reason", field(note, "resync_reason"));
    return e;
}

int grp_graph_mode(struct gr_handler *h, const char *key)
{
    const struct gr_host *host = grp_host;
    if (!GR_HOST_HAS(host, state_lock)) {
        if (host->config_bool(h, key, 0)) {
            host->init_error(h, "\"%s\" needs a graphrouter with plugin ABI 1.2", key);
            return -1;
        }
        return 0;
    }
    int available = host->graph_available(h);
    if (!host->config_json(h, key)) /* not set: whatever the configuration allows */
        return available;
    int want = host->config_bool(h, key, 0);
    if (want && !available) {
        host->init_error(h, "\"%s\": true needs the configuration's \"graph\" section (the "
                            "app and its tenants), which graphrouter calls Graph with",
                         key);
        return -1;
    }
    return want;
}

int grp_graph_get(struct gr_msg *msg, const char *target, json_t **out,
                  struct gr_graph_answer *a)
{
    const struct gr_host *host = grp_host;
    *out = NULL;
    int rc = host->graph_request(msg, "GET", target, NULL, a);
    if (rc == 0 && a->status / 100 == 2) {
        *out = a->json ? json_loadb(a->json, a->len, 0, NULL) : NULL;
        if (json_is_object(*out))
            return GRP_GOT;
        json_decref(*out);
        *out = NULL;
        host->set_error(msg, "Graph answered HTTP %d without a JSON object", a->status);
        return GRP_RETRY;
    }
    if (rc == 0 && a->status == 404)
        return GRP_GONE;
    if (rc == 0 && a->status == 410)
        return GRP_STATUS;
    host->set_error(msg, "Graph: %s", a->error ? a->error : "no answer");
    if (rc == 0 && (a->status == 429 || a->status == 503)) {
        if (a->retry_after_ms > 0)
            host->retry_after(msg, a->retry_after_ms);
        return GRP_RETRY;
    }
    if (a->refused)
        return GRP_FAIL;
    if (rc != 0 || a->status >= 500 || a->status == 408)
        return GRP_RETRY;
    return GRP_FAIL;
}

char *grp_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = malloc(3 * n + 1), *o = out;
    if (!out)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

json_t *grp_identity(const json_t *set)
{
    static const char *const kinds[] = {"user", "application", "device"};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        const json_t *who = json_object_get(set, kinds[i]);
        if (json_is_object(who))
            return json_pack("{s:s,s:O?,s:O?}", "type", kinds[i], "id", json_object_get(who, "id"),
                             "display_name", json_object_get(who, "displayName"));
    }
    return json_null();
}

char *grp_path(const char *segment, ...)
{
    char *parts[16];
    size_t n = 0, len = 1;
    va_list ap;
    va_start(ap, segment);
    for (const char *s = segment; s && n < 16; s = va_arg(ap, const char *)) {
        if (!(parts[n] = grp_escape(s)))
            break;
        len += strlen(parts[n++]) + 1;
    }
    va_end(ap);
    char *out = malloc(len), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (o) {
            *o++ = '/';
            size_t k = strlen(parts[i]);
            memcpy(o, parts[i], k);
            o += k;
        }
        free(parts[i]);
    }
    if (o)
        *o = '\0';
    return out;
}
