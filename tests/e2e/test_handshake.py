"""The validation handshake: every case of the shared vectors, plus the limits
graphrouter adds (length, '<' '>', NUL), on both kinds of path, without ever
reading the body, and while a reload is in progress."""

import json
import os
import signal
import time

from grtest import VECTORS, RouterTest, base_config, fixture_plugin


def handshake_config(**kw):
    return base_config(paths={"notifications": ["/notifications", "/notify", "/webhooks/onedrive"],
                              "lifecycle": "/lifecycle"}, **kw)


class HandshakeTest(RouterTest):
    def test_vector_cases(self):
        with open(os.path.join(VECTORS, "synthetic", "validation_handshake_cases.json")) as f:
            cases = json.load(f)["cases"]
        self.assertEqual(len(cases), 7)
        r = self.router(handshake_config())
        for case in cases:
            with self.subTest(case["name"]):
                headers = case.get("request_headers", {})
                t0 = time.monotonic()
                status, hdrs, body = r.request(case["method"], case["path_and_query"],
                                               case.get("request_body", ""), headers)
                elapsed_ms = (time.monotonic() - t0) * 1000
                want = case["expect"]
                if "status" in want:
                    self.assertEqual(status, want["status"])
                else:
                    self.assertIn(status, want["status_one_of"])
                if "content_type_prefix" in want:
                    self.assertTrue(hdrs["content-type"].startswith(want["content_type_prefix"]),
                                    hdrs["content-type"])
                if "body" in want:
                    self.assertEqual(body.decode(), want["body"])
                if "body_must_not_contain" in want:
                    self.assertNotIn(want["body_must_not_contain"].encode(), body)
                for k, v in want.get("header", {}).items():
                    self.assertEqual(hdrs[k.lower()], v)
                self.assertLess(elapsed_ms, want.get("max_latency_ms", 10000))
                self.assertEqual(hdrs.get("x-content-type-options"), "nosniff")
        # 4 echoed on notification paths, the HTML and the empty token refused
        self.assertEqual(r.metric("graphrouter_http_requests_total", endpoint="notifications",
                                  code="200"), 4)
        self.assertEqual(r.metric("graphrouter_http_requests_total", endpoint="notifications",
                                  code="400"), 2)
        self.assertEqual(r.metric("graphrouter_http_requests_total", endpoint="lifecycle",
                                  code="200"), 1)

    def test_limits(self):
        r = self.router(handshake_config())
        ok = "a" * 1024
        status, _, body = r.request("POST", "/notifications?validationToken=" + ok)
        self.assertEqual((status, body.decode()), (200, ok))
        status, hdrs, body = r.request("POST", "/notifications?validationToken=" + ok + "a")
        self.assertEqual(status, 400)
        self.assertIn(b"longer than 1024", body)
        self.assertTrue(hdrs["content-type"].startswith("text/plain"))
        for bad in ("%3Cb", "a%3E", "a%00b"):
            status, _, body = r.request("POST", "/lifecycle?validationToken=" + bad)
            self.assertEqual(status, 400, bad)
            self.assertNotIn(bad.replace("%3C", "<").replace("%3E", ">").encode(), body)
        # decoded exactly once: %252B is the three characters %2B
        status, _, body = r.request("POST", "/notifications?validationToken=x%252By+z")
        self.assertEqual((status, body), (200, b"x%2By z"))
        # only POST
        status, hdrs, _ = r.request("GET", "/notifications?validationToken=abc")
        self.assertEqual((status, hdrs.get("allow")), (405, "POST"))
        # not on other paths
        status, _, _ = r.request("POST", "/elsewhere?validationToken=abc")
        self.assertEqual(status, 404)

    def test_body_is_never_read(self):
        r = self.router(handshake_config())
        # a body that is not JSON, and one larger than max_body_bytes
        status, _, body = r.request("POST", "/notifications?validationToken=tok", "not json {")
        self.assertEqual((status, body), (200, b"tok"))
        status, body = r.raw(b"POST /notifications?validationToken=tok2 HTTP/1.1\r\n"
                             b"Host: x\r\nContent-Length: 5242880\r\n\r\n", b"x" * (5 << 20))
        self.assertEqual((status, body), (200, b"tok2"))
        self.assertEqual(r.metric("graphrouter_items_received_total"), 0)

    def test_answered_during_reload(self):
        # A reload whose handler init takes 3 s: handshakes are answered at once meanwhile.
        cfg = handshake_config()
        r = self.router(cfg)
        slow = dict(cfg)
        slow["handlers"] = dict(cfg["handlers"], slow={
            "plugin": fixture_plugin("flaky"), "config": {"init_sleep_ms": 3000}})
        r.write_config(slow)
        r.send_signal(signal.SIGHUP)
        r.wait_log("reload requested")
        t0 = time.monotonic()
        status, _, body = r.request("POST", "/notifications?validationToken=during+reload")
        elapsed = time.monotonic() - t0
        self.assertEqual((status, body), (200, b"during reload"))
        self.assertLess(elapsed, 1.5)
        self.assertEqual(r.metric("graphrouter_reloads_total", result="success"), 0)
        r.wait_for(lambda: r.metric("graphrouter_reloads_total", result="success") == 1)
