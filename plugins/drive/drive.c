/*
 * drive: OneDrive and SharePoint notifications (driveItem, list) -> one
 * "drive.item.changed" event per item that changed, from Graph's delta query.
 *
 *   {"event": "drive.item.changed", ...common fields..., "drive_id", "site_id",
 *    "list_id", "item_id", "name", "path", "size", "is_folder", "deleted",
 *    "last_modified", "last_modified_by": {"type", "id", "display_name"}}
 *
 * Graph's drive notifications name the subscribed root, not what changed: the
 * changes are read with a delta query (/drives/{id}/root/delta, or the drive
 * of users/{id}, groups/{id}, sites/{id}; /sites/{id}/lists/{id}/items/delta
 * for a list), starting from the @odata.deltaLink kept in the handler's
 * durable state ("delta:<path>"), following every @odata.nextLink. The new
 * deltaLink is saved with the events of that run, in one step: it never
 * moves past a change that was not emitted, and a crash replays the run
 * from the old link. With no link yet, the first run starts from now
 * (token=latest: nothing to emit), or enumerates everything once with
 * "initial": "all". A 410 (the link expired: resync required) starts over
 * as Graph says (its Location, else token=latest) and emits "drive.resync"
 * with the drive's ids.
 *
 * One delta at a time per drive: a notification that arrives while its
 * drive's delta runs returns at once, and the running call runs the delta
 * once more before it finishes, which covers it. A resync notification runs
 * the delta too. Without Graph ("delta": false, or no "graph" section) the
 * notification becomes "drive.<resource_type>.<change_type>" with the ids
 * on its path, as Graph sent it.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grp_event.h"

#define DRIVE_RESTARTS_MAX 3 /* 410s in one call before giving up */

/* A drive whose delta runs (under drive->lock). */
struct run {
    struct run *next;
    char *key;
    int running, again;
};

struct drive {
    struct gr_handler *h;
    int delta;
    int initial_all;
    pthread_mutex_t lock;
    struct run *runs;
};

static int drive_init(struct gr_handler *h, void **state)
{
    const struct gr_host *host = grp_host;
    struct drive *d = calloc(1, sizeof *d);
    if (!d) {
        host->init_error(h, "out of memory");
        return -1;
    }
    d->h = h;
    const char *initial = host->config_string(h, "initial");
    if (initial && strcmp(initial, "all") != 0 && strcmp(initial, "latest") != 0) {
        host->init_error(h, "\"initial\" is \"%s\": \"latest\" (start from now, the default) or "
                            "\"all\" (enumerate everything once)",
                         initial);
        free(d);
        return -1;
    }
    d->initial_all = initial && strcmp(initial, "all") == 0;
    if ((d->delta = grp_graph_mode(h, "delta")) < 0) {
        free(d);
        return -1;
    }
    pthread_mutex_init(&d->lock, NULL);
    *state = d;
    return 0;
}

static void drive_fini(void *state)
{
    struct drive *d = state;
    for (struct run *r = d->runs, *next; r; r = next) {
        next = r->next;
        free(r->key);
        free(r);
    }
    pthread_mutex_destroy(&d->lock);
    free(d);
}

/* ---- which delta ------------------------------------------------------------ */

static const char *id_of(const struct grp_note *note, const char *role)
{
    return json_string_value(json_object_get(json_object_get(note->root, "resource_ids"), role));
}

/* The delta query of the notification's drive or list, or NULL. */
static char *delta_path(const struct grp_note *note)
{
    const char *drive = id_of(note, "drive"), *site = id_of(note, "site");
    const char *list = id_of(note, "list"), *user = id_of(note, "user");
    const char *group = id_of(note, "group");
    if (strcmp(note->resource_type, "list") == 0)
        return site && list ? grp_path("sites", site, "lists", list, "items", "delta", NULL)
                            : NULL;
    if (drive)
        return grp_path("drives", drive, "root", "delta", NULL);
    if (user)
        return grp_path("users", user, "drive", "root", "delta", NULL);
    if (group)
        return grp_path("groups", group, "drive", "root", "delta", NULL);
    if (site)
        return grp_path("sites", site, "drive", "root", "delta", NULL);
    return NULL;
}

/* The drive's run record, made on first use (under d->lock). */
static struct run *run_of(struct drive *d, const char *key)
{
    for (struct run *r = d->runs; r; r = r->next)
        if (strcmp(r->key, key) == 0)
            return r;
    struct run *r = calloc(1, sizeof *r);
    if (!r || !(r->key = strdup(key))) {
        free(r);
        return NULL;
    }
    r->next = d->runs;
    d->runs = r;
    return r;
}

