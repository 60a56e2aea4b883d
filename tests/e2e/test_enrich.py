"""Plugins that call Graph and keep state (plugin ABI 1.2), through the real binary against the
fake Graph: the mail, teams, presence and drive plugins fetching what basic notifications lack,
their resync events, presence changes kept in state across a restart, drive deltas (pages, delta
links, token=latest, initial: all, 410, one delta per drive at a time, a SIGKILL mid-delta),
throttling, and the host services themselves through a probe plugin: puts discarded on
GR_RETRY, the state lock, a URL on another host refused, calls kept within timeout_s."""

import json
import os
import signal
import sqlite3
import threading
import time

from grtest import APP_ID, SECRET, TEST_PLUGINS, base_config, batch, simulate
from graphtest import TENANT, GraphTest, declared

PROBE = os.path.join(TEST_PLUGINS, "graph_probe.so")
EVENTS = {"plugin": "file", "config": {"path": "events.jsonl"}}


def note(resource, change="created", **kw):
    it = {"subscriptionId": "sub-e2e", "clientState": SECRET, "changeType": change,
          "resource": resource, "tenantId": TENANT,
          "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z"}
    it.update(kw)
    return it


class EnrichTest(GraphTest):
    def enrich_router(self, handlers, routes=None, **kw):
        handlers = dict(handlers, events=EVENTS)
        routes = routes or [{"name": "all", "to": [h for h in handlers if h != "events"]}]
        return self.graph_router([], handlers=handlers, routes=routes, **kw)

    def post(self, r, *items):
        self.assertEqual(r.post(batch(*items))[0], 202)

    def post_apart(self, r, items, gap=0.1):
        """One POST per item, `gap` apart: each becomes a delivery of its own, so that two
        workers run them at once (one POST's deliveries go to one worker, in a chain)."""
        for it in items:
            self.post(r, it)
            time.sleep(gap)

    def gets(self, regex):
        return self.fake.requests_matching("GET", regex)


