/*
 * presence: presence notifications -> "presence.changed" events, only when a
 * user's availability or activity changed.
 *
 *   {"event": "presence.changed", ...common fields..., "user_id",
 *    "availability", "activity", "previous_availability", "previous_activity"}
 *
 * user_id is the key of communications/presences/{id}, else of
 * users/{id}/presence, else resourceData.id. A rich notification's "content"
 * gives the availability (Available, Busy, Away, ...) and the activity
 * (InACall, InAMeeting, Presenting, ...); for a basic one, with "fetch" (on
 * when the configuration has a "graph" section), graphrouter reads
 * /communications/presences/{id}.
 *
 * The last availability and activity of each user are kept in the handler's
 * durable state ("user:<id>"), so that only a change is an event: the first
 * observation of a user is one, with previous_* null. "only_changes": false
 * emits every notification, unchanged ones as "presence.unchanged". Calls
 * for one user take the state lock for that user: two notifications of one
 * user never both see the same "previous". A resync notification reads the
 * user's presence again (each user of a $filter=id in (...) resource).
 * Without a presence to compare (a basic notification, no fetch), the event
 * has availability and activity null and the state is left alone.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grp_event.h"

struct presence {
    struct gr_handler *h;
    int fetch;
    int only_changes;
};

static int presence_init(struct gr_handler *h, void **state)
{
    struct presence *p = calloc(1, sizeof *p);
    if (!p) {
        grp_host->init_error(h, "out of memory");
        return -1;
    }
    p->h = h;
    p->only_changes = grp_host->config_bool(h, "only_changes", 1);
    if ((p->fetch = grp_graph_mode(h, "fetch")) < 0) {
        free(p);
        return -1;
    }
    *state = p;
    return 0;
}

static void presence_fini(void *state)
{
    free(state);
}

/* GET the user's presence; GR_OK with *got set. */
static int fetch(struct gr_msg *msg, const char *user, json_t **got)
{
    char *target = grp_path("communications", "presences", user, NULL);
    struct gr_graph_answer a;
    int r = target ? grp_graph_get(msg, target, got, &a) : GRP_RETRY;
    free(target);
    if (r == GRP_GOT)
        return GR_OK;
    if (r == GRP_GONE)
        grp_host->set_error(msg, "Graph has no presence for user %s (HTTP 404)", user);
    return r == GRP_RETRY ? GR_RETRY : GR_FAIL;
}

static json_t *string_or_null(const json_t *v)
{
    return json_is_string(v) ? json_incref((json_t *)v) : json_null();
}

/* Compare with the state and emit, for one user whose presence is `now`
 * (NULL: unknown). */
static int observe(struct presence *p, struct gr_msg *msg, const struct grp_note *note,
                   const char *user, const json_t *now)
{
    const struct gr_host *host = grp_host;
    json_t *e = grp_event_new(note, "presence");
    json_object_set_new(e, "event", json_string("presence.changed"));
    json_object_set_new(e, "user_id", user ? json_string(user) : json_null());
    json_t *avail = string_or_null(json_object_get(now, "availability"));
    json_t *act = string_or_null(json_object_get(now, "activity"));
    json_object_set_new(e, "availability", avail);
    json_object_set_new(e, "activity", act);
    char key[GR_STATE_KEY_MAX + 1];
    bool keyed = user && snprintf(key, sizeof key, "user:%s", user) < (int)sizeof key;
    json_t *prev = NULL;
    bool changed = true;
    if (keyed && now) {
        /* One user's notifications one at a time. A resync locks each of its
         * users; past the first, a lock another call holds is not waited for:
         * the resync runs again. */
        if (host->state_lock(msg, key, 1) != 1) {
            host->set_error(msg, "user %s: another notification of this user is being handled "
                                 "(its state lock)",
                            user);
            json_decref(e);
            return GR_RETRY;
        }
        size_t len;
        const char *v = host->state_get(msg, key, &len);
        prev = v ? json_loadb(v, len, 0, NULL) : NULL;
        changed = !json_equal(json_object_get(prev, "availability"), avail) ||
                  !json_equal(json_object_get(prev, "activity"), act);
    }
    json_object_set_new(e, "previous_availability",
                        string_or_null(json_object_get(prev, "availability")));
    json_object_set_new(e, "previous_activity", string_or_null(json_object_get(prev, "activity")));
    json_decref(prev);
    if (keyed && now && changed) {
        json_t *s = json_pack("{s:O,s:O}", "availability", avail, "activity", act);
        char *text = json_dumps(s, JSON_COMPACT);
        json_decref(s);
        int rc = text ? host->state_put(msg, key, text, strlen(text)) : -1;
        free(text);
        if (rc < 0) {
            json_decref(e);
            return GR_RETRY;
        }
    }
    if (!changed) {
        if (p->only_changes) {
            json_decref(e);
            return GR_OK;
        }
        json_object_set_new(e, "event", json_string("presence.unchanged"));
    }
    return grp_event_emit(msg, e);
}

