"""The command line and signals: --version, -h, usage errors, --check, SIGTERM
and SIGINT finish the work in hand and exit 0, SIGUSR1 reopens files."""

import os
import signal
import subprocess

from grtest import BINARY, RouterTest, Router, base_config, batch, fixture_plugin, item


def run(*args):
    p = subprocess.run([BINARY, *args], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


class CliTest(RouterTest):
    def test_version_help_usage(self):
        status, out, _ = run("--version")
        self.assertEqual(status, 0)
        self.assertRegex(out, r"^graphrouter \d+\.\d+\.\d+ \(plugin ABI 1\.3\)\n$")
        status, out, _ = run("-h")
        self.assertEqual(status, 0)
        self.assertIn("usage: graphrouter -c FILE [--check]", out)
        self.assertEqual(run()[0], 2)
        self.assertEqual(run("-c")[0], 2)
        self.assertEqual(run("--bogus")[0], 2)

    def test_check_reports_position(self):
        r = Router('{\n  "handlers": {},\n  "routes": [{"name": "x", "to": ["nope"]}]\n}')
        try:
            status, out, err = run("-c", r.config_path, "--check")
            self.assertEqual(status, 1)
            self.assertEqual(err.strip(), '%s:3:35: route "x" sends to handler "nope", which is '
                                          'not defined in "handlers"' % r.config_path)
        finally:
            r.close()
        status, _, err = run("-c", "/nonexistent.json", "--check")
        self.assertEqual((status, err.strip()),
                         (1, "/nonexistent.json: cannot open: No such file or directory"))

    def test_start_failures_exit_1(self):
        r = Router(base_config(listen={"address": "192.0.2.1", "port": 0}))
        try:
            p = subprocess.run([BINARY, "-c", r.config_path], cwd=r.dir, capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(p.returncode, 1)
            self.assertIn("cannot listen on 192.0.2.1:0", p.stderr)
        finally:
            r.close()

    def test_sigterm_and_sigint_finish_held_work_and_keep_the_rest(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(sig=sig):
                cfg = base_config(workers=1, handlers={
                    "slow": {"plugin": fixture_plugin("flaky"),
                             "config": {"sleep_ms": 300, "emit_to": "out"}},
                    "out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
                    routes=[{"name": "r", "to": "slow"}])
                r = self.router(cfg)
                self.assertEqual(r.post(batch(*[item(id=str(i)) for i in range(5)]))[0], 202)
                r.wait_log(r"call 1 -> ok")
                self.assertEqual(r.stop(sig), 0)
                self.assertIn("stopped", r.log())
                # the delivery in progress finished; the rest waits in the store
                before = [l["id"] for l in r.read_jsonl()]
                self.assertLess(len(before), 5)
                self.assertNotIn("running when graphrouter stopped", r.log())
                r.start()
                r.wait_idle()
                ids = [l["id"] for l in r.read_jsonl()]
                self.assertEqual(sorted(ids), list("01234"))  # each exactly once
                self.assertNotIn("running when graphrouter stopped", r.log())

    def test_sigusr1_reopens_files(self):
        r = self.router(base_config())
        r.post(batch(item(id="one")))
        r.wait_jsonl(1)
        os.rename(r.path("out.jsonl"), r.path("out.jsonl.1"))
        r.send_signal(signal.SIGUSR1)
        r.wait_log(r"SIGUSR1: handlers reopen their files")
        r.post(batch(item(id="two")))
        self.assertEqual([l["id"] for l in r.wait_jsonl(1)], ["two"])
        self.assertEqual([l["id"] for l in r.read_jsonl("out.jsonl.1")], ["one"])

    def test_stuck_handler_at_shutdown_exits_1(self):
        cfg = base_config(shutdown_timeout_s=1, workers=1, handlers={
            "stuck": {"plugin": fixture_plugin("flaky"), "config": {"sleep_ms": 30000}}},
            routes=[{"name": "r", "to": "stuck"}])
        r = self.router(cfg)
        r.post(batch(item(), item()))
        r.wait_for(lambda: r.metric("graphrouter_deliveries_running", handler="stuck") >= 1)
        self.assertEqual(r.stop(timeout=15), 1)
        log = r.text()
        self.assertIn("did not finish by the shutdown deadline: a handler is stuck", log)
        self.assertIn("exiting with a handler still running", log)