class MailTest(EnrichTest):
    def mail_router(self, **config):
        return self.enrich_router({"mail": {"plugin": "mail", "config": dict(
            {"emit_to": ["events"]}, **config), "retry": {"initial_backoff_ms": 100,
                                                          "max_backoff_ms": 200}}})

    def test_items_fetched_with_select(self):
        self.fake.put_item(TENANT, "messages", "u1", "m1", {
            "subject": "Budget", "from": {"emailAddress": {"address": "a@contoso.com"}},
            "isRead": False, "bodyPreview": "not selected", "webLink": "https://outlook/x"})
        self.fake.put_item(TENANT, "events", "u1", "e1", {"subject": "Standup",
                                                         "start": {"dateTime": "2026-12-04T09:00"},
                                                         "importance": "normal"})
        self.fake.put_item(TENANT, "contacts", "u1", "c1", {"displayName": "Adele",
                                                           "emailAddresses": [], "jobTitle": "x"})
        r = self.mail_router(select={"event": "subject,start"})
        self.post(r, note("Users/u1/Messages/m1"), note("users('u1')/events('e1')"),
                  note("Users/u1/contacts/c1", change="updated"))
        e = {l["event"]: l for l in r.wait_jsonl(3, "events.jsonl")}
        m = e["mail.message.created"]
        self.assertEqual((m["deleted"], m["message"]["subject"], m["message"]["isRead"]),
                         (False, "Budget", False))
        self.assertNotIn("bodyPreview", m["message"])
        self.assertEqual(e["mail.event.created"]["calendar_event"]["subject"], "Standup")
        self.assertNotIn("importance", e["mail.event.created"]["calendar_event"])
        self.assertEqual(e["mail.contact.updated"]["contact"]["displayName"], "Adele")
        selects = {q.path: q.query["$select"] for q in self.gets(r"^/v1\.0/users/")}
        self.assertEqual(selects["/v1.0/users/u1/messages/m1"],
                         "subject,from,toRecipients,receivedDateTime,isRead,hasAttachments,"
                         "webLink")
        self.assertEqual(selects["/v1.0/users/u1/events/e1"], "subject,start")
        self.assertEqual(selects["/v1.0/users/u1/contacts/c1"], "displayName,emailAddresses")
        self.assertEqual(r.metric("graphrouter_handler_graph_requests_total", handler="mail",
                                  code="200"), 3)

    def test_deleted_404_403_and_throttling(self):
        self.fake.put_item(TENANT, "messages", "u2", "m2", {"subject": "later"})
        self.fake.forbid(TENANT, "u3")
        self.fake.fail("GET", r"/messages/m2$", 429, headers={"Retry-After": "2"})
        r = self.mail_router()
        self.post(r, note("Users/u1/Messages/gone", change="deleted"))
        self.post(r, note("Users/u1/Messages/moved"))
        deleted = r.wait_jsonl(2, "events.jsonl")
        self.assertEqual(sorted((l["event"], l["deleted"], "message" in l) for l in deleted),
                         [("mail.message.created", True, False),
                          ("mail.message.deleted", True, False)])
        self.assertEqual(len(self.gets(r"/messages/gone")), 0)  # a deletion is not fetched
        self.post(r, note("Users/u3/Messages/m3"))
        r.wait_for(lambda: r.metric("graphrouter_dead_letters", handler="mail") == 1)
        status, out, _ = r.cli("dlq", "list")
        self.assertIn("Graph: HTTP 403 ErrorAccessDenied: Access is denied", out)
        self.post(r, note("Users/u2/Messages/m2"))
        line = r.wait_jsonl(3, "events.jsonl")[2]
        self.assertEqual(line["message"]["subject"], "later")
        tries = self.gets(r"/messages/m2$")
        self.assertEqual([q.status for q in tries], [429, 200])
        self.assertGreaterEqual(tries[1].time - tries[0].time, 1.9)  # its Retry-After

    def test_401_refetches_the_token_once(self):
        self.fake.put_item(TENANT, "messages", "u1", "m1", {"subject": "after a new token"})
        self.fake.put_item(TENANT, "messages", "u1", "m2", {"subject": "never read"})
        r = self.mail_router()
        self.fake.fail("GET", r"/messages/m1$", 401)  # a token Graph no longer takes
        self.post(r, note("Users/u1/Messages/m1"))
        self.assertEqual(r.wait_jsonl(1, "events.jsonl")[0]["message"]["subject"],
                         "after a new token")
        self.assertEqual([q.status for q in self.gets(r"/messages/m1$")], [401, 200])
        self.fake.fail("GET", r"/messages/m2$", 401, times=2)  # a new token does not help
        self.post(r, note("Users/u1/Messages/m2"))
        r.wait_for(lambda: r.metric("graphrouter_dead_letters", handler="mail") == 1)
        self.assertIn("HTTP 401", r.cli("dlq", "list")[1])
        self.assertEqual(r.metric("graphrouter_handler_graph_requests_total", handler="mail",
                                  code="401"), 1)

    def test_rich_uses_content_and_fetch_can_be_off(self):
        r = self.mail_router(fetch=False)
        self.post(r, note("Users/u1/Messages/m9"))
        line = r.wait_jsonl(1, "events.jsonl")[0]
        self.assertEqual((line["event"], line["deleted"], "message" in line),
                         ("mail.message.created", False, False))
        self.assertEqual(self.gets(r"^/v1\.0/users/"), [])


    def test_rich_content_is_used_not_fetched(self):
        keys = self.keys()
        r = self.enrich_router({"mail": {"plugin": "mail", "config": {"emit_to": ["events"]}}},
                               validation_tokens={"app_ids": [APP_ID], "jwks_file": keys.jwks},
                               decryption_keys=[keys.decryption_key()])
        self.assertEqual(simulate(*keys.notify_args("--type", "message", "--tenant", TENANT,
                                                    "--url", "http://127.0.0.1:%d/notifications"
                                                    % r.port)), "HTTP 202")
        line = r.wait_jsonl(1, "events.jsonl")[0]
        self.assertEqual((line["event"], line["deleted"], line["message"]["subject"],
                          line["message"]["from"]["emailAddress"]["name"]),
                         ("mail.message.created", False, "Quarterly report", "Megan Bowen"))
        self.assertEqual(line["message_id"], line["message"]["id"])
        self.assertEqual(self.gets(r"^/v1\.0/users/"), [])  # fetch is on, but not needed


class SettingsTest(EnrichTest):
    def refused(self, r, handler, message):
        status, out, err = r.cli("--check")
        self.assertEqual(status, 1, out + err)
        self.assertRegex(out + err, r'graphrouter\.json:\d+:\d+: handler "%s"[ :]' % handler)
        self.assertIn(message, out + err)

    def test_bad_settings_are_refused_with_their_position(self):
        # Graph calls asked for without a graph section
        for plugin, key in (("mail", "fetch"), ("teams", "fetch"), ("presence", "fetch"),
                            ("drive", "delta")):
            r = self.router(base_config(handlers={
                "h": {"plugin": plugin, "config": {"emit_to": ["events"], key: True}},
                "events": EVENTS}, routes=[]), start=False)
            self.refused(r, "h", '"%s": true needs the configuration\'s "graph" section' % key)
        # values the plugins do not know
        for plugin, config, message in (
                ("drive", {"initial": "everything"}, '"initial" is "everything"'),
                ("mail", {"select": "subject"}, '"select" must be an object'),
                ("mail", {"select": {"mesage": "subject"}}, '"select": use {"message"'),
                ("mail", {"select": {"message": "subject&$top=5"}}, "no '&', '?'"),
                ("presence", {"only_changes": "no"}, '"only_changes" must be true or false')):
            r = self.graph_router([], start=False, handlers={
                "h": {"plugin": plugin, "config": dict({"emit_to": ["events"]}, **config)},
                "events": EVENTS}, routes=[])
            self.refused(r, "h", message)


