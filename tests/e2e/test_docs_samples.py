"""Every payload from Microsoft's documentation in tests/vectors/docs-samples:
the HTTP status graphrouter answers, and the classification of what it routes.

Each sample runs on a router whose fallback client_state is the sample's own
clientState placeholder, so the items are judged as Graph would send them.
Rich samples carry placeholder tokens and ciphertext: without validation_tokens
and decryption_keys they are dropped as rich_not_configured; with them, their
placeholder tokens are rejected as malformed (token_missing). Classification of their resource paths is
covered by tests/unit/test_classify.c."""

import json
import os

from grtest import VECTORS, RouterTest, base_config, rich_config

SAMPLES = os.path.join(VECTORS, "docs-samples")

# file -> (status, routed resource types in order, or None for "nothing routed";
#          extra checks on the first routed notification)
EXPECTED = {
    "01-basic-outlook-message-created.json": (202, ["message"], {
        "resource_ids": {"user": "{user_guid}@{tenant_guid}", "message": "{long_id_string}"},
        "id": "lsgTZMr9KwAAA", "change_type": "created"}),
    "02-rich-channel-reply-encrypted-placeholder.json": (202, None, {"dropped": "missing_client_state"}),
    "03-validationtokens-two-tenants-truncated.json": (202, None, {"dropped": "missing_client_state"}),
    "04-jwt-claims-v2-example.json": (400, None, {}),
    "05-jwt-claims-v1-example.json": (400, None, {}),
    "06-lifecycle-reauthorizationRequired.json": (202, ["lifecycle"], {
        "lifecycle_event": "reauthorizationRequired", "resource": None, "change_type": None,
        "subscription_expiration": "2019-09-18T00:52:45.9696658+00:00"}),
    "07-lifecycle-subscriptionRemoved.json": (202, ["lifecycle"], {
        "lifecycle_event": "subscriptionRemoved", "tenant_id": "<tenant_guid>"}),
    "08-lifecycle-missed.json": (202, ["lifecycle"], {"lifecycle_event": "missed"}),
    "09-eventhubs-validation-message.json": (202, None, {"dropped": "validation_message"}),
    "10-teams-chat-message-rich-placeholder.json": (202, None, {"dropped": "rich_not_configured"}),
    "11-teams-channel-message-basic.json": (202, ["chatMessage"], {
        "resource_ids": {"team": "fbe2bf47-16c8-47cf-b4a5-4b9b187c508b",
                         "channel": "19:4a95f7d8db4c4e7fae857bcebe0623e6@thread.tacv2",
                         "message": "1612293113399"}}),
    "12-eventgrid-cloudevent-user-updated.json": (400, None, {}),
    "13-outlook-message-rich-placeholder.json": (202, None, {"dropped": "rich_not_configured"}),
    "14-outlook-message-rich-decrypted.json": (400, None, {}),
    "15-outlook-message-basic.json": (202, ["message"], {
        "resource": "Users/622eaaff-0683-4862-9de4-f2ec83c2bd98/Messages/AAMkAGUwNjQ4ZjIxAAA=",
        "subscription_expiration": "2022-01-02T03:12:18.2257768+05:30"}),
    "16-presence-basic.json": (202, ["presence"], {"resource_ids": {"presence": "{id}"},
                                                   "tenant_id": "{Organization/Tenant id}"}),
    "17-presence-rich-placeholder.json": (202, None, {"dropped": "rich_not_configured"}),
    "18-presence-rich-decrypted.json": (400, None, {}),
    "19-teams-chat-message-decrypted.json": (400, None, {}),
    "20-teams-team-rich-placeholder.json": (202, None, {"dropped": "rich_not_configured"}),
    "21-teams-channel-rich-placeholder.json": (202, None, {"dropped": "rich_not_configured"}),
    "22-teams-team-basic-note-plural-odata-type.json": (202, ["team"], {}),
    "23-teams-callrecord-basic.json": (202, ["callRecord"], {
        "resource_ids": {"callRecord": "{Call id}"}}),
    "24-historic-2017-drive-notification-resourceData-null.json": (400, None, {}),
    "25-historic-2017-message-capitalised-Created-and-Id.json": (202, ["message"], {
        "change_type": "created"}),
}


class DocsSamplesTest(RouterTest):
    def test_every_sample(self):
        files = sorted(f for f in os.listdir(SAMPLES) if f.endswith(".json"))
        self.assertEqual(files, sorted(EXPECTED))
        for name in files:
            with self.subTest(name):
                self.check(name, *EXPECTED[name])

    def check(self, name, status, types, extra):
        with open(os.path.join(SAMPLES, name), "rb") as f:
            raw = f.read()
        doc = json.loads(raw)
        items = doc.get("value") if isinstance(doc, dict) else None
        secret = next((i.get("clientState") for i in items or [] if i.get("clientState")), "x")
        r = self.router(base_config(client_state=secret))
        got, _, _ = r.post(raw)
        self.assertEqual(got, status)
        if types:
            lines = r.wait_jsonl(len(types))
            self.assertEqual([l["resource_type"] for l in lines], types)
            for key, want in extra.items():
                self.assertEqual(lines[0][key], want, key)
            item0 = items[0]
            self.assertEqual(lines[0]["resource"], item0.get("resource"))
            self.assertEqual(lines[0]["subscription_id"], item0["subscriptionId"])
            self.assertEqual(lines[0]["resource_data"], item0.get("resourceData"))
        elif status == 202:
            r.wait_for(lambda: r.metric("graphrouter_items_dropped_total",
                                        reason=extra["dropped"]) == len(items))
            # clientState problems are dropped on the request path; rich items
            # are accepted (and stored) first, then judged by a worker
            worker_stage = extra["dropped"] == "rich_not_configured"
            self.assertEqual(r.metric("graphrouter_items_accepted_total"),
                             len(items) if worker_stage else 0)
        self.assertEqual(r.stop(), 0, r.log())
        self.assertEqual(len(r.read_jsonl()), len(types or []))

    def test_rich_samples_with_keys_configured(self):
        for name, (_, types, extra) in sorted(EXPECTED.items()):
            if extra.get("dropped") != "rich_not_configured":
                continue
            with self.subTest(name):
                with open(os.path.join(SAMPLES, name), "rb") as f:
                    raw = f.read()
                doc = json.loads(raw)
                r = self.router(rich_config(self.keys(), client_state=doc["value"][0]["clientState"]))
                self.assertEqual(r.post(raw)[0], 202)
                # the placeholder "token" is no JWT: counted as malformed when the POST
                # is read, and the item has no usable token
                r.wait_for(lambda: r.metric("graphrouter_items_dropped_total",
                                            reason="token_missing") == 1)
                self.assertEqual(r.metric("graphrouter_validation_tokens_total",
                                          result="malformed"), 1)
                self.assertEqual(r.stop(), 0)
                self.assertEqual(r.read_jsonl(), [])

    def test_bare_historic_item_when_wrapped(self):
        # Sample 24 is a bare item (the 2017 docs showed no "value" wrapper):
        # refused above; wrapped as Graph sends it, it is a driveItem.
        with open(os.path.join(SAMPLES, "24-historic-2017-drive-notification-resourceData-null.json")) as f:
            it = json.load(f)
        r = self.router(base_config(client_state=it["clientState"]))
        self.assertEqual(r.post({"value": [it]})[0], 202)
        line = r.wait_jsonl(1)[0]
        self.assertEqual((line["resource_type"], line["resource"], line["resource_data"],
                          line["tenant_id"], line["id"]),
                         ("driveItem", "me/drive/root", None, None, None))
