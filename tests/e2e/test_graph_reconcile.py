"""Reconciling with what Graph lists, through the real binary against the fake Graph: a restart
adopts what exists (no second create, the renewal schedule kept), a subscription that expired
meanwhile is recreated with a resync, a declaration removed by SIGHUP is deleted, a foreign
subscription is never touched, an orphan at this router's URL is deleted before its replacement
is created, lists are followed across pages, 429 + Retry-After is honoured, the write budget is
kept, and lifecycle events that got their 202 are acted on after a SIGKILL."""

import os
import signal
import sqlite3
import time

from grtest import TEST_PLUGINS
from graphtest import TENANT, GraphTest, declared

SLOW = os.path.join(TEST_PLUGINS, "flaky.so")


class RestartTest(GraphTest):
    def test_restart_adopts_and_keeps_the_schedule(self):
        self.fake.grant_seconds = 600
        r = self.graph_router([declared(), declared("/users/u2/events", ["updated"])])
        self.wait_creates(2)
        r.wait_for(lambda: all(s["state"] == "active" for s in self.sub_json(r)))
        before = {s["id"]: s for s in self.sub_json(r)}
        self.assertEqual(r.stop(), 0)
        listed = len(self.fake.requests_matching("GET", r"^/v1\.0/subscriptions$"))
        r.start()
        self.wait_requests("GET", r"^/v1\.0/subscriptions$", n=listed + 1)
        time.sleep(1.0)
        self.assertEqual(len(self.creates(status=None)), 2)  # nothing created again
        self.assertEqual(self.fake.requests_matching("PATCH"), [])  # nor renewed at start
        self.assertEqual(self.fake.requests_matching("DELETE"), [])
        after = {s["id"]: s for s in self.sub_json(r)}
        self.assertEqual(set(after), set(before))
        for sid, s in after.items():
            self.assertEqual(s["next_action"], before[sid]["next_action"])
        # the secrets survived the restart
        sid = next(iter(after))
        self.assertEqual(self.fake.notify(sid), 202)
        self.assertEqual(r.wait_jsonl(1)[0]["subscription_id"], sid)

    def test_expired_while_stopped_is_recreated_with_a_resync(self):
        self.fake.grant_seconds = 4
        r = self.graph_router([declared()], handlers={
            "out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
            routes=[{"name": "all", "to": "out"}])
        self.wait_creates(1)
        sid = self.live()[0]["id"]
        self.assertEqual(r.stop(), 0)  # before its renewal, 2.7 s after the create
        time.sleep(4.5)
        self.assertEqual(self.live(), [])  # Graph deleted it when it expired
        r.start()
        created = self.wait_creates(2)
        self.assertEqual(created[1].body["resource"], "/users/u1/messages")
        line = r.wait_jsonl(1)[0]
        self.assertEqual((line["change_type"], line["resync_reason"]), ("resync", "expired"))
        self.assertNotEqual(line["subscription_id"], sid)
        r.wait_log(r"subscription %s \(tenant %s, resource /users/u1/messages\) is no longer in "
                   r"Graph; creating it again, then a resync" % (sid, TENANT))


class ReloadTest(GraphTest):
    def test_removed_declaration_is_deleted_foreign_ones_never_touched(self):
        foreign_url = self.fake.add_foreign(TENANT, "https://elsewhere.example/hook")
        other_app = self.fake.add_foreign(TENANT, "https://elsewhere.example/hook2",
                                          resource="/users/u9/events", app_id="someone-else")
        keep, drop = declared(), declared("/users/u2/contacts", ["created"])
        r = self.graph_router([keep, drop])
        self.wait_creates(2)
        ids = {s["resource"]: s["id"] for s in self.live() if s["id"] not in
               (foreign_url, other_app)}
        cfg = self.graph_config([keep], r.graph_port)
        r.write_config(cfg)
        r.send_signal(signal.SIGHUP)
        sent = time.monotonic()
        delete = self.wait_requests("DELETE", r"^/v1\.0/subscriptions/")[0]
        self.assertLess(delete.time - sent, 3.0)
        self.assertEqual(delete.path, "/v1.0/subscriptions/" + ids["/users/u2/contacts"])
        self.assertEqual(delete.status, 204)
        r.wait_for(lambda: len(self.sub_json(r)) == 1)
        self.assertEqual(self.sub_json(r)[0]["id"], ids["/users/u1/messages"])
        time.sleep(0.5)
        touched = [q for q in self.fake.requests if foreign_url in q.path or other_app in q.path]
        self.assertEqual(touched, [])
        self.assertEqual(len(self.fake.requests_matching("DELETE")), 1)
        self.assertEqual(r.metric("graphrouter_subscription_deletes_total", result="success"), 1)
        live = {s["id"] for s in self.live()}
        self.assertEqual(live, {foreign_url, other_app, ids["/users/u1/messages"]})

    def test_moved_notification_url_moves_the_subscription(self):
        r = self.graph_router([declared()])
        self.wait_creates(1)
        old = self.live()[0]["id"]
        cfg = self.graph_config([declared()], r.graph_port,
                                paths={"notifications": ["/graph/in", "/notifications"]})
        r.write_config(cfg)
        r.send_signal(signal.SIGHUP)
        created = self.wait_creates(2)
        self.assertEqual(created[1].body["notificationUrl"],
                         "http://127.0.0.1:%d/graph/in" % r.graph_port)
        delete = self.fake.requests_matching("DELETE")
        self.assertEqual([q.path for q in delete], ["/v1.0/subscriptions/" + old])
        self.assertLess(delete[0].time, created[1].time)
        self.assertEqual([s["notificationUrl"] for s in self.live()],
                         ["http://127.0.0.1:%d/graph/in" % r.graph_port])
        new = self.live()[0]["id"]
        self.assertEqual(self.fake.notify(new), 202)
        self.assertEqual(r.wait_jsonl(1)[0]["subscription_id"], new)

    def test_orphan_at_our_url_is_deleted_before_its_replacement(self):
        self.fake.page_size = 2
        port_router = self.graph_router([declared()], start=False)
        ours = "http://127.0.0.1:%d/notifications" % port_router.graph_port
        for i in range(4):  # pages: the orphan is on the last one
            self.fake.add_foreign(TENANT, "https://elsewhere.example/%d" % i,
                                  resource="/users/x%d/messages" % i)
        orphan = self.fake.add_foreign(TENANT, ours, resource="/users/u1/messages",
                                       change_type="created,updated")
        port_router.start()
        self.wait_creates(1)
        lists = self.fake.requests_matching("GET", r"^/v1\.0/subscriptions$")
        self.assertEqual(len(lists), 3)
        self.assertTrue(all("$skiptoken" in q.query for q in lists[1:]))
        delete = self.fake.requests_matching("DELETE")
        self.assertEqual([q.path for q in delete], ["/v1.0/subscriptions/" + orphan])
        posts = self.creates(status=None)
        self.assertLess(delete[0].time, posts[0].time)
        self.assertEqual([q.status for q in posts], [201])  # no 409
        port_router.wait_log(r"subscription %s \(tenant %s, resource /users/u1/messages\) carries "
                             r"this router's notification URL but the store does not know it"
                             % (orphan, TENANT))


class ThrottleTest(GraphTest):
    def test_retry_after_is_honoured(self):
        self.fake.throttle(TENANT, 3, times=1)
        r = self.graph_router([declared()])
        created = self.wait_creates(1, timeout=30)
        first = self.fake.requests_matching(path_regex=r"^/v1\.0/")[0]
        self.assertEqual(first.status, 429)
        self.assertGreaterEqual(created[0].time - first.time, 2.9)
        self.assertEqual(self.fake.early_requests(TENANT), [])
        self.assertEqual(r.metric("graphrouter_graph_requests_total", code="429"), 1)

    def test_write_budget(self):
        subs = [declared("/users/u%d/messages" % i, ["created"]) for i in range(3)]
        r = self.graph_router(subs, graph={"write_budget": 2, "write_budget_window_s": 3})
        created = self.wait_creates(3, timeout=30)
        self.assertGreaterEqual(created[2].time - created[0].time, 2.5)
        r.wait_log(r"creating it waits \d+ ms: the tenant is throttled \(Retry-After\) or at its "
                   r"write budget")


class CrashTest(GraphTest):
    """A lifecycle event that got its 202 is acted on even when graphrouter dies right after
    answering: the item is in the store, and routing it at the next start hands the event to
    the manager. The single worker is kept busy by a slow delivery, so the lifecycle item is
    still unrouted when the SIGKILL comes."""

    def crash_router(self):
        return self.graph_router([declared()], workers=1, handlers={
            "slow": {"plugin": SLOW, "config": {"sleep_ms": 4000}},
            "out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
            routes=[{"name": "busy", "match": {"resource_type": "user"}, "to": "slow",
                     "continue": False},
                    {"name": "all", "default": True, "to": "out"}])

    def hold_the_worker(self, r):
        self.assertEqual(r.post({"value": [{"subscriptionId": "x", "clientState": "e2e-fallback-secret",
                                             "changeType": "updated", "resource": "Users/u5"}]})[0],
                         202)
        r.wait_for(lambda: r.metric("graphrouter_deliveries_running", handler="slow") == 1)

    def unrouted(self, r, event):
        db = sqlite3.connect(r.path("var/graphrouter.db"))
        try:
            rows = db.execute("SELECT count(*) FROM items WHERE state IN (0, 3) AND "
                              "body LIKE ?", ("%" + event + "%",)).fetchall()
        finally:
            db.close()
        return rows[0][0]

    def test_sigkill_after_subscription_removed(self):
        r = self.crash_router()
        self.wait_creates(1)
        sid = self.live()[0]["id"]
        self.hold_the_worker(r)
        self.assertEqual(self.fake.lifecycle(sid, "subscriptionRemoved"), 202)
        r.stop(signal.SIGKILL)
        self.assertEqual(self.unrouted(r, "subscriptionRemoved"), 1)
        self.assertEqual(len(self.creates()), 1)
        r.start()
        created = self.wait_creates(2)
        self.assertEqual(created[1].body["resource"], "/users/u1/messages")
        line = next(l for l in r.wait_jsonl(2) if l["change_type"] == "resync")
        self.assertEqual(line["resync_reason"], "subscriptionRemoved")
        r.wait_idle(timeout=30)
        time.sleep(0.5)
        self.assertEqual(len(self.creates(status=None)), 2)  # once, not twice

    def test_sigkill_after_missed(self):
        r = self.crash_router()
        self.wait_creates(1)
        sid = self.live()[0]["id"]
        self.hold_the_worker(r)
        self.assertEqual(self.fake.lifecycle(sid, "missed"), 202)
        r.stop(signal.SIGKILL)
        self.assertEqual(self.unrouted(r, "missed"), 1)
        r.start()
        lines = r.wait_jsonl(2)  # the lifecycle item and the resync
        resync = [l for l in lines if l["change_type"] == "resync"]
        self.assertEqual([(l["resync_reason"], l["subscription_id"]) for l in resync],
                         [("missed", sid)])
        self.assertEqual(len(self.creates(status=None)), 1)
