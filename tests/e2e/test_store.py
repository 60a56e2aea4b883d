"""The durable store: what got a 202 is delivered, whatever happens to the
process; retries and their backoff; dead letters and the dlq / status
commands; a plugin that crashes the router; duplicates; 503 when the store is
full or cannot write; retention; emitted events; in-order handlers."""

import json
import os
import re
import resource
import signal
import sqlite3
import threading
import time

from grtest import (TENANT_A, TIMEOUT, RouterTest, base_config, batch, fixture_plugin, item,
                    let_signals_kill, rich_config, simulate)

FLAKY = fixture_plugin("flaky")


def flaky(**config):
    return {"plugin": FLAKY, "config": config}


def out(path="out.jsonl"):
    return {"plugin": "file", "config": {"path": path}}


def ids(lines):
    return [l["id"] for l in lines]


def db_rows(r, sql):
    """Read the store with a second, read-only connection (as sqlite3 would)."""
    db = sqlite3.connect("file:%s?mode=ro" % r.path("var/graphrouter.db"), uri=True, timeout=10)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


class Load:
    """Bounded concurrent POSTs: `clients` threads, each sending at most 300
    POSTs of `size` items with distinct ids, until stopped, answered other
    than 202, or the router is gone. `acked` holds every item answered 202."""

    def __init__(self, r, prefix, clients=4, size=1):
        self.r, self.acked, self._lock = r, [], threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=("%s%d" % (prefix, t), size))
                         for t in range(clients)]
        for t in self._threads:
            t.start()

    def _client(self, prefix, size):
        for n in range(300):
            if self._stop.is_set():
                return
            sent = ["%s-%d-%d" % (prefix, n, j) for j in range(size)]
            try:
                status, _, _ = self.r.post(batch(*[item(id=i) for i in sent]))
            except OSError:
                return  # the router is gone
            if status != 202:
                return
            with self._lock:
                self.acked.extend(sent)

    def wait(self, n):
        self.r.wait_for(lambda: len(self.acked) >= n, what="%d acknowledged items" % n)

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join()


