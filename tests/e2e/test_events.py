"""The bundled plugins mail, teams, drive and presence: the normalised events
they emit for each resource type (README "Events")."""

from grtest import SECRET, RouterTest, base_config, batch


def note(resource, change="created", odata=None, rid=None, **kw):
    it = {"subscriptionId": "sub", "clientState": SECRET, "changeType": change,
          "resource": resource, "tenantId": "tid", "id": "nid",
          "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z"}
    if odata or rid:
        it["resourceData"] = {"@odata.type": odata, "id": rid}
    it.update(kw)
    return it


COMMON = {"tenant_id": "tid", "subscription_id": "sub", "notification_id": "nid"}


class EventsTest(RouterTest):
    def setUp(self):
        super().setUp()
        emit = {"emit_to": ["events"]}
        self.r = self.router(base_config(
            handlers={"mail": {"plugin": "mail", "config": emit},
                      "teams": {"plugin": "teams", "config": emit},
                      "drive": {"plugin": "drive", "config": emit},
                      "presence": {"plugin": "presence", "config": emit},
                      "events": {"plugin": "file", "config": {"path": "events.jsonl"}}},
            routes=[{"name": "mail", "match": {"resource_type": ["message", "event", "contact"]},
                     "to": "mail"},
                    {"name": "teams", "match": {"resource_type": [
                        "chatMessage", "chat", "channel", "team", "conversationMember"]},
                     "to": "teams"},
                    {"name": "drive", "match": {"resource_type": ["driveItem", "list"]},
                     "to": "drive"},
                    {"name": "presence", "match": {"resource_type": "presence"},
                     "to": "presence"}]))

    def events(self, *items):
        self.assertEqual(self.r.post(batch(*items))[0], 202)
        lines = self.r.wait_jsonl(len(items), "events.jsonl")
        for line in lines:
            for k, v in COMMON.items():
                self.assertEqual(line[k], v, k)
            self.assertRegex(line["received_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        return {l["event"]: l for l in lines}

    def test_mail(self):
        e = self.events(
            note("Users/u1/Messages/m1"),
            note("users('u2')/mailFolders('inbox')/messages('m2')", change="Updated"),
            note("me/messages", change="deleted", odata="#Microsoft.Graph.Message", rid="m3"),
            note("Users/u4/Events/e4"),
            note("users/u5/contactFolders/f5/contacts/c5", change="deleted"))
        self.assertEqual(set(e), {"mail.message.created", "mail.message.updated",
                                  "mail.message.deleted", "mail.event.created",
                                  "mail.contact.deleted"})
        m = e["mail.message.created"]
        self.assertEqual((m["user_id"], m["message_id"], m["folder_id"], m["resource"],
                          m["resource_type"], m["change_type"]),
                         ("u1", "m1", None, "Users/u1/Messages/m1", "message", "created"))
        m = e["mail.message.updated"]
        self.assertEqual((m["user_id"], m["message_id"], m["folder_id"]), ("u2", "m2", "inbox"))
        m = e["mail.message.deleted"]  # id from resourceData when the path has none
        self.assertEqual((m["user_id"], m["message_id"]), (None, "m3"))
        self.assertEqual((e["mail.event.created"]["user_id"], e["mail.event.created"]["event_id"]),
                         ("u4", "e4"))
        c = e["mail.contact.deleted"]
        self.assertEqual((c["user_id"], c["contact_id"], c["folder_id"]), ("u5", "c5", "f5"))

    def test_teams(self):
        e = self.events(
            note("teams('t1')/channels('19:c1@thread.tacv2')/messages('m1')/replies('r1')"),
            note("chats('19:x_y@unq.gbl.spaces')/messages('m2')", change="updated"),
            note("teams('t3')/channels('19:c3@thread.tacv2')", change="deleted"),
            note("teams('t4')", change="updated"),
            note("chats('c5')/members('mem5')"),
            note("chats('c6')", change="deleted"))
        r = e["teams.chatMessage.created"]
        self.assertEqual((r["team_id"], r["channel_id"], r["message_id"], r["reply_id"],
                          r["chat_id"]), ("t1", "19:c1@thread.tacv2", "m1", "r1", None))
        m = e["teams.chatMessage.updated"]
        self.assertEqual((m["chat_id"], m["message_id"], m["team_id"]),
                         ("19:x_y@unq.gbl.spaces", "m2", None))
        self.assertEqual((e["teams.channel.deleted"]["team_id"],
                          e["teams.channel.deleted"]["channel_id"]), ("t3", "19:c3@thread.tacv2"))
        self.assertEqual(e["teams.team.updated"]["team_id"], "t4")
        self.assertEqual((e["teams.conversationMember.created"]["chat_id"],
                          e["teams.conversationMember.created"]["member_id"]), ("c5", "mem5"))
        self.assertEqual(e["teams.chat.deleted"]["chat_id"], "c6")

    def test_drive_and_presence(self):
        e = self.events(
            note("drives/b!d1/root", change="updated"),
            note("sites/s2,a,b/lists/l2", change="deleted"),
            note("communications/presences/u3", change="updated"),
            note("users/u4/drive/root", change="created"))
        d = e["drive.driveItem.updated"]
        self.assertEqual((d["drive_id"], d["site_id"], d["user_id"]), ("b!d1", None, None))
        self.assertEqual((e["drive.list.deleted"]["site_id"], e["drive.list.deleted"]["list_id"]),
                         ("s2,a,b", "l2"))
        self.assertEqual(e["drive.driveItem.created"]["user_id"], "u4")
        # a basic presence notification without Graph to ask: its presence is unknown
        p = e["presence.changed"]
        self.assertEqual((p["user_id"], p["resource_type"]), ("u3", "presence"))
        self.assertEqual((p["availability"], p["previous_availability"]), (None, None))
