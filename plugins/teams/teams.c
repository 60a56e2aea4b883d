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
 */
#include "grp_event.h"

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
    grp_note_close(&note);
    return grp_event_emit(msg, e);
}

GRP_EVENT_PLUGIN("teams", "Teams chat, channel, team and member notifications to teams.* events", teams_handle)