class ResyncTest(EnrichTest):
    def test_resync_events(self):
        r = self.graph_router(
            [declared("/users/u1/messages", ["created"]),
             declared("/chats/c1/messages", ["created"])],
            handlers={"mail": {"plugin": "mail", "config": {"emit_to": ["events"]}},
                      "teams": {"plugin": "teams", "config": {"emit_to": ["events"]}},
                      "events": EVENTS},
            routes=[{"name": "mail", "match": {"resource_type": "message"}, "to": "mail"},
                    {"name": "teams", "match": {"resource_type": "chatMessage"}, "to": "teams"}])
        self.wait_creates(2)
        for s in self.live():
            self.assertEqual(self.fake.lifecycle(s["id"], "missed"), 202)
        e = {l["event"]: l for l in r.wait_jsonl(2, "events.jsonl")}
        self.assertEqual(set(e), {"mail.resync", "teams.resync"})
        self.assertEqual((e["mail.resync"]["resource"], e["mail.resync"]["resync_reason"]),
                         ("/users/u1/messages", "missed"))
        self.assertEqual(e["teams.resync"]["resource"], "/chats/c1/messages")
        self.assertEqual(self.gets(r"/messages"), [])  # nothing to fetch: re-read it yourself

    def test_presence_refetches_and_drive_runs_its_delta(self):
        self.fake.set_presence(TENANT, "u1", "Available", "Available")
        self.fake.set_presence(TENANT, "u2", "Away", "Away")
        self.fake.add_drive(TENANT, "d5")
        r = self.graph_router(
            [declared("/communications/presences?$filter=id in ('u1','u2')", ["updated"]),
             declared("/drives/d5/root", ["updated"])],
            handlers={"presence": {"plugin": "presence", "config": {"emit_to": ["events"]}},
                      "drive": {"plugin": "drive", "config": {"emit_to": ["events"]}},
                      "events": EVENTS},
            routes=[{"name": "p", "match": {"resource_type": "presence"}, "to": "presence"},
                    {"name": "d", "match": {"resource_type": "driveItem"}, "to": "drive"}])
        self.wait_creates(2)
        self.post(r, note("drives/d5/root", change="updated"))  # the first run: a link
        self.wait_requests("GET", r"/drives/d5/root/delta$")
        r.wait_idle()
        self.fake.drive_put(TENANT, "d5", {"id": "f1", "name": "missed.txt", "file": {}})
        for s in self.live():
            self.assertEqual(self.fake.lifecycle(s["id"], "missed"), 202)
        lines = r.wait_jsonl(3, "events.jsonl")
        r.wait_idle()
        presence = sorted((l["user_id"], l["availability"]) for l in lines
                          if l["event"] == "presence.changed")
        self.assertEqual(presence, [("u1", "Available"), ("u2", "Away")])  # each user read
        self.assertEqual([l["item_id"] for l in lines if l["event"] == "drive.item.changed"],
                         ["f1"])  # what changed while no notification came
        self.assertEqual(len(self.gets(r"/communications/presences/u[12]$")), 2)
        self.assertEqual(len(r.read_jsonl("events.jsonl")), 3)


