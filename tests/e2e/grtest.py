"""Harness for graphrouter's end-to-end tests.

Each test starts the real build/graphrouter binary in a scratch directory, on
127.0.0.1 with port 0 (the port it binds is read from its start-up log line),
and talks HTTP to it with the standard library. Nothing here imitates the
router: the tests observe its HTTP answers, its log, its /metrics and what its
real plugins write.

Environment (set by ctest): GR_BUILD_DIR, GR_SOURCE_DIR.
"""

import copy
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

BUILD = os.environ.get("GR_BUILD_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
SOURCE = os.environ.get("GR_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY = os.path.join(BUILD, "graphrouter")
SIMULATE = os.path.join(BUILD, "graphrouter-simulate")
PLUGINS = os.path.join(BUILD, "plugins")
TEST_PLUGINS = os.path.join(BUILD, "test-plugins")
VECTORS = os.path.join(SOURCE, "tests", "vectors")

# Generous, because the suite also runs under AddressSanitizer and
# ThreadSanitizer on 2 cores.
TIMEOUT = 20.0

SECRET = "e2e-fallback-secret"


def let_signals_kill():
    """Environment for a router whose plugin crashes on purpose: the sanitizer
    runtimes (AddressSanitizer, ThreadSanitizer) must let SIGSEGV kill it."""
    return {name: os.environ.get(name, "") + ":handle_segv=0"
            for name in ("ASAN_OPTIONS", "TSAN_OPTIONS")}


def base_config(**overrides):
    """A small valid configuration: every item goes to handler "out" (file out.jsonl)."""
    cfg = {
        "listen": {"address": "127.0.0.1", "port": 0, "threads": 2},
        "client_state": SECRET,
        "plugin_dir": PLUGINS,
        "workers": 2,
        "log_level": "debug",
        "shutdown_timeout_s": 20,
        "handlers": {"out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
        "routes": [{"name": "all", "match": {}, "to": ["out"]}],
    }
    cfg.update(copy.deepcopy(overrides))
    return cfg


APP_ID = "4d6c7a1e-5f3b-4c2a-9e8d-7b6a5c4d3e2f"  # the tests' application id
TENANT_A = "aaaabbbb-0000-cccc-1111-dddd2222eeee"
TENANT_B = "bbbbcccc-1111-dddd-2222-eeee3333ffff"


def simulate(*args, check=True):
    """Run graphrouter-simulate; returns its stdout (JSON is parsed)."""
    p = subprocess.run([SIMULATE, *args], capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError("graphrouter-simulate %s failed (%d): %s%s"
                             % (" ".join(args), p.returncode, p.stdout, p.stderr))
    out = p.stdout.strip()
    return json.loads(out) if out.startswith("{") else out


class Keys:
    """Fresh keys from graphrouter-simulate: an encryption key pair and a
    token-signing key with its JWKS."""

    def __init__(self, parent, name="keys", cert_id="test-cert"):
        self.dir = os.path.join(parent, name)
        self.cert_id = cert_id
        simulate("keys", "--out", self.dir, "--cert-id", cert_id)
        with open(os.path.join(self.dir, "kid")) as f:
            self.kid = f.read().strip()
        self.jwks = os.path.join(self.dir, "jwks.json")
        self.key = os.path.join(self.dir, "encryption-key.pem")
        self.cert = os.path.join(self.dir, "encryption-cert.pem")

    def decryption_key(self, cert_id=None, certificate=True):
        k = {"certificate_id": cert_id or self.cert_id, "private_key_file": self.key}
        if certificate:
            k["certificate_file"] = self.cert
        return k

    def notify_args(self, *extra):
        """Arguments for a rich `graphrouter-simulate notify` with these keys."""
        return ["notify", "--rich", "--keys", self.dir, "--cert-id", self.cert_id,
                "--app-id", APP_ID, "--client-state", SECRET, *extra]


def rich_config(keys, **overrides):
    """base_config() that accepts rich notifications encrypted and signed with `keys`."""
    cfg = base_config(validation_tokens={"app_ids": [APP_ID], "jwks_file": keys.jwks},
                      decryption_keys=[keys.decryption_key()])
    cfg.update(copy.deepcopy(overrides))
    return cfg


def fixture_plugin(name):
    """Path of a plugin built from tests/plugins/."""
    return os.path.join(TEST_PLUGINS, name + ".so")


def item(subscription="sub-1", client_state=SECRET, **fields):
    """One changeNotification; keyword arguments add or override members."""
    it = {
        "subscriptionId": subscription,
        "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
        "changeType": "created",
        "resource": "Users/u1/Messages/m1",
        "tenantId": "tenant-1",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": "m1"},
    }
    if client_state is not None:
        it["clientState"] = client_state
    it.update(fields)
    return it


def batch(*items):
    return {"value": list(items)}


_METRIC = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, frozenset(labels.items())): value}"""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC.match(line)
        if not m:
            raise AssertionError("malformed metrics line: %r" % line)
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


class Router:
    """One graphrouter process in its own scratch directory."""

    def __init__(self, config, name="graphrouter.json"):
        self.dir = tempfile.mkdtemp(prefix="gr-e2e-")
        self.config_path = os.path.join(self.dir, name)
        self.write_config(config)
        self.proc = None
        self.port = None
        self._lines = []
        self._lock = threading.Lock()
        self._reader = None

    # -- files -------------------------------------------------------------
    def path(self, rel):
        return os.path.join(self.dir, rel)

    def write_config(self, config):
        text = config if isinstance(config, str) else json.dumps(config, indent=2)
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)

    def read_jsonl(self, rel="out.jsonl", settle=5.0):
        """Every complete line of the file, parsed. A line still being written (no
        newline yet) is not read. A read that races the router's appends can see a
        torn line: Linux does not make a reader's view of a concurrent write(2)
        atomic, even with O_APPEND. Such a line is read again until it parses; a
        line that still does not parse after `settle` seconds is really broken."""
        deadline = time.monotonic() + settle
        while True:
            try:
                with open(self.path(rel)) as f:
                    return [json.loads(line) for line in f
                            if line.endswith("\n") and line.strip()]
            except FileNotFoundError:
                return []
            except json.JSONDecodeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def wait_jsonl(self, n, rel="out.jsonl", timeout=TIMEOUT):
        """Wait until the file holds at least n lines; return them."""
        self.wait_for(lambda: len(self.read_jsonl(rel)) >= n, timeout,
                      "%d lines in %s (have %d)" % (n, rel, len(self.read_jsonl(rel))))
        return self.read_jsonl(rel)

    # -- process -----------------------------------------------------------
    def start(self, args=(), env=None, preexec=None):
        """Start the router (again, after stop(): same directory and store).
        `env` adds environment variables; `preexec` runs in the child before
        exec (e.g. to set a resource limit)."""
        self.port = None
        if self.proc and self.proc.stderr:  # a previous run's, read to the end by stop()
            self.proc.stderr.close()
        self.proc = subprocess.Popen([BINARY, "-c", self.config_path, *args], cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     errors="replace", env=dict(os.environ, **(env or {})),
                                     preexec_fn=preexec)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(lambda: self.port is not None or self.proc.poll() is not None, TIMEOUT,
                      "the router to listen")
        if self.port is None:
            self._reader.join(5)
            raise AssertionError("router exited with %s:\n%s" % (self.proc.returncode, self.log()))
        return self

    def _read(self):
        for line in self.proc.stderr:
            with self._lock:
                self._lines.append(line)
            m = re.search(r'listening on [^ ]*:(\d+) ', line)
            if m:
                self.port = int(m.group(1))

    def cli(self, *args):
        """Run `graphrouter -c CONFIG ARGS` in the router's directory (the
        status and dlq commands); returns (status, stdout, stderr)."""
        p = subprocess.run([BINARY, "-c", self.config_path, *args], cwd=self.dir,
                           capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout, p.stderr

    def log(self):
        with self._lock:
            return "".join(self._lines)

    def text(self):
        """The log with the logfmt escaping of quotes and backslashes undone."""
        return self.log().replace('\\"', '"').replace("\\\\", "\\")

    def wait_log(self, pattern, timeout=TIMEOUT, count=1):
        rx = re.compile(pattern)
        self.wait_for(lambda: len(rx.findall(self.text())) >= count, timeout,
                      "log line /%s/ in:\n%s" % (pattern, self.log()[-3000:]))

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Signal the router and wait for it; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("router did not exit within %ss:\n%s" % (timeout, self.log()))
        self._reader.join(5)
        return self.proc.returncode

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- HTTP --------------------------------------------------------------
    def request(self, method, path, body=None, headers=None, chunked=False):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            if isinstance(body, str):
                body = body.encode()
            if chunked:
                conn.request(method, path, body=iter([body]), headers=headers or {},
                             encode_chunked=True)
            else:
                conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def raw(self, data, send_after=b""):
        """Send raw bytes, read the answer while `send_after` is still unsent
        (the router answers before reading a body it will not take). Returns
        (status, body)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as s:
            s.sendall(data)
            try:
                s.sendall(send_after)
            except OSError:
                pass  # the router closed its side after answering
            chunks = []
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if b"\r\n\r\n" in b"".join(chunks) and self._complete(b"".join(chunks)):
                        break
            except ConnectionResetError:
                pass
        reply = b"".join(chunks)
        head, _, body = reply.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head else 0
        return status, body

    @staticmethod
    def _complete(reply):
        head, _, body = reply.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length: *(\d+)", head)
        return m is not None and len(body) >= int(m.group(1))

    def post(self, body, path="/notifications", **kw):
        return self.request("POST", path, body, {"Content-Type": "application/json"}, **kw)

    def metrics(self):
        status, _, body = self.request("GET", "/metrics")
        assert status == 200, status
        return parse_metrics(body.decode())

    def metric(self, name, **labels):
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def wait_idle(self, timeout=TIMEOUT):
        """Wait until every stored item is done: routed, and each of its
        deliveries (emitted events included) done or a dead letter."""
        self.wait_for(lambda: self.metric("graphrouter_store_items_pending") == 0, timeout,
                      "every stored item to be done")

    # -- waiting -----------------------------------------------------------
    @staticmethod
    def wait_for(predicate, timeout=TIMEOUT, what="a condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


class RouterTest(unittest.TestCase):
    """Starts routers through self.router() and checks, at the end of each
    test, that every one of them exits 0 on SIGTERM (which also makes every
    test a leak and sanitizer check under the ASan build) and that none wrote
    a sanitizer report ("WARNING: ThreadSanitizer: ..." under the TSan build,
    "ERROR: AddressSanitizer: ...", a UBSan "runtime error") in any of its
    runs, even one killed or crashed on purpose."""

    def setUp(self):
        self._routers = []
        self._scratch = tempfile.mkdtemp(prefix="gr-e2e-keys-")

    def keys(self, name="keys", cert_id="test-cert"):
        """Fresh keys in a directory removed after the test."""
        return Keys(self._scratch, name, cert_id)

    def router(self, config, start=True):
        r = Router(config)
        self._routers.append(r)
        return r.start() if start else r

    def tearDown(self):
        failures = []
        for r in self._routers:
            if r.proc and r.proc.poll() is None:
                status = r.stop()
                if status != 0:
                    failures.append("exit status %s:\n%s" % (status, r.log()))
            if "Sanitizer" in r.log() or "runtime error" in r.log():
                failures.append("sanitizer report:\n" + r.log())
            r.close()
        shutil.rmtree(self._scratch, ignore_errors=True)
        if failures:
            self.fail("\n".join(failures))
