/*
 * mail: Outlook notifications (message, event, contact) -> normalised events,
 * with the item fetched from Graph.
 *
 *   {"event": "mail.message.created", ...common fields...,
 *    "user_id", "message_id" | "event_id" | "contact_id", "folder_id" | "calendar_id",
 *    "deleted": false,
 *    "message" | "calendar_event" | "contact": {...the item, its $select-ed properties}}
 *
 * user_id is the key of users/{id} on the resource path (a GUID, a UPN, or
 * "{user}@{tenant}" as Graph sends it; null for me/...). The item id comes
 * from the path, else from resourceData.id. folder_id is the mail or contact
 * folder when the path names one.
 *
 * With "fetch" (on when the configuration has a "graph" section), a basic
 * notification's item is read with GET /users/{user}/{messages|events|
 * contacts}/{id}?$select=... ("select" sets each kind's list). A rich
 * notification's "content" is the item already. A "deleted" change is not
 * fetched; nor is one Graph answers 404 for (moved or deleted since): both
 * carry "deleted": true. A 403 is a dead letter with Graph's reason; 429,
 * 503 (with Retry-After), other 5xx and no answer are retried.
 *
 * A resync notification (graphrouter's, for a managed subscription that may
 * have missed changes) becomes "mail.resync" with the subscription's
 * resource and resync_reason: re-read it.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grp_event.h"

enum { MESSAGE, EVENT, CONTACT, KINDS };

/* NULL-terminated too: grp_note_open takes it as the list of accepted types */
static const char *const kind_types[KINDS + 1] = {"message", "event", "contact", NULL};
static const char *const kind_paths[KINDS] = {"messages", "events", "contacts"};
static const char *const kind_members[KINDS] = {"message", "calendar_event", "contact"};
static const char *const default_select[KINDS] = {
    "subject,from,toRecipients,receivedDateTime,isRead,hasAttachments,webLink",
    "subject,start,end,organizer,location,attendees",
    "displayName,emailAddresses",
};

struct mail {
    struct gr_handler *h;
    int fetch;
    char *select[KINDS];
};

static int mail_init(struct gr_handler *h, void **state)
{
    const struct gr_host *host = grp_host;
    struct mail *m = calloc(1, sizeof *m);
    if (!m) {
        host->init_error(h, "out of memory");
        return -1;
    }
    m->h = h;
    json_t *select = NULL;
    const char *text = host->config_json(h, "select");
    if (text) {
        select = json_loads(text, 0, NULL);
        if (!json_is_object(select)) {
            host->init_error(h, "\"select\" must be an object: {\"message\": \"subject,from\", "
                                "\"event\": ..., \"contact\": ...}");
            json_decref(select);
            free(m);
            return -1;
        }
        const char *k;
        json_t *v;
        json_object_foreach(select, k, v) {
            int i = 0;
            while (i < KINDS && strcmp(k, kind_types[i]) != 0)
                i++;
            if (i == KINDS || !json_is_string(v) || !*json_string_value(v) ||
                strpbrk(json_string_value(v), "&#? ")) {
                host->init_error(h, "\"select\": use {\"message\": \"subject,from\", \"event\": "
                                    "..., \"contact\": ...}: property lists, no '&', '?', "
                                    "'#' or spaces");
                json_decref(select);
                free(m);
                return -1;
            }
        }
    }
    for (int i = 0; i < KINDS; i++) {
        const char *s = json_string_value(json_object_get(select, kind_types[i]));
        m->select[i] = strdup(s ? s : default_select[i]);
    }
    json_decref(select);
    if ((m->fetch = grp_graph_mode(h, "fetch")) < 0) {
        for (int i = 0; i < KINDS; i++)
            free(m->select[i]);
        free(m);
        return -1;
    }
    *state = m;
    return 0;
}

static void mail_fini(void *state)
{
    struct mail *m = state;
    for (int i = 0; i < KINDS; i++)
        free(m->select[i]);
    free(m);
}

