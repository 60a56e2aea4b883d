/*
 * Resource path parsing and resource-type classification (see classify.h).
 *
 * The path is split on '/' outside quotes and parentheses. A segment is
 * either a name, a name with its key in parentheses (messages('AAMk=')), or,
 * in the slash syntax, the key of the collection named just before it
 * (Messages/AAMk=). The type is then decided by the first rule in `rules`
 * whose names appear, in order, among the path's names. No locks, no globals
 * that change.
 */
#define _GNU_SOURCE
#include "route/classify.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

/* A path longer than this is classified on its first segments only. */
#define GR_MAX_SEGMENTS 64

static const char *const rtype_names[GR_RT_COUNT] = {
    [GR_RT_UNKNOWN] = "unknown",
    [GR_RT_MESSAGE] = "message",
    [GR_RT_EVENT] = "event",
    [GR_RT_CONTACT] = "contact",
    [GR_RT_USER] = "user",
    [GR_RT_GROUP] = "group",
    [GR_RT_CONVERSATION] = "conversation",
    [GR_RT_CHAT_MESSAGE] = "chatMessage",
    [GR_RT_CHAT] = "chat",
    [GR_RT_CHANNEL] = "channel",
    [GR_RT_TEAM] = "team",
    [GR_RT_CONVERSATION_MEMBER] = "conversationMember",
    [GR_RT_PRESENCE] = "presence",
    [GR_RT_CALL_RECORD] = "callRecord",
    [GR_RT_DRIVE_ITEM] = "driveItem",
    [GR_RT_LIST] = "list",
    [GR_RT_ALERT] = "alert",
    [GR_RT_TODO_TASK] = "todoTask",
    [GR_RT_ONLINE_MEETING] = "onlineMeeting",
    [GR_RT_CALL_RECORDING] = "callRecording",
    [GR_RT_CALL_TRANSCRIPT] = "callTranscript",
    [GR_RT_LIFECYCLE] = "lifecycle",
};

const char *gr_rtype_name(enum gr_rtype t)
{
    return (unsigned)t < GR_RT_COUNT ? rtype_names[t] : "unknown";
}

int gr_rtype_parse(const char *name)
{
    for (int t = 0; t < GR_RT_COUNT; t++)
        if (strcasecmp(name, rtype_names[t]) == 0)
            return t;
    return -1;
}

/* Collections: a name that is followed by the key of one of its members.
 * The role is the name under which that key appears in resource_ids. */
static const struct {
    const char *name;
    const char *role;
} collections[] = {
    {"users", "user"},
    {"messages", "message"},
    {"events", "event"},
    {"contacts", "contact"},
    {"groups", "group"},
    {"conversations", "conversation"},
    {"threads", "thread"},
    {"posts", "post"},
    {"teams", "team"},
    {"channels", "channel"},
    {"chats", "chat"},
    {"replies", "reply"},
    {"members", "member"},
    {"owners", "owner"},
    {"drives", "drive"},
    {"items", "item"},
    {"children", "item"},
    {"sites", "site"},
    {"lists", "list"},
    {"alerts", "alert"},
    {"alerts_v2", "alert"},
    {"callrecords", "callRecord"},
    {"presences", "presence"},
    {"mailfolders", "mailFolder"},
    {"childfolders", "mailFolder"},
    {"contactfolders", "contactFolder"},
    {"calendars", "calendar"},
    {"tasks", "task"},
    {"onlinemeetings", "onlineMeeting"},
    {"recordings", "recording"},
    {"transcripts", "transcript"},
    {"teamsapps", "teamsApp"},
    {"attachments", "attachment"},
    {"printers", "printer"},
    {"jobs", "job"},
};

/* Type rules, first match wins: every name listed must appear in the path,
 * in this order, not necessarily next to each other. */
