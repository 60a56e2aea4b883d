"""Lifecycle notifications: classified "lifecycle" on either path, whatever
else they carry; routable on their own; unknown events still delivered."""

from grtest import SECRET, RouterTest, base_config, batch


def lifecycle(event, sub="sub-1", **kw):
    it = {"subscriptionId": sub, "subscriptionExpirationDateTime": "2030-01-01T00:00:00.0000000Z",
          "tenantId": "t1", "clientState": SECRET, "lifecycleEvent": event}
    it.update(kw)
    return it


class LifecycleTest(RouterTest):
    def test_both_paths_and_routing(self):
        cfg = base_config(handlers={
            "life": {"plugin": "file", "config": {"path": "life.jsonl"}},
            "out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
            routes=[{"name": "lifecycle", "match": {"resource_type": "lifecycle"}, "to": "life",
                     "continue": False},
                    {"name": "rest", "default": True, "to": "out"}])
        r = self.router(cfg)
        self.assertEqual(r.post(batch(lifecycle("reauthorizationRequired"),
                                      lifecycle("subscriptionRemoved")), path="/lifecycle")[0], 202)
        # on the notifications path, with a resource: still lifecycle
        self.assertEqual(r.post(batch(lifecycle("missed", resource="users/u/messages"),
                                      lifecycle("somethingNew"))  # future events are kept
                                )[0], 202)
        # a mixed batch: one change, one lifecycle item
        change = {"subscriptionId": "s", "clientState": SECRET, "changeType": "updated",
                  "resource": "Users/u", "tenantId": "t1"}
        self.assertEqual(r.post(batch(change, lifecycle("missed")))[0], 202)
        life = r.wait_jsonl(5, "life.jsonl")
        self.assertEqual(sorted(l["lifecycle_event"] for l in life),
                         ["missed", "missed", "reauthorizationRequired", "somethingNew",
                          "subscriptionRemoved"])
        self.assertTrue(all(l["resource_type"] == "lifecycle" for l in life))
        self.assertEqual([l["resource_ids"] for l in life if l["resource"]], [{"user": "u"}])
        out = r.wait_jsonl(1)
        self.assertEqual([(l["resource_type"], "lifecycle_event" in l) for l in out],
                         [("user", False)])
