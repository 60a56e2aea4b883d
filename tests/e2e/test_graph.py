"""The control plane through the real binary against the fake Graph: subscriptions created at
start (request bodies checked field by field), their own clientStates checked by ingest,
renewal before a short granted expiry, a renewal answered 404 (recreate + resync), each
lifecycle event, certificate rotation, the certificate credential over TLS, a create whose
validation fails (retried with backoff), a revoked token (401, a new one, once), metrics and
`graphrouter subscriptions`."""

import base64
import json
import os
import re
import signal
import subprocess
import time

from grtest import BINARY, SECRET
from graphtest import (APP, CLIENT_SECRET, TENANT, GraphTest, declared, self_signed)

RESYNC_ROUTES = [
    {"name": "resync", "match": {"change_type": "resync"}, "to": "resync", "continue": False},
    {"name": "lifecycle", "match": {"resource_type": "lifecycle"}, "to": "life",
     "continue": False},
    {"name": "rest", "default": True, "to": "out"}]
RESYNC_HANDLERS = {"out": {"plugin": "file", "config": {"path": "out.jsonl"}},
                   "life": {"plugin": "file", "config": {"path": "life.jsonl"}},
                   "resync": {"plugin": "file", "config": {"path": "resync.jsonl"}}}


def graph_time_ms(s):
    m = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z$", s)
    assert m, s
    t = time.mktime((int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]), 0, 0,
                     0)) - time.timezone
    return t * 1000 + (int((m[7] or "0")[:3].ljust(3, "0")))