class CrashTest(RouterTest):
    def test_sigkill_under_load_loses_nothing_acknowledged(self):
        r = self.router(base_config(workers=2))
        load = Load(r, "k", size=2)
        load.wait(200)
        r.proc.kill()  # SIGKILL in the middle of the load
        load.stop()
        self.assertEqual(r.stop(), -9)
        r.start()  # same directory, same store
        r.wait_idle()
        missing = set(load.acked) - set(ids(r.read_jsonl()))
        self.assertEqual(missing, set(), "acknowledged but never delivered")

    def test_sigterm_under_load_answers_what_it_committed(self):
        # shutdown_timeout_s 0: POSTs waiting for their commit at SIGTERM are
        # still answered, after the commit, and nothing acknowledged is lost
        r = self.router(base_config(workers=2, shutdown_timeout_s=0))
        load = Load(r, "s")
        load.wait(100)
        # 1 when a worker was still busy at the (zero) deadline: its delivery
        # runs again after the restart; never an abort
        self.assertIn(r.stop(), (0, 1), r.log())
        load.stop()
        self.assertNotIn("panic", r.log())
        r.start()
        r.wait_idle()
        self.assertEqual(set(load.acked) - set(ids(r.read_jsonl())), set())

    def test_plugin_that_crashes_ends_as_a_dead_letter(self):
        cfg = base_config(workers=1, handlers={
            # each call waits 0.3 s first, so the crash comes after the POST's 202 is out
            "f": dict(flaky(crash_on="crash-me", emit_to="out", sleep_ms=300),
                      retry={"max_attempts": 2}),
            "out": out()}, routes=[{"name": "r", "to": "f"}])
        r = self.router(cfg, start=False)
        env = let_signals_kill()  # the crash is the test
        r.start(env=env)
        r.post(batch(item(id="before")))
        r.wait_jsonl(1)
        self.assertEqual(r.post(batch(item(id="crash-me"), item(id="after")))[0], 202)
        crashes = 0
        for _ in range(2):  # each start takes the item again, records an attempt, crashes
            self.assertEqual(r.stop(sig=0, timeout=TIMEOUT), -11)  # waits for the crash
            crashes += 1
            r.start(env=env)
        # the third start finds the attempts used up: a dead letter, no crash loop
        r.wait_log(r'delivery \d+ to handler "f" was running when graphrouter stopped and has '
                   r'used its 2 attempts: a dead letter')
        self.assertEqual(r.log().count("crashing on purpose"), 2)
        r.wait_idle()
        self.assertEqual(sorted(ids(r.read_jsonl())), ["after", "before"])
        self.assert_one_dead_letter(r, r"notification Users/u1/Messages/m1 +graphrouter stopped "
                                       r"while the handler ran \(a crash\?\)$")

    def assert_one_dead_letter(self, r, last_error):
        """`dlq list` shows one dead letter: handler f, 2 attempts, then `last_error`."""
        status, text, _ = r.cli("dlq", "list")
        self.assertEqual(status, 0)
        rows = text.splitlines()[1:]
        self.assertEqual(len(rows), 1, text)
        self.assertRegex(rows[0], r"^\d+ +f +2 ")
        self.assertRegex(rows[0], last_error)

    def test_a_handler_that_hangs_restarts_the_router_and_ends_as_a_dead_letter(self):
        cfg = base_config(workers=2, shutdown_timeout_s=1, handlers={
            "f": dict(flaky(hang_on="hang-me", emit_to="out"), timeout_s=1,
                      retry={"max_attempts": 2}),
            "out": out()}, routes=[{"name": "r", "to": "f"}])
        r = self.router(cfg)
        r.post(batch(item(id="before")))
        r.wait_jsonl(1)
        self.assertEqual(r.metric("graphrouter_deliveries_interrupted", handler="f"), 0)
        self.assertEqual(r.post(batch(item(id="hang-me"), item(id="after")))[0], 202)
        for start in range(2):  # each start takes the item again, records an attempt, hangs
            # the watchdog restarts graphrouter: status 1, for systemd's Restart=on-failure
            self.assertEqual(r.stop(sig=0, timeout=TIMEOUT), 1, r.log()[-3000:])
            self.assertEqual(len(re.findall(
                r'handler "f": handle\(\) has run for \d+ s on delivery \d+, past its timeout_s '
                r'\(1 s\); restarting graphrouter \(exit status 1\)', r.text())), start + 1,
                r.log()[-3000:])
            r.start()
            # the hung delivery (and any its worker held) was found running, charged an attempt
            self.assertGreaterEqual(
                r.metric("graphrouter_deliveries_interrupted", handler="f"), 1)
        # the third start finds the attempts used up: a dead letter, no restart loop
        r.wait_log(r'delivery \d+ to handler "f" was running when graphrouter stopped and has '
                   r'used its 2 attempts: a dead letter')
        r.wait_idle()
        self.assertEqual(r.log().count("hanging on purpose"), 2)
        self.assertEqual(sorted(ids(r.read_jsonl())), ["after", "before"])
        self.assertIsNone(r.proc.poll(), "still running")
        self.assert_one_dead_letter(r, r"handle\(\) did not return within the handler's "
                                       r"timeout_s \(1 s\); graphrouter restarted$")

    def test_a_call_that_returns_during_the_restart_is_kept(self):
        cfg = base_config(workers=1, shutdown_timeout_s=10, handlers={
            "f": dict(flaky(sleep_ms=2500, emit_to="out"), timeout_s=1), "out": out()},
            routes=[{"name": "r", "to": "f"}])
        r = self.router(cfg)
        self.assertEqual(r.post(batch(item(id="slow")))[0], 202)
        # past 1 s the watchdog restarts graphrouter; the call returns during the shutdown
        self.assertEqual(r.stop(sig=0, timeout=TIMEOUT), 1, r.log()[-3000:])
        self.assertIn("past its timeout_s (1 s); restarting graphrouter", r.text())
        self.assertNotIn("exiting with a handler still running", r.log())
        r.start()
        r.wait_idle()
        # its completion (and the event it emitted) was written: delivered once, not again
        self.assertEqual(ids(r.read_jsonl()), ["slow"])
        self.assertEqual(r.metric("graphrouter_deliveries_interrupted", handler="f"), 0)
        self.assertEqual(r.log().count("call 1 -> ok"), 1)

    def test_a_stuck_calls_reason_is_that_attempts_only(self):
        cfg = base_config(workers=1, shutdown_timeout_s=1, handlers={
            "f": dict(flaky(hang_on="m-1", emit_to="out"), timeout_s=1, retry={"max_attempts": 2}),
            "out": out()}, routes=[{"name": "r", "to": "f"}])
        r = self.router(cfg, start=False)
        env = let_signals_kill()
        r.start(env=env)
        self.assertEqual(r.post(batch(item(id="m-1")))[0], 202)
        self.assertEqual(r.stop(sig=0, timeout=TIMEOUT), 1)  # attempt 1 hangs
        cfg["handlers"]["f"]["config"] = {"crash_on": "m-1", "emit_to": ["out"]}
        r.write_config(cfg)
        r.start(env=env)
        self.assertEqual(r.stop(sig=0, timeout=TIMEOUT), -11)  # attempt 2 crashes
        r.start(env=env)
        r.wait_idle()
        # the dead letter tells the last attempt's story, not the first one's
        self.assert_one_dead_letter(r, r"graphrouter stopped while the handler ran \(a crash\?\)$")

    def test_a_slow_handler_within_its_timeout_is_left_alone(self):
        cfg = base_config(workers=1, handlers={
            "f": dict(flaky(sleep_ms=1500, emit_to="out"), timeout_s=3), "out": out()},
            routes=[{"name": "r", "to": "f"}])
        r = self.router(cfg)
        r.post(batch(item(id="slow")))
        r.wait_jsonl(1)
        self.assertIsNone(r.proc.poll(), "still running")
        self.assertNotIn("past its timeout_s", r.log())


