"""Output plugins through the real binary.

http: POSTs to a local server whose answers each test scripts (2xx, 5xx then
2xx, 429 and 503 with Retry-After, 400, nothing listening, no answer in time,
HTTPS with an untrusted and a trusted self-signed certificate), the HMAC
signature checked with Python's hmac, configurations refused.

exec: shell scripts written for each test (stdin, environment and working
directory captured, a child that does not read its input, a retry exit status,
a failure explained by stderr, death by a signal, a timeout that kills the
process group, a command missing at start or removed later)."""

import hashlib
import hmac
import http.server
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time

from grtest import BINARY, SECRET, TIMEOUT, Router, RouterTest, base_config, batch, item

FAST_RETRY = {"max_attempts": 3, "initial_backoff_ms": 10, "max_backoff_ms": 20}


def check(cfg):
    """--check on a configuration; returns (exit status, output with quotes unescaped)."""
    r = Router(cfg)
    try:
        status, out, err = r.cli("--check")
        return status, (out + err).replace('\\"', '"')
    finally:
        r.close()


def dead_letters(r, handler):
    """The dead letters of `handler`: [(id, full last error)], read with dlq list and show."""
    status, out, err = r.cli("dlq", "list")
    assert status == 0, (status, out, err)
    ids = [line.split()[0] for line in out.splitlines()[1:] if line.split()[1:2] == [handler]]
    found = []
    for i in ids:
        status, out, err = r.cli("dlq", "show", i)
        assert status == 0, (status, out, err)
        found.append((i, json.loads(out)["last_error"]))
    return found


def wait_dead(r, handler, n=1):
    r.wait_for(lambda: r.metric("graphrouter_dead_letters", handler=handler) == n,
               what="%d dead letters of %s" % (n, handler))


