"""The example configuration as the README's quick start runs it: keys made by
graphrouter-simulate in var/keys, then a handshake, a basic and a rich
notification sent as the README shows, ending up as events in
var/events.jsonl."""

import json
import os
import shutil
import subprocess

from grtest import BINARY, PLUGINS, SOURCE, RouterTest, simulate

APP = "11111111-2222-3333-4444-555555555555"
CLIENT_STATE = "replace-with-your-subscriptions-clientState"


class ExampleConfigTest(RouterTest):
    def test_quick_start(self):
        with open(os.path.join(SOURCE, "config", "graphrouter.json")) as f:
            cfg = json.load(f)
        self.assertEqual(cfg["validation_tokens"]["app_ids"], [APP])
        self.assertEqual(cfg["client_state"], CLIENT_STATE)
        cfg["listen"]["port"] = 0
        cfg["plugin_dir"] = PLUGINS
        r = self.router(cfg, start=False)
        simulate("keys", "--out", r.path("var/keys"), "--cert-id", "graphrouter-example")
        check = subprocess.run([BINARY, "-c", r.config_path, "--check"], cwd=r.dir,
                               capture_output=True, text=True, timeout=60)
        self.assertEqual(check.returncode, 0, check.stderr)
        r.start()
        url = "http://127.0.0.1:%d/notifications" % r.port
        status, _, body = r.request("POST", "/notifications?validationToken=Validation%3a+Testing")
        self.assertEqual((status, body), (200, b"Validation: Testing"))
        self.assertEqual(simulate("notify", "--client-state", CLIENT_STATE, "--url", url),
                         "HTTP 202")
        self.assertEqual(simulate("notify", "--type", "presence", "--rich", "--keys",
                                  r.path("var/keys"), "--cert-id", "graphrouter-example",
                                  "--app-id", APP, "--client-state", CLIENT_STATE, "--url", url),
                         "HTTP 202")
        events = {e["event"]: e for e in r.wait_jsonl(2, "var/events.jsonl")}
        self.assertEqual(set(events), {"mail.message.created", "presence.changed"})
        self.assertEqual(events["presence.changed"]["availability"], "Busy")

    def test_control_plane_example(self):
        # The example's //graph section and //declared_examples, enabled as the comments say,
        # pass --check once their credential files exist.
        with open(os.path.join(SOURCE, "config", "graphrouter.json")) as f:
            cfg = json.load(f)
        cfg["graph"] = cfg.pop("//graph")
        cfg["subscriptions"] += cfg.pop("//declared_examples")
        cfg["plugin_dir"] = PLUGINS
        r = self.router(cfg, start=False)
        simulate("keys", "--out", r.path("var/keys"), "--cert-id", "graphrouter-example")
        with open(r.path("var/graph-client-secret.txt"), "w") as f:
            f.write("the-app's-client-secret\n")
        os.chmod(r.path("var/graph-client-secret.txt"), 0o600)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        r.path("var/keys/app-key.pem"), "-out", r.path("var/keys/app-cert.pem"),
                        "-days", "1", "-subj", "/CN=graphrouter-app"],
                       check=True, capture_output=True)
        check = subprocess.run([BINARY, "-c", r.config_path, "--check"], cwd=r.dir,
                               capture_output=True, text=True, timeout=60)
        self.assertEqual(check.returncode, 0, check.stderr)
        self.assertIn("2 declared subscriptions", check.stdout)
