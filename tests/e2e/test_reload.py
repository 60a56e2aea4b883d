"""SIGHUP reloads: a new generation built beside the running one and swapped
in; any failure keeps the old one serving without failing a request; work in
flight finishes on its generation; bursts coalesce; a rebuilt plugin file is
picked up; listen cannot change."""

import copy
import os
import shutil
import signal
import threading
import time

from grtest import RouterTest, base_config, batch, fixture_plugin, item


def two_files(route_to):
    return base_config(handlers={"a": {"plugin": "file", "config": {"path": "a.jsonl"}},
                                 "b": {"plugin": "file", "config": {"path": "b.jsonl"}}},
                       routes=[{"name": "main", "to": [route_to]}])


class ReloadTest(RouterTest):
    def reloads(self, r, result="success"):
        return r.metric("graphrouter_reloads_total", result=result)

    def test_reload_changes_a_route(self):
        r = self.router(two_files("a"))
        r.post(batch(item(id="before")))
        r.wait_jsonl(1, "a.jsonl")
        r.write_config(two_files("b"))
        r.send_signal(signal.SIGHUP)
        r.wait_for(lambda: self.reloads(r) == 1)
        self.assertEqual(r.metric("graphrouter_config_generation"), 2)
        r.post(batch(item(id="after")))
        self.assertEqual([l["id"] for l in r.wait_jsonl(1, "b.jsonl")], ["after"])
        self.assertEqual([l["id"] for l in r.read_jsonl("a.jsonl")], ["before"])
        r.wait_log(r"generation 1 retired")

    def test_invalid_configs_while_traffic_flows(self):
        good = two_files("a")
        r = self.router(good)
        statuses, stop = [], threading.Event()

        def traffic(thread):
            n = 0
            while not stop.is_set():  # distinct ids: equal ones would be duplicates
                statuses.append(r.post(batch(item(id="t%d-%d" % (thread, n))))[0])
                n += 1

        threads = [threading.Thread(target=traffic, args=(t,)) for t in range(2)]
        for t in threads:
            t.start()
        moved = copy.deepcopy(good)
        moved["listen"]["port"] = 1
        abi = copy.deepcopy(good)
        abi["handlers"]["x"] = {"plugin": fixture_plugin("abi_major")}
        bad_init = copy.deepcopy(good)
        bad_init["handlers"]["b"]["config"]["path"] = "/proc/graphrouter/cannot.jsonl"
        broken = [
            ('{"handlers": {', r"graphrouter\.json:1:\d+: "),
            (dict(good, routs=[]), r'graphrouter\.json:\d+:\d+: unknown key "routs"'),
            (dict(good, routes=[{"name": "r", "to": ["missing"]}]),
             r'handler "missing", which is not defined'),
            (abi, r"abi_major\.so was built for plugin ABI 2\.3, but this graphrouter provides ABI 1\.3"),
            (bad_init, r'handler "b" \(plugin [^)]*file\.so\): init failed: cannot open '
                       r'/proc/graphrouter/cannot\.jsonl'),
            (moved, r'"listen" changed'),
        ]
        try:
            for n, (cfg, message) in enumerate(broken, 1):
                time.sleep(0.2)
                r.write_config(cfg)
                r.send_signal(signal.SIGHUP)
                r.wait_for(lambda: self.reloads(r, "failure") == n, what="failed reload %d" % n)
                r.wait_log(r"reload failed; generation 1 keeps serving: .*" + message)
            time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertGreater(len(statuses), 20)
        self.assertEqual(set(statuses), {202})
        self.assertEqual(self.reloads(r), 0)
        self.assertEqual(r.metric("graphrouter_config_generation"), 1)
        # the old routes kept working: every item reached a.jsonl
        lines = r.wait_jsonl(len(statuses), "a.jsonl")
        self.assertEqual(len(lines), len(statuses))
        self.assertEqual(r.read_jsonl("b.jsonl"), [])

    def test_signal_burst_coalesces(self):
        cfg = two_files("a")
        r = self.router(cfg)
        slow = copy.deepcopy(cfg)
        slow["handlers"]["slow"] = {"plugin": fixture_plugin("flaky"),
                                    "config": {"init_sleep_ms": 500}}
        r.write_config(slow)
        for _ in range(20):
            r.send_signal(signal.SIGHUP)
        r.wait_for(lambda: self.reloads(r) >= 1)
        time.sleep(1.5)  # let a coalesced follow-up reload finish
        done = self.reloads(r)
        self.assertGreaterEqual(done, 1)
        self.assertLessEqual(done, 3)
        self.assertEqual(r.metric("graphrouter_config_generation"), 1 + done)

    def test_replaced_plugin_file_is_loaded(self):
        r = self.router(base_config(), start=False)
        shutil.copy(fixture_plugin("flaky"), r.path("p.so"))
        cfg = base_config(handlers={"f": {"plugin": "./p.so", "config": {"emit_to": "out"}},
                                    "out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
                          routes=[{"name": "r", "to": "f"}])
        r.write_config(cfg)
        r.start()
        r.post(batch(item()))
        self.assertEqual(r.wait_jsonl(1)[0]["flaky_build"], "default")
        # install a rebuilt plugin the way install(1) does: write beside, rename over
        shutil.copy(fixture_plugin("flaky_two"), r.path("p.so.new"))
        os.replace(r.path("p.so.new"), r.path("p.so"))
        r.send_signal(signal.SIGHUP)
        r.wait_for(lambda: self.reloads(r) == 1)
        r.post(batch(item()))
        self.assertEqual(r.wait_jsonl(2)[1]["flaky_build"], "two")
        # an unchanged file on the next reload is the already-loaded object
        r.send_signal(signal.SIGHUP)
        r.wait_for(lambda: self.reloads(r) == 2)
        r.post(batch(item()))
        self.assertEqual(r.wait_jsonl(3)[2]["flaky_build"], "two")

    def test_work_in_flight_finishes_on_its_generation(self):
        cfg = base_config(handlers={
            "slow": {"plugin": fixture_plugin("flaky"), "config": {"sleep_ms": 2000,
                                                                   "emit_to": "out"}},
            "out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
            routes=[{"name": "r", "to": "slow"}])
        r = self.router(cfg)
        r.post(batch(item(id="in-flight")))
        r.wait_for(lambda: r.metric("graphrouter_deliveries_running", handler="slow") == 1)
        # the new generation has no "slow" handler at all
        r.write_config(base_config())
        r.send_signal(signal.SIGHUP)
        r.wait_for(lambda: self.reloads(r) == 1)
        self.assertNotIn("generation 1 retired", r.log())  # still pinned by the delivery
        r.post(batch(item(id="after")))
        lines = r.wait_jsonl(2)
        by_id = {l["id"]: l for l in lines}
        self.assertEqual(by_id["in-flight"]["flaky_calls"], 1)  # emitted by the old handler
        self.assertNotIn("flaky_calls", by_id["after"])
        r.wait_log(r"generation 1 retired")
        log = r.log()
        self.assertLess(log.index("call 1 -> ok"), log.index("generation 1 retired"))


class StuckPluginCallTest(RouterTest):
    """init, reopen and fini run on a supervised job thread: one that runs past
    its handler's timeout_s is reported and left to finish alone, and graphrouter
    goes on serving."""

    def config(self, hang_in=None, tag="a", timeout_s=1, **more):
        f = {"plugin": fixture_plugin("flaky"), "timeout_s": timeout_s,
             "config": dict(emit_to="out", tag=tag, **more)}
        if hang_in:
            f["config"]["hang_in"] = hang_in
        return base_config(handlers={"f": f, "out": {"plugin": "file",
                                                     "config": {"path": "out.jsonl"}}},
                           routes=[{"name": "r", "to": "f"}])

    def stuck(self, r, call):
        return r.metric("graphrouter_plugin_calls_stuck_total", call=call)

    def delivers(self, r, n, tag):
        r.post(batch(item(id="i%d" % n)))
        line = r.wait_jsonl(n)[n - 1]
        self.assertEqual((line["id"], line["flaky_tag"]), ("i%d" % n, tag))

    def test_an_init_stuck_in_a_reload_fails_the_reload(self):
        r = self.router(self.config())
        self.delivers(r, 1, "a")
        r.write_config(self.config(hang_in="init", tag="b"))
        r.send_signal(signal.SIGHUP)
        r.wait_log(r'reload failed; generation 1 keeps serving: handler "f": init\(\) has not '
                   r'returned after 1 s \(the handler\'s timeout_s\); that build is left to '
                   r'finish alone')
        self.assertEqual(r.metric("graphrouter_reloads_total", result="failure"), 1)
        self.assertEqual(self.stuck(r, "init"), 1)
        self.delivers(r, 2, "a")  # generation 1 serves
        r.write_config(self.config(tag="c"))  # a fixed configuration loads
        r.send_signal(signal.SIGHUP)
        r.wait_for(lambda: r.metric("graphrouter_reloads_total", result="success") == 1)
        self.assertEqual(r.metric("graphrouter_config_generation"), 3)
        self.delivers(r, 3, "c")
        # the stuck build let go of generation 1 before its plugins ran
        r.wait_log(r"generation 1 retired")
        # a plugin call still runs: graphrouter exits without unloading plugins, status 1
        self.assertEqual(r.stop(), 1)
        self.assertIn("stopped (with a plugin call still running)", r.log())

    def test_a_reopen_that_returns_late_is_released(self):
        r = self.router(self.config(reopen_sleep_ms=2500))
        r.send_signal(signal.SIGUSR1)
        r.wait_log(r'SIGUSR1: handler "f": reopen\(\) has not returned after 1 s')
        self.delivers(r, 1, "a")
        r.wait_log(r"a plugin job given up on has finished \(last call: reopen of handler ")
        self.assertEqual(r.stop(), 0)  # nothing runs any more: a clean stop
        self.assertNotIn("plugin call still running", r.log())

    def test_sigterm_with_the_serving_generations_reopen_stuck(self):
        r = self.router(self.config(hang_in="reopen"))
        r.send_signal(signal.SIGUSR1)
        r.wait_log(r'SIGUSR1: handler "f": reopen\(\) has not returned after 1 s')
        r.send_signal(signal.SIGUSR1)  # not another reopen on the same states
        r.wait_log(r"SIGUSR1 ignored: the last reopen of generation 1 has not returned")
        self.assertEqual(r.log().count("reopen: hanging on purpose"), 1)
        self.delivers(r, 1, "a")
        # the stuck reopen still uses generation 1: nothing is unloaded under it
        self.assertEqual(r.stop(), 1)
        self.assertIn("stopped (with a plugin call still running)", r.log())

    def test_sigterm_does_not_wait_for_a_slow_reload(self):
        r = self.router(self.config())
        r.write_config(self.config(tag="b", timeout_s=60, init_sleep_ms=30000))
        r.send_signal(signal.SIGHUP)
        r.wait_log(r"reload requested: building generation 2")
        t0 = time.monotonic()
        self.assertEqual(r.stop(), 1)  # the build, still in init, is left behind
        self.assertLess(time.monotonic() - t0, 10)
        self.assertRegex(r.text(), r"reload failed; generation 1 keeps serving: graphrouter is "
                                   r"stopping")

    def test_an_init_stuck_at_start_stops_graphrouter_and_check(self):
        r = self.router(self.config(hang_in="init"), start=False)
        status, out, err = r.cli("--check")
        self.assertEqual((status, out), (1, ""))
        self.assertIn('handler "f": init() has not returned after 1 s', err)
        with self.assertRaisesRegex(AssertionError, "router exited with 1"):
            r.start()
        self.assertRegex(r.text(), r'cannot start: handler "f": init\(\) has not returned after '
                                   r'1 s')

    def test_a_stuck_reopen_and_a_stuck_fini_are_reported(self):
        r = self.router(self.config(hang_in="reopen"))
        r.send_signal(signal.SIGUSR1)
        r.wait_log(r'SIGUSR1: handler "f": reopen\(\) has not returned after 1 s')
        self.assertEqual(self.stuck(r, "reopen"), 1)
        self.delivers(r, 1, "a")
        r.write_config(self.config(hang_in="fini", tag="b"))
        r.send_signal(signal.SIGHUP)
        r.wait_for(lambda: r.metric("graphrouter_reloads_total", result="success") == 1)
        self.delivers(r, 2, "b")
        r.write_config(self.config(tag="c"))  # retires generation 2, whose fini hangs
        r.send_signal(signal.SIGHUP)
        r.wait_log(r'retiring a generation: handler "f": fini\(\) has not returned after 1 s')
        self.assertEqual(self.stuck(r, "fini"), 1)
        self.delivers(r, 3, "c")
        self.assertEqual(r.stop(), 1)