def self_signed(directory):
    """A certificate for 127.0.0.1 and its key, made by the openssl command."""
    cert, key = os.path.join(directory, "tls.pem"), os.path.join(directory, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


class Receiver:
    """An HTTP(S) server on 127.0.0.1 that records every POST and answers the
    next scripted (status, headers), or 200 once the script is used up."""

    def __init__(self, tls=None):
        self.requests = []  # {"t", "headers" (lower-case names), "body", "client"}
        self.script = []
        self.lock = threading.Lock()
        recv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse shows

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with recv.lock:
                    recv.requests.append({"t": time.monotonic(), "body": body,
                                          "client": self.client_address,
                                          "headers": {k.lower(): v
                                                      for k, v in self.headers.items()},
                                          "header_list": list(self.headers.items())})
                    status, headers = recv.script.pop(0) if recv.script else (200, {})
                reply = b"{}"
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # TLS refused by the client
        scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = "%s://127.0.0.1:%d/hook" % (scheme, self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, *responses):
        """Script the next answers: a status, or (status, {header: value})."""
        with self.lock:
            self.script += [r if isinstance(r, tuple) else (r, {}) for r in responses]

    def got(self):
        with self.lock:
            return list(self.requests)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def http_config(url, retry=None, **config):
    hook = {"plugin": "http", "config": dict(config, url=url)}
    if retry:
        hook["retry"] = retry
    return base_config(handlers={"hook": hook}, routes=[{"name": "all", "to": ["hook"]}])


class HttpOutputTest(RouterTest):
    def setUp(self):
        super().setUp()
        self.server = Receiver()

    def tearDown(self):
        self.server.close()
        super().tearDown()

    def wait_requests(self, r, n, timeout=TIMEOUT):
        r.wait_for(lambda: len(self.server.got()) >= n, timeout,
                   "%d requests (have %d)" % (n, len(self.server.got())))
        return self.server.got()

    def plugin_metric(self, r, outcome):
        return r.metric("graphrouter_plugin_http_requests_%s_total" % outcome, handler="hook")

    def test_delivered_signed_with_headers(self):
        secret = "s3cret-hmac-key"
        r = self.router(http_config(self.server.url, secret=secret,
                                    headers={"X-Api-Key": "key-value-1",
                                             "Authorization": "Bearer token-value-2",
                                             "X-Empty": ""}))
        r.post(batch(item(id="n1")))
        req = self.wait_requests(r, 1)[0]
        body, headers = req["body"], req["headers"]
        note = json.loads(body)
        self.assertEqual((note["id"], note["resource_type"], note["change_type"]),
                         ("n1", "message", "created"))
        self.assertEqual(headers["content-type"], "application/json")
        self.assertRegex(headers["user-agent"], r"^graphrouter/\d+\.\d+\.\d+$")
        self.assertEqual(headers["x-api-key"], "key-value-1")
        self.assertEqual(headers["authorization"], "Bearer token-value-2")
        self.assertEqual(headers["x-empty"], "")
        self.assertNotIn("expect", headers)
        names = [k.lower() for k, _ in req["header_list"]]
        for once in ("content-type", "user-agent", "x-graphrouter-signature"):
            self.assertEqual(names.count(once), 1, once)
        # the signature a receiver checks: HMAC-SHA256 of the raw body, lower-case hex
        sig = headers["x-graphrouter-signature"]
        self.assertRegex(sig, r"^sha256=[0-9a-f]{64}$")
        want = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        self.assertTrue(hmac.compare_digest(sig[len("sha256="):], want))
        wrong = hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()
        self.assertFalse(hmac.compare_digest(sig[len("sha256="):], wrong))
        tampered = hmac.new(secret.encode(), body.replace(b"n1", b"n2"), hashlib.sha256)
        self.assertFalse(hmac.compare_digest(sig[len("sha256="):], tampered.hexdigest()))
        # a second delivery reuses the pooled connection
        r.post(batch(item(id="n2")))
        reqs = self.wait_requests(r, 2)
        r.wait_idle()
        self.assertEqual([json.loads(q["body"])["id"] for q in reqs], ["n1", "n2"])
        self.assertEqual(reqs[0]["client"], reqs[1]["client"])
        self.assertEqual(len(self.server.got()), 2)  # each delivered once
        r.wait_for(lambda: self.plugin_metric(r, "ok") == 2)
        self.assertEqual(self.plugin_metric(r, "retry") + self.plugin_metric(r, "fail"), 0)
        for never_logged in (secret, "key-value-1", "token-value-2"):
            self.assertNotIn(never_logged, r.log())

    def test_server_error_then_success(self):
        self.server.answer(500)
        r = self.router(http_config(self.server.url, retry=FAST_RETRY))
        r.post(batch(item(id="e1")))
        reqs = self.wait_requests(r, 2)
        r.wait_idle()
        self.assertEqual(len(self.server.got()), 2)
        self.assertEqual(reqs[0]["body"], reqs[1]["body"])
        self.assertEqual(r.metric("graphrouter_handler_handled_total", handler="hook"), 1)
        self.assertEqual(r.metric("graphrouter_handler_retried_total", handler="hook"), 1)
        self.assertEqual((self.plugin_metric(r, "retry"), self.plugin_metric(r, "ok")), (1, 1))
        r.wait_log(r'handler "hook" asked to retry delivery \d+ \(message, attempt 1 of 3: '
                   r'HTTP 500\)')

    def test_retry_after_is_honoured(self):
        # seconds, then an HTTP-date; the router's own backoff is 10-20 ms
        self.server.answer((429, {"Retry-After": "2"}))
        r = self.router(http_config(self.server.url, retry=FAST_RETRY))
        r.post(batch(item(id="ra1")))
        reqs = self.wait_requests(r, 2)
        self.assertGreaterEqual(reqs[1]["t"] - reqs[0]["t"], 1.9)
        r.wait_log(r"attempt 1 of 3: HTTP 429\); next try in 2000 ms")
        r.wait_idle()
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3))
        self.server.answer((503, {"Retry-After": date}))
        r.post(batch(item(id="ra2")))
        reqs = self.wait_requests(r, 4)
        self.assertGreaterEqual(reqs[3]["t"] - reqs[2]["t"], 1.9)  # 2-3 s: whole seconds
        r.wait_idle()
        self.assertEqual([json.loads(q["body"])["id"] for q in reqs], ["ra1"] * 2 + ["ra2"] * 2)

    def test_client_error_is_a_dead_letter(self):
        self.server.answer(400)
        r = self.router(http_config(self.server.url, retry=FAST_RETRY))
        r.post(batch(item(id="bad")))
        wait_dead(r, "hook")
        r.wait_idle()
        self.assertEqual(len(self.server.got()), 1)  # never retried
        self.assertEqual(dead_letters(r, "hook")[0][1], "HTTP 400")
        status, out, _ = r.cli("dlq", "list")
        self.assertRegex(out, r"(?m)^\d+ +hook +1 +\S+ +notification Users/u1/Messages/m1 +"
                              r"HTTP 400$")
        self.assertEqual(self.plugin_metric(r, "fail"), 1)
        self.assertEqual(r.metric("graphrouter_handler_retried_total", handler="hook"), 0)

    def test_connection_refused_until_max_attempts(self):
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        r = self.router(http_config("http://127.0.0.1:%d/hook" % port, retry=FAST_RETRY))
        r.post(batch(item(id="nobody")))
        wait_dead(r, "hook")
        [(_, error)] = dead_letters(r, "hook")
        self.assertRegex(error, r"^gave up after 3 attempts: network: .*(refused|connect)")
        self.assertEqual(self.plugin_metric(r, "retry"), 3)
        self.assertEqual(r.metric("graphrouter_handler_retried_total", handler="hook"), 2)

    def test_timeout_is_retried(self):
        with socket.socket() as s:  # accepts connections (the backlog), never answers
            s.bind(("127.0.0.1", 0))
            s.listen(8)
            r = self.router(http_config("http://127.0.0.1:%d/hook" % s.getsockname()[1],
                                        timeout_ms=300, retry=dict(FAST_RETRY, max_attempts=2)))
            r.post(batch(item(id="silent")))
            wait_dead(r, "hook")
            [(_, error)] = dead_letters(r, "hook")
            self.assertRegex(error, r"^gave up after 2 attempts: network: .*[Tt]imed out")
            self.assertEqual(self.plugin_metric(r, "retry"), 2)

    def test_https_needs_a_trusted_certificate(self):
        tls = self_signed(self._scratch)
        server = Receiver(tls=tls)
        try:
            retry = {"max_attempts": 2, "initial_backoff_ms": 10, "max_backoff_ms": 20}
            cfg = base_config(handlers={
                "untrusted": {"plugin": "http", "config": {"url": server.url}, "retry": retry},
                "trusted": {"plugin": "http", "config": {"url": server.url, "ca_file": tls[0]},
                            "retry": retry}}, routes=[{"name": "all",
                                                        "to": ["untrusted", "trusted"]}])
            r = self.router(cfg)
            r.post(batch(item(id="tls")))
            wait_dead(r, "untrusted")
            r.wait_idle()
            got = server.got()
            self.assertEqual(len(got), 1)  # only the handler that trusts the CA got through
            self.assertEqual(json.loads(got[0]["body"])["id"], "tls")
            [(_, error)] = dead_letters(r, "untrusted")
            self.assertRegex(error, r"network: SSL certificate problem: self.signed certificate")
            self.assertEqual(r.metric("graphrouter_handler_handled_total", handler="trusted"), 1)
        finally:
            server.close()

    def test_bad_configs_are_refused(self):
        cases = [
            ({"url": "ftp://127.0.0.1/x"}, r'"url" must start with http:// or https://'),
            ({"url": "not a url"}, r'"url" is not a valid URL'),
            ({"url": "http://h/", "headers": {"Bad:Name": "x"}},
             r'"headers": "Bad:Name" is not a valid header name'),
            ({"url": "http://h/", "headers": {"X-Split": "a\r\nInjected: 1"}},
             r'"headers": the value of "X-Split" must be a string without CR, LF'),
            ({"url": "http://h/", "headers": {"content-type": "text/plain"}},
             r'"headers": "content-type" is set by the plugin itself'),
            ({"url": "http://h/", "headers": ["X-A: b"]}, r'"headers" must be an object'),
            ({"url": "http://h/", "secret": ""}, r'"secret" is empty'),
            ({"url": "http://h/", "timeout_ms": 0}, r'"timeout_ms" must be between 1 and'),
            ({"url": "https://h/", "ca_file": "/nonexistent/ca.pem"},
             r'"ca_file": cannot read /nonexistent/ca\.pem: No such file or directory'),
            ({"url": "http://h/", "verify": False}, r'unknown key "verify"'),
        ]
        for config, want in cases:
            with self.subTest(want):
                status, text = check(base_config(handlers={"hook": {"plugin": "http",
                                                                    "config": config}},
                                                 routes=[]))
                self.assertEqual(status, 1, text)
                self.assertRegex(text, r'graphrouter\.json:\d+:\d+: .*handler "hook"')
                self.assertRegex(text, want)
                self.assertNotIn("Injected", text)  # a header value is never echoed