class CreateTest(GraphTest):
    def test_created_at_start_and_secrets_checked(self):
        keys = self.keys()
        with open(keys.cert) as f:
            cert_b64 = "".join(l.strip() for l in f if not l.startswith("-----"))
        subs = [declared(),
                declared("/users/u2/messages?$select=subject,from", ["created"],
                         include_resource_data=True, certificate_id=keys.cert_id),
                {"id": "listed-elsewhere", "client_state": "listed-secret"}]
        r = self.graph_router(subs, validation_tokens={"app_ids": [APP], "jwks_file": keys.jwks},
                              decryption_keys=[keys.decryption_key()])
        t0 = time.time()
        created = self.wait_creates(2)
        base = "http://127.0.0.1:%d" % r.graph_port
        bodies = {q.body["resource"]: q.body for q in created}
        basic, rich = bodies["/users/u1/messages"], bodies["/users/u2/messages?$select=subject,from"]
        for b, minutes in ((basic, 10080), (rich, 1440)):
            self.assertEqual(b["notificationUrl"], base + "/notifications")
            self.assertEqual(b["lifecycleNotificationUrl"], base + "/lifecycle")
            self.assertEqual(b["latestSupportedTlsVersion"], "v1_2")
            self.assertRegex(b["clientState"], r"^[A-Za-z0-9_-]{32,128}$")
            # the maximum lifetime for the resource, from the table (Outlook, rich: 1 day)
            asked = graph_time_ms(b["expirationDateTime"]) / 1000
            self.assertLess(abs(asked - (t0 + minutes * 60)), 30)
        self.assertEqual(basic["changeType"], "created,updated")
        self.assertNotIn("includeResourceData", basic)
        self.assertNotIn("encryptionCertificate", basic)
        self.assertEqual(rich["changeType"], "created")
        self.assertIs(rich["includeResourceData"], True)
        self.assertEqual(rich["encryptionCertificate"], cert_b64)
        self.assertEqual(rich["encryptionCertificateId"], keys.cert_id)
        self.assertNotEqual(basic["clientState"], rich["clientState"])
        # the listener served both validation handshakes of each create
        self.assertEqual(sum(1 for h in self.fake.handshakes if h.ok), 4)
        token = self.fake.requests_matching("POST", r"/oauth2/v2\.0/token$")
        self.assertEqual(len(token), 1)  # cached: one token for every call
        self.assertEqual(token[0].body["client_secret"], CLIENT_SECRET)
        self.assertEqual(token[0].body["scope"], self.fake.url + "/.default")

        live = {s["resource"]: s for s in self.live()}
        sid = live["/users/u1/messages"]["id"]
        r.wait_for(lambda: all(s["state"] == "active" for s in self.sub_json(r)))
        # a notification with the generated clientState is delivered ...
        self.assertEqual(self.fake.notify(sid), 202)
        lines = r.wait_jsonl(1)
        self.assertEqual(lines[0]["subscription_id"], sid)
        self.assertEqual(lines[0]["resource_type"], "message")
        # ... one with another secret, or with the top-level client_state, is dropped
        self.assertEqual(self.fake.notify(sid, client_state="not-the-one"), 202)
        self.assertEqual(self.fake.notify(sid, client_state=SECRET), 202)
        r.wait_for(lambda: r.metric("graphrouter_items_dropped_total",
                                    reason="bad_client_state") == 2)
        r.wait_log(r"clientState does not match the one graphrouter created this subscription with")
        r.wait_idle()
        self.assertEqual(len(r.read_jsonl()), 1)

        listing = self.sub_json(r)
        self.assertEqual(sorted(s["id"] for s in listing), sorted(s["id"] for s in live.values()))
        for s in listing:
            self.assertEqual(s["state"], "active")
            self.assertEqual(s["tenant"], TENANT)
            self.assertIsNone(s["last_error"])
            self.assertNotIn("clientState", json.dumps(s))
        self.assertEqual(next(s for s in listing if s["include_resource_data"])["change_type"],
                         ["created"])
        status, text, _ = r.cli("subscriptions")
        self.assertEqual(status, 0)
        self.assertRegex(text, r"(?m)^%s +active +\S+ +%s +created,updated +/users/u1/messages "
                               r"+-$" % (sid, TENANT))
        self.assertEqual(r.metric("graphrouter_subscriptions", state="active"), 2)
        self.assertEqual(r.metric("graphrouter_subscription_creates_total", result="success"), 2)
        self.assertEqual(r.metric("graphrouter_graph_token_requests_total", result="success"), 1)
        self.assertEqual(r.metric("graphrouter_graph_requests_total", code="201"), 2)
        left = r.metric("graphrouter_subscription_next_expiry_seconds")
        self.assertGreater(left, 1440 * 60 - 120)
        self.assertLess(left, 1440 * 60 + 1)
        # the listed subscription is still checked as before
        self.assertEqual(r.post({"value": [{"subscriptionId": "listed-elsewhere",
                                             "clientState": "listed-secret",
                                             "changeType": "created",
                                             "resource": "Users/x/Messages/y"}]})[0], 202)
        r.wait_jsonl(2)

    def test_validation_failure_is_logged_and_retried_with_backoff(self):
        self.fake.fail_validation(times=3)
        r = self.graph_router([declared()])
        created = self.wait_creates(1, timeout=30)
        posts = self.creates(status=None)
        self.assertEqual([q.status for q in posts], [400, 400, 400, 201])
        gaps = [b.time - a.time for a, b in zip(posts, posts[1:])]
        # 1 s doubling, between half of it and all of it: 0.5-1, 1-2, 2-4 s (plus the call)
        self.assertGreater(gaps[0], 0.4)
        self.assertLess(gaps[0], 1.8)
        self.assertGreater(gaps[1], 0.9)
        self.assertLess(gaps[1], 2.8)
        self.assertGreater(gaps[2], 1.9)
        self.assertLess(gaps[2], 4.8)
        r.wait_log(r"subscription \(not created\) \(tenant %s, resource /users/u1/messages\): "
                   r"creating it failed \(attempt 1\): HTTP 400 ValidationError: Subscription "
                   r"validation request failed\." % TENANT)
        self.assertEqual(r.metric("graphrouter_subscription_creates_total", result="failure"), 3)
        self.assertEqual(len(created), 1)

    def test_revoked_token_is_fetched_again_once(self):
        self.fake.grant_seconds = 6
        r = self.graph_router([declared()])
        self.wait_creates(1)
        self.fake.revoke_tokens(TENANT)
        patches = self.wait_requests("PATCH", r"^/v1\.0/subscriptions/", n=2)
        self.assertEqual([q.status for q in patches[:2]], [401, 200])
        tokens = self.fake.requests_matching("POST", r"/oauth2/v2\.0/token$")
        self.assertEqual([q.status for q in tokens], [200, 200])
        self.assertEqual(r.metric("graphrouter_graph_requests_total", code="401"), 1)


