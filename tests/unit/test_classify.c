/* Classification: every resource type, both path syntaxes, odd casing, keys
 * with : @ = , ! - _ kept intact, the @odata.type fallback and lifecycle. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "route/classify.h"

struct id {
    const char *role, *value;
};

struct classify_case {
    const char *resource;
    const char *odata_type;
    const char *lifecycle;
    const char *type;
    struct id ids[6];
};

static const struct classify_case cases[] = {
    /* message: both syntaxes, Graph's own casing drift, user@tenant keys */
    {"users/{user_guid}@{tenant_guid}/messages/{long_id_string}", NULL, NULL, "message",
     {{"user", "{user_guid}@{tenant_guid}"}, {"message", "{long_id_string}"}}},
    {"Users/622eaaff-0683-4862-9de4-f2ec83c2bd98/Messages/AAMkAGUwNjQ4ZjIxAAA=", NULL, NULL,
     "message",
     {{"user", "622eaaff-0683-4862-9de4-f2ec83c2bd98"}, {"message", "AAMkAGUwNjQ4ZjIxAAA="}}},
    {"Users('722effaf-0433-4272-9ac4-d5ec11c3cd77')/messages('AAMkAGUwNjQ4ZjIxLTQ3Y2Y8AAA=')", NULL,
     NULL, "message",
     {{"user", "722effaf-0433-4272-9ac4-d5ec11c3cd77"}, {"message", "AAMkAGUwNjQ4ZjIxLTQ3Y2Y8AAA="}}},
    {"USERS/u1/MAILFOLDERS('Inbox')/MESSAGES/a-b_c=d,e!f", NULL, NULL, "message",
     {{"user", "u1"}, {"mailFolder", "Inbox"}, {"message", "a-b_c=d,e!f"}}},
    {"/me/mailFolders/inbox/childFolders/f2/messages/m1", NULL, NULL, "message",
     {{"mailFolder", "inbox"}, {"message", "m1"}}},
    {"https://graph.microsoft.com/v1.0/users/u1/messages?$select=subject", NULL, NULL, "message",
     {{"user", "u1"}}},
    {"users/me@contoso.com/messages/x%2Fy", NULL, NULL, "message",
     {{"user", "me@contoso.com"}, {"message", "x/y"}}},
    /* event, contact */
    {"Users/fake_user_id/Events/fake_event_id", NULL, NULL, "event",
     {{"user", "fake_user_id"}, {"event", "fake_event_id"}}},
    {"users('u')/calendars('c')/events('e')", NULL, NULL, "event",
     {{"user", "u"}, {"calendar", "c"}, {"event", "e"}}},
    {"users/u/contactFolders/cf/contacts/c1", NULL, NULL, "contact",
     {{"user", "u"}, {"contactFolder", "cf"}, {"contact", "c1"}}},
    {"me/contacts", NULL, NULL, "contact", {{0}}},
    /* user, group, conversation */
    {"Users/<user-id>", NULL, NULL, "user", {{"user", "<user-id>"}}},
    {"users", NULL, NULL, "user", {{0}}},
    {"Groups/<group-id>", NULL, NULL, "group", {{"group", "<group-id>"}}},
    {"groups/g1/members", NULL, NULL, "group", {{"group", "g1"}}},
    {"groups('g1')/conversations", NULL, NULL, "conversation", {{"group", "g1"}}},
    {"groups/g1/threads/t1", NULL, NULL, "conversation", {{"group", "g1"}, {"thread", "t1"}}},
    /* Teams: chat and channel messages, replies, ids with : @ . _ */
    {"chats('19:8ea0e38b-efb3-4757-924a-5f94061cf8c2_97f62344-57dc-409c-88ad-c4af14158ff5@unq.gbl."
     "spaces')/messages('1612289765949')",
     NULL, NULL, "chatMessage",
     {{"chat", "19:8ea0e38b-efb3-4757-924a-5f94061cf8c2_97f62344-57dc-409c-88ad-c4af14158ff5@unq."
               "gbl.spaces"},
      {"message", "1612289765949"}}},
    {"teams('fbe2bf47-16c8-47cf-b4a5-4b9b187c508b')/channels('19:4a95f7d8db4c4e7fae857bcebe0623e6@"
     "thread.tacv2')/messages('1612293113399')",
     NULL, NULL, "chatMessage",
     {{"team", "fbe2bf47-16c8-47cf-b4a5-4b9b187c508b"},
      {"channel", "19:4a95f7d8db4c4e7fae857bcebe0623e6@thread.tacv2"},
      {"message", "1612293113399"}}},
    {"teams('d29828b8-c04d-4e2a-b2f6-07da6982f0f0')/channels('19:f127a8c55ad949d1a238464d22f0f99e@"
     "thread.skype')/messages('1565045424600')/replies('1565047490246')",
     NULL, NULL, "chatMessage",
     {{"team", "d29828b8-c04d-4e2a-b2f6-07da6982f0f0"},
      {"channel", "19:f127a8c55ad949d1a238464d22f0f99e@thread.skype"},
      {"message", "1565045424600"},
      {"reply", "1565047490246"}}},
    {"teams/t1/channels/19:abc@thread.tacv2/messages/m1", NULL, NULL, "chatMessage",
     {{"team", "t1"}, {"channel", "19:abc@thread.tacv2"}, {"message", "m1"}}},
    {"teams/getAllMessages", NULL, NULL, "chatMessage", {{0}}},
    {"users/u1/chats/getAllMessages", NULL, NULL, "chatMessage", {{"user", "u1"}}},
    {"appCatalogs/teamsApps/app1/installedToChats/getAllMessages", NULL, NULL, "chatMessage",
     {{"teamsApp", "app1"}}},
    /* chat, channel, team, members */
    {"chats('19:x@thread.v2')", NULL, NULL, "chat", {{"chat", "19:x@thread.v2"}}},
    {"users/u1/chats", NULL, NULL, "chat", {{"user", "u1"}}},
    {"teams('fb82c19a-0f6d-41ed-90f0-cbb29a476ede')/channels('19:01f39f5ac52f45fb9a7ce01cedd57b1f@"
     "thread.tacv2')",
     NULL, NULL, "channel",
     {{"team", "fb82c19a-0f6d-41ed-90f0-cbb29a476ede"},
      {"channel", "19:01f39f5ac52f45fb9a7ce01cedd57b1f@thread.tacv2"}}},
    {"teams/getAllChannels", NULL, NULL, "channel", {{0}}},
    {"teams('fb82c19a-0f6d-41ed-90f0-cbb29a476ede')", NULL, NULL, "team",
     {{"team", "fb82c19a-0f6d-41ed-90f0-cbb29a476ede"}}},
    {"TEAMS/t1/Members/m1", NULL, NULL, "conversationMember", {{"team", "t1"}, {"member", "m1"}}},
    {"chats/c1/members", NULL, NULL, "conversationMember", {{"chat", "c1"}}},
    {"teams/getAllChannels/getAllMembers", NULL, NULL, "conversationMember", {{0}}},
    /* presence, call records, meetings */
    {"communications/presences/{id}", NULL, NULL, "presence", {{"presence", "{id}"}}},
    {"communications/presences('a1b2')", NULL, NULL, "presence", {{"presence", "a1b2"}}},
    {"users/{User Id}/presence", NULL, NULL, "presence", {{"user", "{User Id}"}}},
    {"communications/callRecords/{Call id}", NULL, NULL, "callRecord",
     {{"callRecord", "{Call id}"}}},
    {"communications/onlineMeetings(joinWebUrl='https%3A%2F%2Fteams.microsoft.com%2Fl%2Fx')/"
     "meetingCallEvents",
     NULL, NULL, "onlineMeeting", {{"onlineMeeting", "https://teams.microsoft.com/l/x"}}},
    {"communications/onlineMeetings/getAllRecordings", NULL, NULL, "callRecording", {{0}}},
    {"users/u1/onlineMeetings/m1/recordings/r1", NULL, NULL, "callRecording",
     {{"user", "u1"}, {"onlineMeeting", "m1"}, {"recording", "r1"}}},
    {"communications/onlineMeetings/m1/transcripts('t''1')", NULL, NULL, "callTranscript",
     {{"onlineMeeting", "m1"}, {"transcript", "t'1"}}},
    {"appCatalogs/teamsApps/a/installedToOnlineMeetings/getAllTrancripts", NULL, NULL,
     "callTranscript", {{"teamsApp", "a"}}},
    /* drives, lists, alerts, to-do */
    {"me/drive/root", NULL, NULL, "driveItem", {{0}}},
    {"drives/b!abc-DEF_1/root", NULL, NULL, "driveItem", {{"drive", "b!abc-DEF_1"}}},
    {"users/u1/drive/root", NULL, NULL, "driveItem", {{"user", "u1"}}},
    {"sites/contoso.sharepoint.com,1a2b,3c4d/lists/l1", NULL, NULL, "list",
     {{"site", "contoso.sharepoint.com,1a2b,3c4d"}, {"list", "l1"}}},
    {"security/alerts/a1", NULL, NULL, "alert", {{"alert", "a1"}}},
    {"security/alerts?$filter=severity eq 'high'", NULL, NULL, "alert", {{0}}},
    {"me/todo/lists/l1/tasks/t1", NULL, NULL, "todoTask", {{"list", "l1"}, {"task", "t1"}}},
    /* the @odata.type fallback, and its capitalisation drift */
    {"0b5c5a7e-1234", "#Microsoft.Graph.driveItem", NULL, "driveItem", {{0}}},
    {NULL, "#Microsoft.Graph.Teams", NULL, "team", {{0}}},
    {"", "#Microsoft.Graph.callrecord", NULL, "callRecord", {{0}}},
    {"NA", "NA", NULL, "unknown", {{0}}},
    {"something/else", "#microsoft.graph.aadUserConversationMember", NULL, "conversationMember",
     {{0}}},
    {"x", "#microsoft.graph.security.alert", NULL, "alert", {{0}}},
    {"x", "#microsoft.graph.todoTask", NULL, "todoTask", {{0}}},
    {"x", "#microsoft.graph.onlineMeeting", NULL, "onlineMeeting", {{0}}},
    {"x", "#microsoft.graph.callTranscript", NULL, "callTranscript", {{0}}},
    {"x", "#microsoft.graph.conversation", NULL, "conversation", {{0}}},
    {"x", "#microsoft.graph.list", NULL, "list", {{0}}},
    {"teams/t/schedule/shifts/s1", NULL, NULL, "unknown", {{"team", "t"}}},
    {NULL, NULL, NULL, "unknown", {{0}}},
    /* the path wins over @odata.type */
    {"users/u/messages/m", "#microsoft.graph.event", NULL, "message",
     {{"user", "u"}, {"message", "m"}}},
    /* lifecycle: any item with lifecycleEvent, whatever its resource says */
    {NULL, NULL, "reauthorizationRequired", "lifecycle", {{0}}},
    {"users/u/messages", NULL, "missed", "lifecycle", {{"user", "u"}}},
    /* %HH is decoded unless that would not be UTF-8 (the key then stays as sent) */
    {"users/%C3%A9l%C3%A8ve/messages/x", NULL, NULL, "message",
     {{"user", "\xc3\xa9l\xc3\xa8ve"}, {"message", "x"}}},
    {"users/%FF/messages('a%C3')", NULL, NULL, "message", {{"user", "%FF"}, {"message", "a%C3"}}},
    {"users/%00x/messages/m", NULL, NULL, "message", {{"user", "%00x"}, {"message", "m"}}},
    /* malformed input never crashes and keeps what it can */
    {"users('unterminated/messages", NULL, NULL, "unknown", {{0}}},
    {"////users//u1//", NULL, NULL, "user", {{"user", "u1"}}},
    {"messages(", NULL, NULL, "unknown", {{0}}},
};

