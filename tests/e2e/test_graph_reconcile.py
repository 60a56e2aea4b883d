"""Reconciling with what Graph lists, through the real binary against the fake Graph: a restart
adopts what exists (no second create, the renewal schedule kept), a subscription that expired
meanwhile is recreated with a resync, a declaration removed by SIGHUP is deleted, a foreign
subscription is never touched, an orphan at this router's URL is deleted before its replacement
is created, lists are followed across pages, 429 + Retry-After is honoured, the write budget is
kept, and lifecycle events that got their 202 are acted on after a SIGKILL."""

import json
import os
import signal
import socket
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
        delete = self.wait_requests("DELETE", r"^/v1\.0/subscriptions/")
        self.assertEqual([q.path for q in delete], ["/v1.0/subscriptions/" + old])
        self.assertLess(created[1].time, delete[0].time)  # no gap: the new one first
        self.assertEqual([s["notificationUrl"] for s in self.live()],
                         ["http://127.0.0.1:%d/graph/in" % r.graph_port])
        new = self.live()[0]["id"]
        self.assertEqual(self.fake.notify(new), 202)
        self.assertEqual(r.wait_jsonl(1)[0]["subscription_id"], new)

    def test_listed_and_fallback_subscriptions_at_our_url_are_left_alone(self):
        r = self.graph_router([declared()], start=False)
        ours = "http://127.0.0.1:%d/notifications" % r.graph_port
        listed = self.fake.add_foreign(TENANT, ours, resource="/users/u7/events")
        fallback = self.fake.add_foreign(TENANT, ours, resource="/users/u8/events")
        conflicting = self.fake.add_foreign(TENANT, ours, resource="users/U1/messages",
                                            change_type="updated,created")
        cfg = self.graph_config([declared(), {"id": listed, "client_state": "its-own"}],
                                r.graph_port)
        r.write_config(cfg)
        r.start()
        self.wait_creates(1)
        # the one in the declaration's place goes; the listed one and the one the top-level
        # client_state may have been made with stay
        self.assertEqual([q.path for q in self.fake.requests_matching("DELETE")],
                         ["/v1.0/subscriptions/" + conflicting])
        live = {s["id"] for s in self.live()}
        self.assertTrue({listed, fallback} <= live)
        # without a top-level client_state nothing could take the unknown one's notifications
        self.assertEqual(r.stop(), 0)
        del cfg["client_state"]
        r.write_config(cfg)
        r.start()
        delete = self.wait_requests("DELETE", r"^/v1\.0/subscriptions/", n=2)
        self.assertEqual(delete[1].path, "/v1.0/subscriptions/" + fallback)
        time.sleep(0.5)
        self.assertIn(listed, {s["id"] for s in self.live()})

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
    def test_retry_after_survives_a_reload(self):
        self.fake.grant_seconds = 600
        r = self.graph_router([declared()])
        self.wait_creates(1)
        self.fake.throttle(TENANT, 4, times=1)
        cfg = self.graph_config([declared(), declared("/users/u2/messages", ["created"])],
                                r.graph_port)
        r.write_config(cfg)
        r.send_signal(signal.SIGHUP)  # the reload's reconcile is answered 429
        created = self.wait_creates(2, timeout=30)
        r.send_signal(signal.SIGHUP)  # another generation, the same tenant's pace
        (first, seconds), = self.fake.throttled_at(TENANT)
        self.assertGreaterEqual(created[1].time - first, seconds - 0.1)
        self.assertEqual(self.fake.early_requests(TENANT), [])

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
        r.wait_log(r"creating it waits \d+ ms: the tenant is throttled \(Retry-After\), at its "
                   r"write budget")


