/* Resource templates for graphrouter-simulate (see payloads.h). The shapes
 * follow Microsoft's documented examples (tests/vectors/docs-samples). */
#define _GNU_SOURCE
#include "payloads.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

const char *const sim_types[] = {
    "message", "event",      "contact",  "user",          "group",         "conversation",
    "chatMessage", "chat",   "channel",  "team",          "conversationMember", "presence",
    "callRecord", "driveItem", "list",   "alert",         "todoTask",      "onlineMeeting",
    "callRecording", "callTranscript", NULL};

void sim_guid(char out[37])
{
    unsigned char b[16];
    RAND_bytes(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

static void now_iso(char out[32])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* A long Outlook-style id (base64-ish, with = and -). */
static void outlook_id(char out[64])
{
    char g[37];
    sim_guid(g);
    snprintf(out, 64, "AAMkAG%.8s-%.4sAAA=", g, g + 9);
}

static json_t *data(const char *odata_type, const char *odata_id, const char *id)
{
    return json_pack("{s:s,s:s,s:s}", "@odata.type", odata_type, "@odata.id", odata_id, "id", id);
}

int sim_resource_new(const char *type, const char *user, struct sim_resource *out)
{
    *out = (struct sim_resource){0};
    char a[37], b[37], when[32], oid[64];
    sim_guid(a);
    sim_guid(b);
    now_iso(when);
    outlook_id(oid);
    long long msg_id = (long long)time(NULL) * 1000 + (long long)(a[0] & 0x3f);
    char num[32];
    snprintf(num, sizeof num, "%lld", msg_id);

    if (strcmp(type, "message") == 0) {
        out->resource = gr_xprintf("Users('%s')/messages('%s')", user, oid);
        out->resource_data = data("#Microsoft.Graph.Message", out->resource, oid);
        out->content = json_pack(
            "{s:s,s:s,s:s,s:s,s:s,s:{s:{s:s,s:s}}}", "@odata.type", "#microsoft.graph.message",
            "id", oid, "subject", "Quarterly report", "bodyPreview",
            "Hi team, the figures for the quarter are attached.", "receivedDateTime", when, "from",
            "emailAddress", "name", "Megan Bowen", "address", "megan.bowen@contoso.example");
    } else if (strcmp(type, "event") == 0) {
        out->resource = gr_xprintf("Users/%s/Events/%s", user, oid);
        out->resource_data = data("#Microsoft.Graph.Event", out->resource, oid);
        out->content = json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", oid, "subject", "Planning",
                                 "start", "dateTime", when, "timeZone", "UTC");
    } else if (strcmp(type, "contact") == 0) {
        out->resource = gr_xprintf("Users/%s/Contacts/%s", user, oid);
        out->resource_data = data("#Microsoft.Graph.Contact", out->resource, oid);
        out->content = json_pack("{s:s,s:s}", "id", oid, "displayName", "Adele Vance");
    } else if (strcmp(type, "user") == 0) {
        out->resource = gr_xprintf("Users/%s", a);
        out->resource_data = data("#Microsoft.Graph.User", out->resource, a);
        out->content = json_pack("{s:s,s:s}", "id", a, "displayName", "Alex Wilber");
    } else if (strcmp(type, "group") == 0) {
        out->resource = gr_xprintf("Groups/%s", a);
        out->resource_data = data("#Microsoft.Graph.Group", out->resource, a);
        out->content = json_pack("{s:s,s:s}", "id", a, "displayName", "Sales");
    } else if (strcmp(type, "conversation") == 0) {
        out->resource = gr_xprintf("groups('%s')/conversations('%s')", a, oid);
        out->resource_data = data("#Microsoft.Graph.Conversation", out->resource, oid);
        out->content = json_pack("{s:s,s:s}", "id", oid, "topic", "Offsite");
    } else if (strcmp(type, "chatMessage") == 0) {
        char *chat = gr_xprintf("19:%s_%s@unq.gbl.spaces", a, user);
        out->resource = gr_xprintf("chats('%s')/messages('%s')", chat, num);
        out->resource_data = data("#Microsoft.Graph.chatMessage", out->resource, num);
        out->content = json_pack(
            "{s:s,s:s,s:s,s:s,s:s,s:s,s:{s:n,s:n,s:{s:s,s:s,s:s}},s:{s:s,s:s},s:[{s:i,s:s,s:{s:{s:s,s:s}}}]}",
            "id", num, "etag", num, "messageType", "message", "createdDateTime", when,
            "lastModifiedDateTime", when, "chatId", chat, "from", "application", "device",
            "user", "id", user, "displayName", "Megan Bowen", "userIdentityType", "aadUser",
            "body", "contentType", "html", "content",
            "<div><at id=\"0\">Adele</at> the build is green</div>", "mentions", "id", 0,
            "mentionText", "Adele", "mentioned", "user", "id", b, "displayName", "Adele Vance");
        free(chat);
    } else if (strcmp(type, "chat") == 0) {
        out->resource = gr_xprintf("chats('19:%s@thread.v2')", a);
        out->resource_data = data("#Microsoft.Graph.chat", out->resource, a);
        out->content = json_pack("{s:s,s:s}", "id", a, "chatType", "group");
    } else if (strcmp(type, "channel") == 0) {
        out->resource = gr_xprintf("teams('%s')/channels('19:%s@thread.tacv2')", a, b);
        out->resource_data = data("#Microsoft.Graph.Channel", out->resource, b);
        out->content = json_pack("{s:s,s:s}", "id", b, "displayName", "General");
    } else if (strcmp(type, "team") == 0) {
        out->resource = gr_xprintf("teams('%s')", a);
        out->resource_data = data("#Microsoft.Graph.Team", out->resource, a);
        out->content = json_pack("{s:s,s:s}", "id", a, "displayName", "Contoso");
    } else if (strcmp(type, "conversationMember") == 0) {
        out->resource = gr_xprintf("chats('19:%s@thread.v2')/members('%s')", a, b);
        out->resource_data = data("#microsoft.graph.aadUserConversationMember", out->resource, b);
        out->content = json_pack("{s:s,s:s}", "id", b, "displayName", "Adele Vance");
    } else if (strcmp(type, "presence") == 0) {
        out->resource = gr_xprintf("communications/presences('%s')", user);
        char *odata_id = gr_xprintf("users/%s/presence", user);
        out->resource_data = data("#Microsoft.Graph.presence", odata_id, user);
        out->content = json_pack("{s:s,s:s,s:s,s:s,s:s}", "@odata.type",
                                 "#microsoft.graph.presence", "@odata.id", odata_id, "id", user,
                                 "availability", "Busy", "activity", "InACall");
        free(odata_id);
    } else if (strcmp(type, "callRecord") == 0) {
        out->resource = gr_xprintf("communications/callRecords/%s", a);
        out->resource_data = data("#Microsoft.Graph.callrecord", out->resource, a);
        out->content = json_pack("{s:s,s:s}", "id", a, "type", "groupCall");
    } else if (strcmp(type, "driveItem") == 0) {
        out->resource = gr_xprintf("drives/b!%.22s/root", a);
        out->resource_data = json_pack("{s:s}", "@odata.type", "#Microsoft.Graph.driveItem");
        out->content = json_pack("{s:s}", "name", "root");
    } else if (strcmp(type, "list") == 0) {
        out->resource = gr_xprintf("sites/contoso.sharepoint.com,%s,%s/lists/%s", a, b, a);
        out->resource_data = data("#Microsoft.Graph.list", out->resource, a);
        out->content = json_pack("{s:s,s:s}", "id", a, "displayName", "Issues");
    } else if (strcmp(type, "alert") == 0) {
        out->resource = gr_xprintf("security/alerts/%s", a);
        out->resource_data = data("#microsoft.graph.security.alert", out->resource, a);
        out->content = json_pack("{s:s,s:s}", "id", a, "severity", "high");
    } else if (strcmp(type, "todoTask") == 0) {
        out->resource = gr_xprintf("users/%s/todo/lists/%s/tasks/%s", user, a, b);
        out->resource_data = data("#microsoft.graph.todoTask", out->resource, b);
        out->content = json_pack("{s:s,s:s}", "id", b, "title", "Renew the certificate");
    } else if (strcmp(type, "onlineMeeting") == 0) {
        out->resource = gr_xprintf("communications/onlineMeetings('%s')", a);
        out->resource_data = data("#microsoft.graph.onlineMeeting", out->resource, a);
        out->content = json_pack("{s:s,s:s}", "id", a, "subject", "Standup");
    } else if (strcmp(type, "callRecording") == 0) {
        out->resource = gr_xprintf("communications/onlineMeetings('%s')/recordings('%s')", a, b);
        out->resource_data = data("#microsoft.graph.callRecording", out->resource, b);
        out->content = json_pack("{s:s,s:s}", "id", b, "meetingId", a);
    } else if (strcmp(type, "callTranscript") == 0) {
        out->resource = gr_xprintf("communications/onlineMeetings('%s')/transcripts('%s')", a, b);
        out->resource_data = data("#microsoft.graph.callTranscript", out->resource, b);
        out->content = json_pack("{s:s,s:s}", "id", b, "meetingId", a);
    } else {
        return -1;
    }
    return 0;
}

void sim_resource_free(struct sim_resource *r)
{
    free(r->resource);
    json_decref(r->resource_data);
    json_decref(r->content);
    *r = (struct sim_resource){0};
}
