"""HTTP answers for everything that is not a handshake: 202 for a valid batch
(whatever its items), 400 with a one-line reason, 413 without buffering, 404,
405, 503 when the queue is full, /healthz and /metrics."""

import json

from grtest import RouterTest, base_config, batch, fixture_plugin, item


class HttpTest(RouterTest):
    def test_accepts_and_routes(self):
        r = self.router(base_config())
        status, hdrs, body = r.post(batch(item(id="n1"), item(id="n2")))
        self.assertEqual((status, body), (202, b""))
        lines = r.wait_jsonl(2)
        self.assertEqual(sorted(l["id"] for l in lines), ["n1", "n2"])
        status, _, _ = r.post(batch())
        self.assertEqual(status, 202)
        status, _, _ = r.post(batch(item(id="l1")), path="/lifecycle")
        self.assertEqual(status, 202)
        r.wait_jsonl(3)

    def test_bad_bodies_get_400(self):
        r = self.router(base_config())
        for body, reason in [("not json", b"not valid JSON"), ("", b"not valid JSON"),
                             ('{"value": {}}', b'no "value" array'), ("[]", b'no "value" array'),
                             ('{"specversion": "1.0", "data": {}}', b"CloudEvent")]:
            status, hdrs, text = r.post(body)
            self.assertEqual(status, 400, body)
            self.assertIn(reason, text)
            self.assertEqual(text.count(b"\n"), 1, "one line")
            self.assertTrue(hdrs["content-type"].startswith("text/plain"))
        self.assertEqual(r.metric("graphrouter_http_requests_total", endpoint="notifications",
                                  code="400"), 5)
        r.wait_log(r"notification POST refused: body is not valid JSON", count=2)

    def test_oversized_bodies_get_413(self):
        r = self.router(base_config(limits={"max_body_bytes": 4096}))
        small = json.dumps(batch(item(id="fits", padding="x" * 3000)))
        self.assertLess(len(small), 4096)
        self.assertEqual(r.post(small)[0], 202)
        big = json.dumps(batch(item(padding="x" * 5000)))
        # Content-Length over the limit: answered from the headers, body never read
        status, body = r.raw(b"POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                             b"\r\n" % len(big), big.encode())
        self.assertEqual(status, 413)
        # a chunked body is never read: 411, whatever its size (test_hostile.py)
        status, _, body = r.post(big, chunked=True)
        self.assertEqual(status, 411)
        self.assertIn(b"Content-Length", body)
        self.assertEqual(r.metric("graphrouter_http_requests_total", endpoint="notifications",
                                  code="413"), 1)
        self.assertEqual([l["id"] for l in r.wait_jsonl(1)], ["fits"])

    def test_404_405(self):
        r = self.router(base_config())
        self.assertEqual(r.request("POST", "/nope", "{}")[0], 404)
        self.assertEqual(r.request("POST", "/notifications/", "{}")[0], 404)
        for method in ("GET", "PUT", "DELETE"):
            status, hdrs, _ = r.request(method, "/notifications")
            self.assertEqual((status, hdrs.get("allow")), (405, "POST"))
        status, hdrs, _ = r.request("POST", "/healthz", "")
        self.assertEqual((status, hdrs.get("allow")), (405, "GET, HEAD"))
        self.assertEqual(r.metric("graphrouter_http_requests_total", endpoint="other",
                                  code="404"), 2)

    def test_healthz_and_metrics(self):
        r = self.router(base_config())
        self.assertEqual(r.request("GET", "/healthz")[:3:2], (200, b"ok\n"))
        self.assertEqual(r.request("HEAD", "/healthz")[0], 200)
        r.post(batch(item(id="a"), item(client_state="wrong")))
        r.wait_jsonl(1)
        status, hdrs, text = r.request("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(hdrs["content-type"].startswith("text/plain; version=0.0.4"))
        text = text.decode()
        for family in ("graphrouter_http_requests_total", "graphrouter_ack_latency_seconds",
                       "graphrouter_items_received_total", "graphrouter_items_accepted_total",
                       "graphrouter_items_dropped_total", "graphrouter_items_routed_total",
                       "graphrouter_items_unrouted_total", "graphrouter_handler_handled_total",
                       "graphrouter_handler_retried_total", "graphrouter_handler_failed_total",
                       "graphrouter_reloads_total", "graphrouter_route_fired_total",
                       "graphrouter_config_generation", "graphrouter_store_items_pending",
                       "graphrouter_store_bytes_pending", "graphrouter_store_items_to_route",
                       "graphrouter_deliveries_pending", "graphrouter_deliveries_running",
                       "graphrouter_dead_letters", "graphrouter_oldest_pending_seconds",
                       "graphrouter_store_commit_seconds", "graphrouter_store_commit_batch",
                       "graphrouter_store_rejected_total", "graphrouter_items_duplicate_total"):
            self.assertIn("# TYPE %s " % family, text)
        m = r.metrics()
        get = lambda name, **l: m.get((name, frozenset(l.items())), 0)
        self.assertEqual(get("graphrouter_items_received_total"), 2)
        self.assertEqual(get("graphrouter_items_accepted_total"), 1)
        self.assertEqual(get("graphrouter_items_dropped_total", reason="bad_client_state"), 1)
        self.assertEqual(get("graphrouter_items_routed_total"), 1)
        self.assertEqual(get("graphrouter_handler_handled_total", handler="out"), 1)
        self.assertEqual(get("graphrouter_route_fired_total", route="all"), 1)
        self.assertEqual(get("graphrouter_ack_latency_seconds_count"), 1)
        self.assertEqual(get("graphrouter_ack_latency_seconds_bucket", le="+Inf"), 1)
        self.assertEqual(get("graphrouter_config_generation"), 1)
        self.assertEqual(get("graphrouter_plugin_file_lines_total", handler="out"), 1)

    def test_full_queue_gets_503(self):
        # Two pending items at most; a slow handler keeps them pending.
        cfg = base_config(store={"max_pending": 2}, workers=1, handlers={
            "slow": {"plugin": fixture_plugin("flaky"), "config": {"sleep_ms": 1500}}},
            routes=[{"name": "all", "to": ["slow"]}])
        r = self.router(cfg)
        self.assertEqual(r.post(batch(item(), item()))[0], 202)
        status, hdrs, body = r.post(batch(item()))
        self.assertEqual(status, 503)
        self.assertEqual(hdrs.get("retry-after"), "5")
        self.assertEqual(r.metric("graphrouter_items_accepted_total"), 2)
        r.wait_for(lambda: r.metric("graphrouter_handler_handled_total", handler="slow") == 2)
        self.assertEqual(r.post(batch(item()))[0], 202)