class RetryTest(RouterTest):
    def test_backoff_is_exponential_with_full_jitter_and_capped(self):
        r = self.router(base_config(workers=1, handlers={
            "f": dict(flaky(fail_times=5, emit_to="out"),
                      retry={"max_attempts": 10, "initial_backoff_ms": 200,
                             "max_backoff_ms": 500}),
            "out": out()}, routes=[{"name": "r", "to": "f"}]))
        r.post(batch(item(id="x")))
        self.assertEqual(r.wait_jsonl(1)[0]["flaky_calls"], 6)
        delays = [int(d) for d in re.findall(r"next try in (\d+) ms", r.text())]
        calls = [parse_ts(l) for l in r.log().splitlines() if re.search(r"call \d -> ", l)]
        self.assertEqual(len(delays), 5)
        self.assertEqual(len(calls), 6)
        caps = [200, 400, 500, 500, 500]  # initial * 2^(n-1), capped at max_backoff_ms
        for n, (delay, cap) in enumerate(zip(delays, caps)):
            self.assertLessEqual(delay, cap, "attempt %d" % (n + 1))
            waited = calls[n + 1] - calls[n]
            # the next attempt waits its delay, and not much more (2 cores, sanitizers)
            self.assertGreaterEqual(waited, delay / 1000 - 0.01, "attempt %d" % (n + 2))
            self.assertLess(waited, delay / 1000 + 1.5, "attempt %d" % (n + 2))
        self.assertEqual(r.metric("graphrouter_handler_retried_total", handler="f"), 5)


def parse_ts(line):
    m = re.search(r"ts=\S+T(\d\d):(\d\d):(\d\d\.\d+)Z", line)
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