static const struct {
    enum gr_rtype type;
    const char *names[3];
} rules[] = {
    {GR_RT_UNKNOWN, {"schedule"}}, /* Teams Shifts: not a type graphrouter names */
    {GR_RT_CHAT_MESSAGE, {"channels", "messages"}},
    {GR_RT_CHAT_MESSAGE, {"chats", "messages"}},
    {GR_RT_CHAT_MESSAGE, {"getallmessages"}},
    {GR_RT_CONVERSATION_MEMBER, {"teams", "members"}},
    {GR_RT_CONVERSATION_MEMBER, {"chats", "members"}},
    {GR_RT_CONVERSATION_MEMBER, {"channels", "members"}},
    {GR_RT_CONVERSATION_MEMBER, {"getallmembers"}},
    {GR_RT_GROUP, {"groups", "members"}},
    {GR_RT_GROUP, {"groups", "owners"}},
    {GR_RT_CALL_RECORDING, {"getallrecordings"}},
    {GR_RT_CALL_RECORDING, {"recordings"}},
    {GR_RT_CALL_TRANSCRIPT, {"getalltranscripts"}},
    {GR_RT_CALL_TRANSCRIPT, {"getalltrancripts"}}, /* sic, as documented by Microsoft */
    {GR_RT_CALL_TRANSCRIPT, {"transcripts"}},
    {GR_RT_ONLINE_MEETING, {"onlinemeetings"}},
    {GR_RT_TODO_TASK, {"todo"}},
    {GR_RT_MESSAGE, {"messages"}},
    {GR_RT_EVENT, {"events"}},
    {GR_RT_CONTACT, {"contacts"}},
    {GR_RT_CONVERSATION, {"conversations"}},
    {GR_RT_CONVERSATION, {"threads"}},
    {GR_RT_PRESENCE, {"presences"}},
    {GR_RT_PRESENCE, {"presence"}},
    {GR_RT_CALL_RECORD, {"callrecords"}},
    {GR_RT_LIST, {"lists"}},
    {GR_RT_DRIVE_ITEM, {"drives"}},
    {GR_RT_DRIVE_ITEM, {"drive"}},
    {GR_RT_DRIVE_ITEM, {"root"}},
    {GR_RT_ALERT, {"alerts"}},
    {GR_RT_ALERT, {"alerts_v2"}},
    {GR_RT_CHAT, {"chats"}},
    {GR_RT_CHAT, {"installedtochats"}},
    {GR_RT_CHANNEL, {"channels"}},
    {GR_RT_CHANNEL, {"getallchannels"}},
    {GR_RT_TEAM, {"teams"}},
    {GR_RT_GROUP, {"groups"}},
    {GR_RT_USER, {"users"}},
};

/* @odata.type (lower case, without "#microsoft.graph." and sub-namespaces). */
static const struct {
    const char *name;
    enum gr_rtype type;
} odata_types[] = {
    {"message", GR_RT_MESSAGE},
    {"eventmessage", GR_RT_MESSAGE},
    {"eventmessagerequest", GR_RT_MESSAGE},
    {"eventmessageresponse", GR_RT_MESSAGE},
    {"event", GR_RT_EVENT},
    {"contact", GR_RT_CONTACT},
    {"user", GR_RT_USER},
    {"group", GR_RT_GROUP},
    {"conversation", GR_RT_CONVERSATION},
    {"conversationthread", GR_RT_CONVERSATION},
    {"chatmessage", GR_RT_CHAT_MESSAGE},
    {"chat", GR_RT_CHAT},
    {"channel", GR_RT_CHANNEL},
    {"team", GR_RT_TEAM},
    {"teams", GR_RT_TEAM}, /* sic, in Microsoft's own basic team example */
    {"conversationmember", GR_RT_CONVERSATION_MEMBER},
    {"aaduserconversationmember", GR_RT_CONVERSATION_MEMBER},
    {"presence", GR_RT_PRESENCE},
    {"callrecord", GR_RT_CALL_RECORD},
    {"driveitem", GR_RT_DRIVE_ITEM},
    {"list", GR_RT_LIST},
    {"listitem", GR_RT_LIST},
    {"alert", GR_RT_ALERT},
    {"todotask", GR_RT_TODO_TASK},
    {"onlinemeeting", GR_RT_ONLINE_MEETING},
    {"callrecording", GR_RT_CALL_RECORDING},
    {"calltranscript", GR_RT_CALL_TRANSCRIPT},
};