/* The users a resync is about: the one of communications/presences/{id},
 * or each of a $filter=id in ('a','b') (at most 650, Graph's limit). */
static size_t resync_users(const struct grp_note *note, const char *one, char ***out)
{
    *out = NULL;
    const char *res = json_string_value(json_object_get(note->root, "resource"));
    const char *in = res ? strstr(res, " in (") : NULL;
    if (!in) {
        if (!one)
            return 0;
        *out = calloc(1, sizeof **out);
        (*out)[0] = strdup(one);
        return 1;
    }
    size_t n = 0;
    for (const char *q = in + 5; (q = strchr(q, '\'')) && n < 650;) {
        const char *end = strchr(q + 1, '\'');
        if (!end)
            break;
        char **grown = realloc(*out, (n + 1) * sizeof **out);
        if (!grown)
            break;
        *out = grown;
        (*out)[n++] = strndup(q + 1, (size_t)(end - q - 1));
        q = end + 1;
    }
    return n;
}

static int presence_handle(void *state, struct gr_msg *msg)
{
    struct presence *p = state;
    static const char *const types[] = {"presence", NULL};
    static const char *const user_roles[] = {"presence", "user", NULL};
    struct grp_note note;
    if (grp_note_open(p->h, msg, types, &note) < 0)
        return GR_FAIL;
    json_t *ids = json_object();
    grp_event_id_or_data(ids, &note, "user_id", user_roles);
    const char *user = json_string_value(json_object_get(ids, "user_id"));
    int rc = GR_OK;
    if (strcmp(grp_note_change(&note), "resync") == 0) {
        char **users;
        size_t n = resync_users(&note, user, &users);
        for (size_t i = 0; i < n; i++) {
            json_t *now = NULL;
            if (rc == GR_OK && p->fetch && users[i] && (rc = fetch(msg, users[i], &now)) == GR_OK)
                rc = observe(p, msg, &note, users[i], now);
            json_decref(now);
            free(users[i]);
        }
        free(users);
    } else {
        const json_t *content = grp_note_content(&note);
        json_t *now = content ? json_incref((json_t *)content) : NULL;
        if (!now && p->fetch && user)
            rc = fetch(msg, user, &now);
        if (rc == GR_OK)
            rc = observe(p, msg, &note, user, now);
        json_decref(now);
    }
    json_decref(ids);
    grp_note_close(&note);
    return rc;
}

static const struct gr_config_key presence_keys[] = {
    GRP_EMIT_TO_KEY,
    {"fetch", GR_CONFIG_BOOL, 0, "read basic notifications' presence from Graph (default: with a graph section)"},
    {"only_changes", GR_CONFIG_BOOL, 0, "emit only when availability or activity changed (default true)"},
    {NULL, 0, 0, NULL},
};

GRP_PLUGIN("presence", "presence notifications to presence.changed events, one per change",
           presence_keys, presence_init, presence_handle, presence_fini)
