/*
 * teams: Teams notifications (chatMessage, chat, channel, team,
 * conversationMember) -> normalised events.
 *
 *   {"event": "teams.chatMessage.created", ...common fields...,
 *    "team_id", "channel_id", "chat_id", "message_id", "reply_id",
 *    "member_id", "user_id"}
 *
 * Every id is present, null when the resource path does not carry it. For a
 * channel reply, message_id is the parent message and reply_id the reply.
 *
 * A rich chatMessage notification (decrypted "content") adds what the
 * message says and who said it:
 *
 *   "message_type", "subject", "created_at", "modified_at",
 *   "body": {"content_type": "text"|"html", "content": "..."},
 *   "from": {"type": "user"|"application"|"device", "id", "display_name"},
 *   "mentions": [{"id", "text", "user_id", "display_name"}]
 *
 * and for other types the resource's "display_name" (a team's, a channel's,
 * a chat's topic, a member's).
 *
 * With "fetch" (on when the configuration has a "graph" section), a
 * chatMessage notification without "content" has its message read from
 * Graph (/chats/{chat}/messages/{id}, /teams/{team}/channels/{channel}/
 * messages/{id}, or .../messages/{id}/replies/{reply}) and gets the same
 * fields. A "deleted" change is not fetched, nor a message Graph answers 404
 * for: both carry "deleted": true (chatMessage events carry "deleted"
 * always). A resync notification becomes "teams.resync" with the
 * subscription's resource and resync_reason.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grp_event.h"

static json_t *mentions(const json_t *list)
{
    json_t *out = json_array();
    size_t i;
    const json_t *m;
    json_array_foreach(list, i, m) {
        const json_t *user = json_object_get(json_object_get(m, "mentioned"), "user");
        json_array_append_new(out, json_pack("{s:O?,s:O?,s:O?,s:O?}", "id", json_object_get(m, "id"),
                                             "text", json_object_get(m, "mentionText"), "user_id",
                                             json_object_get(user, "id"), "display_name",
                                             json_object_get(user, "displayName")));
    }
    return out;
}

/* The message's fields, from a rich notification's content or a fetch. */
static void message_fields(json_t *e, const json_t *c)
{
    grp_event_copy(e, "message_type", c, "messageType", NULL);
    grp_event_copy(e, "subject", c, "subject", NULL);
    grp_event_copy(e, "created_at", c, "createdDateTime", NULL);
    grp_event_copy(e, "modified_at", c, "lastModifiedDateTime", NULL);
    const json_t *body = json_object_get(c, "body");
    json_object_set_new(e, "body", json_is_object(body)
                                       ? json_pack("{s:O?,s:O?}", "content_type",
                                                   json_object_get(body, "contentType"), "content",
                                                   json_object_get(body, "content"))
                                       : json_null());
    json_object_set_new(e, "from", grp_identity(json_object_get(c, "from")));
    json_object_set_new(e, "mentions", mentions(json_object_get(c, "mentions")));
}

struct teams {
    struct gr_handler *h;
    int fetch;
};

static int teams_init(struct gr_handler *h, void **state)
{
    struct teams *t = calloc(1, sizeof *t);
    if (!t) {
        grp_host->init_error(h, "out of memory");
        return -1;
    }
    t->h = h;
    if ((t->fetch = grp_graph_mode(h, "fetch")) < 0) {
        free(t);
        return -1;
    }
    *state = t;
    return 0;
}

static void teams_fini(void *state)
{
    free(state);
}

/* Where Graph keeps the notification's message, or NULL. */
static char *message_path(const struct grp_note *note)
{
    const json_t *ids = json_object_get(note->root, "resource_ids");
    const char *chat = json_string_value(json_object_get(ids, "chat"));
    const char *team = json_string_value(json_object_get(ids, "team"));
    const char *channel = json_string_value(json_object_get(ids, "channel"));
    const char *message = json_string_value(json_object_get(ids, "message"));
    const char *reply = json_string_value(json_object_get(ids, "reply"));
    if (!message)
        return NULL;
    if (chat)
        return grp_path("chats", chat, "messages", message, NULL);
    if (team && channel && reply)
        return grp_path("teams", team, "channels", channel, "messages", message, "replies",
                        reply, NULL);
    if (team && channel)
        return grp_path("teams", team, "channels", channel, "messages", message, NULL);
    return NULL;
}

static int fetch_message(struct gr_msg *msg, const struct grp_note *note, json_t *e,
                         int *deleted)
{
    char *target = message_path(note);
    if (!target) {
        grp_host->set_error(msg, "cannot fetch the message: the resource path names no chat, "
                                 "or no team and channel, and message");
        return GR_FAIL;
    }
    json_t *m;
    struct gr_graph_answer a;
    int got = grp_graph_get(msg, target, &m, &a);
    free(target);
    if (got == GRP_GOT) {
        message_fields(e, m);
        json_decref(m);
        return GR_OK;
    }
    if (got == GRP_GONE) {
        *deleted = 1;
        return GR_OK;
    }
    return got == GRP_RETRY ? GR_RETRY : GR_FAIL;
}

static int teams_handle(void *state, struct gr_msg *msg)
{
    struct teams *t = state;
    static const char *const types[] = {"chatMessage", "chat", "channel", "team",
                                        "conversationMember", NULL};
    struct grp_note note;
    if (grp_note_open(t->h, msg, types, &note) < 0)
        return GR_FAIL;
    const char *change = grp_note_change(&note);
    if (strcmp(change, "resync") == 0) {
        json_t *e = grp_resync_event(&note, "teams");
        grp_note_close(&note);
        return grp_event_emit(msg, e);
    }
    json_t *e = grp_event_new(&note, "teams");
    grp_event_id(e, &note, "team_id", "team");
    grp_event_id(e, &note, "channel_id", "channel");
    grp_event_id(e, &note, "chat_id", "chat");
    grp_event_id(e, &note, "message_id", "message");
    grp_event_id(e, &note, "reply_id", "reply");
    grp_event_id(e, &note, "member_id", "member");
    grp_event_id(e, &note, "user_id", "user");
    const json_t *c = grp_note_content(&note);
    int rc = GR_OK;
    if (strcmp(note.resource_type, "chatMessage") == 0) {
        int deleted = strcmp(change, "deleted") == 0;
        if (c && !deleted)
            message_fields(e, c);
        else if (t->fetch && !deleted)
            rc = fetch_message(msg, &note, e, &deleted);
        json_object_set_new(e, "deleted", json_boolean(deleted));
    } else if (c) {
        grp_event_copy(e, "display_name", c, json_object_get(c, "topic") ? "topic" : "displayName",
                       NULL);
    }
    grp_note_close(&note);
    if (rc != GR_OK) {
        json_decref(e);
        return rc;
    }
    return grp_event_emit(msg, e);
}

static const struct gr_config_key teams_keys[] = {
    GRP_EMIT_TO_KEY,
    {"fetch", GR_CONFIG_BOOL, 0, "read chat and channel messages from Graph (default: with a graph section)"},
    {NULL, 0, 0, NULL},
};

GRP_PLUGIN("teams", "Teams chat, channel, team and member notifications to teams.* events",
           teams_keys, teams_init, teams_handle, teams_fini)
