/*
 * mail: Outlook notifications (message, event, contact) -> normalised events.
 *
 *   {"event": "mail.message.created", ...common fields...,
 *    "user_id", "message_id" | "event_id" | "contact_id", "folder_id"}
 *
 * user_id is the key of users/{id} on the resource path (a GUID, a UPN, or
 * "{user}@{tenant}" as Graph sends it; null for me/...). The item id comes
 * from the path, else from resourceData.id. folder_id is the mail or contact
 * folder when the path names one.
 */
#include "grp_event.h"

static int mail_handle(void *state, struct gr_msg *msg)
{
    static const char *const types[] = {"message", "event", "contact", NULL};
    struct grp_note note;
    if (grp_note_open(state, msg, types, &note) < 0)
        return GR_FAIL;
    json_t *e = grp_event_new(&note, "mail");
    grp_event_id(e, &note, "user_id", "user");
    if (note.resource_type[0] == 'm') {
        static const char *const roles[] = {"message", NULL};
        grp_event_id_or_data(e, &note, "message_id", roles);
        grp_event_id(e, &note, "folder_id", "mailFolder");
    } else if (note.resource_type[0] == 'e') {
        static const char *const roles[] = {"event", NULL};
        grp_event_id_or_data(e, &note, "event_id", roles);
        grp_event_id(e, &note, "calendar_id", "calendar");
    } else {
        static const char *const roles[] = {"contact", NULL};
        grp_event_id_or_data(e, &note, "contact_id", roles);
        grp_event_id(e, &note, "folder_id", "contactFolder");
    }
    grp_note_close(&note);
    return grp_event_emit(msg, e);
}

GRP_EVENT_PLUGIN("mail", "Outlook message, event and contact notifications to mail.* events", mail_handle)