class TeamsTest(EnrichTest):
    def test_messages_fetched(self):
        chat = "19:8ea0e38b@unq.gbl.spaces"
        channel = "19:4a95@thread.tacv2"
        body = {"messageType": "message", "createdDateTime": "2026-12-03T10:00:00Z",
                "lastModifiedDateTime": "2026-12-03T10:00:01Z",
                "body": {"contentType": "html", "content": "<p>hello</p>"},
                "from": {"user": {"id": "u7", "displayName": "Megan Bowen"}},
                "mentions": [{"id": 0, "mentionText": "Adele",
                              "mentioned": {"user": {"id": "u8", "displayName": "Adele Vance"}}}]}
        self.fake.put_chat_message(TENANT, chat, "m1", body)
        self.fake.put_channel_message(TENANT, "t1", channel, "m2", body)
        self.fake.put_channel_message(TENANT, "t1", channel, "r3", dict(body, body={
            "contentType": "text", "content": "a reply"}), reply_to="m2")
        r = self.enrich_router({"teams": {"plugin": "teams", "config": {"emit_to": ["events"]}}})
        self.post(r, note("chats('%s')/messages('m1')" % chat),
                  note("teams('t1')/channels('%s')/messages('m2')" % channel),
                  note("teams('t1')/channels('%s')/messages('m2')/replies('r3')" % channel),
                  note("chats('%s')/messages('m4')" % chat))
        lines = r.wait_jsonl(4, "events.jsonl")
        by_id = {(l["message_id"], l["reply_id"]): l for l in lines}
        m1 = by_id[("m1", None)]
        self.assertEqual(m1["body"], {"content_type": "html", "content": "<p>hello</p>"})
        self.assertEqual(m1["from"], {"type": "user", "id": "u7", "display_name": "Megan Bowen"})
        self.assertEqual(m1["mentions"], [{"id": 0, "text": "Adele", "user_id": "u8",
                                           "display_name": "Adele Vance"}])
        self.assertEqual((m1["created_at"], m1["deleted"]), ("2026-12-03T10:00:00Z", False))
        self.assertEqual(by_id[("m2", "r3")]["body"]["content"], "a reply")
        self.assertEqual(by_id[("m2", None)]["message_type"], "message")
        self.assertEqual(by_id[("m4", None)]["deleted"], True)  # 404: gone since
        paths = sorted(q.path for q in self.gets(r"^/v1\.0/(chats|teams)/"))
        self.assertIn("/v1.0/teams/t1/channels/19%3A4a95%40thread.tacv2/messages/m2/replies/r3",
                      paths)


    def test_forbidden_and_throttled(self):
        chat = "19:aa@unq.gbl.spaces"
        self.fake.put_chat_message(TENANT, chat, "m6", {"messageType": "message",
                                                        "body": {"contentType": "text",
                                                                 "content": "later"}})
        self.fake.fail("GET", r"/messages/m5$", 403)
        self.fake.fail("GET", r"/messages/m6$", 429, headers={"Retry-After": "1"})
        r = self.enrich_router({"teams": {"plugin": "teams", "config": {"emit_to": ["events"]},
                                          "retry": {"initial_backoff_ms": 50}}})
        self.post(r, note("chats('%s')/messages('m5')" % chat))
        r.wait_for(lambda: r.metric("graphrouter_dead_letters", handler="teams") == 1)
        self.assertIn("HTTP 403", r.cli("dlq", "list")[1])
        self.post(r, note("chats('%s')/messages('m6')" % chat))
        line = r.wait_jsonl(1, "events.jsonl")[0]
        self.assertEqual(line["body"]["content"], "later")
        tries = self.gets(r"/messages/m6$")
        self.assertEqual([q.status for q in tries], [429, 200])
        self.assertGreaterEqual(tries[1].time - tries[0].time, 0.9)


