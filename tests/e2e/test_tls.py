"""Native HTTPS ("tls"): the handshake as curl makes it with --cacert, the
protocol versions and cipher suites refused, certificate reload on SIGHUP
(a bad one keeps the old one serving), and the key file's permissions."""
import json
import os
import signal
import socket
import subprocess
import time
import unittest

from grtest import BINARY, RouterTest, base_config, batch, item, parse_metrics

OPENSSL = "openssl"
CURL = "curl"


def make_ca(d, name):
    key, cert = os.path.join(d, name + "-ca.key"), os.path.join(d, name + "-ca.pem")
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj",
                    "/CN=graphrouter test CA " + name], check=True, capture_output=True)
    return key, cert


def make_server_cert(d, ca, cn, key_type=("rsa:2048",)):
    """A certificate for 127.0.0.1 signed by `ca`; returns (cert, key) paths."""
    ca_key, ca_cert = ca
    key, csr, cert = (os.path.join(d, cn + ext) for ext in (".key", ".csr", ".pem"))
    ext = os.path.join(d, cn + ".ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subprocess.run([OPENSSL, "req", "-newkey", *key_type, "-nodes", "-keyout", key, "-out", csr,
                    "-subj", "/CN=" + cn], check=True, capture_output=True)
    subprocess.run([OPENSSL, "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
                    "-CAcreateserial", "-out", cert, "-days", "1", "-extfile", ext],
                   check=True, capture_output=True)
    os.chmod(key, 0o600)
    return cert, key


def not_after(cert):
    out = subprocess.run([OPENSSL, "x509", "-in", cert, "-noout", "-enddate", "-dateopt",
                          "iso_8601"], check=True, capture_output=True, text=True).stdout
    # notAfter=2026-12-05 10:11:12Z
    return time.mktime(time.strptime(out.strip().split("=", 1)[1], "%Y-%m-%d %H:%M:%SZ")) \
        - time.timezone


