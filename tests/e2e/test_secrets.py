"""Secrets from files and the environment, and the "user" key (privilege drop).

Every secret of the configuration may be a string, {"file": ...} or {"env": ...};
the router reads it when it loads a configuration (start, SIGHUP, --check), and
no message ever shows it. With "user", a router started as root becomes that
user once its port and store are open.
"""

import hashlib
import hmac
import http.server
import json
import os
import pwd
import signal
import threading
import unittest

from grtest import APP_ID, TENANT_A, RouterTest, base_config, batch, item

NOBODY = 65534


def write_secret(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


class SecretSourceTest(RouterTest):
    def dropped(self, r):
        return r.metric("graphrouter_items_dropped_total", reason="bad_client_state")

    def assert_accepts(self, r, secret, delivered):
        status, _, _ = r.post(batch(item(client_state=secret)))
        self.assertEqual(status, 202)
        r.wait_jsonl(delivered)

    def assert_refuses(self, r, secret, dropped):
        status, _, _ = r.post(batch(item(client_state=secret)))
        self.assertEqual(status, 202)  # Graph is not asked to send it again
        r.wait_for(lambda: self.dropped(r) >= dropped, what="%d dropped items" % dropped)

    def test_client_state_from_a_file_and_a_reload(self):
        # a relative path resolves against the working directory; echo's newline is stripped
        r = self.router(base_config(client_state={"file": "client-state.txt"}), start=False)
        write_secret(r.path("client-state.txt"), "from-a-file\n")
        r.start()
        self.assert_accepts(r, "from-a-file", 1)
        self.assert_refuses(r, "from-a-file\n", 1)
        self.assert_refuses(r, "wrong", 2)
        # a reload reads the same file again ...
        write_secret(r.path("client-state.txt"), "rotated\n")
        r.send_signal(signal.SIGHUP)
        r.wait_log(r"reloaded: generation 2 serves now")
        self.assert_refuses(r, "from-a-file", 3)
        self.assert_accepts(r, "rotated", 2)
        # ... or the new one a new configuration names
        write_secret(r.path("other.txt"), "second-file")
        r.write_config(base_config(client_state={"file": r.path("other.txt")}))
        r.send_signal(signal.SIGHUP)
        r.wait_log(r"reloaded: generation 3 serves now")
        self.assert_refuses(r, "rotated", 4)
        self.assert_accepts(r, "second-file", 3)
        # a reload whose file went missing changes nothing
        os.unlink(r.path("other.txt"))
        r.send_signal(signal.SIGHUP)
        r.wait_log(r"reload failed; generation 3 keeps serving: .*graphrouter\.json:\d+:\d+: "
                   r"cannot open .*other\.txt: No such file or directory")
        self.assert_accepts(r, "second-file", 4)
        for secret in ("from-a-file", "rotated", "second-file"):
            self.assertNotIn(secret, r.log())

    def test_client_state_from_the_environment(self):
        cfg = base_config(client_state={"env": "GR_E2E_CLIENT_STATE"},
                          subscriptions=[{"id": "listed",
                                          "client_state": {"env": "GR_E2E_LISTED_STATE"}}])
        r = self.router(cfg, start=False)
        r.start(env={"GR_E2E_CLIENT_STATE": "from-the-env", "GR_E2E_LISTED_STATE": "listed-env"})
        self.assert_accepts(r, "from-the-env", 1)
        self.assert_refuses(r, "wrong", 1)
        status, _, _ = r.post(batch(item("listed", client_state="listed-env")))
        self.assertEqual(status, 202)
        r.wait_jsonl(2)
        status, _, _ = r.post(batch(item("listed", client_state="from-the-env")))
        r.wait_for(lambda: self.dropped(r) >= 2, what="the listed subscription's own secret")
        self.assertNotIn("from-the-env", r.log())
        self.assertNotIn("listed-env", r.log())

    def test_check_reports_bad_secrets_without_showing_them(self):
        r = self.router(base_config(), start=False)
        write_secret(r.path("leaky.txt"), "do-not-show-me\n", 0o644)
        write_secret(r.path("two-lines.txt"), "do-not-show-me\nsecond\n")
        write_secret(r.path("empty.txt"), "\n")
        cases = [
            ({"file": "missing.txt"},
             r'graphrouter\.json:\d+:\d+: cannot open missing\.txt: No such file or directory'),
            ({"file": "leaky.txt"},
             r'graphrouter\.json:\d+:\d+: leaky\.txt is readable or writable by group or '
             r'others \(mode 0644\)'),
            ({"file": "two-lines.txt"},
             r'graphrouter\.json:\d+:\d+: the secret file two-lines\.txt must hold the secret '
             r'on one line'),
            ({"file": "empty.txt"}, r'graphrouter\.json:\d+:\d+: the secret file empty\.txt is '
                                    r'empty'),
            ({"env": "GR_E2E_UNSET"}, r'graphrouter\.json:\d+:\d+: the environment variable '
                                      r'GR_E2E_UNSET is not set'),
            ({"file": "a", "env": "B"}, r'"client_state" must be the secret as a string, '
                                        r'\{"file": "/path"\} or \{"env": "NAME"\}, not an object '
                                        r'with more than one key'),
            (42, r'"client_state" must be the secret as a string, .* not a number'),
            ("", r'"client_state" is empty'),
        ]
        for secret, want in cases:
            with self.subTest(want):
                r.write_config(base_config(client_state=secret))
                status, out, err = r.cli("--check")
                self.assertEqual(status, 1, out + err)
                self.assertRegex(err, want)
                self.assertNotIn("do-not-show-me", out + err)
        # a subscription's, the Graph client secret, a plugin's: each with its place
        listed = base_config(subscriptions=[{"id": "s", "client_state": {"file": "nope"}}])
        graph = base_config(graph={"app_id": APP_ID, "tenants": [
            {"id": TENANT_A, "client_secret": {"env": "GR_E2E_UNSET"}}]})
        plugin = base_config(handlers={"hook": {"plugin": "http", "config": {
            "url": "http://127.0.0.1:9/", "secret": {"file": "leaky.txt"}}}}, routes=[])
        for cfg, want in ((listed, r'subscription "s": cannot open nope'),
                          (graph, r'graph tenant "%s": the environment variable GR_E2E_UNSET '
                                  r'is not set' % TENANT_A),
                          (plugin, r'handler "hook": leaky\.txt is readable or writable')):
            with self.subTest(want):
                r.write_config(cfg)
                status, out, err = r.cli("--check")
                self.assertEqual(status, 1, out + err)
                self.assertRegex(err, r'graphrouter\.json:\d+:\d+: ' + want)
                self.assertNotIn("do-not-show-me", out + err)
        # and the good forms pass
        write_secret(r.path("graph-secret.txt"), "graph-secret\n")
        graph["graph"]["tenants"][0]["client_secret"] = {"file": "graph-secret.txt"}
        r.write_config(graph)
        status, out, err = r.cli("--check")
        self.assertEqual(status, 0, out + err)

    def test_http_plugin_signs_with_a_secret_from_a_file(self):
        got = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got.append((body, self.headers.get("X-Graphrouter-Signature")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = "http://127.0.0.1:%d/hook" % server.server_address[1]
            cfg = base_config(handlers={"hook": {"plugin": "http", "config": {
                "url": url, "secret": {"file": "hmac.txt"}}}},
                routes=[{"name": "all", "to": "hook"}])
            r = self.router(cfg, start=False)
            write_secret(r.path("hmac.txt"), "hmac-from-file\n")
            r.start()
            status, _, _ = r.post(batch(item()))
            self.assertEqual(status, 202)
            r.wait_for(lambda: got, what="the signed POST")
            body, signature = got[0]
            want = "sha256=" + hmac.new(b"hmac-from-file", body, hashlib.sha256).hexdigest()
            self.assertEqual(signature, want)
            self.assertNotIn("hmac-from-file", r.log())
        finally:
            server.shutdown()
            server.server_close()


def proc_ids(pid):
    """(uids, gids, groups) from /proc/PID/status."""
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return ([int(v) for v in fields["Uid"]], [int(v) for v in fields["Gid"]],
            [int(v) for v in fields.get("Groups", [])])


class UserTest(RouterTest):
    def test_a_user_that_does_not_exist_is_a_config_error(self):
        r = self.router(base_config(user="gr-e2e-no-such-user"), start=False)
        status, out, err = r.cli("--check")
        self.assertEqual(status, 1, out + err)
        self.assertRegex(err, r'graphrouter\.json:\d+:\d+: "user": there is no user '
                              r'"gr-e2e-no-such-user" on this system')

    def test_user_is_a_start_only_setting(self):
        me = pwd.getpwuid(os.geteuid()).pw_name
        r = self.router(base_config())
        r.write_config(base_config(user=me))
        r.send_signal(signal.SIGHUP)
        r.wait_log(r'reload failed; generation 1 keeps serving: "user" changed; graphrouter '
                   r'becomes that user once, at start, so restart graphrouter to apply it')

    def test_not_root_cannot_become_another_user(self):
        """Run as root, the router is started as nobody for this one."""
        r = self.router(base_config(user="root"), start=False)
        preexec = None
        if os.geteuid() == 0:
            os.chown(r.dir, NOBODY, NOBODY)

            def preexec():
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
        uid = NOBODY if os.geteuid() == 0 else os.geteuid()
        with self.assertRaises(AssertionError) as failed:
            r.start(preexec=preexec)
        self.assertRegex(str(failed.exception),
                         r'cannot start: graphrouter runs as uid %d, not as root, so it cannot '
                         r'become user \\?"root\\?"' % uid)
        # being that user already is fine
        r.write_config(base_config(user=pwd.getpwuid(uid).pw_name))
        r.start(preexec=preexec)
        self.assertEqual(r.post(batch(item()))[0], 202)
        r.wait_jsonl(1)
        self.assertNotIn("running as root", r.log())

    @unittest.skipIf(os.geteuid() != 0, "needs root (CI runs the suite as root)")
    def test_root_drops_to_the_user_and_keeps_working(self):
        r = self.router(base_config(user="nobody"), start=False)
        # what the user must own: the working directory with the store's, and the
        # files handlers write (a reload opens them again as the user)
        os.makedirs(r.path("var"))
        with open(r.path("out.jsonl"), "w"):
            pass
        for p in (r.dir, r.path("var"), r.path("out.jsonl")):
            os.chown(p, NOBODY, NOBODY)
        r.start()
        r.wait_log(r"running as user nobody \(uid 65534, gid 65534\)")
        self.assertNotIn("running as root", r.log())
        uids, gids, groups = proc_ids(r.proc.pid)
        self.assertEqual(uids, [NOBODY] * 4)
        self.assertEqual(gids, [NOBODY] * 4)
        self.assertNotIn(0, groups)
        self.assertEqual(r.post(batch(item()))[0], 202)
        r.wait_jsonl(1)
        self.assertEqual(os.stat(r.path("var/graphrouter.db")).st_uid, NOBODY)
        # a reload runs as the user: configuration, plugins and their files are read again
        r.send_signal(signal.SIGHUP)
        r.wait_log(r"reloaded: generation 2 serves now")
        self.assertEqual(r.post(batch(item(resource="Users/u1/Messages/m2")))[0], 202)
        r.wait_jsonl(2)
        # the store commands, run as root beside it, still work
        status, out, err = r.cli("status")
        self.assertEqual(status, 0, out + err)

    def test_root_without_user_warns(self):
        r = self.router(base_config())
        if os.geteuid() != 0:
            self.assertNotIn("running as root", r.log())
            return
        r.wait_log(r'level=warn msg="running as root: set "user" in ')
        self.assertEqual(len([l for l in r.log().splitlines() if "running as root" in l]), 1)

    @unittest.skipIf(os.geteuid() != 0, "needs root")
    def test_a_store_the_user_cannot_use_is_refused_at_start(self):
        r = self.router(base_config(user="nobody"), start=False)  # var/ would be root's
        with self.assertRaises(AssertionError) as failed:
            r.start()
        self.assertRegex(str(failed.exception),
                         r'cannot start: user \\?"nobody\\?" cannot use the store '
                         r'var/graphrouter\.db \(its directory var must be the user')


if __name__ == "__main__":
    unittest.main()