class DeadLetterTest(RouterTest):
    def test_dlq_list_show_replay_purge_and_status_while_running(self):
        cfg = base_config(handlers={
            "f": flaky(fail_times=4, result="fail", emit_to="out"),
            "never": flaky(fail_times=1000, result="fail"),
            "out": out()},
            routes=[{"name": "deleted", "match": {"change_type": "deleted"}, "to": "never"},
                    {"name": "rest", "match": {"change_type": ["created", "updated"]},
                     "to": "f"}])
        r = self.router(cfg)
        r.post(batch(*[item(id="x%d" % i) for i in range(4)]))
        r.post(batch(item(id="gone", changeType="deleted")))
        r.wait_for(lambda: r.metric("graphrouter_handler_failed_total", handler="f") == 4)
        r.wait_idle()  # dead letters are finished work
        r.wait_for(lambda: r.metric("graphrouter_dead_letters", handler="f") == 4)
        self.assertEqual(r.metric("graphrouter_dead_letters", handler="never"), 1)

        status, text, _ = r.cli("status")
        self.assertEqual(status, 0)
        self.assertRegex(text, r"(?m)^f +0 +0 +4 +- *$")
        self.assertRegex(text, r"(?m)^never +0 +0 +1 +- *$")
        self.assertRegex(text, r"(?m)^store .*: 0 items pending")

        status, text, err = r.cli("dlq", "list")
        self.assertEqual((status, err.strip()), (0, "5 dead letters"))
        rows = [l.split() for l in text.splitlines()[1:]]
        self.assertEqual(sorted(row[1] for row in rows), ["f"] * 4 + ["never"])
        # ID HANDLER ATTEMPTS AGE WHAT (kind, resource) LAST ERROR
        self.assertTrue(all(row[2] == "1" and row[4:] == ["notification", "Users/u1/Messages/m1",
                                                          "GR_FAIL"] for row in rows), text)
        first = next(row[0] for row in rows if row[1] == "f")

        status, text, _ = r.cli("dlq", "show", first)
        self.assertEqual(status, 0)
        shown = json.loads(text)
        self.assertEqual((shown["handler"], shown["state"], shown["attempts"],
                          shown["last_error"]), ("f", "dead", 1, "GR_FAIL"))
        replayed = shown["item"]["id"]  # the item as it was received
        self.assertIn(replayed, ["x0", "x1", "x2", "x3"])
        self.assertEqual(r.cli("dlq", "show", "999999")[0], 1)

        # replay one: its attempts start again; flaky succeeds from call 5 on
        self.assertEqual(r.cli("dlq", "replay", first)[:2], (0, "1 dead letter replayed\n"))
        self.assertEqual(ids(r.wait_jsonl(1)), [replayed])
        status, _, err = r.cli("dlq", "replay", first)
        self.assertEqual(status, 1)
        self.assertIn("no dead letter %s" % first, err)

        # replay --all brings back the other three of f and the one of "never"
        self.assertEqual(r.cli("dlq", "replay", "--all")[:2], (0, "4 dead letters replayed\n"))
        self.assertEqual(sorted(ids(r.wait_jsonl(4))), ["x0", "x1", "x2", "x3"])
        r.wait_for(lambda: r.metric("graphrouter_handler_failed_total", handler="never") == 2)
        r.wait_idle()
        r.wait_for(lambda: r.metric("graphrouter_dead_letters", handler="f") == 0)

        self.assertEqual(r.cli("dlq", "purge")[:2], (0, "1 dead letter purged\n"))
        status, text, err = r.cli("dlq", "list")
        self.assertEqual((status, len(text.splitlines()), err.strip()), (0, 1, "0 dead letters"))
        r.wait_for(lambda: r.metric("graphrouter_dead_letters", handler="never") == 0)


    def test_replay_leaves_dead_letters_of_handlers_no_longer_configured(self):
        cfg = base_config(handlers={
            "f": flaky(fail_times=1, result="fail", emit_to="out"),
            "old": flaky(fail_times=1000, result="fail"), "out": out()},
            routes=[{"name": "r", "to": ["f", "old"]}])
        r = self.router(cfg)
        r.post(batch(item(id="a")))
        r.wait_for(lambda: r.metric("graphrouter_dead_letters", handler="f") == 1 and
                   r.metric("graphrouter_dead_letters", handler="old") == 1)
        del cfg["handlers"]["old"]
        cfg["handlers"]["f"] = flaky(emit_to="out")  # fixed
        cfg["routes"] = [{"name": "r", "to": "f"}]
        r.write_config(cfg)
        r.send_signal(signal.SIGHUP)
        r.wait_log("reloaded: generation 2")
        rows = [l.split() for l in r.cli("dlq", "list")[1].splitlines()[1:]]
        old = next(row[0] for row in rows if row[1] == "old")
        status, text, err = r.cli("dlq", "replay", old)
        self.assertEqual((status, text), (1, ""))
        self.assertIn('dead letter %s is for handler "old", which %s does not configure'
                      % (old, r.config_path), err)
        status, text, _ = r.cli("dlq", "replay", "--all")
        self.assertEqual(status, 0)
        self.assertEqual(text, '1 dead letter replayed\n1 left: for handlers %s does not '
                               'configure (such as "old")\n' % r.config_path)
        self.assertEqual(ids(r.wait_jsonl(1)), ["a"])
        r.wait_idle()
        self.assertEqual([l.split()[1] for l in r.cli("dlq", "list")[1].splitlines()[1:]],
                         ["old"])