class TokenTest(GraphTest):
    def test_a_token_is_renewed_before_it_expires(self):
        fake = self.start_fake(token_lifetime_s=8)
        fake.add_tenant(TENANT, APP, secret=CLIENT_SECRET)
        fake.grant_seconds = 2  # a call every 1.3 s or so
        r = self.graph_router([declared()], fake=fake)
        self.wait_creates(1, fake=fake)
        self.wait_requests("PATCH", r"^/v1\.0/subscriptions/", n=8, fake=fake, timeout=30)
        tokens = fake.requests_matching("POST", r"/oauth2/v2\.0/token$")
        # a quarter of its 8 s early: a new one at the first call 6 s on, never a 401
        self.assertGreaterEqual(len(tokens), 2)
        gaps = [b.time - a.time for a, b in zip(tokens, tokens[1:])]
        self.assertTrue(all(5.9 < g < 7.9 for g in gaps), gaps)
        self.assertEqual([q for q in fake.requests if q.status == 401], [])


class RenewalTest(GraphTest):
    def test_renewed_before_a_short_granted_expiry(self):
        self.fake.grant_seconds = 6
        r = self.graph_router([declared()])
        created = self.wait_creates(1)
        sid = self.live()[0]["id"]
        patches = self.wait_requests("PATCH", r"^/v1\.0/subscriptions/" + sid, n=2)
        # two thirds of the 6 s granted, up to 5 % of it earlier: 3.7-4.0 s, then again
        first = patches[0].time - created[0].time
        self.assertGreater(first, 3.4)
        self.assertLess(first, 4.6)
        self.assertEqual(patches[0].status, 200)
        self.assertIn("expirationDateTime", patches[0].body)
        self.assertEqual(set(patches[0].body), {"expirationDateTime"})
        r.wait_for(lambda: r.metric("graphrouter_subscription_renewals_total",
                                    result="success") >= 2)
        self.assertEqual(len(self.creates()), 1)  # still the same subscription
        self.assertEqual([s["id"] for s in self.live()], [sid])
        r.wait_log(r"subscription %s renewed \(tenant %s, resource /users/u1/messages\); Graph "
                   r"granted it until " % (sid, TENANT))

    def test_renewal_answered_404_recreates_and_resyncs(self):
        self.fake.grant_seconds = 6
        r = self.graph_router([declared()], handlers=RESYNC_HANDLERS, routes=RESYNC_ROUTES)
        self.wait_creates(1)
        old = self.live()[0]["id"]
        self.fake.fail("PATCH", r"/subscriptions/", 404)
        created = self.wait_creates(2)
        patch404 = self.fake.requests_matching("PATCH")[0]
        self.assertEqual(patch404.status, 404)
        self.assertLess(created[1].time - patch404.time, 2.0)  # at once
        new = next(s["id"] for s in self.live() if s["id"] != old)
        resync = r.wait_jsonl(1, "resync.jsonl")[0]
        self.assertEqual(resync["change_type"], "resync")
        self.assertEqual(resync["resync_reason"], "renewal_not_found")
        self.assertEqual(resync["subscription_id"], new)
        self.assertEqual(resync["resource"], "/users/u1/messages")
        self.assertEqual(resync["resource_type"], "message")
        self.assertEqual(resync["resource_ids"], {"user": "u1"})
        self.assertEqual(resync["tenant_id"], TENANT)
        self.assertEqual(r.metric("graphrouter_resyncs_total", reason="renewal_not_found"), 1)
        # the new subscription's secret is the one checked now
        self.assertEqual(self.fake.notify(new), 202)
        self.assertEqual(r.wait_jsonl(1)[0]["subscription_id"], new)


