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
 */
#include <string.h>

#include "grp_event.h"

/* from: whichever of user / application / device Graph filled in. */
static json_t *sender(const json_t *from)
{
    static const char *const kinds[] = {"user", "application", "device"};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        const json_t *who = json_object_get(from, kinds[i]);
        if (json_is_object(who))
            return json_pack("{s:s,s:O?,s:O?}", "type", kinds[i], "id", json_object_get(who, "id"),
                             "display_name", json_object_get(who, "displayName"));
    }
    return json_null();
}

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

static void add_content(json_t *e, const struct grp_note *note)
{
    const json_t *c = grp_note_content(note);
    if (!c)
        return;
    if (strcmp(note->resource_type, "chatMessage") != 0) {
        grp_event_copy(e, "display_name", c, json_object_get(c, "topic") ? "topic" : "displayName",
                       NULL);
        return;
    }
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
    json_object_set_new(e, "from", sender(json_object_get(c, "from")));
    json_object_set_new(e, "mentions", mentions(json_object_get(c, "mentions")));
}

static int teams_handle(void *state, struct gr_msg *msg)
{
    static const char *const types[] = {"chatMessage", "chat", "channel", "team",
                                        "conversationMember", NULL};
    struct grp_note note;
    if (grp_note_open(state, msg, types, &note) < 0)
        return GR_FAIL;
    json_t *e = grp_event_new(&note, "teams");
    grp_event_id(e, &note, "team_id", "team");
    grp_event_id(e, &note, "channel_id", "channel");
    grp_event_id(e, &note, "chat_id", "chat");
    grp_event_id(e, &note, "message_id", "message");
    grp_event_id(e, &note, "reply_id", "reply");
    grp_event_id(e, &note, "member_id", "member");
    grp_event_id(e, &note, "user_id", "user");
    add_content(e, &note);
    grp_note_close(&note);
    return grp_event_emit(msg, e);
}

GRP_EVENT_PLUGIN("teams", "Teams chat, channel, team and member notifications to teams.* events", teams_handle)
