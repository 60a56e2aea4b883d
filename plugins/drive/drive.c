/*
 * drive: OneDrive and SharePoint notifications (driveItem, list) ->
 * normalised events.
 *
 *   {"event": "drive.driveItem.updated", ...common fields...,
 *    "drive_id", "site_id", "list_id", "item_id", "user_id", "group_id"}
 *
 * A drive is named either by its id (drives/{id}) or through its owner
 * (users/{id}/drive, groups/{id}/drive, sites/{id}/drive); a list by site and
 * list id. Graph sends driveItem notifications for the subscribed root, so
 * the changed files are found with a delta query.
 */
#include "grp_event.h"

static int drive_handle(void *state, struct gr_msg *msg)
{
    static const char *const types[] = {"driveItem", "list", NULL};
    struct grp_note note;
    if (grp_note_open(state, msg, types, &note) < 0)
        return GR_FAIL;
    json_t *e = grp_event_new(&note, "drive");
    grp_event_id(e, &note, "drive_id", "drive");
    grp_event_id(e, &note, "site_id", "site");
    grp_event_id(e, &note, "list_id", "list");
    grp_event_id(e, &note, "item_id", "item");
    grp_event_id(e, &note, "user_id", "user");
    grp_event_id(e, &note, "group_id", "group");
    grp_note_close(&note);
    return grp_event_emit(msg, e);
}

GRP_EVENT_PLUGIN("drive", "OneDrive and SharePoint notifications to drive.* events", drive_handle)