class PresenceTest(EnrichTest):
    def presence_router(self, **config):
        return self.enrich_router({"presence": {"plugin": "presence", "config": dict(
            {"emit_to": ["events"]}, **config)}})

    def presence(self, user, **kw):
        return note("communications/presences/%s" % user, change="updated", **kw)

    def test_only_changes_and_state_across_a_restart(self):
        self.fake.set_presence(TENANT, "u1", "Available", "Available")
        r = self.presence_router()
        self.post(r, self.presence("u1"))
        first = r.wait_jsonl(1, "events.jsonl")[0]
        self.assertEqual((first["event"], first["availability"], first["previous_availability"]),
                         ("presence.changed", "Available", None))
        self.post(r, self.presence("u1"))  # the same: no event
        r.wait_idle()
        self.fake.set_presence(TENANT, "u1", "Busy", "InACall")
        self.post(r, self.presence("u1"))
        second = r.wait_jsonl(2, "events.jsonl")[1]
        self.assertEqual((second["availability"], second["activity"],
                          second["previous_availability"], second["previous_activity"]),
                         ("Busy", "InACall", "Available", "Available"))
        r.wait_idle()
        self.assertEqual(len(r.read_jsonl("events.jsonl")), 2)
        self.assertEqual(r.stop(), 0)
        r.start()  # the last presence is in the store
        self.post(r, self.presence("u1"))
        r.wait_idle()
        self.fake.set_presence(TENANT, "u1", "Away", "Away")
        self.post(r, self.presence("u1"))
        third = r.wait_jsonl(3, "events.jsonl")[2]
        self.assertEqual((third["availability"], third["previous_availability"]),
                         ("Away", "Busy"))
        self.assertEqual(len(self.gets(r"/communications/presences/u1$")), 5)

    def test_rich_presence_is_not_fetched(self):
        keys = self.keys()
        r = self.enrich_router({"presence": {"plugin": "presence",
                                             "config": {"emit_to": ["events"]}}},
                               validation_tokens={"app_ids": [APP_ID], "jwks_file": keys.jwks},
                               decryption_keys=[keys.decryption_key()])
        self.assertEqual(simulate(*keys.notify_args("--type", "presence", "--tenant", TENANT,
                                                    "--url", "http://127.0.0.1:%d/notifications"
                                                    % r.port)), "HTTP 202")
        line = r.wait_jsonl(1, "events.jsonl")[0]
        self.assertEqual((line["event"], line["availability"], line["activity"]),
                         ("presence.changed", "Busy", "InACall"))
        self.assertEqual(self.gets(r"/communications/presences"), [])

    def test_unknown_user_and_every_notification(self):
        r = self.presence_router(only_changes=False)
        for _ in range(2):
            self.post(r, self.presence("u2"))
        r.wait_for(lambda: r.metric("graphrouter_dead_letters", handler="presence") == 2)
        status, out, _ = r.cli("dlq", "list")
        self.assertIn("Graph has no presence for user u2 (HTTP 404)", out)
        self.fake.set_presence(TENANT, "u2", "Busy", "InAMeeting")
        for _ in range(2):
            self.post(r, self.presence("u2"))
        lines = r.wait_jsonl(2, "events.jsonl")  # whichever took the user's lock first changed
        self.assertEqual(sorted(l["event"] for l in lines),
                         ["presence.changed", "presence.unchanged"])

    def test_one_user_one_at_a_time(self):
        self.fake.set_presence(TENANT, "u3", "DoNotDisturb", "Presenting")
        self.fake.set_latency(0.4)  # the calls are inside Graph at once
        r = self.presence_router()
        self.post_apart(r, [self.presence("u3") for _ in range(3)])
        r.wait_idle()
        lines = r.read_jsonl("events.jsonl")
        self.assertEqual([(l["availability"], l["previous_availability"]) for l in lines],
                         [("DoNotDisturb", None)])  # one first observation, not three