class DuplicateTest(RouterTest):
    def test_duplicates_inside_the_window_are_acknowledged_not_delivered(self):
        r = self.router(base_config(store={"dedupe_window_s": 5}))
        t0 = time.monotonic()
        self.assertEqual(r.post(batch(item(id="d1")))[0], 202)
        self.assertEqual(r.post(batch(item(id="d1")))[0], 202)            # Graph retried
        self.assertEqual(r.post(batch(item(id="d1"), item(id="d2")))[0], 202)
        self.assertEqual(r.post(batch(item(id="d1", changeType="updated")))[0], 202)
        etag = {"@odata.type": "#Microsoft.Graph.Message", "id": "m1", "@odata.etag": "W/\"1\""}
        no_id = item(resourceData=etag)
        self.assertEqual(r.post(batch(no_id, no_id))[0], 202)                # same etag
        r.wait_idle()
        self.assertLess(time.monotonic() - t0, 4.5, "too slow to test the window")
        self.assertEqual(sorted(ids(l for l in r.read_jsonl() if l.get("id"))), ["d1", "d1", "d2"])
        self.assertEqual(len(r.read_jsonl()), 4)
        self.assertEqual(r.metric("graphrouter_items_duplicate_total"), 3)
        self.assertEqual(r.metric("graphrouter_items_accepted_total"), 7)  # all stored
        # the duplicates are kept, finished, with why
        self.assertEqual(db_rows(r, "SELECT count(*) FROM items WHERE note = 'duplicate'"),
                         [(3,)])
        time.sleep(max(0, 5.5 - (time.monotonic() - t0)))  # the window has passed
        self.assertEqual(r.post(batch(item(id="d1")))[0], 202)
        r.wait_jsonl(5)

    def test_a_restart_remembers_the_keys_of_the_window(self):
        # The keys live in memory and are rebuilt from the stored items at
        # start; retention (1 s here) keeps items for the window at least.
        r = self.router(base_config(store={"dedupe_window_s": 3600, "retention_s": 1}))
        self.assertEqual(r.post(batch(item(id="k1"), item(id="k2")))[0], 202)
        r.wait_jsonl(2)
        r.wait_idle()
        time.sleep(2.5)  # past retention_s and a purge pass: the items stay
        self.assertEqual(r.stop(), 0)
        r.start()
        self.assertIn("2 duplicate keys of the last 3600 s loaded", r.log())
        self.assertEqual(r.post(batch(item(id="k1"), item(id="k3")))[0], 202)
        r.wait_idle()
        self.assertEqual(sorted(ids(r.read_jsonl())), ["k1", "k2", "k3"])
        self.assertEqual(r.metric("graphrouter_items_duplicate_total"), 1)