def script(directory, name, body):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return path


def exec_config(command, retry=None, also_file=False, **config):
    run = {"plugin": "exec", "config": dict(config, command=command)}
    if retry:
        run["retry"] = retry
    handlers = {"run": run}
    if also_file:
        handlers["out"] = {"plugin": "file", "config": {"path": "out.jsonl"}}
    return base_config(handlers=handlers,
                       routes=[{"name": "all", "to": sorted(handlers)}])


class ExecOutputTest(RouterTest):
    def setUp(self):
        super().setUp()
        self.dir = os.path.join(self._scratch, "exec")
        os.mkdir(self.dir)

    def file(self, name):
        return os.path.join(self.dir, name)

    def wait_file(self, r, name):
        r.wait_for(lambda: os.path.exists(self.file(name)), what=name)

    def plugin_metric(self, r, outcome):
        return r.metric("graphrouter_plugin_exec_runs_%s_total" % outcome, handler="run")

    def test_stdin_environment_and_cwd(self):
        # /proc/$$/environ: the environment the shell was started with, before
        # the shell adds anything of its own (dash exports PWD)
        cmd = script(self.dir, "capture.sh",
                     'cat > "$DIR/stdin.$1"\n'
                     'tr "\\0" "\\n" < /proc/$$/environ > "$DIR/env.$1"\n'
                     'pwd > "$DIR/cwd.$1"\n'
                     # listed by another shell: dash redirects in itself
                     'sh -c \'ls -l /proc/$PPID/fd > "$0"\' "$DIR/fds.$1"\n'
                     'echo "to /dev/null"\n'
                     'touch "$DIR/done.$1"\n')
        r = self.router(exec_config([cmd, "x"], also_file=True, cwd=self.dir,
                                    env={"DIR": self.dir, "GREETING": "hello world"}))
        pipes = self.router_pipes(r)
        r.post(batch(item(id="s1")))
        self.wait_file(r, "done.x")
        r.wait_idle()
        with open(self.file("stdin.x"), "rb") as f:
            stdin = f.read()
        # exactly the message's JSON: what the file plugin wrote, without its newline
        with open(r.path("out.jsonl"), "rb") as f:
            self.assertEqual(stdin + b"\n", f.read())
        self.assertEqual(json.loads(stdin)["id"], "s1")
        with open(self.file("env.x")) as f:
            env = sorted(line for line in f.read().splitlines() if line)
        self.assertEqual(env, ["DIR=" + self.dir, "GREETING=hello world",
                               "PATH=/usr/local/bin:/usr/bin:/bin"])
        with open(self.file("cwd.x")) as f:
            self.assertEqual(f.read().strip(), os.path.realpath(self.dir))
        # descriptors: stdin and stderr pipes, stdout /dev/null, and nothing of
        # the router's (dash itself keeps its script open)
        with open(self.file("fds.x")) as f:
            fds = dict(re.findall(r" (\d+) -> (.*)$", f.read(), re.M))
        self.assertRegex(fds.pop("0"), r"^pipe:")
        self.assertEqual(fds.pop("1"), "/dev/null")
        self.assertRegex(fds.pop("2"), r"^pipe:")
        self.assertEqual(set(fds.values()) - {cmd}, set())
        self.assertEqual(self.plugin_metric(r, "ok"), 1)
        self.assertNotIn("to /dev/null", r.log())
        self.assertEqual(self.router_pipes(r), pipes)  # the plugin closed its pipes

    @staticmethod
    def router_pipes(r):
        d = "/proc/%d/fd" % r.proc.pid
        targets = []
        for fd in os.listdir(d):
            try:
                targets.append(os.readlink(os.path.join(d, fd)))
            except FileNotFoundError:
                pass
        return sum(t.startswith("pipe:") for t in targets)

    def test_signals_are_reset(self):
        # the router blocks SIGTERM, SIGHUP, SIGINT and SIGUSR1 in its threads and
        # ignores SIGPIPE and SIGXFSZ: none of that reaches the command
        r = self.router(exec_config(["/bin/sh", "-c", 'exec grep -E "^Sig(Blk|Ign)" '
                                     '/proc/self/status > "$DIR/sig"'], env={"DIR": self.dir}))
        r.post(batch(item(id="sig")))
        r.wait_for(lambda: self.plugin_metric(r, "ok") == 1)
        with open(self.file("sig")) as f:
            masks = {k: int(v, 16) for k, v in re.findall(r"^(\w+):\s*([0-9a-f]+)$", f.read(),
                                                          re.M)}
        self.assertEqual(masks["SigBlk"], 0)
        for sig in (1, 2, 10, 13, 15, 25):  # HUP INT USR1 PIPE TERM XFSZ
            self.assertFalse(masks["SigIgn"] & (1 << (sig - 1)), sig)

    def test_child_that_does_not_read_stdin(self):
        # a message far larger than a pipe's buffer, and a command that ignores it
        cmd = script(self.dir, "ignore.sh", "exit 0\n")
        r = self.router(exec_config([cmd]))
        r.post(batch(item(id="big", resourceData={"id": "m1", "blob": "x" * 300000})))
        r.wait_for(lambda: self.plugin_metric(r, "ok") == 1)
        r.wait_idle()
        self.assertEqual(r.metric("graphrouter_handler_failed_total", handler="run"), 0)

    def test_retry_exit_status_then_success(self):
        cmd = script(self.dir, "flaky.sh",
                     'if [ ! -e "$DIR/state" ]; then\n'
                     '  touch "$DIR/state"; echo "busy, try later" >&2; exit 75\n'
                     'fi\n'
                     'cat > "$DIR/got"\n')
        r = self.router(exec_config([cmd], env={"DIR": self.dir}, retry=FAST_RETRY))
        r.post(batch(item(id="r1")))
        r.wait_for(lambda: self.plugin_metric(r, "ok") == 1)
        r.wait_idle()
        with open(self.file("got"), "rb") as f:
            self.assertEqual(json.loads(f.read())["id"], "r1")
        self.assertEqual(self.plugin_metric(r, "retry"), 1)
        r.wait_log(r'handler "run" asked to retry delivery \d+ \(message, attempt 1 of 3: '
                   r'exit status 75: busy, try later\)')

    def test_a_retry_gets_the_same_bytes(self):
        """The first attempt gets the notification built while routing (kept
        in memory); a retry gets it rebuilt from the stored item: the same
        bytes, for an item with escapes, non-ASCII text, numbers and nesting."""
        cmd = script(self.dir, "twice.sh",
                     'n=$(cat "$DIR/n" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$DIR/n"\n'
                     'cat > "$DIR/got.$n"\n'
                     '[ $n -ge 2 ] || exit 75\n')
        r = self.router(exec_config([cmd], env={"DIR": self.dir}, retry=FAST_RETRY))
        body = ('{"value": [{"subscriptionId": "sub-1", "clientState": "%s", '
                '"changeType": "updated", "resource": "Users/u1/Messages/m\\u00e9", '
                '"resourceData": {"id": "m\u00e9", "n": [1, -2.5e3, true, null], '
                '"q": "say \\"hi\\"\\n"}, "tenantId": "t"}]}' % SECRET)
        self.assertEqual(r.post(body)[0], 202)
        r.wait_for(lambda: self.plugin_metric(r, "ok") == 1)
        with open(self.file("got.1"), "rb") as f:
            first = f.read()
        with open(self.file("got.2"), "rb") as f:
            second = f.read()
        self.assertEqual(first, second)
        message = json.loads(first)
        self.assertEqual(message["resource"], "Users/u1/Messages/m\u00e9")
        self.assertNotIn("clientState", first.decode())

    def test_failure_is_a_dead_letter_explained_by_stderr(self):
        cmd = script(self.dir, "fail.sh",
                     "printf '\\n  bad input:\\001 %0250d  \\nsecond line\\n' 7 >&2\n"
                     "exit 2\n")
        gone = script(self.dir, "gone.sh", "exit 0\n")
        killed = script(self.dir, "killed.sh", "echo dying >&2\nkill -TERM $$\n")
        cfg = exec_config([cmd], retry=FAST_RETRY)
        cfg["handlers"]["vanished"] = {"plugin": "exec", "config": {"command": [gone]}}
        cfg["handlers"]["killed"] = {"plugin": "exec", "config": {"command": [killed]}}
        cfg["routes"][0]["to"] = ["run", "vanished", "killed"]
        r = self.router(cfg)
        os.unlink(gone)  # removed after the start: it cannot be run any more
        r.post(batch(item(id="f1")))
        wait_dead(r, "run")
        wait_dead(r, "vanished")
        wait_dead(r, "killed")
        [(_, error)] = dead_letters(r, "run")
        # the first non-empty line, trimmed, control bytes replaced, 200 bytes at most
        line = "bad input:? " + "0" * 249 + "7"
        self.assertEqual(error, "exit status 2: " + line[:200])
        [(_, error)] = dead_letters(r, "vanished")
        self.assertEqual(error, "cannot run %s: No such file or directory" % gone)
        [(_, error)] = dead_letters(r, "killed")
        self.assertEqual(error, "killed by signal 15 (SIGTERM): dying")
        self.assertEqual(r.metric("graphrouter_handler_retried_total", handler="run"), 0)
        self.assertEqual(self.plugin_metric(r, "fail"), 1)

    def test_timeout_kills_the_group_and_retries(self):
        cmd = script(self.dir, "slow.sh",
                     'if [ ! -e "$DIR/state" ]; then\n'
                     '  touch "$DIR/state"\n'
                     '  sleep 30 &\n'
                     '  echo $! > "$DIR/grandchild"\n'
                     '  sleep 30\n'
                     'fi\n'
                     'touch "$DIR/done"\n')
        r = self.router(exec_config([cmd], env={"DIR": self.dir}, timeout_ms=500,
                                    retry=FAST_RETRY))
        t0 = time.monotonic()
        r.post(batch(item(id="t1")))
        self.wait_file(r, "done")
        r.wait_idle()
        self.assertLess(time.monotonic() - t0, 10)
        r.wait_log(r"attempt 1 of 3: timed out after 500 ms\)")
        self.assertEqual(r.metric("graphrouter_plugin_exec_timeouts_total", handler="run"), 1)
        self.assertEqual((self.plugin_metric(r, "retry"), self.plugin_metric(r, "ok")), (1, 1))
        # what the command started in its process group was killed too
        with open(self.file("grandchild")) as f:
            pid = int(f.read())

        def gone():
            try:
                with open("/proc/%d/stat" % pid) as f:
                    return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # not yet reaped
            except FileNotFoundError:
                return True
        r.wait_for(gone, 5, "the grandchild to be killed")

    def test_bad_configs_are_refused(self):
        sh = script(self.dir, "ok.sh", "exit 0\n")
        plain = os.path.join(self.dir, "plain.txt")
        with open(plain, "w") as f:
            f.write("not a program\n")
        cases = [
            ({"command": ["/nonexistent/command", "arg"]},
             r'init failed: "command": cannot run /nonexistent/command: No such file or '
             r'directory'),
            ({"command": [plain]}, r'"command": cannot run .*plain\.txt: Permission denied '
                                   r'\(not executable\)'),
            ({"command": ["ok.sh"]}, r'"command": "ok\.sh" is not an absolute path'),
            ({"command": sh}, r'"command" must be a non-empty list of strings'),
            ({"command": []}, r'"command" must be a non-empty list of strings'),
            ({"command": [sh], "retry_exit_codes": [0]},
             r'"retry_exit_codes"\[0\] must be an integer from 1 to 255'),
            ({"command": [sh], "env": {"BAD=NAME": "x"}},
             r'"env": "BAD=NAME" is not a valid variable name'),
            ({"command": [sh], "cwd": "/nonexistent/dir"},
             r'"cwd": cannot enter /nonexistent/dir: No such file or directory'),
            ({"command": [sh], "shell": True}, r'unknown key "shell"'),
        ]
        for config, want in cases:
            with self.subTest(want):
                status, text = check(base_config(handlers={"run": {"plugin": "exec",
                                                                   "config": config}},
                                                 routes=[]))
                self.assertEqual(status, 1, text)
                self.assertRegex(text, r'graphrouter\.json:\d+:\d+: .*handler "run"')
                self.assertRegex(text, want)
        # a start is refused the same way
        r = Router(exec_config(["/nonexistent/command"]))
        try:
            p = subprocess.run([BINARY, "-c", r.config_path], cwd=r.dir, capture_output=True,
                               text=True, timeout=60)
        finally:
            r.close()
        self.assertEqual(p.returncode, 1)
        self.assertIn('"command": cannot run /nonexistent/command: No such file or directory',
                      p.stderr.replace('\\"', '"'))
        self.assertEqual(check(exec_config([sh]))[0], 0)