class LifecycleTest(GraphTest):
    def test_each_lifecycle_event(self):
        r = self.graph_router([declared()], handlers=RESYNC_HANDLERS, routes=RESYNC_ROUTES)
        self.wait_creates(1)
        sid = self.live()[0]["id"]
        r.wait_for(lambda: self.sub_json(r)[0]["state"] == "active")

        # reauthorizationRequired: a renewal PATCH at once (never /reauthorize)
        self.assertEqual(self.fake.lifecycle(sid, "reauthorizationRequired"), 202)
        sent = time.monotonic()
        patch = self.wait_requests("PATCH", r"^/v1\.0/subscriptions/" + sid)[0]
        self.assertLess(patch.time - sent, 2.0)
        self.assertEqual(patch.status, 200)

        # missed: a resync, the subscription kept
        self.assertEqual(self.fake.lifecycle(sid, "missed"), 202)
        resync = r.wait_jsonl(1, "resync.jsonl")[0]
        self.assertEqual((resync["resync_reason"], resync["subscription_id"]), ("missed", sid))

        # subscriptionRemoved: a new subscription, then a resync naming it
        self.assertEqual(self.fake.lifecycle(sid, "subscriptionRemoved"), 202)
        sent = time.monotonic()
        created = self.wait_creates(2)
        self.assertLess(created[1].time - sent, 2.0)
        new = self.live()[0]["id"]
        self.assertNotEqual(new, sid)
        resyncs = r.wait_jsonl(2, "resync.jsonl")
        self.assertEqual((resyncs[1]["resync_reason"], resyncs[1]["subscription_id"]),
                         ("subscriptionRemoved", new))
        self.assertNotEqual(created[1].body["clientState"], created[0].body["clientState"])

        # the lifecycle items are still routed to handlers, as any notification
        life = r.wait_jsonl(3, "life.jsonl")
        self.assertEqual([l["lifecycle_event"] for l in life],
                         ["reauthorizationRequired", "missed", "subscriptionRemoved"])
        self.assertEqual(self.fake.requests_matching(path_regex="/reauthorize$"), [])
        for event in ("reauthorizationRequired", "missed", "subscriptionRemoved"):
            self.assertEqual(r.metric("graphrouter_lifecycle_events_total", event=event), 1)
        # the old subscription is no longer ours: its events are dropped and change nothing
        self.assertEqual(self.fake.lifecycle(sid, "missed"), 202)
        r.wait_for(lambda: r.metric("graphrouter_items_dropped_total",
                                    reason="bad_client_state") == 1)
        time.sleep(0.5)
        self.assertEqual(len(r.read_jsonl("resync.jsonl")), 2)
        self.assertEqual(len(self.creates()), 2)