class TlsTest(RouterTest):
    def setUp(self):
        super().setUp()
        self.d = self._scratch
        self.ca1 = make_ca(self.d, "one")
        self.ca2 = make_ca(self.d, "two")

    def tls_router(self, cert, key, **limits):
        # the router's files: copies, so a test can overwrite them in place
        cfg = base_config(tls={"cert_file": os.path.join(self.d, "live.pem"),
                               "key_file": os.path.join(self.d, "live.key")})
        if limits:
            cfg["limits"] = limits
        self.install(cert, key)
        return self.router(cfg)

    def install(self, cert, key):
        for src, dst in ((cert, "live.pem"), (key, "live.key")):
            with open(src, "rb") as f:
                data = f.read()
            path = os.path.join(self.d, dst)
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)

    def curl(self, r, path, ca, *args, body=None):
        """curl over HTTPS, verifying the server against `ca`; returns
        (exit code, HTTP status or 0, stderr)."""
        cmd = [CURL, "-sS", "--max-time", "10", "--cacert", ca[1], "-o", "/dev/null",
               "-w", "%{http_code}", *args]
        if body is not None:
            cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        cmd.append("https://127.0.0.1:%d%s" % (r.port, path))
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return p.returncode, int(p.stdout or 0), p.stderr

    def test_https_handshake_and_notification(self):
        cert, key = make_server_cert(self.d, self.ca1, "first")
        r = self.tls_router(cert, key)
        self.assertRegex(r.log(), r"listening on https://127\.0\.0\.1:\d+ ")
        self.assertRegex(r.text(), r'tls: serving the certificate CN=first from .*live\.pem')
        rc, status, err = self.curl(r, "/healthz", self.ca1)
        self.assertEqual((rc, status), (0, 200), err)
        rc, status, err = self.curl(r, "/notifications", self.ca1, body=batch(item(id="tls-1")))
        self.assertEqual((rc, status), (0, 202), err)
        self.assertEqual([l["id"] for l in r.wait_jsonl(1)], ["tls-1"])
        # both TLS 1.3 and TLS 1.2 with an AEAD suite are served
        for args in (["--tlsv1.3"], ["--tlsv1.2", "--tls-max", "1.2",
                                     "--ciphers", "ECDHE-RSA-AES128-GCM-SHA256"]):
            rc, status, err = self.curl(r, "/healthz", self.ca1, *args)
            self.assertEqual((rc, status), (0, 200), (args, err))
        # the other CA does not vouch for this certificate
        rc, _, _ = self.curl(r, "/healthz", self.ca2)
        self.assertNotEqual(rc, 0)
        # the expiry of the certificate in force, for alerting
        self.assertAlmostEqual(
            self.https_metric(r, "graphrouter_tls_certificate_expiry_timestamp_seconds"),
            not_after(cert), delta=2)

    def https_metric(self, r, name, ca=None, **labels):
        p = subprocess.run([CURL, "-sS", "--max-time", "10", "--cacert", (ca or self.ca1)[1],
                            "https://127.0.0.1:%d/metrics" % r.port],
                           capture_output=True, text=True, timeout=30, check=True)
        return parse_metrics(p.stdout).get((name, frozenset(labels.items())), 0.0)

    def test_old_protocols_and_weak_ciphers_are_refused(self):
        cert, key = make_server_cert(self.d, self.ca1, "strict")
        r = self.tls_router(cert, key)
        refused = (
            ["--tlsv1.0", "--tls-max", "1.1"],                               # TLS 1.0 and 1.1
            ["--tlsv1.2", "--tls-max", "1.2", "--ciphers", "AES128-SHA"],    # CBC, no ECDHE
            ["--tlsv1.2", "--tls-max", "1.2", "--ciphers", "AES256-GCM-SHA384"],  # no ECDHE
            ["--tlsv1.2", "--tls-max", "1.2", "--ciphers", "ECDHE-RSA-AES128-SHA"],  # CBC
        )
        for args in refused:
            rc, status, err = self.curl(r, "/healthz", self.ca1, *args)
            self.assertNotEqual(rc, 0, "served with %s" % args)
            self.assertEqual(status, 0, args)
        # plain HTTP on the HTTPS port is not served
        with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except (ConnectionResetError, socket.timeout):
                pass
        self.assertNotIn(b"200", data)
        # and the router still serves properly afterwards
        rc, status, err = self.curl(r, "/healthz", self.ca1)
        self.assertEqual((rc, status), (0, 200), err)

    def test_certificate_reload(self):
        cert, key = make_server_cert(self.d, self.ca1, "before")
        r = self.tls_router(cert, key)
        self.assertEqual(self.curl(r, "/healthz", self.ca1)[:2], (0, 200))
        # a connection kept alive across the reload keeps working: open one now
        keep = subprocess.Popen([CURL, "-sS", "--max-time", "20", "--cacert", self.ca1[1],
                                 "-o", "/dev/null", "-w", "%{http_code} ",
                                 "https://127.0.0.1:%d/healthz" % r.port,
                                 "--next", "--cacert", self.ca1[1], "-o", "/dev/null",
                                 "-w", "%{http_code}", "--limit-rate", "1k",
                                 "https://127.0.0.1:%d/metrics" % r.port],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        # a certificate from another CA, with an EC key (SEC1 PEM), takes effect on
        # SIGHUP, no restart
        cert2, key2 = make_server_cert(self.d, self.ca2, "after",
                                       ("ec", "-pkeyopt", "ec_paramgen_curve:P-256"))
        subprocess.run([OPENSSL, "ec", "-in", key2, "-out", key2], check=True,
                       capture_output=True)  # "EC PRIVATE KEY" rather than PKCS#8
        self.install(cert2, key2)
        pid = r.proc.pid
        r.send_signal(signal.SIGHUP)
        r.wait_log(r"reloaded: generation 2")
        r.wait_log(r"tls: serving the certificate CN=after")
        self.assertEqual(r.proc.pid, pid)
        self.assertEqual(self.curl(r, "/healthz", self.ca2)[:2], (0, 200))
        self.assertNotEqual(self.curl(r, "/healthz", self.ca1)[0], 0)
        out, err = keep.communicate(timeout=30)
        self.assertEqual(out.split(), ["200", "200"], err)
        self.assertAlmostEqual(
            self.https_metric(r, "graphrouter_tls_certificate_expiry_timestamp_seconds",
                              ca=self.ca2),
            not_after(cert2), delta=2)

        # broken replacements: each reload fails and the certificate in force stays
        other_cert, other_key = make_server_cert(self.d, self.ca1, "other")
        garbage = os.path.join(self.d, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        loose_key = os.path.join(self.d, "loose.key")
        with open(key2, "rb") as src, open(loose_key, "wb") as dst:
            dst.write(src.read())
        os.chmod(loose_key, 0o644)
        cases = [
            ((garbage, key2), r"not a PEM certificate chain"),
            ((cert2, other_key), r"the key does not belong to the first certificate"),
            ((cert2, loose_key), r"readable or writable by group or others \(mode 0644\)"),
        ]
        for n, ((c, k), why) in enumerate(cases, 1):
            self.install(c, k)
            if k == loose_key:
                os.chmod(os.path.join(self.d, "live.key"), 0o644)
            r.send_signal(signal.SIGHUP)
            r.wait_log(r"reload failed; generation 2 keeps serving: .*tls: .*" + why, count=1)
            self.assertEqual(self.curl(r, "/healthz", self.ca2)[:2], (0, 200), why)
            rc, status, err = self.curl(r, "/notifications", self.ca2,
                                        body=batch(item(id="kept-%d" % n)))
            self.assertEqual((rc, status), (0, 202), err)
        self.assertEqual(self.https_metric(r, "graphrouter_reloads_total", ca=self.ca2,
                                           result="failure"), len(cases))
        # no key material in the log
        with open(key2) as f:
            body = [l for l in f.read().splitlines() if l and not l.startswith("-----")]
        for line in body:
            self.assertNotIn(line, r.log())

        # switching TLS off is refused: the listener speaks HTTPS from its start
        self.install(cert2, key2)
        cfg = base_config()
        r.write_config(cfg)
        r.send_signal(signal.SIGHUP)
        r.wait_log(r'reload failed; generation 2 keeps serving: "tls" was removed')
        self.assertEqual(self.curl(r, "/healthz", self.ca2)[:2], (0, 200))

    def test_key_file_readable_by_others_is_refused(self):
        cert, key = make_server_cert(self.d, self.ca1, "loose")
        os.chmod(key, 0o640)
        cfg = base_config(tls={"cert_file": cert, "key_file": key})
        r = self.router(cfg, start=False)
        rc, out, err = r.cli("--check")
        self.assertNotEqual(rc, 0)
        self.assertRegex(err, r"graphrouter\.json:\d+:\d+: tls: .*loose\.key is readable or "
                              r"writable by group or others \(mode 0640\)")
        p = subprocess.run([BINARY, "-c", r.config_path], cwd=r.dir, capture_output=True,
                           text=True, timeout=60)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("is readable or writable by group or others", p.stderr)
        os.chmod(key, 0o600)
        rc, out, err = r.cli("--check")
        self.assertEqual(rc, 0, err)

    def test_deadlines_apply_before_the_handshake(self):
        cert, key = make_server_cert(self.d, self.ca1, "deadline")
        r = self.tls_router(cert, key, header_timeout_s=1)
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
            s.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
            try:
                self.assertEqual(s.recv(100), b"")
            except ConnectionResetError:
                pass
        self.assertLess(time.monotonic() - start, 4)
        self.assertGreaterEqual(
            self.https_metric(r, "graphrouter_http_timeouts_total", phase="head"), 1)
        self.assertEqual(self.curl(r, "/healthz", self.ca1)[:2], (0, 200))


if __name__ == "__main__":
    unittest.main()
