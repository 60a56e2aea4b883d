"""Plugins: ABI checks (major, newer minor, no entry point), handler config
schema checks, emit targets and cycles, retries with backoff, GR_FAIL,
exhausted retries, and emits dropped with a failed call."""

import os
import re
import subprocess

from grtest import BINARY, PLUGINS, RouterTest, Router, base_config, batch, fixture_plugin, item


def check(cfg):
    """Run --check on a config; returns (exit status, stdout + stderr)."""
    r = Router(cfg)
    try:
        p = subprocess.run([BINARY, "-c", r.config_path, "--check"], cwd=r.dir,
                           capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout + p.stderr
    finally:
        r.close()


def start_fails(cfg):
    """Start the router on a config that must not start; returns (status, log)."""
    r = Router(cfg)
    try:
        p = subprocess.run([BINARY, "-c", r.config_path], cwd=r.dir, capture_output=True,
                           text=True, timeout=60)
        return p.returncode, p.stderr.replace('\\"', '"')
    finally:
        r.close()


def flaky_to_out(flaky_config, retry=None):
    h = {"plugin": fixture_plugin("flaky"), "config": dict(flaky_config, emit_to="out")}
    if retry:
        h["retry"] = retry
    return base_config(handlers={"f": h, "out": {"plugin": "file",
                                                 "config": {"path": "out.jsonl"}}},
                       routes=[{"name": "r", "to": "f"}])


class AbiTest(RouterTest):
    def test_wrong_abi_is_refused(self):
        for name, want in (("abi_major", "built for plugin ABI 2.3, but this graphrouter "
                                         "provides ABI 1.3"),
                           ("abi_minor", "built for plugin ABI 1.4, but this graphrouter "
                                         "provides ABI 1.3")):
            path = fixture_plugin(name)
            cfg = base_config(handlers={"bad": {"plugin": path}}, routes=[])
            for status, text in (check(cfg), start_fails(cfg)):
                self.assertEqual(status, 1, text)
                self.assertRegex(text, r'graphrouter\.json:\d+:\d+: handler "bad": plugin ' +
                                 path.replace(".", r"\.") + " ")
                self.assertIn(want, text)

    def test_older_minor_runs(self):
        r = self.router(base_config(handlers={"old": {"plugin": fixture_plugin("abi_old")}},
                                    routes=[{"name": "all", "to": "old"}]))
        self.assertEqual(r.post(batch(item()))[0], 202)
        r.wait_for(lambda: r.metric("graphrouter_handler_handled_total", handler="old") == 1)

    def test_missing_entry_point_and_file(self):
        status, text = check(base_config(handlers={"x": {"plugin": fixture_plugin("no_entry")}},
                                         routes=[]))
        self.assertEqual(status, 1)
        self.assertIn("no_entry.so: no exported function gr_plugin_entry()", text)
        status, text = check(base_config(handlers={"x": {"plugin": "nonexistent"}}, routes=[]))
        self.assertEqual(status, 1)
        self.assertIn("plugin %s/nonexistent.so: cannot open: No such file or directory"
                      % PLUGINS, text)

    def test_handler_config_schema(self):
        cases = [
            ({"plugin": "file", "config": {"path": "x", "pth": 1}},
             r'graphrouter\.json:\d+:\d+: unknown key "pth" in the config of handler "h" '
             r'\(plugin "file"\); did you mean "path"\?'),
            ({"plugin": "file", "config": {}},
             r'graphrouter\.json:\d+:\d+: handler "h": missing required key "path" in "config"'),
            ({"plugin": "file"},
             r'graphrouter\.json:\d+:\d+: handler "h": missing required key "path" in "config"'),
            ({"plugin": "file", "config": {"path": 3}},
             r'handler "h": "path" must be a string'),
            ({"plugin": "mail", "config": {"emit_to": ["nowhere"]}},
             r'graphrouter\.json:\d+:\d+: handler "h": "emit_to" names handler "nowhere", which '
             r'is not defined'),
            ({"plugin": fixture_plugin("flaky"), "config": {"result": "maybe"}},
             r'handler "h" \(plugin .*flaky\.so\): init failed: "result" must be "retry" or '
             r'"fail", not "maybe"'),
        ]
        for handler, want in cases:
            with self.subTest(want):
                status, text = check(base_config(handlers={"h": handler,
                                                           "out": {"plugin": "file",
                                                                   "config": {"path": "o"}}},
                                                 routes=[]))
                self.assertEqual(status, 1)
                self.assertRegex(text.replace('\\"', '"'), want)

    def test_emit_cycle_is_refused(self):
        status, text = check(base_config(handlers={
            "a": {"plugin": "mail", "config": {"emit_to": "b"}},
            "b": {"plugin": fixture_plugin("flaky"), "config": {"emit_to": ["a"]}}}, routes=[]))
        self.assertEqual(status, 1)
        self.assertRegex(text, r'graphrouter\.json:\d+:\d+: handlers emit to each other in a '
                               r'cycle \(a -> b -> a\)')

    def test_plugins_export_only_their_entry_point(self):
        # hidden visibility and --no-undefined, for the bundled and the test plugins alike
        for d in (PLUGINS, os.path.dirname(fixture_plugin("flaky"))):
            for so in sorted(f for f in os.listdir(d) if f.endswith(".so")):
                out = subprocess.run(["nm", "-D", "--defined-only", os.path.join(d, so)],
                                     capture_output=True, text=True, check=True).stdout
                exported = re.findall(r" [TDBR] (\w+)", out)
                want = ["some_other_function"] if so == "no_entry.so" else ["gr_plugin_entry"]
                self.assertEqual(exported, want, so)

    def test_check_ok(self):
        status, text = check(base_config())
        self.assertEqual((status, text.strip().endswith("ok (1 handlers, 1 routes)")), (0, True))


class DeliveryTest(RouterTest):
    def test_retry_then_success(self):
        r = self.router(flaky_to_out({"fail_times": 2},
                                     retry={"initial_backoff_ms": 100, "max_backoff_ms": 200}))
        r.post(batch(item(id="x")))
        line = r.wait_jsonl(1)[0]
        self.assertEqual((line["id"], line["flaky_calls"]), ("x", 3))
        get = lambda name: r.metric(name, handler="f")
        r.wait_for(lambda: get("graphrouter_handler_handled_total") == 1)
        self.assertEqual(get("graphrouter_handler_retried_total"), 2)
        self.assertEqual(get("graphrouter_handler_failed_total"), 0)
        r.wait_log(r'handler "f" asked to retry delivery \d+ \(message, attempt 2 of 10: GR_RETRY\)')

    def test_retries_exhausted(self):
        r = self.router(flaky_to_out({"fail_times": 100, "emit_always": True},
                                     retry={"max_attempts": 3, "initial_backoff_ms": 10,
                                            "max_backoff_ms": 20}))
        r.post(batch(item()))
        r.wait_for(lambda: r.metric("graphrouter_handler_failed_total", handler="f") == 1)
        self.assertEqual(r.metric("graphrouter_handler_retried_total", handler="f"), 2)
        r.wait_log(r'handler "f": delivery \d+ \(message\) is a dead letter: gave up after 3 '
                   r'attempts: GR_RETRY \(graphrouter dlq show \d+\)')
        # events emitted by calls that did not succeed are dropped
        r.wait_idle()
        self.assertEqual(r.read_jsonl(), [])

    def test_fail_is_final(self):
        r = self.router(flaky_to_out({"fail_times": 1, "result": "fail", "emit_always": True}))
        r.post(batch(item(id="a")))
        r.wait_for(lambda: r.metric("graphrouter_handler_failed_total", handler="f") == 1)
        r.post(batch(item(id="b")))
        r.wait_jsonl(1)
        r.wait_idle()
        self.assertEqual([l["id"] for l in r.read_jsonl()], ["b"])
        self.assertEqual(r.metric("graphrouter_handler_retried_total", handler="f"), 0)
        r.wait_log(r'handler "f": delivery \d+ \(message\) is a dead letter: GR_FAIL')

    def test_misrouted_notification_fails_visibly(self):
        cfg = base_config(handlers={"mail": {"plugin": "mail", "config": {"emit_to": "out"}},
                                    "out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
                          routes=[{"name": "all", "to": "mail"}])
        r = self.router(cfg)
        r.post(batch(item(resource="communications/presences/u1")))
        r.wait_for(lambda: r.metric("graphrouter_handler_failed_total", handler="mail") == 1)
        r.wait_log(r'received a notification of resource_type "presence", which this plugin '
                   r'does not handle')