class DriveTest(EnrichTest):
    def drive_router(self, **config):
        return self.enrich_router({"drive": {"plugin": "drive", "config": dict(
            {"emit_to": ["events"]}, **config), "retry": {"initial_backoff_ms": 100,
                                                          "max_backoff_ms": 300}}})

    def item(self, i, **kw):
        it = {"id": "i%d" % i, "name": "file%d.txt" % i, "size": 100 + i, "file": {},
              "lastModifiedDateTime": "2026-12-03T10:00:0%dZ" % (i % 10),
              "lastModifiedBy": {"user": {"id": "u1", "displayName": "Megan"}}}
        it.update(kw)
        return it

    def drive_note(self, drive="d1"):
        return note("drives/%s/root" % drive, change="updated")

    def deltas(self, drive="d1"):
        return self.gets(r"^/v1\.0/drives/%s/root/delta$" % drive)

    def test_delta_from_now_pages_and_links(self):
        self.fake.add_drive(TENANT, "d1")
        self.fake.drive_put(TENANT, "d1", self.item(0))
        r = self.drive_router()
        self.post(r, self.drive_note())  # no link yet: from now, nothing to emit
        self.wait_requests("GET", r"/drives/d1/root/delta$")
        r.wait_idle()
        self.assertEqual(r.read_jsonl("events.jsonl"), [])
        self.assertEqual(self.deltas()[0].query.get("token"), "latest")
        for i in range(1, 6):
            self.fake.drive_put(TENANT, "d1", self.item(i, **({"folder": {"childCount": 2}}
                                                              if i == 5 else {})))
        self.fake.drive_delete(TENANT, "d1", "i0")
        self.post(r, self.drive_note())
        lines = r.wait_jsonl(6, "events.jsonl")
        self.assertEqual(sorted(l["item_id"] for l in lines), ["i0", "i1", "i2", "i3", "i4", "i5"])
        by_id = {l["item_id"]: l for l in lines}
        i1 = by_id["i1"]
        self.assertEqual((i1["event"], i1["drive_id"], i1["name"], i1["size"], i1["is_folder"],
                          i1["deleted"], i1["last_modified"]),
                         ("drive.item.changed", "d1", "file1.txt", 101, False, False,
                          "2026-12-03T10:00:01Z"))
        self.assertEqual(i1["last_modified_by"], {"type": "user", "id": "u1",
                                                  "display_name": "Megan"})
        self.assertTrue(by_id["i5"]["is_folder"])
        self.assertTrue(by_id["i0"]["deleted"])
        self.assertIn("path", i1)
        runs = self.deltas()
        self.assertGreaterEqual(len(runs), 4)  # 6 changes, 2 a page: 3 pages and the first run
        # the saved link: the next run returns only what changed since
        self.fake.drive_put(TENANT, "d1", self.item(7))
        self.post(r, self.drive_note())
        r.wait_jsonl(7, "events.jsonl")
        r.wait_idle()
        self.assertEqual([l["item_id"] for l in r.read_jsonl("events.jsonl")[6:]], ["i7"])

    def test_initial_all_and_410(self):
        self.fake.add_drive(TENANT, "d2", owner_user="u9")
        for i in range(3):
            self.fake.drive_put(TENANT, "d2", self.item(i))
        r = self.drive_router(initial="all")
        self.post(r, note("users/u9/drive/root", change="updated"))
        self.assertEqual(len(r.wait_jsonl(3, "events.jsonl")), 3)
        self.assertNotIn("token", self.gets(r"/users/u9/drive/root/delta$")[0].query)
        r.wait_idle()
        self.fake.expire_delta_tokens(TENANT, "d2", location=True)
        self.post(r, note("users/u9/drive/root", change="updated"))
        lines = r.wait_jsonl(7, "events.jsonl")[3:]
        self.assertEqual(lines[0]["event"], "drive.resync")  # then the enumeration again
        self.assertEqual((lines[0]["user_id"], lines[0]["drive_id"]), ("u9", None))
        self.assertEqual(sorted(l["item_id"] for l in lines[1:]), ["i0", "i1", "i2"])
        r.wait_idle()
        self.fake.expire_delta_tokens(TENANT, "d2", location=False)
        self.post(r, note("users/u9/drive/root", change="updated"))
        r.wait_jsonl(8, "events.jsonl")
        r.wait_idle()
        self.assertEqual([l["event"] for l in r.read_jsonl("events.jsonl")[7:]], ["drive.resync"])
        self.assertEqual(self.gets(r"/users/u9/drive/root/delta$")[-1].query.get("token"),
                         "latest")

    def test_list_delta_carries_paths(self):
        self.fake.add_list(TENANT, "s1", "l1")
        r = self.drive_router(initial="all")
        self.fake.list_put(TENANT, "s1", "l1", {
            "id": "7", "lastModifiedDateTime": "2026-12-03T11:00:00Z",
            "parentReference": {"id": "p1", "path": "/sites/s1/lists/l1"},
            "lastModifiedBy": {"user": {"id": "u1", "displayName": "Megan"}}})
        self.post(r, note("sites/s1/lists/l1", change="updated"))
        line = r.wait_jsonl(1, "events.jsonl")[0]
        self.assertEqual((line["event"], line["site_id"], line["list_id"], line["item_id"],
                          line["path"], line["deleted"]),
                         ("drive.item.changed", "s1", "l1", "7", "/sites/s1/lists/l1", False))
        self.assertEqual(len(self.gets(r"^/v1\.0/sites/s1/lists/l1/items/delta$")), 1)

    def test_link_outside_base_url_starts_over(self):
        self.fake.add_drive(TENANT, "d6")
        r = self.drive_router()
        self.post(r, note("drives/d6/root", change="updated"))  # a link under 127.0.0.1
        self.wait_requests("GET", r"/drives/d6/root/delta$")
        r.wait_idle()
        self.assertEqual(r.stop(), 0)
        # the link as a graphrouter with another graph.base_url saved it
        db = sqlite3.connect(r.path("var/graphrouter.db"))
        with db:
            n = db.execute("UPDATE handler_state SET value = ? WHERE handler = 'drive' AND "
                           "key = 'delta:/drives/d6/root/delta'",
                           (b"https://graph.microsoft.com/v1.0/drives/d6/root/delta?token=x",)
                           ).rowcount
        db.close()
        self.assertEqual(n, 1)
        r.start()
        self.fake.drive_put(TENANT, "d6", self.item(1))
        self.post(r, note("drives/d6/root", change="updated"))
        line = r.wait_jsonl(1, "events.jsonl")[0]
        self.assertEqual((line["event"], line["drive_id"]), ("drive.resync", "d6"))
        self.assertIn("not under graph.base_url", line["reason"])
        r.wait_log(r"a delta link Graph gave is not under graph.base_url; starting over")
        r.wait_idle()
        self.assertEqual(self.deltas("d6")[-1].query.get("token"), "latest")
        self.assertEqual(r.metric("graphrouter_dead_letters", handler="drive"), 0)

    def test_one_delta_per_drive_at_a_time(self):
        self.fake.add_drive(TENANT, "d3")
        r = self.drive_router()
        self.post(r, note("drives/d3/root", change="updated"))
        r.wait_idle()
        for i in range(4):
            self.fake.drive_put(TENANT, "d3", self.item(i))
        self.fake.set_latency(0.3)
        before = len(self.deltas("d3"))
        self.post_apart(r, [note("drives/d3/root", change="updated") for _ in range(6)])
        r.wait_idle(timeout=30)
        runs = self.deltas("d3")[before:]
        for a, b in zip(runs, runs[1:]):  # never two of them in Graph at once
            self.assertGreaterEqual(b.time - a.time, 0.29)
        # notifications that came while the delta ran were covered by it, not run again:
        # six runs alone would be 2 pages and 5 empty ones
        self.assertLess(len(runs), 7)
        lines = r.read_jsonl("events.jsonl")
        self.assertEqual(sorted(l["item_id"] for l in lines), ["i0", "i1", "i2", "i3"])

    def test_retry_discards_and_sigkill_replays(self):
        self.fake.add_drive(TENANT, "d4")
        r = self.drive_router()
        self.post(r, note("drives/d4/root", change="updated"))
        r.wait_idle()
        for i in range(5):
            self.fake.drive_put(TENANT, "d4", self.item(i))
        # a 503 on the second page: the call retries, the first page's events and its link
        # discarded
        n = len(self.deltas("d4"))
        self.fake.fail("GET", r"/drives/d4/root/delta$", 503, after=1)
        self.post(r, note("drives/d4/root", change="updated"))
        self.wait_requests("GET", r"/drives/d4/root/delta$", n=n + 3)
        self.assertEqual([q.status for q in self.deltas("d4")[n:n + 3]], [200, 503, 200])
        r.wait_jsonl(5, "events.jsonl")
        r.wait_idle()
        self.assertEqual(sorted(l["item_id"] for l in r.read_jsonl("events.jsonl")),
                         ["i0", "i1", "i2", "i3", "i4"])  # once each
        # SIGKILL while a delta is between pages: after the restart it runs again from the
        # saved link, so no item is lost and the link saved never skips one
        for i in range(5, 10):
            self.fake.drive_put(TENANT, "d4", self.item(i))
        self.fake.set_latency(1.0)
        self.post(r, note("drives/d4/root", change="updated"))
        n = len(self.deltas("d4"))
        self.wait_requests("GET", r"/drives/d4/root/delta$", n=n + 1)
        r.stop(signal.SIGKILL)
        self.fake.set_latency(0)
        r.start()
        r.wait_for(lambda: len(r.read_jsonl("events.jsonl")) >= 10, timeout=30)
        r.wait_idle(timeout=30)
        got = [l["item_id"] for l in r.read_jsonl("events.jsonl")][5:]
        self.assertEqual(sorted(set(got)), ["i%d" % i for i in range(5, 10)])
        self.fake.drive_put(TENANT, "d4", self.item(10))
        self.post(r, note("drives/d4/root", change="updated"))
        r.wait_for(lambda: r.read_jsonl("events.jsonl")[-1]["item_id"] == "i10")
        r.wait_idle()
        self.assertEqual(r.read_jsonl("events.jsonl")[-1]["item_id"], "i10")