/* GET the item into e[member]; GR_OK with *deleted set on a 404. */
static int fetch(struct mail *m, struct gr_msg *msg, int kind, const char *user, const char *id,
                 json_t *e, int *deleted)
{
    const struct gr_host *host = grp_host;
    if (!user || !id) {
        host->set_error(msg, "cannot fetch the %s: the resource path names no %s (app-only "
                             "calls need /users/{id}/...)",
                        kind_types[kind], user ? "item id" : "user");
        return GR_FAIL;
    }
    char *path = grp_path("users", user, kind_paths[kind], id, NULL);
    size_t n = (path ? strlen(path) : 0) + strlen(m->select[kind]) + 16;
    char *target = path ? malloc(n) : NULL;
    if (!target) {
        free(path);
        return GR_RETRY;
    }
    snprintf(target, n, "%s?$select=%s", path, m->select[kind]);
    free(path);
    json_t *item;
    struct gr_graph_answer a;
    int got = grp_graph_get(msg, target, &item, &a);
    free(target);
    switch (got) {
    case GRP_GOT:
        json_object_del(item, "@odata.context");
        json_object_set_new(e, kind_members[kind], item);
        return GR_OK;
    case GRP_GONE:
        *deleted = 1;
        return GR_OK;
    case GRP_RETRY: return GR_RETRY;
    default: return GR_FAIL;
    }
}

static int mail_handle(void *state, struct gr_msg *msg)
{
    struct mail *m = state;
    struct grp_note note;
    if (grp_note_open(m->h, msg, kind_types, &note) < 0)
        return GR_FAIL;
    const char *change = grp_note_change(&note);
    if (strcmp(change, "resync") == 0) {
        json_t *e = grp_resync_event(&note, "mail");
        grp_note_close(&note);
        return grp_event_emit(msg, e);
    }
    int kind = note.resource_type[0] == 'm' ? MESSAGE : note.resource_type[0] == 'e' ? EVENT
                                                                                     : CONTACT;
    static const char *const item_roles[KINDS][2] = {{"message", NULL}, {"event", NULL},
                                                     {"contact", NULL}};
    static const char *const id_keys[KINDS] = {"message_id", "event_id", "contact_id"};
    json_t *e = grp_event_new(&note, "mail");
    grp_event_id(e, &note, "user_id", "user");
    grp_event_id_or_data(e, &note, id_keys[kind], item_roles[kind]);
    if (kind == EVENT)
        grp_event_id(e, &note, "calendar_id", "calendar");
    else
        grp_event_id(e, &note, "folder_id", kind == MESSAGE ? "mailFolder" : "contactFolder");
    int deleted = strcmp(change, "deleted") == 0, rc = GR_OK;
    const json_t *content = grp_note_content(&note);
    if (content && !deleted)
        json_object_set_new(e, kind_members[kind], json_deep_copy(content));
    else if (m->fetch && !deleted)
        rc = fetch(m, msg, kind, json_string_value(json_object_get(e, "user_id")),
                   json_string_value(json_object_get(e, id_keys[kind])), e, &deleted);
    json_object_set_new(e, "deleted", json_boolean(deleted));
    grp_note_close(&note);
    if (rc != GR_OK) {
        json_decref(e);
        return rc;
    }
    return grp_event_emit(msg, e);
}

static const struct gr_config_key mail_keys[] = {
    GRP_EMIT_TO_KEY,
    {"fetch", GR_CONFIG_BOOL, 0, "read each item from Graph (default: with a graph section)"},
    {"select", GR_CONFIG_JSON, 0, "{\"message\": \"subject,from\", \"event\": ..., \"contact\": ...}"},
    {NULL, 0, 0, NULL},
};

GRP_PLUGIN("mail", "Outlook message, event and contact notifications to mail.* events, items fetched",
           mail_keys, mail_init, mail_handle, mail_fini)