enum gr_rtype gr_classify_odata_type(const char *odata_type)
{
    if (!odata_type)
        return GR_RT_UNKNOWN;
    const char *s = odata_type;
    if (*s == '#')
        s++;
    static const char *const prefixes[] = {"microsoft.graph.", "security.", "callrecords."};
    for (size_t i = 0; i < GR_ARRAY_LEN(prefixes); i++)
        if (gr_has_prefix_ci(s, prefixes[i]))
            s += strlen(prefixes[i]);
    for (size_t i = 0; i < GR_ARRAY_LEN(odata_types); i++)
        if (strcasecmp(s, odata_types[i].name) == 0)
            return odata_types[i].type;
    return GR_RT_UNKNOWN;
}

struct segment {
    char name[32]; /* lower-cased; longer names cannot be known ones and are cut */
    const char *role;
    char *key;
};

static const char *collection_role(const char *name)
{
    for (size_t i = 0; i < GR_ARRAY_LEN(collections); i++)
        if (strcmp(name, collections[i].name) == 0)
            return collections[i].role;
    return NULL;
}

/* Functions and casts never are keys: teams/getAllMessages, .../delta. */
static bool is_function(const char *s, size_t len)
{
    return (len >= 6 && strncasecmp(s, "getall", 6) == 0) ||
           (len == 5 && strncasecmp(s, "delta", 5) == 0) ||
           (len >= 16 && strncasecmp(s, "microsoft.graph.", 16) == 0);
}

/* RFC 3629 UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i++], cp, min;
        size_t more;
        if (c < 0x80)
            continue;
        if (c >= 0xC2 && c <= 0xDF)
            more = 1, cp = c & 0x1F, min = 0x80;
        else if (c >= 0xE0 && c <= 0xEF)
            more = 2, cp = c & 0x0F, min = 0x800;
        else if (c >= 0xF0 && c <= 0xF4)
            more = 3, cp = c & 0x07, min = 0x10000;
        else
            return false;
        if (n - i < more)
            return false;
        for (; more; more--, i++) {
            if ((s[i] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
    }
    return true;
}

/* Copy a key, decoding %HH (but never into a NUL byte). A key that decoding
 * would turn into bytes that are not UTF-8 (users/%FF) is kept as sent: it
 * goes into the routed notification's JSON, which cannot hold them. */
static char *decode_key(const char *s, size_t len)
{
    char *out = gr_xmalloc(len + 1);
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%' && i + 2 < len) {
            int hi = gr_hex_digit((unsigned char)s[i + 1]);
            int lo = gr_hex_digit((unsigned char)s[i + 2]);
            if (hi >= 0 && lo >= 0 && (hi | lo)) {
                out[o++] = (char)(hi * 16 + lo);
                i += 2;
                continue;
            }
        }
        out[o++] = s[i];
    }
    out[o] = '\0';
    if (o < len && !utf8_valid((const unsigned char *)out, o)) {
        memcpy(out, s, len);
        out[len] = '\0';
    }
    return out;
}

/* The key inside "name(...)": 'quoted' (with '' for a quote), bare, or
 * ident='v' (then the value). Bare keys keep their '=' (Outlook ids end in it). */
static char *paren_key(const char *s, size_t len)
{
    size_t ident = 0;
    while (ident < len && (isalnum((unsigned char)s[ident]) || s[ident] == '_'))
        ident++;
    if (ident > 0 && ident + 1 < len && s[ident] == '=' && s[ident + 1] == '\'') {
        s += ident + 1;
        len -= ident + 1;
    }
    while (len && isspace((unsigned char)*s))
        s++, len--;
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    if (len >= 2 && s[0] == '\'' && s[len - 1] == '\'') {
        struct gr_buf b = {0};
        gr_buf_reserve(&b, len);
        for (size_t i = 1; i + 1 < len; i++) {
            gr_buf_append(&b, &s[i], 1);
            if (s[i] == '\'' && s[i + 1] == '\'' && i + 2 < len)
                i++;
        }
        char *key = decode_key(b.data ? b.data : "", b.len);
        gr_buf_free(&b);
        return key;
    }
    return decode_key(s, len);
}

static void set_name(struct segment *seg, const char *s, size_t len)
{
    size_t n = len < sizeof seg->name - 1 ? len : sizeof seg->name - 1;
    for (size_t i = 0; i < n; i++)
        seg->name[i] = (char)tolower((unsigned char)s[i]);
    seg->name[n] = '\0';
}

