"""Rich notifications through the real binary: validation tokens and
decryption, with keys made fresh for each test by graphrouter-simulate (and
once with the fixed shared vectors). Covers two tenants in one POST, covered
and uncovered items, key rotation and thumbprint lookup, every tampering,
every kind of bad token, keys reloaded on SIGHUP, JWKS fetched over HTTPS
from a local server, with a key rotation while the router runs, and the
content keys kept in memory: one RSA operation per item at any fan-out,
again after a restart, and none that outlives a reload replacing its key."""

import copy
import http.server
import re
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time

from grtest import (APP_ID, BINARY, SECRET, TENANT_A, TENANT_B, VECTORS, Router, RouterTest,
                    base_config, fixture_plugin, rich_config, simulate)

NOW = int(time.time())


def merged(*docs):
    """One POST from several simulate outputs: their items and their tokens."""
    out = {"value": []}
    for d in docs:
        out["value"] += d["value"]
        if "validationTokens" in d:
            out.setdefault("validationTokens", []).extend(d["validationTokens"] or [])
    return out


class RichTest(RouterTest):
    def dropped(self, r, reason):
        return r.metric("graphrouter_items_dropped_total", reason=reason)

    def test_two_tenants_in_one_post(self):
        k = self.keys()
        r = self.router(rich_config(k))
        out = simulate(*k.notify_args("--type", "chatMessage", "--tenant", TENANT_A, "--tenant",
                                      TENANT_B, "--url", "http://127.0.0.1:%d/notifications"
                                      % r.port))
        self.assertEqual(out, "HTTP 202")
        lines = r.wait_jsonl(2)
        self.assertEqual(sorted(l["tenant_id"] for l in lines), sorted([TENANT_A, TENANT_B]))
        for l in lines:
            self.assertEqual(l["resource_type"], "chatMessage")
            self.assertEqual(l["content"]["body"]["content"],
                             '<div><at id="0">Adele</at> the build is green</div>')
            self.assertEqual(l["content"]["chatId"], l["resource_ids"]["chat"])
        self.assertEqual(r.metric("graphrouter_validation_tokens_total", result="valid"), 2)
        # decrypted content and tokens are never logged
        self.assertNotIn("the build is green", r.log())
        self.assertNotIn("eyJ", r.log())

    def test_one_item_covered_one_not(self):
        k = self.keys()
        r = self.router(rich_config(k))
        covered = simulate(*k.notify_args("--type", "presence", "--tenant", TENANT_A))
        uncovered = simulate(*k.notify_args("--type", "presence", "--tenant", TENANT_B,
                                            "--tokens", "none"))
        self.assertEqual(r.post(merged(covered, uncovered))[0], 202)
        lines = r.wait_jsonl(1)
        r.wait_for(lambda: self.dropped(r, "token_uncovered") == 1)
        r.wait_idle()
        lines = r.read_jsonl()
        self.assertEqual([(l["tenant_id"], l["content"]["availability"]) for l in lines],
                         [(TENANT_A, "Busy")])
        r.wait_log(r"rich item dropped \(token_uncovered\): no validation token of the POST is "
                   r"for this item's tenant; subscription=\S+ tenant=" + TENANT_B)

    def test_rotation_and_thumbprint(self):
        old, new = self.keys("old", "cert-old"), self.keys("new", "cert-new")
        cfg = rich_config(old)
        cfg["decryption_keys"] = [old.decryption_key(), new.decryption_key()]
        r = self.router(cfg)
        base = ["notify", "--rich", "--app-id", APP_ID, "--client-state", SECRET,
                "--signing-key", os.path.join(old.dir, "signing-key.pem"), "--kid", old.kid]
        docs = [simulate(*base, "--cert", old.cert, "--cert-id", "cert-old"),
                simulate(*base, "--cert", new.cert, "--cert-id", "cert-new"),
                # Graph may send only the thumbprint
                simulate(*base, "--cert", new.cert, "--cert-ref", "thumbprint")]
        self.assertEqual(r.post(merged(*docs))[0], 202)
        self.assertEqual(len(r.wait_jsonl(3)), 3)
        # a key loaded without its certificate has no thumbprint to be found by
        cfg["decryption_keys"] = [old.decryption_key(), new.decryption_key(certificate=False)]
        r.write_config(cfg)
        r.send_signal(signal.SIGHUP)
        r.wait_for(lambda: r.metric("graphrouter_reloads_total", result="success") == 1)
        self.assertEqual(r.post(simulate(*base, "--cert", new.cert, "--cert-ref",
                                         "thumbprint"))[0], 202)
        r.wait_for(lambda: self.dropped(r, "decrypt_unknown_key") == 1)

    def test_tampering_and_unknown_key(self):
        k, stranger = self.keys(), self.keys("stranger", "stranger-cert")
        r = self.router(rich_config(k))
        cases = {"data": "decrypt_bad_signature", "mac": "decrypt_bad_signature",
                 "key": "decrypt_bad_key", "padding": "decrypt_bad_padding"}
        for tamper in cases:
            self.assertEqual(r.post(simulate(*k.notify_args("--tamper", tamper)))[0], 202)
        # encrypted to a certificate this router has no key for
        unknown = simulate("notify", "--rich", "--app-id", APP_ID, "--client-state", SECRET,
                           "--cert", stranger.cert, "--cert-id", "stranger-cert",
                           "--signing-key", os.path.join(k.dir, "signing-key.pem"),
                           "--kid", k.kid)
        self.assertEqual(r.post(unknown)[0], 202)
        r.wait_for(lambda: self.dropped(r, "decrypt_bad_signature") == 2)
        for reason in ("decrypt_bad_key", "decrypt_bad_padding", "decrypt_unknown_key"):
            r.wait_for(lambda: self.dropped(r, reason) == 1, what=reason)
        r.wait_idle()
        self.assertEqual(r.read_jsonl(), [])
        r.wait_log(r"rich item dropped \(decrypt_bad_signature\): decryption failed: "
                   r"bad_signature")

    def test_bad_tokens(self):
        k = self.keys()
        r = self.router(rich_config(k, validation_tokens={
            "app_ids": [APP_ID], "jwks_file": k.jwks, "tenant_ids": [TENANT_A, TENANT_B]}))
        cases = [
            (["--token-claims", json.dumps({"exp": NOW - 3600, "nbf": NOW - 7200})], "expired"),
            (["--token-claims", json.dumps({"nbf": NOW + 7200})], "not_yet_valid"),
            (["--token-claims", json.dumps({"aud": "someone-else"})], "bad_audience"),
            (["--token-claims", json.dumps({"azp": "11111111-2222-3333-4444-555555555555"})],
             "bad_caller"),
            (["--token-version", "1", "--token-claims", json.dumps({"appid": "x"})], "bad_caller"),
            (["--token-claims", json.dumps({"iss": "https://evil.example/%s/v2.0" % TENANT_A})],
             "bad_issuer"),
            (["--token-kid", "no-such-kid"], "unknown_kid"),
            (["--token-alg", "none"], "bad_alg"),
            (["--token-alg", "HS256"], "bad_alg"),
            (["--tenant", "cccccccc-0000-0000-0000-000000000000"], "bad_tenant"),
        ]
        for args, _ in cases:
            tenant = [] if "--tenant" in args else ["--tenant", TENANT_A]
            self.assertEqual(r.post(simulate(*k.notify_args(*tenant, *args)))[0], 202)
        for result in {c[1] for c in cases}:
            want = sum(1 for c in cases if c[1] == result)
            r.wait_for(lambda: r.metric("graphrouter_validation_tokens_total",
                                        result=result) == want, what=result)
        r.wait_for(lambda: self.dropped(r, "token_invalid") == len(cases))
        # a POST without tokens, with null tokens, or with none at all
        for mode in ("none", "null", "empty"):
            self.assertEqual(r.post(simulate(*k.notify_args("--tokens", mode)))[0], 202)
        r.wait_for(lambda: self.dropped(r, "token_missing") == 3)
        # and a good one still passes; v1 tokens too
        r.post(simulate(*k.notify_args("--tenant", TENANT_B, "--token-version", "1")))
        self.assertEqual(len(r.wait_jsonl(1)), 1)
        r.wait_log(r"validation token rejected: bad_alg")

    def test_aes_key_sizes(self):
        k = self.keys()
        r = self.router(rich_config(k))
        r.post(merged(*(simulate(*k.notify_args("--aes-bits", bits)) for bits in ("128", "192"))))
        self.assertEqual([l["resource_type"] for l in r.wait_jsonl(2)], ["message", "message"])

    def test_token_array_limits(self):
        k = self.keys()
        r = self.router(rich_config(k))
        doc = simulate(*k.notify_args("--count", "3"))
        good = doc["validationTokens"][0]
        # more than 100 tokens: none are used, one log line for the POST
        doc["validationTokens"] = [good] * 101
        self.assertEqual(r.post(doc)[0], 202)
        r.wait_for(lambda: self.dropped(r, "token_missing") == 3)
        r.wait_log(r"validationTokens: the POST's validationTokens holds more than 100 tokens")
        # entries that are not usable tokens are skipped and counted once, not per item
        doc["validationTokens"] = [1, None, "not-a-jwt", "x" * 20000, good]
        self.assertEqual(r.post(doc)[0], 202)
        self.assertEqual(len(r.wait_jsonl(3)), 3)
        self.assertEqual(r.metric("graphrouter_validation_tokens_total", result="malformed"), 4)
        self.assertEqual(len(re.findall(r"4 entries skipped", r.log())), 1)

    def test_many_large_tokens_stay_bounded(self):
        """One POST of 1,500 rich items and 100 tokens of 10 KB: the tokens are held
        once for the POST, not once per item (which took 1.5 GB)."""
        k = self.keys()
        r = self.router(rich_config(k), start=False)
        # under AddressSanitizer, a small quarantine: measure the router's
        # memory, not the freed blocks the sanitizer holds back (256 MB)
        r.start(env={"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=16"})
        doc = simulate(*k.notify_args("--count", "1500", "--tenant", TENANT_A))
        payload = json.dumps({"tid": TENANT_A, "pad": "p" * 7400}).encode()
        junk = "eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.%s.c2ln" % (
            __import__("base64").urlsafe_b64encode(payload).decode().rstrip("="))
        doc["validationTokens"] += [junk] * 99
        body = json.dumps(doc)
        self.assertLess(len(body), 4 << 20)
        self.assertEqual(r.post(body)[0], 202)
        r.wait_jsonl(1500, timeout=120)
        with open("/proc/%d/status" % r.proc.pid) as f:
            peak_kb = int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))
        self.assertLess(peak_kb, 400 * 1024, "peak RSS %d MB" % (peak_kb // 1024))

    def test_shared_vectors(self):
        """The fixed vectors: two tenants, tokens valid until 2100, the vector key."""
        syn = os.path.join(VECTORS, "synthetic")
        key = os.path.join(self._scratch, "vector.key")
        shutil.copy(os.path.join(syn, "enc_private_key.pem"), key)
        os.chmod(key, 0o600)
        with open(os.path.join(syn, "jwt_cases.json")) as f:
            cases = json.load(f)
        cfg = base_config(
            subscriptions=[{"id": "76222963-cc7b-42d2-882d-8aaa69cb2ba3", "client_state": "s3cr3t-A"},
                           {"id": "5cfe2387-163c-4006-81bb-1b5e1e060afe", "client_state": "s3cr3t-B"}],
            validation_tokens={"app_ids": cases["app_ids"], "tenant_ids": cases["tenant_ids"],
                               "jwks_file": os.path.join(syn, "jwks.json")},
            decryption_keys=[{"certificate_id": "router-test-cert-2025", "private_key_file": key,
                              "certificate_file": os.path.join(syn, "enc_certificate.pem")}])
        r = self.router(cfg)
        with open(os.path.join(syn, "rich_notification_two_tenants_with_tokens.json"), "rb") as f:
            self.assertEqual(r.post(f.read())[0], 202)
        lines = sorted(r.wait_jsonl(2), key=lambda l: l["tenant_id"])
        for line, name in zip(lines, ("expected_plaintext_item0.json",
                                      "expected_plaintext_item1.json")):
            with open(os.path.join(syn, name)) as f:
                self.assertEqual(line["content"], json.load(f))
        self.assertEqual([l["resource_type"] for l in lines], ["chatMessage", "presence"])

    def test_events_carry_content(self):
        k = self.keys()
        cfg = rich_config(k, handlers={
            "teams": {"plugin": "teams", "config": {"emit_to": "out"}},
            "presence": {"plugin": "presence", "config": {"emit_to": "out"}},
            "out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
            routes=[{"name": "t", "match": {"resource_type": "chatMessage"}, "to": "teams"},
                    {"name": "p", "match": {"resource_type": "presence"}, "to": "presence"}])
        r = self.router(cfg)
        r.post(merged(simulate(*k.notify_args("--type", "chatMessage")),
                      simulate(*k.notify_args("--type", "presence"))))
        events = {e["event"]: e for e in r.wait_jsonl(2)}
        chat = events["teams.chatMessage.created"]
        self.assertEqual(chat["body"], {"content_type": "html", "content":
                                        '<div><at id="0">Adele</at> the build is green</div>'})
        self.assertEqual((chat["from"]["type"], chat["from"]["display_name"]),
                         ("user", "Megan Bowen"))
        self.assertEqual([m["display_name"] for m in chat["mentions"]], ["Adele Vance"])
        self.assertRegex(chat["created_at"], r"^\d{4}-\d\d-\d\dT")
        self.assertEqual(chat["message_type"], "message")
        p = events["presence.changed"]
        self.assertEqual((p["availability"], p["activity"]), ("Busy", "InACall"))
        self.assertEqual((p["previous_availability"], p["previous_activity"]), (None, None))

    def test_key_files_are_checked(self):
        k = self.keys()
        os.chmod(k.key, 0o644)
        r = Router(rich_config(k))
        try:
            p = subprocess.run([BINARY, "-c", r.config_path, "--check"], capture_output=True,
                               text=True, timeout=60)
        finally:
            r.close()
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stderr, r'graphrouter\.json:\d+:\d+: decryption key "test-cert": .*'
                                   r'encryption-key\.pem is readable or writable by group or '
                                   r'others \(mode 0644\)')


CHAT_TEXT = '<div><at id="0">Adele</at> the build is green</div>'
RSA = "graphrouter_rsa_private_operations_total"
KEYS = "graphrouter_content_key_cache_total"


def flaky(**config):
    return {"plugin": fixture_plugin("flaky"), "config": config}


class ContentKeyCacheTest(RouterTest):
    """Each rich item's dataKey is unwrapped with RSA once, when it is routed;
    its deliveries decrypt the content again with the content key kept in
    memory (core/crypto/keycache.c). Counted from the router's /metrics."""

    def two_handlers(self, concurrency):
        """20 items to handlers a and b; b with `concurrency`. Returns the router."""
        k = self.keys()
        r = self.router(rich_config(k, handlers={
            "a": {"plugin": "file", "config": {"path": "a.jsonl"}},
            "b": {"plugin": "file", "config": {"path": "b.jsonl"}, "concurrency": concurrency}},
            routes=[{"name": "both", "match": {"resource_type": "chatMessage"},
                     "to": ["a", "b"]}]))
        self.assertEqual(r.metric(RSA), 0)
        doc = simulate(*k.notify_args("--type", "chatMessage", "--count", "10", "--tenant",
                                      TENANT_A, "--tenant", TENANT_B))
        n = len(doc["value"])
        self.assertEqual(n, 20)
        self.assertEqual(r.post(doc)[0], 202)
        sent = sorted(v["resource"] for v in doc["value"])
        for name in ("a.jsonl", "b.jsonl"):
            lines = r.wait_jsonl(n, name)
            self.assertEqual(sorted(l["resource"] for l in lines), sent, name)
            for l in lines:
                self.assertEqual(l["content"]["body"]["content"], CHAT_TEXT)
                self.assertEqual(l["content"]["chatId"], l["resource_ids"]["chat"])
        r.wait_idle()
        self.assertEqual(len(r.read_jsonl("a.jsonl")) + len(r.read_jsonl("b.jsonl")), 2 * n)
        # one unwrap per item, when it is routed
        self.assertEqual(r.metric(RSA), n)
        self.assertEqual(r.metric(KEYS, result="miss"), n)
        self.assertNotIn("the build is green", r.log())
        return r

    def test_two_handlers_one_rsa_operation_per_item(self):
        # delivered as routed: both handlers get the text routing built
        r = self.two_handlers(concurrency=0)
        self.assertEqual(r.metric(KEYS, result="hit"), 0)

    def test_two_handlers_through_the_store_one_rsa_operation_per_item(self):
        # a target of concurrency 1: each of the 2n deliveries is a unit of its own and
        # rebuilds the notification, decrypting the content with the cached key
        r = self.two_handlers(concurrency=1)
        self.assertEqual(r.metric(KEYS, result="hit"), 40)

    def test_after_a_restart_a_pending_item_is_decrypted_again(self):
        k = self.keys()
        cfg = rich_config(k, handlers={
            # hangs on the decrypted text: the delivery stays running until the kill
            "f": flaky(hang_on="the build is green", emit_to="out"),
            "out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
            routes=[{"name": "r", "match": {"resource_type": "chatMessage"}, "to": "f"}])
        r = self.router(cfg)
        doc = simulate(*k.notify_args("--type", "chatMessage", "--tenant", TENANT_A))
        self.assertEqual(r.post(doc)[0], 202)
        r.wait_log(r"hanging on purpose")
        # routed (one RSA operation) and handed over with the text routing built
        self.assertEqual(r.metric(RSA), 1)
        self.assertEqual(r.metric(KEYS, result="miss"), 1)
        self.assertEqual(r.stop(sig=signal.SIGKILL), -signal.SIGKILL)
        cfg["handlers"]["f"] = flaky(emit_to="out")
        r.write_config(cfg)
        r.start()
        lines = r.wait_jsonl(1)
        r.wait_idle()
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["resource"], doc["value"][0]["resource"])
        self.assertEqual(lines[0]["content"]["body"]["content"], CHAT_TEXT)
        self.assertEqual(lines[0]["flaky_calls"], 1)  # the new process's first call
        self.assertEqual(r.metric("graphrouter_deliveries_interrupted", handler="f"), 1)
        # the new process knew no content key: routing the item again unwrapped it, once;
        # the delivery, a unit of its own now, decrypted the content with the cached key
        self.assertEqual(r.metric(RSA), 1)
        self.assertEqual(r.metric(KEYS, result="miss"), 1)
        self.assertEqual(r.metric(KEYS, result="hit"), 1)

    def test_a_reload_that_replaces_the_key_leaves_no_cached_key_usable(self):
        k, other = self.keys(), self.keys("other", "other-cert")
        cfg = rich_config(k, handlers={
            "f": dict(flaky(fail_times=100000, emit_to="out"),
                      retry={"max_attempts": 1000, "initial_backoff_ms": 200,
                             "max_backoff_ms": 200}),
            "out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
            routes=[{"name": "r", "match": {"resource_type": "chatMessage"}, "to": "f"}])
        r = self.router(cfg)
        self.assertEqual(r.post(simulate(*k.notify_args("--type", "chatMessage")))[0], 202)
        retried = lambda: r.metric("graphrouter_handler_retried_total", handler="f")
        r.wait_for(lambda: retried() >= 2)
        # every retry decrypts the content again, with the key from the cache
        self.assertEqual(r.metric(RSA), 1)
        # a reload that keeps the key keeps its cached content keys
        cfg["log_level"] = "info"
        r.write_config(cfg)
        r.send_signal(signal.SIGHUP)
        r.wait_for(lambda: r.metric("graphrouter_reloads_total", result="success") == 1)
        before = retried()
        r.wait_for(lambda: retried() >= before + 2)
        self.assertEqual(r.metric(RSA), 1)
        # the same certificate id, another key (its certificate, thumbprint and all)
        cfg["decryption_keys"] = [other.decryption_key(cert_id=k.cert_id)]
        r.write_config(cfg)
        r.send_signal(signal.SIGHUP)
        r.wait_for(lambda: r.metric("graphrouter_reloads_total", result="success") == 2)
        r.wait_for(lambda: r.metric("graphrouter_handler_failed_total", handler="f") == 1)
        r.wait_log(r'delivery to handler "f" is a dead letter: the content no longer decrypts: '
                   r'bad_key')
        r.wait_idle()
        self.assertEqual(r.read_jsonl(), [])
        self.assertGreaterEqual(r.metric(RSA), 2)  # tried with the new key, which fails


class JwksServer:
    """A JWKS over HTTPS on 127.0.0.1, with a self-signed certificate."""

    def __init__(self, directory):
        self.cert = os.path.join(directory, "tls.pem")
        keyfile = os.path.join(directory, "tls.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        keyfile, "-out", self.cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                       capture_output=True)
        self.body, self.status, self.requests, self.delay = b"{}", 200, 0, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                time.sleep(server.delay)
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda request, address: None  # clients that hang up
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, keyfile)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = "https://127.0.0.1:%d/keys" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, *jwks_files):
        keys = []
        for path in jwks_files:
            with open(path) as f:
                keys += json.load(f)["keys"]
        self.body = json.dumps({"keys": keys}).encode()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class JwksOverHttpsTest(RouterTest):
    def setUp(self):
        super().setUp()
        self.server = JwksServer(self._scratch)

    def tearDown(self):
        self.server.close()
        super().tearDown()

    def config(self, keys, **tokens):
        cfg = rich_config(keys)
        cfg["validation_tokens"] = dict({"app_ids": [APP_ID], "jwks_url": self.server.url,
                                         "ca_file": self.server.cert}, **tokens)
        return cfg

    def test_rotation_while_running(self):
        k1, k2 = self.keys("k1"), self.keys("k2")
        self.server.serve(k1.jwks)
        r = self.router(self.config(k1, refresh_s=3600, min_refresh_s=5))
        r.wait_for(lambda: r.metric("graphrouter_jwks_keys") == 1)
        loaded = r.metric("graphrouter_jwks_loaded_timestamp_seconds")
        self.assertEqual(r.post(simulate(*k1.notify_args()))[0], 202)
        r.wait_jsonl(1)
        # Entra publishes a new signing key; tokens signed with it arrive
        self.server.serve(k1.jwks, k2.jwks)
        signed_by_k2 = lambda: simulate(
            "notify", "--rich", "--app-id", APP_ID, "--client-state", SECRET, "--cert", k1.cert,
            "--cert-id", k1.cert_id, "--signing-key", os.path.join(k2.dir, "signing-key.pem"),
            "--kid", k2.kid)
        # keys loaded less than min_refresh_s ago are fresh: an unknown kid is final
        self.assertEqual(r.post(signed_by_k2())[0], 202)
        self.assertLess(time.time() - loaded, 5)
        r.wait_for(lambda: r.metric("graphrouter_items_dropped_total",
                                    reason="token_invalid") == 1)
        self.assertEqual(self.server.requests, 1)
        # past it, an unknown kid fetches the keys again and the item waits for them
        time.sleep(max(0.0, loaded + 5.2 - time.time()))
        self.assertEqual(r.post(signed_by_k2())[0], 202)
        self.assertEqual(len(r.wait_jsonl(2)), 2)
        self.assertEqual(r.metric("graphrouter_jwks_keys"), 2)
        self.assertEqual(r.metric("graphrouter_jwks_refreshes_total", result="success"), 2)
        self.assertEqual(self.server.requests, 2)

    def test_failed_refresh_keeps_keys(self):
        k = self.keys()
        self.server.serve(k.jwks)
        r = self.router(self.config(k, refresh_s=1))
        r.wait_for(lambda: r.metric("graphrouter_jwks_keys") == 1)
        self.server.status = 500
        r.wait_for(lambda: r.metric("graphrouter_jwks_refreshes_total", result="failure") >= 1)
        r.wait_log(r"validation-token keys not refreshed; the cached keys stay in force: "
                   r"fetching https://127\.0\.0\.1:\d+/keys failed: .*500")
        self.assertEqual(r.post(simulate(*k.notify_args()))[0], 202)
        self.assertEqual(len(r.wait_jsonl(1)), 1)

    def test_hanging_server_holds_up_nothing(self):
        k = self.keys()
        self.server.serve(k.jwks)
        self.server.delay = 30  # longer than the 15 s transfer limit
        r = self.router(self.config(k))
        r.wait_for(lambda: self.server.requests == 1)
        # the 202 never waits for keys: the item waits in the queue instead
        t0 = time.monotonic()
        self.assertEqual(r.post(simulate(*k.notify_args("--type", "presence")))[0], 202)
        self.assertLess(time.monotonic() - t0, 1)
        # a reload that drops this source retires the generation fetching from it
        cfg = self.config(k)
        cfg["validation_tokens"] = {"app_ids": [APP_ID], "jwks_file": k.jwks}
        r.write_config(cfg)
        t0 = time.monotonic()
        r.send_signal(signal.SIGHUP)
        r.wait_log(r"generation 1 retired")
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(r.post(simulate(*k.notify_args()))[0], 202)
        # both the waiting item and the new one are routed with the file's keys
        self.assertEqual(sorted(l["resource_type"] for l in r.wait_jsonl(2)),
                         ["message", "presence"])
        t0 = time.monotonic()
        self.assertEqual(r.stop(), 0)
        self.assertLess(time.monotonic() - t0, 5)

    def test_failed_first_fetch_is_retried_after_min_refresh(self):
        k = self.keys()
        self.server.serve(k.jwks)
        self.server.status = 503
        r = self.router(self.config(k, refresh_s=3600, min_refresh_s=1))
        r.wait_for(lambda: r.metric("graphrouter_jwks_refreshes_total", result="failure") >= 1)
        self.assertEqual(r.post(simulate(*k.notify_args()))[0], 202)  # waits for the keys
        self.server.status = 200
        # retried after min_refresh_s (1 s), not refresh_s (an hour)
        r.wait_for(lambda: r.metric("graphrouter_jwks_keys") == 1, timeout=10)
        self.assertEqual(len(r.wait_jsonl(1)), 1)

    def test_tls_is_verified(self):
        k = self.keys()
        self.server.serve(k.jwks)
        cfg = self.config(k)
        del cfg["validation_tokens"]["ca_file"]  # the server's certificate is not trusted
        r = self.router(cfg)
        r.wait_for(lambda: r.metric("graphrouter_jwks_refreshes_total", result="failure") == 1)
        r.wait_log(r"validation-token keys could not be loaded; rich items wait until they are: "
                   r"fetching https://127\.0\.0\.1:\d+/keys failed: .*(SSL certificate|self.signed)")
        self.assertEqual(self.server.requests, 0)
        self.assertEqual(r.metric("graphrouter_jwks_keys"), 0)