class BackpressureTest(RouterTest):
    def stuck(self, **store):
        """A router whose handler keeps everything pending (retries a minute away)."""
        return self.router(base_config(store=store, handlers={
            "f": dict(flaky(fail_times=100000), retry={"initial_backoff_ms": 60000,
                                                      "max_backoff_ms": 60000})},
            routes=[{"name": "r", "to": "f"}]))

    def test_503_when_max_pending_is_reached_all_or_nothing(self):
        r = self.stuck(max_pending=3)
        self.assertEqual(r.post(batch(item(id="a"), item(id="b")))[0], 202)
        status, headers, body = r.post(batch(item(id="c"), item(id="d")))
        self.assertEqual((status, headers.get("retry-after")), (503, "5"))
        self.assertIn(b"store full", body)
        self.assertEqual(r.post(batch(item(id="c")))[0], 202)  # one more fits
        self.assertEqual(r.post(batch(item(id="e")))[0], 503)
        self.assertEqual(r.metric("graphrouter_store_rejected_total", reason="full"), 2)
        self.assertEqual(r.metric("graphrouter_store_items_pending"), 3)
        r.wait_log(r"notification POST refused with 503: the store is full")
        # what waits shows in status and metrics, with the age of the oldest
        r.wait_for(lambda: r.metric("graphrouter_oldest_pending_seconds", handler="f") > 0.5)
        status, text, _ = r.cli("status")
        m = re.search(r"(?m)^f +(\d+) +(\d+) +0 +(\d+)s *$", text)
        self.assertTrue(m, text)
        self.assertEqual(int(m.group(1)) + int(m.group(2)), 3)
        self.assertRegex(text, r"(?m)^store .*: 3 items pending \(\d+ bytes\), 0 not yet routed$")

    def test_503_when_max_db_bytes_is_reached(self):
        r = self.stuck(max_db_bytes=1048576)
        pad = "x" * 20000
        statuses = []
        for n in range(100):
            statuses.append(r.post(batch(item(id="p%d" % n, pad=pad)))[0])
            if statuses[-1] != 202:
                break
        self.assertEqual(statuses[-1], 503)
        self.assertGreater(statuses.count(202), 20)
        self.assertEqual(r.metric("graphrouter_store_rejected_total", reason="full"), 1)
        # what was accepted is still routed and taken: the store kept room for it
        r.wait_for(lambda: r.metric("graphrouter_store_items_to_route") == 0)

    def test_503_when_the_store_cannot_write_and_nothing_acknowledged_is_lost(self):
        cfg = base_config(workers=1, handlers={"out": out()})
        r = self.router(cfg, start=False)
        limit = 2 << 20  # RLIMIT_FSIZE: writes past 2 MiB fail (EFBIG), like a full disk
        r.start(preexec=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
        pad = "y" * 30000
        acked, statuses = [], []
        for n in range(200):
            status, headers, _ = r.post(batch(item(id="w%d" % n, pad=pad)))
            statuses.append(status)
            if status == 202:
                acked.append("w%d" % n)
            else:
                self.assertEqual((status, headers.get("retry-after")), (503, "5"))
                break
        self.assertEqual(statuses[-1], 503, "the size limit was never reached")
        self.assertGreaterEqual(len(acked), 5, r.log())
        self.assertGreaterEqual(r.metric("graphrouter_store_rejected_total", reason="error"), 1)
        self.assertGreaterEqual(r.metric("graphrouter_store_failures_total"), 1)
        r.wait_log(r"store: writing .*graphrouter\.db failed")
        self.assertEqual(r.stop(), 0)
        # without the limit, everything that got a 202 is delivered
        r.start()
        r.wait_idle()
        self.assertEqual(set(acked) - set(ids(r.read_jsonl())), set())


class RetentionTest(RouterTest):
    def test_finished_work_is_purged_and_the_database_stays_bounded(self):
        r = self.router(base_config(store={"retention_s": 1, "dedupe_window_s": 1}, handlers={
            "f": flaky(emit_to="out"), "out": out()}, routes=[{"name": "r", "to": "f"}]))
        pages = []
        for rnd in range(5):
            for p in range(4):
                r.post(batch(*[item(id="r%d-%d-%d" % (rnd, p, i), pad="z" * 2000)
                               for i in range(10)]))
            r.wait_idle()
            # finished a second ago: items, deliveries and emitted events are gone
            r.wait_for(lambda: db_rows(r, "SELECT (SELECT count(*) FROM items) + "
                                          "(SELECT count(*) FROM units)")[0][0] == 0,
                       what="the purge")
            pages.append(db_rows(r, "PRAGMA page_count")[0][0])
        self.assertEqual(len(r.read_jsonl()), 200)
        # the pages freed by each purge are reused: rounds 3 to 5 add less
        # than one round's items take (40 x 2 KB: about 20 pages of 4 KiB)
        self.assertLess(pages[-1] - pages[1], 10, pages)


class EmitTest(RouterTest):
    def test_emitted_event_is_stored_with_its_parent_completion(self):
        def cfg(sink):
            return base_config(workers=2, handlers={
                "parent": flaky(emit_to="sink", tag="p"), "sink": sink},
                routes=[{"name": "r", "to": "parent"}])
        # the sink is busy with the event when the router is killed
        r = self.router(cfg(flaky(sleep_ms=60000)))
        r.post(batch(item(id="e1")))
        r.wait_for(lambda: r.metric("graphrouter_deliveries_running", handler="sink") == 1)
        r.proc.kill()
        self.assertEqual(r.stop(), -9)
        first_run = len(r.log())
        r.write_config(cfg(out()))
        r.start()
        line = r.wait_jsonl(1)[0]
        self.assertEqual((line["id"], line["flaky_calls"], line["flaky_tag"]), ("e1", 1, "p"))
        r.wait_idle()
        # the parent ran once: its completion and its event were one step
        self.assertNotRegex(r.log()[first_run:], r'msg="call \d+ -> \w+" handler="parent"')
        self.assertEqual(r.log().count('msg="call 1 -> ok" handler="parent"'), 1)


class OrderTest(RouterTest):
    def test_concurrency_1_is_in_order_and_concurrency_2_is_bounded(self):
        r = self.router(base_config(workers=4, handlers={
            "seq": dict(flaky(sleep_ms=20, fail_times=1, emit_to="out"), concurrency=1,
                        retry={"initial_backoff_ms": 100, "max_backoff_ms": 100}),
            "par": dict(flaky(sleep_ms=150, emit_to="out2"), concurrency=2),
            "out": out(), "out2": out("out2.jsonl")},
            routes=[{"name": "r", "to": ["seq", "par"]}]))
        sent = ["o%02d" % n for n in range(12)]
        for i in sent:
            self.assertEqual(r.post(batch(item(id=i)))[0], 202)
        lines = r.wait_jsonl(12)
        # in the order accepted, even though the first one was retried
        self.assertEqual(ids(lines), sent)
        self.assertEqual({l["flaky_max_inflight"] for l in lines}, {1})
        par = r.wait_jsonl(12, "out2.jsonl")
        self.assertEqual(max(l["flaky_max_inflight"] for l in par), 2)


class RichAtRestTest(RouterTest):
    def test_rich_items_are_stored_encrypted(self):
        k = self.keys()
        r = self.router(rich_config(k))
        doc = simulate(*k.notify_args("--type", "chatMessage", "--tenant", TENANT_A))
        self.assertEqual(r.post(doc)[0], 202)
        line = r.wait_jsonl(1)[0]
        secret_text = "the build is green"
        self.assertIn(secret_text, line["content"]["body"]["content"])  # the file plugin's output
        r.wait_idle()
        stored = b"".join(open(r.path("var/" + f), "rb").read()
                          for f in os.listdir(r.path("var")) if f.startswith("graphrouter.db"))
        # the item as received, its ciphertext and tokens; never its plaintext
        self.assertIn(doc["value"][0]["encryptedContent"]["data"].encode(), stored)
        self.assertIn(doc["validationTokens"][0].encode(), stored)
        self.assertNotIn(secret_text.encode(), stored)
        self.assertEqual(os.stat(r.path("var/graphrouter.db")).st_mode & 0o777, 0o600)


# The store as graphrouter wrote it before layout 4 (layout 3: every
# delivery a unit row, items rewritten at each state change).
LAYOUT3_SCHEMA = """
CREATE TABLE batches(id INTEGER PRIMARY KEY, tokens TEXT NOT NULL, received_ms INTEGER NOT NULL);
CREATE INDEX batches_age ON batches(received_ms);
CREATE TABLE items(id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL, len INTEGER NOT NULL,
  batch_id INTEGER, state INTEGER NOT NULL, due_ms INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, note TEXT, done_ms INTEGER, dedupe BLOB,
  body TEXT NOT NULL);
CREATE INDEX items_open ON items(id) WHERE state IN (0, 3);
CREATE INDEX items_done ON items(done_ms) WHERE state = 2;
CREATE INDEX items_batch ON items(batch_id) WHERE batch_id IS NOT NULL;
CREATE TABLE units(id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL, handler TEXT NOT NULL,
  event TEXT, state INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  due_ms INTEGER NOT NULL, created_ms INTEGER NOT NULL, finished_ms INTEGER, last_error TEXT);
CREATE INDEX units_ready ON units(handler, due_ms, id) WHERE state = 0;
CREATE INDEX units_due ON units(due_ms) WHERE state = 0;
CREATE INDEX units_item ON units(item_id, state);
CREATE INDEX units_order ON units(handler, item_id, id) WHERE state IN (0, 1);
CREATE TABLE subscriptions(key TEXT PRIMARY KEY, id TEXT, tenant TEXT NOT NULL,
  resource TEXT NOT NULL, change_type TEXT NOT NULL, rich INTEGER NOT NULL, cert_id TEXT,
  cert_thumbprint TEXT, secret BLOB NOT NULL, state INTEGER NOT NULL, resync TEXT,
  expires_ms INTEGER, renewed_ms INTEGER, due_ms INTEGER, failures INTEGER NOT NULL DEFAULT 0,
  last_error TEXT, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, replaced_by TEXT);
CREATE TABLE subscription_events(seq INTEGER PRIMARY KEY, subscription_id TEXT NOT NULL,
  event TEXT NOT NULL, item_id INTEGER, received_ms INTEGER NOT NULL);
CREATE TABLE handler_state(handler TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
  updated_ms INTEGER NOT NULL, PRIMARY KEY(handler, key)) WITHOUT ROWID;
PRAGMA user_version = 3;
"""


def write_layout3_store(path):
    """A layout 3 store with work in every state: two items to route (one
    was being routed), one routed whose delivery is retrying (attempt 2, due
    now), one whose delivery is a dead letter, one delivered and done."""
    now = int(time.time() * 1000)
    body = lambda i: json.dumps(item(id=i, resource="Users/u1/Messages/%s" % i))
    db = sqlite3.connect(path)
    db.executescript(LAYOUT3_SCHEMA)
    rows = [  # id, name, state, attempts, done_ms
        (1, "ok", 2, 0, now - 5000), (2, "dead", 2, 0, None), (3, "retrying", 1, 0, None),
        (4, "pending", 0, 0, None), (5, "routing", 3, 0, None)]
    for rid, name, state, attempts, done in rows:
        b = body(name)
        db.execute("INSERT INTO items(id, received_ms, len, state, due_ms, attempts, done_ms, body)"
                   " VALUES(?, ?, ?, ?, ?, ?, ?, ?)", (rid, now - 6000, len(b), state, now - 6000,
                                                       attempts, done, b))
    units = [  # item, state, attempts, finished_ms, last_error
        (1, 2, 1, now - 5000, None), (2, 3, 3, now - 4000, "gave up after 3 attempts: GR_RETRY"),
        (3, 0, 2, None, "HTTP 503")]
    for it, state, attempts, finished, err in units:
        db.execute("INSERT INTO units(item_id, handler, state, attempts, due_ms, created_ms, "
                   "finished_ms, last_error) VALUES(?, 'out', ?, ?, ?, ?, ?, ?)",
                   (it, state, attempts, now - 3000, now - 6000, finished, err))
    db.commit()
    db.close()


class LayoutTest(RouterTest):
    def stopped_router(self):
        r = self.router(base_config(), start=False)
        os.makedirs(r.path("var"), mode=0o700, exist_ok=True)
        write_layout3_store(r.path("var/graphrouter.db"))
        os.chmod(r.path("var/graphrouter.db"), 0o600)
        return r

    def assert_layout3_work_carried_over(self, r):
        # what was pending, being routed or retrying is delivered; the dead
        # letter stays one, with its attempts and error; what was done stays done
        lines = r.wait_jsonl(3)
        r.wait_idle()
        self.assertEqual(sorted(ids(r.read_jsonl())), ["pending", "retrying", "routing"])
        status, text, _ = r.cli("dlq", "list")
        rows = text.splitlines()[1:]
        self.assertEqual(len(rows), 1, text)
        self.assertRegex(rows[0], r"^\d+ +out +3 .*Users/u1/Messages/dead +gave up after 3 "
                                  r"attempts: GR_RETRY$")
        retried = [l for l in lines if l["id"] == "retrying"]
        self.assertEqual(len(retried), 1)
        self.assertEqual(db_rows(r, "PRAGMA user_version"), [(4,)])
        # replayed, the dead letter is delivered; then nothing is pending
        dead_id = rows[0].split()[0]
        self.assertEqual(r.cli("dlq", "replay", dead_id)[:2], (0, "1 dead letter replayed\n"))
        r.wait_jsonl(4)
        r.wait_idle()
        self.assertEqual(sorted(ids(r.read_jsonl())), ["dead", "pending", "retrying", "routing"])
        self.assertEqual(r.cli("dlq", "list")[2].strip(), "0 dead letters")

    def test_a_layout_3_store_is_converted_with_its_work(self):
        r = self.stopped_router()
        # the commands read this graphrouter's layout: until the daemon converted the file,
        # they say so rather than misread it
        status, _, err = r.cli("dlq", "list")
        self.assertEqual(status, 1)
        self.assertIn("holds store layout 3; this graphrouter reads layout 4 (start this "
                      "graphrouter once: it converts the file)", err)
        r.start()
        self.assertIn("converted from layout 3 to layout 4", r.log())
        self.assert_layout3_work_carried_over(r)
        # every item of the file is still there, and the done one was not delivered again
        self.assertEqual(db_rows(r, "SELECT count(*) FROM items"), [(5,)])

    def test_a_layout_1_store_is_converted(self):
        # Layout 1 kept duplicate keys in a table of their own; layout 2
        # keeps them in memory. The conversion keeps every item.
        r = self.stopped_router()
        db = sqlite3.connect(r.path("var/graphrouter.db"))
        for t in ("subscriptions", "subscription_events", "handler_state"):
            db.execute("DROP TABLE %s" % t)
        db.execute("CREATE TABLE dedupe(key BLOB PRIMARY KEY, seen_ms INTEGER NOT NULL) "
                   "WITHOUT ROWID")
        db.execute("PRAGMA user_version = 1")
        db.commit()
        db.close()
        r.start()
        self.assertIn("converted from layout 1 to layout 4", r.log())
        self.assertEqual(db_rows(r, "SELECT count(*) FROM sqlite_schema WHERE name = 'dedupe'"),
                         [(0,)])
        self.assert_layout3_work_carried_over(r)

    def test_a_layout_2_store_is_converted(self):
        # Layout 3 added the control plane's tables (managed subscriptions
        # and their lifecycle events) and the handlers' state.
        r = self.stopped_router()
        db = sqlite3.connect(r.path("var/graphrouter.db"))
        for t in ("subscriptions", "subscription_events", "handler_state"):
            db.execute("DROP TABLE %s" % t)
        db.execute("PRAGMA user_version = 2")
        db.commit()
        db.close()
        r.start()
        self.assertIn("converted from layout 2 to layout 4", r.log())
        self.assertEqual(db_rows(r, "SELECT count(*) FROM sqlite_schema WHERE name IN "
                                    "('subscriptions', 'subscription_events', 'handler_state')"),
                         [(3,)])
        self.assert_layout3_work_carried_over(r)
        self.assertEqual(r.cli("subscriptions")[0], 0)

    def test_a_store_of_another_layout_is_refused(self):
        r = self.router(base_config())
        self.assertEqual(r.stop(), 0)
        db = sqlite3.connect(r.path("var/graphrouter.db"))
        db.execute("PRAGMA user_version = 99")
        db.commit()
        db.close()
        with self.assertRaises(AssertionError) as ctx:
            r.start()
        self.assertEqual(r.proc.returncode, 1)
        self.assertIn("graphrouter.db holds store layout 99; this graphrouter reads layout 4",
                      str(ctx.exception).replace('\\"', '"'))