class RotationTest(GraphTest):
    def test_certificate_rotation_is_a_patch(self):
        old, new = self.keys("old", "cert-old"), self.keys("new", "cert-new")
        tokens = {"app_ids": [APP], "jwks_file": old.jwks}
        sub = declared("/users/u1/messages?$select=subject", ["created"],
                       include_resource_data=True, certificate_id="cert-old")
        r = self.graph_router([sub], validation_tokens=tokens,
                              decryption_keys=[old.decryption_key()])
        created = self.wait_creates(1)
        self.assertEqual(created[0].body["encryptionCertificateId"], "cert-old")
        sid = self.live()[0]["id"]
        # the new key beside the old one; the declaration moves to it
        cfg = self.graph_config([dict(sub, certificate_id="cert-new")], r.graph_port,
                                validation_tokens=tokens,
                                decryption_keys=[old.decryption_key(), new.decryption_key()])
        r.write_config(cfg)
        r.send_signal(signal.SIGHUP)
        sent = time.monotonic()
        patch = self.wait_requests("PATCH", r"^/v1\.0/subscriptions/" + sid)[0]
        self.assertLess(patch.time - sent, 3.0)
        with open(new.cert) as f:
            new_b64 = "".join(l.strip() for l in f if not l.startswith("-----"))
        self.assertEqual(patch.body["encryptionCertificateId"], "cert-new")
        self.assertEqual(patch.body["encryptionCertificate"], new_b64)
        self.assertIn("expirationDateTime", patch.body)
        self.assertEqual(patch.status, 200)
        self.assertEqual(self.live()[0]["encryptionCertificateId"], "cert-new")
        self.assertEqual(len(self.creates()), 1)  # no gap: the same subscription
        r.wait_log(r'subscription %s renewed .*encryption certificate now "cert-new"' % sid)
        # no second PATCH for the same certificate
        r.send_signal(signal.SIGHUP)
        r.wait_for(lambda: r.metric("graphrouter_reloads_total", result="success") == 2)
        time.sleep(1)
        self.assertEqual(len(self.fake.requests_matching("PATCH")), 1)