static void test_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct classify_case *k = &cases[i];
        struct gr_classification c;
        gr_classify(k->resource, k->odata_type, k->lifecycle, &c);
        if (strcmp(gr_rtype_name(c.type), k->type) != 0)
            fail_msg("case %zu (%s): type %s, expected %s", i, k->resource ? k->resource : "NULL",
                     gr_rtype_name(c.type), k->type);
        size_t nexpected = 0;
        for (; nexpected < 6 && k->ids[nexpected].role; nexpected++) {
            const char *got = gr_classification_id(&c, k->ids[nexpected].role);
            if (!got || strcmp(got, k->ids[nexpected].value) != 0)
                fail_msg("case %zu (%s): id %s = %s, expected %s", i, k->resource,
                         k->ids[nexpected].role, got ? got : "(none)", k->ids[nexpected].value);
        }
        if (c.nids != nexpected)
            fail_msg("case %zu (%s): %zu ids, expected %zu", i, k->resource, c.nids, nexpected);
        gr_classification_free(&c);
    }
}

static void test_every_type_has_a_name(void **state)
{
    (void)state;
    static const char *const names[] = {
        "unknown", "message", "event", "contact", "user", "group", "conversation",
        "chatMessage", "chat", "channel", "team", "conversationMember", "presence",
        "callRecord", "driveItem", "list", "alert", "todoTask", "onlineMeeting",
        "callRecording", "callTranscript", "lifecycle"};
    assert_int_equal(sizeof names / sizeof names[0], GR_RT_COUNT);
    for (int t = 0; t < GR_RT_COUNT; t++) {
        assert_string_equal(gr_rtype_name((enum gr_rtype)t), names[t]);
        assert_int_equal(gr_rtype_parse(names[t]), t);
    }
    assert_int_equal(gr_rtype_parse("CHATMESSAGE"), GR_RT_CHAT_MESSAGE);
    assert_int_equal(gr_rtype_parse("mesage"), -1);
}

static void test_long_path_is_bounded(void **state)
{
    (void)state;
    char path[64 * 1024];
    size_t n = 0;
    while (n + 12 < sizeof path) {
        memcpy(path + n, "users/u/", 8);
        n += 8;
    }
    path[n] = '\0';
    struct gr_classification c;
    gr_classify(path, NULL, NULL, &c);
    assert_string_equal(gr_rtype_name(c.type), "user");
    assert_string_equal(gr_classification_id(&c, "user"), "u");
    gr_classification_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_every_type_has_a_name),
        cmocka_unit_test(test_long_path_is_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
