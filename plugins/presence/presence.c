/*
 * presence: presence notifications -> normalised events.
 *
 *   {"event": "presence.updated", ...common fields..., "user_id"}
 *
 * user_id is the key of communications/presences/{id}, else of
 * users/{id}/presence, else resourceData.id. A rich notification (decrypted
 * "content") adds "availability" (Available, Busy, Away, ...) and "activity"
 * (InACall, InAMeeting, Presenting, ...); both are null otherwise.
 */
#include "grp_event.h"

static int presence_handle(void *state, struct gr_msg *msg)
{
    static const char *const types[] = {"presence", NULL};
    static const char *const user_roles[] = {"presence", "user", NULL};
    struct grp_note note;
    if (grp_note_open(state, msg, types, &note) < 0)
        return GR_FAIL;
    json_t *e = grp_event_new(&note, "presence");
    grp_event_id_or_data(e, &note, "user_id", user_roles);
    grp_event_copy(e, "availability", grp_note_content(&note), "availability", NULL);
    grp_event_copy(e, "activity", grp_note_content(&note), "activity", NULL);
    grp_note_close(&note);
    return grp_event_emit(msg, e);
}

GRP_EVENT_PLUGIN("presence", "presence notifications to presence.* events", presence_handle)