/* ---- events ------------------------------------------------------------------ */

/* Which drive: its id when known, and the owner the resource names it by
 * (users/{id}/drive, groups/{id}/drive, sites/{id}/drive or a site's list). */
static void ids(json_t *e, const struct grp_note *note, const char *drive_id)
{
    json_object_set_new(e, "drive_id", drive_id ? json_string(drive_id) : json_null());
    grp_event_id(e, note, "site_id", "site");
    grp_event_id(e, note, "list_id", "list");
    grp_event_id(e, note, "user_id", "user");
    grp_event_id(e, note, "group_id", "group");
}

static int emit_item(struct gr_msg *msg, const struct grp_note *note, const json_t *item)
{
    const json_t *parent = json_object_get(item, "parentReference");
    const char *drive_id = json_string_value(json_object_get(parent, "driveId"));
    json_t *e = grp_event_new(note, "drive");
    json_object_set_new(e, "event", json_string("drive.item.changed"));
    ids(e, note, drive_id ? drive_id : id_of(note, "drive"));
    grp_event_copy(e, "item_id", item, "id", NULL);
    grp_event_copy(e, "name", item, "name", NULL);
    grp_event_copy(e, "path", parent, "path", NULL);
    grp_event_copy(e, "size", item, "size", NULL);
    json_object_set_new(e, "is_folder", json_boolean(json_object_get(item, "folder") != NULL));
    json_object_set_new(e, "deleted", json_boolean(json_object_get(item, "deleted") != NULL));
    grp_event_copy(e, "last_modified", item, "lastModifiedDateTime", NULL);
    json_object_set_new(e, "last_modified_by", grp_identity(json_object_get(item, "lastModifiedBy")));
    return grp_event_emit(msg, e);
}

static int emit_resync(struct gr_msg *msg, const struct grp_note *note, const char *reason)
{
    json_t *e = grp_event_new(note, "drive");
    json_object_set_new(e, "event", json_string("drive.resync"));
    ids(e, note, id_of(note, "drive"));
    json_object_set_new(e, "reason", json_string(reason));
    return grp_event_emit(msg, e);
}

/* ---- one delta run ------------------------------------------------------------- */

static char *with_query(const char *path, const char *query)
{
    size_t n = strlen(path) + strlen(query) + 2;
    char *out = malloc(n);
    if (out)
        snprintf(out, n, "%s?%s", path, query);
    return out;
}

/* From `link` (NULL: the first run) to the new deltaLink (*out), emitting
 * every item of every page. GR_OK, GR_RETRY or GR_FAIL. */
static int run_delta(struct drive *d, struct gr_msg *msg, const struct grp_note *note,
                     const char *path, const char *link, char **out)
{
    char *url = link ? strdup(link) : d->initial_all ? strdup(path) : with_query(path, "token=latest");
    int restarts = 0;
    bool from_graph = link != NULL; /* a link Graph gave, not a path of ours */
    *out = NULL;
    while (url) {
        json_t *page;
        struct gr_graph_answer a;
        int got = grp_graph_get(msg, url, &page, &a);
        free(url);
        url = NULL;
        if (got == GRP_STATUS && restarts++ < DRIVE_RESTARTS_MAX) { /* 410: resync required */
            grp_host->log(d->h, GR_LOG_WARN, "%s: the delta link expired (HTTP 410); starting "
                                             "over from %s",
                          path, a.location ? "the Location Graph gave" : "now");
            if (emit_resync(msg, note, "the delta link expired (HTTP 410): starting over") != GR_OK)
                return GR_FAIL;
            url = a.location ? strdup(a.location) : with_query(path, "token=latest");
            from_graph = a.location != NULL;
            continue;
        }
        if (got == GRP_FAIL && a.refused && from_graph && restarts++ < DRIVE_RESTARTS_MAX) {
            /* a link that is not under graph.base_url (now): kept from before a change of
             * base_url, say. It is never followed; the delta starts again from now. */
            grp_host->log(d->h, GR_LOG_WARN, "%s: a delta link Graph gave is not under "
                                             "graph.base_url; starting over from now",
                          path);
            if (emit_resync(msg, note, "a delta link is not under graph.base_url: starting "
                                       "over") != GR_OK)
                return GR_FAIL;
            url = with_query(path, "token=latest");
            from_graph = false;
            continue;
        }
        if (got != GRP_GOT) {
            if (got == GRP_GONE || got == GRP_STATUS)
                grp_host->set_error(msg, "%s: HTTP %d", path, a.status);
            return got == GRP_RETRY ? GR_RETRY : GR_FAIL;
        }
        size_t i;
        const json_t *item;
        json_array_foreach(json_object_get(page, "value"), i, item) {
            if (emit_item(msg, note, item) != GR_OK) {
                json_decref(page);
                return GR_FAIL;
            }
        }
        const char *next = json_string_value(json_object_get(page, "@odata.nextLink"));
        const char *delta = json_string_value(json_object_get(page, "@odata.deltaLink"));
        if (next) {
            url = strdup(next);
            from_graph = true;
        }
        else if (delta)
            *out = strdup(delta);
        json_decref(page);
        if (!next && !*out) {
            grp_host->set_error(msg, "%s: Graph's answer has neither @odata.nextLink nor "
                                     "@odata.deltaLink",
                                path);
            return GR_FAIL;
        }
    }
    return *out ? GR_OK : GR_RETRY;
}

