"""clientState checks within one mixed batch: the top-level fallback, a
subscription's own secret, a listed subscription presenting the fallback,
wrong and missing values, and a router without a fallback. Items are
independent, the answer is always 202, and no secret ever reaches the log."""

from grtest import SECRET, RouterTest, base_config, batch, item

OWN = "listed-subscription-own-secret"


class ClientStateTest(RouterTest):
    def test_mixed_batch(self):
        r = self.router(base_config(subscriptions=[{"id": "LISTED", "client_state": OWN}]))
        items = [
            item("unlisted", SECRET, id="fallback-ok"),
            item("listed", OWN, id="own-ok"),                 # ids match case-insensitively
            item("listed", SECRET, id="listed-with-fallback"),
            item("unlisted", "not-the-secret", id="wrong"),
            item("unlisted", None, id="missing"),
            item("unlisted", "", id="empty"),
            item("unlisted", SECRET[:-1], id="prefix"),
            item("unlisted", SECRET + "x", id="longer"),
            {"id": "no-subscription", "clientState": SECRET},
            item("unlisted", SECRET, id="fallback-ok-2"),
        ]
        status, _, body = r.post(batch(*items))
        self.assertEqual((status, body), (202, b""))
        lines = r.wait_jsonl(3)
        r.wait_for(lambda: r.metric("graphrouter_items_routed_total") == 3)
        self.assertEqual(sorted(l["id"] for l in r.read_jsonl()),
                         ["fallback-ok", "fallback-ok-2", "own-ok"])
        dropped = lambda reason: r.metric("graphrouter_items_dropped_total", reason=reason)
        self.assertEqual(dropped("bad_client_state"), 5)
        self.assertEqual(dropped("missing_client_state"), 1)
        self.assertEqual(dropped("malformed_item"), 1)
        self.assertEqual(r.metric("graphrouter_items_received_total"), 10)
        self.assertEqual(r.metric("graphrouter_items_accepted_total"), 3)
        log = r.log()
        self.assertIn("does not match this subscription's client_state; subscription=listed", log)
        self.assertIn("does not match the top-level client_state; subscription=unlisted", log)
        for secret in (SECRET, OWN, "not-the-secret", SECRET[:-1]):
            self.assertNotIn(secret, log)

    def test_without_fallback(self):
        cfg = base_config(subscriptions=[{"id": "listed", "client_state": OWN}])
        del cfg["client_state"]
        r = self.router(cfg)
        status, _, _ = r.post(batch(item("listed", OWN, id="ok"),
                                    item("unlisted", SECRET, id="no-secret")))
        self.assertEqual(status, 202)
        self.assertEqual([l["id"] for l in r.wait_jsonl(1)], ["ok"])
        r.wait_for(lambda: r.metric("graphrouter_items_dropped_total", reason="no_secret") == 1)
        self.assertNotIn(OWN, r.log())
        self.assertNotIn(SECRET, r.log())

    def test_a_flood_of_wrong_values_is_logged_in_moderation(self):
        """500 items with a wrong clientState, then 50 POSTs of malformed JSON:
        every one is counted, but each call site writes at most 10 lines per
        10 s (the network must not be able to fill the disk with our log);
        a good item in the same flood is still delivered."""
        r = self.router(base_config())
        items = [item("unlisted", "wrong-%d" % i, id="w%d" % i) for i in range(500)]
        items.append(item("unlisted", SECRET, id="good"))
        self.assertEqual(r.post(batch(*items))[0], 202)
        for _ in range(50):
            self.assertEqual(r.post("{not json")[0], 400)
        self.assertEqual([l["id"] for l in r.wait_jsonl(1)], ["good"])
        self.assertEqual(r.metric("graphrouter_items_dropped_total", reason="bad_client_state"),
                         500)
        log = r.log()
        self.assertEqual(log.count("item dropped (bad_client_state)"), 10)
        self.assertEqual(log.count("notification POST refused: body is not valid JSON"), 10)
        self.assertNotIn("wrong-1", log)
