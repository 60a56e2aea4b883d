/* Subscription lifetimes by resource (see lifetime.h). */
#define _GNU_SOURCE
#include "graph/lifetime.h"

#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "util.h"

/* Resources the classification has no type for, known by a segment name
 * (compared ignoring case, whole segments). */
static const struct {
    const char *segment;
    unsigned minutes;
} by_segment[] = {
    {"schedule", 360},               /* Teams Shifts */
    {"healthmonitoring", 42300},     /* Entra health monitoring alerts */
    {"interactionHistory", 4320},    /* Copilot aiInteraction */
    {"approval", 43200},             /* Teams approvals */
    {"print", 4230},                 /* printer, printTaskDefinition */
    {"installedApps", 4320},         /* teamsAppInstallation */
    {"installedToChats", 4320},
    {"teamwork", 4320},
};

/* The path's segment names, lower-cased, without keys in parentheses or
 * the query: "users('a')/messages?$x" -> "users", "messages". At most n. */
static size_t segments(const char *resource, char names[][48], size_t n)
{
    size_t k = 0, len = 0;
    int depth = 0;
    bool in_name = true;
    for (const char *p = resource + (*resource == '/'); *p && *p != '?' && k < n; p++) {
        if (*p == '(' || *p == ')' ) {
            depth += *p == '(' ? 1 : -1;
            in_name = false;
        } else if (*p == '/' && depth <= 0) {
            if (len)
                names[k++][len] = '\0';
            len = 0;
            in_name = true;
            depth = 0;
        } else if (in_name && depth <= 0 && len < 47) {
            names[k][len++] = (char)tolower((unsigned char)*p);
        }
    }
    if (len && k < n)
        names[k++][len] = '\0';
    return k;
}

unsigned gr_lifetime_max_minutes(const char *resource, bool rich, enum gr_rtype *type)
{
    struct gr_classification cls;
    gr_classify(resource, NULL, NULL, &cls);
    *type = cls.type;
    gr_classification_free(&cls);
    char names[16][48];
    size_t n = segments(resource, names, GR_ARRAY_LEN(names));
    for (size_t i = 0; i < GR_ARRAY_LEN(by_segment); i++)
        for (size_t k = 0; k < n; k++)
            if (gr_streq_ci(names[k], by_segment[i].segment))
                return by_segment[i].minutes;
    switch (*type) {
    case GR_RT_MESSAGE:
    case GR_RT_EVENT:
    case GR_RT_CONTACT: return rich ? 1440 : 10080;
    case GR_RT_USER:  /* /users, /users/{id}: not whatever else lies under a user */
        return n <= 2 ? 41760 : 0;
    case GR_RT_GROUP: /* /groups, /groups/{id}, /groups/{id}/members|owners */
        return n <= 2 || (n == 3 && (strcmp(names[2], "members") == 0 ||
                                     strcmp(names[2], "owners") == 0))
                   ? 41760
                   : 0;
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
