/*
 * Classification: which kind of resource a change notification is about, and
 * which ids its resource path carries.
 *
 * Order of evidence (graph-protocol.md §7.5):
 *   1. an item with a lifecycleEvent is "lifecycle";
 *   2. the resource path, in either syntax (Users/{id}/Messages/{id} or
 *      Users('{id}')/messages('{id}')), names compared case-insensitively and
 *      keys kept byte for byte (only %HH is decoded);
 *   3. resourceData["@odata.type"] when the path says nothing;
 *   4. otherwise "unknown".
 * Pure functions; thread-safe.
 */
#ifndef GR_CLASSIFY_H
#define GR_CLASSIFY_H

#include <stddef.h>
#include <stdint.h>

enum gr_rtype {
    GR_RT_UNKNOWN = 0,
    GR_RT_MESSAGE,
    GR_RT_EVENT,
    GR_RT_CONTACT,
    GR_RT_USER,
    GR_RT_GROUP,
    GR_RT_CONVERSATION,
    GR_RT_CHAT_MESSAGE,
    GR_RT_CHAT,
    GR_RT_CHANNEL,
    GR_RT_TEAM,
    GR_RT_CONVERSATION_MEMBER,
    GR_RT_PRESENCE,
    GR_RT_CALL_RECORD,
    GR_RT_DRIVE_ITEM,
    GR_RT_LIST,
    GR_RT_ALERT,
    GR_RT_TODO_TASK,
    GR_RT_ONLINE_MEETING,
    GR_RT_CALL_RECORDING,
    GR_RT_CALL_TRANSCRIPT,
    GR_RT_LIFECYCLE,
    GR_RT_COUNT
};

/* "message", "chatMessage", ... */
const char *gr_rtype_name(enum gr_rtype t);
/* Case-insensitive; -1 if the name is not a resource type. */
int gr_rtype_parse(const char *name);
/* The bit of `t` in a uint32_t mask. */
#define GR_RTYPE_BIT(t) (UINT32_C(1) << (t))

/* An id taken from the resource path, e.g. role "team", value "fbe2...". */
struct gr_resource_id {
    const char *role; /* static string */
    char *value;      /* owned */
};

struct gr_classification {
    enum gr_rtype type;
    struct gr_resource_id *ids; /* in path order, first of each role only */
    size_t nids;
};

/* All arguments may be NULL. Fills `out`; free with gr_classification_free. */
void gr_classify(const char *resource, const char *odata_type, const char *lifecycle_event,
                 struct gr_classification *out);
void gr_classification_free(struct gr_classification *c);
/* The value for `role`, or NULL. */
const char *gr_classification_id(const struct gr_classification *c, const char *role);

/* Only the @odata.type mapping (step 3); GR_RT_UNKNOWN if unrecognised. */
enum gr_rtype gr_classify_odata_type(const char *odata_type);

#endif