/* Split the path into segments; returns how many were filled. */
static size_t parse_path(const char *resource, struct segment *segs, size_t max)
{
    const char *s = resource;
    if (gr_has_prefix_ci(s, "https://") || gr_has_prefix_ci(s, "http://")) {
        s = strstr(s, "://") + 3;
        s += strcspn(s, "/?");
    }
    while (*s == '/')
        s++;
    if (gr_has_prefix_ci(s, "v1.0/") || gr_has_prefix_ci(s, "beta/"))
        s += strchr(s, '/') - s + 1;

    size_t n = 0;
    bool want_key = false; /* the previous segment was a collection without a key */
    const char *start = s;
    int depth = 0;
    bool quoted = false;
    for (const char *p = s;; p++) {
        char c = *p;
        if (quoted) {
            if (c == '\0')
                quoted = false; /* unterminated: take what there is */
            else if (c == '\'')
                quoted = false;
            if (c != '\0')
                continue;
        } else if (c == '\'') {
            quoted = true;
            continue;
        } else if (c == '(') {
            depth++;
            continue;
        } else if (c == ')') {
            if (depth > 0)
                depth--;
            continue;
        }
        bool end = c == '\0' || (depth == 0 && c == '?');
        if (!end && !(depth == 0 && c == '/'))
            continue;

        size_t len = (size_t)(p - start);
        if (len > 0 && n < max) {
            if (want_key && !is_function(start, len)) {
                segs[n - 1].key = decode_key(start, len);
                want_key = false;
            } else {
                struct segment *seg = &segs[n++];
                *seg = (struct segment){0};
                const char *open = memchr(start, '(', len);
                if (open && start[len - 1] == ')') {
                    set_name(seg, start, (size_t)(open - start));
                    seg->key = paren_key(open + 1, len - (size_t)(open - start) - 2);
                } else {
                    set_name(seg, start, len);
                }
                bool is_me = strcmp(seg->name, "me") == 0; /* me = users/{signed-in user} */
                if (is_me)
                    strcpy(seg->name, "users");
                seg->role = collection_role(seg->name);
                want_key = seg->role && !seg->key && !is_me;
            }
        }
        if (end)
            break;
        start = p + 1;
    }
    return n;
}

static bool rule_matches(const char *const names[3], const struct segment *segs, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k < 3 && names[k]; i++)
        if (strcmp(segs[i].name, names[k]) == 0)
            k++;
    return k == 3 || !names[k];
}

static void add_id(struct gr_classification *c, const char *role, char *value)
{
    if (gr_classification_id(c, role)) {
        free(value);
        return;
    }
    c->ids = gr_xrealloc(c->ids, (c->nids + 1) * sizeof *c->ids);
    c->ids[c->nids++] = (struct gr_resource_id){role, value};
}

void gr_classify(const char *resource, const char *odata_type, const char *lifecycle_event,
                 struct gr_classification *out)
{
    *out = (struct gr_classification){GR_RT_UNKNOWN, NULL, 0};
    struct segment segs[GR_MAX_SEGMENTS];
    size_t n = resource ? parse_path(resource, segs, GR_MAX_SEGMENTS) : 0;

    for (size_t r = 0; r < GR_ARRAY_LEN(rules); r++) {
        if (rule_matches(rules[r].names, segs, n)) {
            out->type = rules[r].type;
            break;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (segs[i].key && segs[i].role)
            add_id(out, segs[i].role, segs[i].key);
        else
            free(segs[i].key);
    }
    if (out->type == GR_RT_UNKNOWN)
        out->type = gr_classify_odata_type(odata_type);
    if (lifecycle_event)
        out->type = GR_RT_LIFECYCLE;
}

void gr_classification_free(struct gr_classification *c)
{
    for (size_t i = 0; i < c->nids; i++)
        free(c->ids[i].value);
    free(c->ids);
    c->ids = NULL;
    c->nids = 0;
}

const char *gr_classification_id(const struct gr_classification *c, const char *role)
{
    for (size_t i = 0; i < c->nids; i++)
        if (strcmp(c->ids[i].role, role) == 0)
            return c->ids[i].value;
    return NULL;
}