class ServicesTest(EnrichTest):
    def probe_router(self, **config):
        return self.enrich_router({"probe": {"plugin": PROBE, "config": dict(
            {"emit_to": ["events"]}, **config), "retry": {"initial_backoff_ms": 50,
                                                          "max_backoff_ms": 100}}})

    def test_puts_are_discarded_on_retry(self):
        r = self.probe_router(state_key="n", retry_times=2)
        self.post(r, note("Users/u1/Messages/m1"))
        r.wait_idle()
        calls = r.read_jsonl("events.jsonl")
        # the retries' events are discarded too: only the call that returned GR_OK emitted,
        # and it saw the state as the retried calls found it
        self.assertEqual([(c["call"], c["seen"], c["counter"]) for c in calls], [(3, 0, 1)])
        self.post(r, note("Users/u1/Messages/m2"))
        r.wait_jsonl(2, "events.jsonl")
        self.assertEqual(r.read_jsonl("events.jsonl")[1]["seen"], 1)
        self.assertEqual(r.stop(), 0)
        r.start()
        self.post(r, note("Users/u1/Messages/m3"))
        self.assertEqual(r.wait_jsonl(3, "events.jsonl")[2]["seen"], 2)  # durable

    def test_state_lock_serialises_one_key(self):
        for lock, want in ((1, [0, 1, 2, 3]), (0, None)):
            r = self.probe_router(state_key="shared", lock=lock, sleep_ms=300)
            self.post_apart(r, [note("Users/u1/Messages/m%d" % i) for i in range(4)])
            r.wait_idle(timeout=30)
            seen = sorted(c["seen"] for c in r.read_jsonl("events.jsonl"))
            if want:
                self.assertEqual(seen, want)  # each saw the one before it
            else:
                self.assertLess(len(set(seen)), 4)  # without it, two saw the same: last wins
            self.assertEqual(r.stop(), 0)

    def test_a_tenant_held_back_answers_429_without_a_call(self):
        self.fake.set_presence(TENANT, "u5", "Away", "Away")
        self.fake.fail("GET", r"/presences/u5$", 429, headers={"Retry-After": "5"})
        r = self.probe_router(target="/communications/presences/u5")
        self.post(r, note("Users/u1/Messages/m1"))
        r.wait_jsonl(1, "events.jsonl")
        self.post(r, note("Users/u1/Messages/m2"))
        first, second = r.wait_jsonl(2, "events.jsonl")
        self.assertEqual((first["status"], first["retry_after_ms"]), (429, 5000))
        self.assertEqual(second["status"], 429)  # graphrouter's own, Graph not asked again
        self.assertTrue(0 < second["retry_after_ms"] <= 5000, second)
        self.assertEqual(len(self.gets(r"/presences/u5$")), 1)
        self.assertEqual(r.metric("graphrouter_handler_graph_requests_total", handler="probe",
                                  code="429"), 1)
        self.assertEqual(r.metric("graphrouter_handler_graph_requests_total", handler="probe",
                                  code="none"), 1)

    def test_state_lock_wait_ends_before_timeout_s(self):
        # the holder keeps the lock 5.2 s, longer than a waiter may wait within timeout_s 6:
        # the waiter answers GR_RETRY instead of running past its timeout and restarting
        # the router, and its retry gets the lock
        r = self.enrich_router({"probe": {"plugin": PROBE, "timeout_s": 6, "config": {
            "emit_to": ["events"], "state_key": "k", "lock": 1, "sleep_ms": 5200},
            "retry": {"initial_backoff_ms": 50, "max_backoff_ms": 100}}})
        # a waiter waits until 1.5 s before timeout_s: 4.5 s, less than the 5.2 s held
        self.post_apart(r, [note("Users/u1/Messages/m%d" % i) for i in range(2)], gap=0.1)
        r.wait_log(r'handler "probe": a state lock was not free within the handler\'s timeout_s')
        r.wait_idle(timeout=30)
        self.assertEqual(sorted(c["seen"] for c in r.read_jsonl("events.jsonl")), [0, 1])
        self.assertEqual(r.proc.poll(), None)
        self.assertGreaterEqual(r.metric("graphrouter_handler_retried_total", handler="probe"), 1)
        self.assertEqual(r.stop(), 0)

    def test_other_hosts_refused_and_timeouts_kept(self):
        r = self.probe_router(target="https://evil.example/v1.0/users")
        self.post(r, note("Users/u1/Messages/m1"))
        call = r.wait_jsonl(1, "events.jsonl")[0]
        self.assertEqual((call["rc"], call["status"], call["refused"]), (-1, 0, 1))
        self.assertIn("outside graph.base_url", call["error"])
        r.wait_log(r'handler "probe": a Graph request to a URL outside graph.base_url')
        self.assertEqual(self.fake.requests_matching(path_regex="/users$"), [])
        self.assertEqual(r.stop(), 0)
        # a nextLink-style absolute URL under base_url is fine
        self.fake.set_presence(TENANT, "u5", "Away", "Away")
        r2 = self.probe_router(target=self.fake.base_url + "/communications/presences/u5")
        self.post(r2, note("Users/u1/Messages/m1"))
        call = r2.wait_jsonl(1, "events.jsonl")[0]
        self.assertEqual((call["rc"], call["status"]), (0, 200))
        self.assertEqual(r2.metric("graphrouter_handler_graph_requests_total", handler="probe",
                                   code="200"), 1)
        self.assertEqual(r2.stop(), 0)
        # Graph slower than the handler's timeout_s: the call gives up in time
        self.fake.set_latency(8)
        r3 = self.enrich_router({"probe": {"plugin": PROBE, "timeout_s": 4, "config": {
            "emit_to": ["events"], "target": "/communications/presences/u5"}}})
        t0 = time.monotonic()
        self.post(r3, note("Users/u1/Messages/m1"))
        call = r3.wait_jsonl(1, "events.jsonl")[0]
        self.assertLess(time.monotonic() - t0, 4.0)
        self.assertEqual((call["rc"], call["status"], call["refused"]), (-1, 0, 0))
        self.assertEqual(r3.proc.poll(), None)  # not restarted for a stuck call
        self.fake.set_latency(0)
