"""Harness for the control-plane tests: routers whose "graph" section points at a FakeGraph
(tests/e2e/fakegraph.py), which plays Entra ID's token endpoint and Graph's subscriptions API on
127.0.0.1, validation handshakes against the router included.

Every test also checks, at its end, that no secret reached any router's log: no clientState a
subscription was created with, no client secret, no access token, no client assertion."""

import json
import os
import socket
import subprocess
import time

from fakegraph import FakeGraph
from grtest import SECRET, RouterTest, base_config

APP = "5e0b8d2a-6c1f-4a3e-9b7d-2f4e6a8c0b1d"
TENANT = "aaaabbbb-0000-cccc-1111-dddd2222eeee"
TENANT2 = "bbbbcccc-1111-dddd-2222-eeee3333ffff"
CLIENT_SECRET = "e2e-client-secret-~Xq8Q"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def declared(resource="/users/u1/messages", change_type=("created", "updated"), **kw):
    d = {"resource": resource, "change_type": list(change_type)}
    d.update(kw)
    return d


def self_signed(directory, name, cn="graphrouter-e2e"):
    """A key and certificate made by the openssl command: (cert, key), key mode 0600."""
    cert, key = os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=" + cn,
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    os.chmod(key, 0o600)
    return cert, key


class GraphTest(RouterTest):
    def setUp(self):
        super().setUp()
        self.fake = self.start_fake()
        self.fake.add_tenant(TENANT, APP, secret=CLIENT_SECRET)

    def start_fake(self, **kw):
        fake = FakeGraph(**kw)
        self.addCleanup(fake.close)
        return fake

    def tearDown(self):
        try:
            self.check_no_secrets()
        finally:
            super().tearDown()

    # -- routers ---------------------------------------------------------------------------
    def graph_config(self, subscriptions, port, tenants=None, fake=None, **overrides):
        fake = fake or self.fake
        graph = {"app_id": APP,
                 "tenants": tenants or [{"id": TENANT, "client_secret_file": "secret.txt"}],
                 "public_url": "http://127.0.0.1:%d" % port,
                 "base_url": fake.base_url, "login_url": fake.login_url,
                 "connect_timeout_s": 5, "timeout_s": 30}
        graph.update(overrides.pop("graph", {}))
        cfg = base_config(graph=graph, subscriptions=subscriptions, **overrides)
        cfg["listen"]["port"] = port
        return cfg

    def graph_router(self, subscriptions, start=True, **kw):
        """A router declaring `subscriptions`, with the client secret in secret.txt (0600)."""
        port = free_port()
        r = self.router(self.graph_config(subscriptions, port, **kw), start=False)
        r.graph_port = port
        with open(r.path("secret.txt"), "w") as f:
            f.write(CLIENT_SECRET + "\n")
        os.chmod(r.path("secret.txt"), 0o600)
        return r.start() if start else r

    # -- the fake's view ---------------------------------------------------------------------
    def creates(self, status=201, fake=None):
        return (fake or self.fake).requests_matching("POST", r"^/v1\.0/subscriptions$") \
            if status is None else [q for q in (fake or self.fake).requests_matching(
                "POST", r"^/v1\.0/subscriptions$") if q.status == status]

    def wait_creates(self, n, fake=None, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.creates(fake=fake)
            if len(got) >= n:
                return got
            time.sleep(0.05)
        self.fail("expected %d subscriptions created, Graph saw %s" % (
            n, [(q.method, q.path, q.status) for q in (fake or self.fake).requests]))

    def wait_requests(self, method, path_regex, n=1, timeout=20, fake=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = (fake or self.fake).requests_matching(method, path_regex)
            if len(got) >= n:
                return got
            time.sleep(0.05)
        self.fail("expected %d %s %s, Graph saw %s" % (
            n, method, path_regex, [(q.method, q.path, q.status) for q in (fake or self.fake).requests]))

    def live(self, fake=None):
        return (fake or self.fake).subscriptions()

    def sub_json(self, r):
        status, out, err = r.cli("subscriptions", "--json")
        self.assertEqual(status, 0, err)
        return json.loads(out)

    # -- no secret in any log ------------------------------------------------------------------
    def secrets_seen(self):
        found = {CLIENT_SECRET, SECRET}
        for q in self.fake.requests:
            body = q.body if isinstance(q.body, dict) else {}
            for k in ("clientState", "client_secret", "client_assertion"):
                if isinstance(body.get(k), str) and len(body[k]) >= 8:
                    found.add(body[k])
            auth = (q.headers or {}).get("authorization", "")
            if auth.startswith("Bearer "):
                found.add(auth[7:])
        return found

    def check_no_secrets(self):
        secrets = self.secrets_seen()
        for r in self._routers:
            log = r.log()
            for s in secrets:
                self.assertNotIn(s, log, "a secret reached the router's log")
            self.assertNotIn("eyJ", log)  # no JWT (client assertion, token)