class FailureTest(GraphTest):
    def test_renewal_failing_until_expiry(self):
        self.fake.grant_seconds = 6
        r = self.graph_router([declared()], handlers={
            "out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
            routes=[{"name": "all", "to": "out"}])
        self.wait_creates(1)
        sid = self.live()[0]["id"]
        self.fake.fail("PATCH", r"/subscriptions/", 503, times=100)
        created = self.wait_creates(2, timeout=30)
        patches = self.fake.requests_matching("PATCH")
        self.assertGreaterEqual(len(patches), 2)  # retried with backoff ...
        self.assertTrue(all(q.status == 503 for q in patches))
        gaps = [b.time - a.time for a, b in zip(patches, patches[1:])]
        self.assertTrue(all(g > 0.4 for g in gaps), gaps)
        resync = r.wait_jsonl(1)[0]  # ... and, expired meanwhile, created again with a resync
        self.assertEqual((resync["change_type"], resync["resync_reason"]), ("resync", "expired"))
        self.assertNotEqual(resync["subscription_id"], sid)
        self.assertGreater(created[1].time - patches[0].time, 1.0)
        self.assertGreaterEqual(r.metric("graphrouter_subscription_renewals_total",
                                         result="failure"), 2)

    def test_delete_answered_404_counts_as_deleted(self):
        r = self.graph_router([declared()])
        self.wait_creates(1)
        self.fake.fail("DELETE", r"/subscriptions/", 404)
        r.write_config(self.graph_config([], r.graph_port))
        r.send_signal(signal.SIGHUP)
        self.wait_requests("DELETE", r"^/v1\.0/subscriptions/")
        r.wait_for(lambda: self.sub_json(r) == [])
        self.assertEqual(r.metric("graphrouter_subscription_deletes_total", result="success"), 1)
        r.wait_log(r"deleted \(tenant %s, resource /users/u1/messages\): Graph had it no more"
                   % TENANT)

    def test_a_tenant_removed_from_the_configuration_is_forgotten(self):
        r = self.graph_router([declared()])
        self.wait_creates(1)
        sid = self.live()[0]["id"]
        cfg = self.graph_config([], r.graph_port)
        del cfg["graph"]
        r.write_config(cfg)
        r.send_signal(signal.SIGHUP)
        r.wait_log(r"subscription %s \(tenant %s, resource /users/u1/messages\): the "
                   r"configuration has no credential for its tenant any more; graphrouter "
                   r"forgets it" % (sid, TENANT))
        r.wait_for(lambda: self.sub_json(r) == [])
        self.assertEqual(self.fake.requests_matching("DELETE"), [])

    def test_a_removal_graph_does_not_announce_is_found(self):
        r = self.graph_router([declared()], graph={"reconcile_interval_s": 10}, handlers={
            "out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
            routes=[{"name": "all", "to": "out"}])
        self.wait_creates(1)
        sid = self.live()[0]["id"]
        self.fake.remove(sid)  # no subscriptionRemoved
        created = self.wait_creates(2, timeout=30)
        lists = self.fake.requests_matching("GET", r"^/v1\.0/subscriptions$")
        self.assertEqual(len(lists), 2)
        self.assertGreater(lists[1].time - lists[0].time, 9.5)
        resync = r.wait_jsonl(1)[0]
        self.assertEqual(resync["resync_reason"], "subscriptionRemoved")

    def test_stop_during_a_call_that_does_not_answer(self):
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts, never answers
        self.addCleanup(silent.close)
        url = "http://127.0.0.1:%d" % silent.getsockname()[1]
        r = self.graph_router([declared()], graph={"login_url": url, "timeout_s": 120,
                                                   "connect_timeout_s": 60})
        time.sleep(1.0)  # the manager waits for its token
        t0 = time.monotonic()
        self.assertEqual(r.stop(), 0)
        self.assertLess(time.monotonic() - t0, 5.0)


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
            # items to route (state 2) or taken (3): store/sqlite.h
            rows = db.execute("SELECT count(*) FROM items JOIN bodies USING (id) WHERE state IN "
                              "(2, 3) AND body LIKE ?", ("%" + event + "%",)).fetchall()
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

    def test_a_stored_lifecycle_item_is_acted_on_at_start(self):
        # An item that got its 202 but was not routed before graphrouter stopped: routing it
        # at the next start hands the event to the manager, however early that happens.
        self.fake.grant_seconds = 3600
        r = self.graph_router([declared()], listen={"address": "127.0.0.1", "threads": 16})
        self.wait_creates(1)
        sid = self.live()[0]["id"]
        r.wait_for(lambda: self.sub_json(r)[0]["state"] == "active")
        self.assertEqual(r.stop(), 0)
        db = sqlite3.connect(r.path("var/graphrouter.db"))
        body = json.dumps({"subscriptionId": sid, "tenantId": TENANT,
                           "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
                           "lifecycleEvent": "reauthorizationRequired"})
        db.execute("INSERT INTO items(received_ms, len, state, due_ms, done_ms) "
                   "VALUES(strftime('%s') * 1000, ?, 2, 0, 0)", (len(body),))
        db.execute("INSERT INTO bodies(id, body) VALUES(last_insert_rowid(), ?)", (body,))
        db.commit()
        db.close()
        r.start()
        patch = self.wait_requests("PATCH", r"^/v1\.0/subscriptions/" + sid)[0]
        self.assertEqual(patch.status, 200)
        r.wait_for(lambda: db_count(r, "SELECT count(*) FROM subscription_events") == 0)

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


def db_count(r, sql):
    db = sqlite3.connect(r.path("var/graphrouter.db"))
    try:
        return db.execute(sql).fetchone()[0]
    finally:
        db.close()
