/*
 * Helpers shared by the bundled plugins that turn notifications into
 * normalised events (mail, teams, drive, presence). Linked statically into
 * each; not part of the plugin ABI. Every event these plugins emit starts
 * with the same fields (README "Events"):
 *
 *   {"event": "<area>.<resource_type>.<change_type>", "resource_type",
 *    "change_type", "tenant_id", "subscription_id", "resource",
 *    "notification_id", "received_at", ...ids of the plugin's own}
 *
 * When area and resource type coincide the name is "<area>.<change_type>"
 * ("presence.updated").
 */
#ifndef GRP_EVENT_H
#define GRP_EVENT_H

#include <graphrouter/plugin.h>
#include <jansson.h>

/* The host table, set by gr_plugin_entry (GRP_EVENT_PLUGIN). */
extern const struct gr_host *grp_host;

struct grp_note {
    json_t *root; /* the routed notification, parsed (owned) */
    const char *resource_type;
};

/* Open `msg` if it is a notification whose resource_type is one of `types`
 * (NULL-terminated). Otherwise log why and return -1: the caller returns
 * GR_FAIL, which shows a misrouted notification in the handler's metrics. */
int grp_note_open(const struct gr_handler *h, struct gr_msg *msg, const char *const *types,
                  struct grp_note *note);
void grp_note_close(struct grp_note *note);

/* A new event object holding the common fields. */
json_t *grp_event_new(const struct grp_note *note, const char *area);
/* event[key] = resource id `role` of the notification, or null. */
void grp_event_id(json_t *event, const struct grp_note *note, const char *key, const char *role);
/* The first non-null of ids `roles` (NULL-terminated), else resource_data.id. */
void grp_event_id_or_data(json_t *event, const struct grp_note *note, const char *key,
                          const char *const *roles);

/* The notification's decrypted resource ("content"), or NULL for a basic
 * notification. Borrowed from the note. */
const json_t *grp_note_content(const struct grp_note *note);
/* event[key] = content[path...] (a NULL-terminated list of member names),
 * copied as is; null when any step is missing. */
void grp_event_copy(json_t *event, const char *key, const json_t *from, ...);

/* Emit the event to the handlers in this handler's "emit_to" and free it.
 * Returns GR_OK, or GR_FAIL if the router refused it. */
int grp_event_emit(struct gr_msg *msg, json_t *event);

/* The notification's change_type ("created", ..., "resync"), or "". */
const char *grp_note_change(const struct grp_note *note);
/* An event for a resync notification: "<area>.resync" with the common
 * fields and resync_reason. */
json_t *grp_resync_event(const struct grp_note *note, const char *area);

/* ---- Graph (ABI 1.2) -------------------------------------------------- */

/* Whether the handler calls Graph: its config key `key` if set (true needs
 * a "graph" section: 0 and an init error otherwise), else whether there is
 * one. 1 or 0; -1 after host->init_error. From init(). */
int grp_graph_mode(struct gr_handler *h, const char *key);

/* What a Graph GET gave. */
enum grp_got {
    GRP_GOT,    /* 2xx, *out is its JSON object */
    GRP_GONE,   /* 404: moved or deleted since the notification */
    GRP_STATUS, /* 410: for the caller to look at (answer->status, ->location) */
    GRP_RETRY,  /* 429, 503 (Retry-After passed on), other 5xx, no answer: try again */
    GRP_FAIL,   /* 401, 403, another 4xx: a dead letter, the reason set */
};
int grp_graph_get(struct gr_msg *msg, const char *target, json_t **out,
                  struct gr_graph_answer *answer);
/* A path segment with everything but A-Z a-z 0-9 - . _ ~ percent-encoded
 * (malloc'd). */
char *grp_escape(const char *segment);
/* "/" and the segments (a NULL-terminated list), each escaped, joined by
 * "/": grp_path("users", id, "messages", NULL) (malloc'd). */
char *grp_path(const char *segment, ...);
/* {"type": "user"|"application"|"device", "id", "display_name"} of a Graph
 * identitySet (from, lastModifiedBy), or null. */
json_t *grp_identity(const json_t *set);

/* The config key every event plugin has: where its events go. */
#define GRP_EMIT_TO_KEY {"emit_to", GR_CONFIG_HANDLER_LIST, 1, "the handlers that receive the events"}

/* The descriptor and entry point of an event plugin; KEYS its config keys,
 * INIT its init, HANDLE its handle, FINI its fini (or NULL). */
#define GRP_PLUGIN(NAME, DESCRIPTION, KEYS, INIT, HANDLE, FINI)                                   \
    static const struct gr_plugin grp_plugin = {                                                   \
        .abi_major = GR_PLUGIN_ABI_MAJOR,                                                          \
        .abi_minor = GR_PLUGIN_ABI_MINOR,                                                          \
        .size = sizeof(struct gr_plugin),                                                          \
        .name = NAME,                                                                              \
        .version = "1.1",                                                                          \
        .description = DESCRIPTION,                                                                \
        .config_keys = KEYS,                                                                       \
        .init = INIT,                                                                              \
        .handle = HANDLE,                                                                          \
        .fini = FINI,                                                                              \
    };                                                                                             \
    GR_PLUGIN_EXPORT const struct gr_plugin *gr_plugin_entry(const struct gr_host *host)          \
    {                                                                                              \
        grp_host = host;                                                                           \
        return &grp_plugin;                                                                        \
    }

#endif