/* Run the drive's delta, again while notifications for it came meanwhile. */
static int catch_up(struct drive *d, struct gr_msg *msg, const struct grp_note *note,
                    const char *path, const char *key, struct run *r)
{
    const struct gr_host *host = grp_host;
    /* The state lock makes this call see what the run before it saved, even
     * if that call has not been written yet. */
    int rc;
    if (host->state_lock(msg, key, 1) == 0) {
        host->set_error(msg, "%s: the previous delta's call held the state lock too long", path);
        pthread_mutex_lock(&d->lock);
        r->running = r->again = 0; /* this call's retry runs it */
        pthread_mutex_unlock(&d->lock);
        return GR_RETRY;
    }
    for (;;) {
        size_t len;
        const char *saved = host->state_get(msg, key, &len);
        char *link = saved ? strndup(saved, len) : NULL, *next = NULL;
        rc = run_delta(d, msg, note, path, link, &next);
        free(link);
        if (rc == GR_OK && host->state_put(msg, key, next, strlen(next)) < 0)
            rc = GR_FAIL;
        free(next);
        pthread_mutex_lock(&d->lock);
        int again = rc == GR_OK && r->again;
        r->again = 0;
        if (!again)
            r->running = 0; /* from here a new notification runs the delta itself */
        pthread_mutex_unlock(&d->lock);
        if (!again)
            return rc;
    }
}

static int drive_handle(void *state, struct gr_msg *msg)
{
    struct drive *d = state;
    static const char *const types[] = {"driveItem", "list", NULL};
    struct grp_note note;
    if (grp_note_open(d->h, msg, types, &note) < 0)
        return GR_FAIL;
    if (!d->delta) { /* the notification as Graph sent it, with its ids */
        json_t *e = grp_event_new(&note, "drive");
        ids(e, &note, id_of(&note, "drive"));
        grp_event_id(e, &note, "item_id", "item");
        grp_note_close(&note);
        return grp_event_emit(msg, e);
    }
    char *path = delta_path(&note);
    if (!path) {
        grp_host->set_error(msg, "cannot tell which drive or list changed: the resource names "
                                 "no drive, user, group or site (and list) id (app-only calls "
                                 "cannot use me/)");
        grp_note_close(&note);
        return GR_FAIL;
    }
    char key[GR_STATE_KEY_MAX + 1];
    int rc = GR_OK;
    if (snprintf(key, sizeof key, "delta:%s", path) >= (int)sizeof key) {
        grp_host->set_error(msg, "the drive's delta path is longer than a state key");
        rc = GR_FAIL;
    } else {
        pthread_mutex_lock(&d->lock);
        struct run *r = run_of(d, key);
        int covered = r && r->running;
        if (covered)
            r->again = 1; /* the running call runs the delta once more */
        else if (r)
            r->running = 1;
        pthread_mutex_unlock(&d->lock);
        if (!r)
            rc = GR_RETRY;
        else if (!covered)
            rc = catch_up(d, msg, &note, path, key, r);
    }
    free(path);
    grp_note_close(&note);
    return rc;
}

static const struct gr_config_key drive_keys[] = {
    GRP_EMIT_TO_KEY,
    {"delta", GR_CONFIG_BOOL, 0, "run Graph's delta query per notification (default: with a graph section)"},
    {"initial", GR_CONFIG_STRING, 0, "with no delta link yet: \"latest\" (from now) or \"all\""},
    {NULL, 0, 0, NULL},
};

GRP_PLUGIN("drive", "OneDrive and SharePoint notifications to drive.item.changed events (delta)",
           drive_keys, drive_init, drive_handle, drive_fini)