class CertificateCredentialTest(GraphTest):
    def test_client_assertion_over_tls(self):
        tls = self_signed(self._scratch, "tls", cn="127.0.0.1")
        fake = self.start_fake(tls=tls)
        app_cert, app_key = self_signed(self._scratch, "app")
        fake.add_tenant(TENANT, APP, certificate=app_cert)
        tenants = [{"id": TENANT, "client_certificate_file": app_cert,
                    "private_key_file": app_key}]
        r = self.graph_router([declared()], tenants=tenants, fake=fake,
                              graph={"ca_file": tls[0]})
        self.wait_creates(1, fake=fake)
        token = fake.requests_matching("POST", r"/oauth2/v2\.0/token$")
        self.assertEqual([q.status for q in token], [200])
        form = token[0].body
        self.assertEqual(form["client_assertion_type"],
                         "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        self.assertNotIn("client_secret", form)
        header = json.loads(base64.urlsafe_b64decode(form["client_assertion"].split(".")[0] + "=="))
        claims = json.loads(base64.urlsafe_b64decode(form["client_assertion"].split(".")[1] + "=="))
        self.assertEqual(header["alg"], "RS256")
        self.assertEqual(claims["aud"], fake.token_url(TENANT))
        self.assertEqual((claims["iss"], claims["sub"]), (APP, APP))
        self.assertTrue(0 < claims["exp"] - time.time() <= 600)
        self.assertTrue(claims["jti"])
        for s in (form["client_assertion"],):
            self.assertNotIn(s, r.log())

    def test_an_untrusted_graph_certificate_is_refused(self):
        tls = self_signed(self._scratch, "tls", cn="127.0.0.1")
        fake = self.start_fake(tls=tls)
        fake.add_tenant(TENANT, APP, secret=CLIENT_SECRET)
        r = self.graph_router([declared()], fake=fake)  # no ca_file: the fake is not trusted
        r.wait_log(r"listing tenant %s's failed: the token request for the app failed: "
                   r".*(certificate|SSL)" % TENANT)
        r.wait_for(lambda: r.metric("graphrouter_graph_token_requests_total",
                                    result="failure") >= 1)
        self.assertEqual(fake.requests, [])

    def test_a_certificate_entra_does_not_know(self):
        app_cert, app_key = self_signed(self._scratch, "app")
        other_cert, _ = self_signed(self._scratch, "other")
        self.fake.add_tenant(TENANT, APP, certificate=other_cert)
        r = self.graph_router([declared()], tenants=[{"id": TENANT,
                                                      "client_certificate_file": app_cert,
                                                      "private_key_file": app_key}])
        r.wait_log(r"the token request for the app failed: HTTP 401 invalid_client: AADSTS700027")
        r.wait_for(lambda: self.sub_json(r)[0]["state"] == "failing")
        self.assertEqual(self.creates(), [])
        self.assertIn("AADSTS700027", self.sub_json(r)[0]["last_error"])


class CheckTest(GraphTest):
    def check(self, r):
        return r.cli("--check")

    def test_check_reads_every_credential_and_calls_nobody(self):
        keys = self.keys()
        app_cert, app_key = self_signed(self._scratch, "app")
        other_cert, other_key = self_signed(self._scratch, "other")
        tenants = [{"id": TENANT, "client_secret_file": "secret.txt"},
                   {"id": "t2", "client_certificate_file": app_cert, "private_key_file": app_key},
                   {"id": "t3", "client_secret_env": "GR_E2E_GRAPH_SECRET"}]
        subs = [declared(tenant=TENANT),
                declared("/communications/presences/u", ["updated"], tenant="t2",
                         include_resource_data=True, certificate_id=keys.cert_id)]
        extra = {"validation_tokens": {"app_ids": [APP], "jwks_file": keys.jwks},
                 "decryption_keys": [keys.decryption_key()]}
        r = self.graph_router(subs, tenants=tenants, start=False, **extra)
        p = subprocess.run([BINARY, "-c", r.config_path, "--check"], cwd=r.dir,
                           capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, GR_E2E_GRAPH_SECRET="from-env"))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(p.stdout.strip().endswith("ok (1 handlers, 1 routes, 2 declared "
                                                  "subscriptions)"), p.stdout)
        # not set in the environment
        status, _, err = self.check(r)
        self.assertEqual(status, 1)
        self.assertRegex(err, r'graphrouter\.json:\d+:\d+: graph tenant "t3": the environment '
                              r'variable GR_E2E_GRAPH_SECRET is not set')
        # a secret file others can read
        tenants[2] = {"id": "t3", "client_secret_file": "secret.txt"}
        os.chmod(r.path("secret.txt"), 0o644)
        r.write_config(self.graph_config(subs, r.graph_port, tenants=tenants, **extra))
        status, _, err = self.check(r)
        self.assertEqual(status, 1)
        self.assertRegex(err, r'graphrouter\.json:\d+:\d+: graph tenant "%s": secret\.txt is '
                              r'readable or writable by group or others \(mode 0644\)' % TENANT)
        os.chmod(r.path("secret.txt"), 0o600)
        # a certificate that is not the key's
        tenants[1] = {"id": "t2", "client_certificate_file": other_cert,
                      "private_key_file": app_key}
        r.write_config(self.graph_config(subs, r.graph_port, tenants=tenants, **extra))
        status, _, err = self.check(r)
        self.assertEqual(status, 1)
        self.assertRegex(err, r'graph tenant "t2": the certificate .*other\.pem does not belong '
                              r'to the private key')
        # a rich subscription whose key has no certificate to give Graph
        tenants[1] = {"id": "t2", "client_certificate_file": app_cert, "private_key_file": app_key}
        extra["decryption_keys"] = [keys.decryption_key(certificate=False)]
        r.write_config(self.graph_config(subs, r.graph_port, tenants=tenants, **extra))
        status, _, err = self.check(r)
        self.assertEqual(status, 1)
        self.assertRegex(err, r'subscription "/communications/presences/u": the decryption key '
                              r'"test-cert" has no certificate to give Graph')
        # a lifetime Graph does not allow
        extra["decryption_keys"] = [keys.decryption_key()]
        subs[1]["expiration_minutes"] = 90
        r.write_config(self.graph_config(subs, r.graph_port, tenants=tenants, **extra))
        status, _, err = self.check(r)
        self.assertEqual(status, 1)
        self.assertRegex(err, r'graphrouter\.json:\d+:\d+: "expiration_minutes" of subscription '
                              r'"/communications/presences/u" must be between 1 and 60')
        self.assertEqual(self.fake.requests, [])  # --check never calls Graph
