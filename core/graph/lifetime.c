/* Subscription lifetimes by resource (see lifetime.h). */
#define _GNU_SOURCE
#include "graph/lifetime.h"

#include <stddef.h>
#include <string.h>

#include "util.h"

/* Resources the classification has no type for, known by a segment name
 * (compared ignoring case). */
static const struct {
    const char *segment;
    unsigned minutes;
} by_segment[] = {
    {"/schedule/", 360},                /* Teams Shifts */
    {"healthmonitoring", 42300},        /* Entra health monitoring alerts */
    {"interactionhistory", 4320},       /* Copilot aiInteraction */
    {"/approval", 43200},               /* Teams approvals */
    {"print/", 4230},                   /* printer, printTaskDefinition */
    {"teamsappinstallation", 4320},
};

static bool contains_ci(const char *s, const char *needle)
{
    size_t n = strlen(needle);
    for (; *s; s++)
        if (gr_strneq_ci(s, needle, n))
            return true;
    return false;
}

unsigned gr_lifetime_max_minutes(const char *resource, bool rich, enum gr_rtype *type)
{
    struct gr_classification cls;
    gr_classify(resource, NULL, NULL, &cls);
    *type = cls.type;
    gr_classification_free(&cls);
    for (size_t i = 0; i < GR_ARRAY_LEN(by_segment); i++)
        if (contains_ci(resource, by_segment[i].segment))
            return by_segment[i].minutes;
    switch (*type) {
    case GR_RT_MESSAGE:
    case GR_RT_EVENT:
    case GR_RT_CONTACT: return rich ? 1440 : 10080;
    case GR_RT_USER:
    case GR_RT_GROUP: return 41760;
    case GR_RT_PRESENCE: return 60;
    case GR_RT_DRIVE_ITEM:
    case GR_RT_LIST: return 42300;
    case GR_RT_ALERT: return 43200; /* security alerts */
    case GR_RT_CHAT_MESSAGE:
    case GR_RT_CHAT:
    case GR_RT_CHANNEL:
    case GR_RT_TEAM:
    case GR_RT_CONVERSATION_MEMBER:
    case GR_RT_CALL_RECORDING:
    case GR_RT_CALL_TRANSCRIPT: return 4320;
    case GR_RT_CONVERSATION:   /* group conversations */
    case GR_RT_CALL_RECORD:
    case GR_RT_ONLINE_MEETING: /* the table gives 4,230 and, for Teams, 4,320: the lower */
    case GR_RT_TODO_TASK: return 4230;
    default: return 0;
    }
}
