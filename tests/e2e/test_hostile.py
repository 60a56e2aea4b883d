"""Hostile clients: graphrouter's URL is on the public internet, so anyone can
connect. Each test here is one way of attacking it, bounded in connections
and time; the router is the real binary on 127.0.0.1, and the attackers use
other loopback addresses (127.0.0.2 and up) when a test needs several
client addresses."""

import json
import os
import re
import resource
import select
import signal
import socket
import threading
import time
import unittest

from grtest import RouterTest, base_config, batch, item, TIMEOUT


def raise_fd_limit(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def connect(port, src="127.0.0.1", timeout=TIMEOUT):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s



def accept_queue(port):
    """Connections the kernel holds for the listening socket on 127.0.0.1:port,
    not yet accepted by the router (/proc/net/tcp: rx_queue of a listener)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == "0100007F:%04X" % port and fields[3] == "0A":
                return int(fields[4].split(":")[1], 16)
    raise AssertionError("no listener on port %d" % port)


def fill_to_cap(port, n):
    """n idle connections, every one accepted and held by the gate (none
    refused: a connection the router has not yet released, like the one of a
    request just answered, could still count against the cap; then try again).
    Returns them."""
    for _ in range(5):
        idle = [connect(port) for _ in range(n)]
        deadline = time.monotonic() + 10
        while accept_queue(port) and time.monotonic() < deadline:
            time.sleep(0.02)
        refused, _, _ = select.select(idle, [], [], 0.3)
        if not refused:
            return idle
        for s in idle:
            s.close()
        time.sleep(1)
    raise AssertionError("could not hold %d connections" % n)

def parse_answer(data):
    """(status, headers, body, rest) of the first HTTP answer in data, or None."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode()
    n = int(headers.get("content-length", "0"))
    if len(rest) < n:
        return None
    return status, headers, rest[:n], rest[n:]


def read_all(s, timeout=TIMEOUT):
    """Everything the server sends until it closes (or timeout); (data, closed)."""
    s.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            c = s.recv(65536)
            if not c:
                return b"".join(chunks), True
            chunks.append(c)
    except socket.timeout:
        return b"".join(chunks), False
    except ConnectionResetError:
        return b"".join(chunks), True
    return b"".join(chunks), False


def read_answer(s, timeout=TIMEOUT):
    """The first answer on s: (status, headers, body); waits only for it."""
    s.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = parse_answer(data)
        if got:
            return got[:3]
        try:
            c = s.recv(65536)
        except ConnectionResetError:
            break
        if not c:
            break
        data += c
    got = parse_answer(data)
    return got[:3] if got else (0, {}, data)


def post_bytes(body, extra=b""):
    return (b"POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
            extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)


class HostileTest(RouterTest):

    def one_answer_then_close(self, r, data, src="127.0.0.1"):
        """Send data, read until the router closes: exactly one answer, then EOF."""
        with connect(r.port, src) as s:
            s.sendall(data)
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            got, closed = read_all(s, 10)
        self.assertTrue(closed, "connection not closed; got %r" % got[:300])
        ans = parse_answer(got)
        self.assertIsNotNone(ans, "no complete answer in %r" % got[:300])
        status, headers, body, rest = ans
        self.assertEqual(rest, b"", "bytes after the first answer: a second request was served")
        self.assertEqual(headers.get("x-content-type-options"), "nosniff")
        return status, headers, body

    # -- deadlines --------------------------------------------------------
    def test_slow_headers_get_408(self):
        r = self.router(base_config(limits={"header_timeout_s": 2}))
        with connect(r.port) as s:
            start = time.monotonic()
            head = b"POST /notifications HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
            sent = 0
            s.setblocking(False)
            answer = b""
            # one byte every 0.2 s: never silent long enough for an idle timeout
            while time.monotonic() - start < 8:
                if sent < len(head):
                    try:
                        s.send(head[sent:sent + 1])
                        sent += 1
                    except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                        pass
                rd, _, _ = select.select([s], [], [], 0.2)
                if rd:
                    try:
                        c = s.recv(4096)
                    except ConnectionResetError:
                        break
                    if not c:
                        break
                    answer += c
            elapsed = time.monotonic() - start
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer[:200])
        self.assertIn(b"nosniff", answer)
        self.assertLess(elapsed, 4.5)
        self.assertGreaterEqual(r.metric("graphrouter_http_timeouts_total", phase="head"), 1)
        r.wait_log(r"request timed out with 408: its head .*client=127.0.0.1")

    def test_slow_body_gets_408(self):
        r = self.router(base_config(limits={"body_timeout_s": 2}))
        body = b'{"value": []}' + b" " * 200
        with connect(r.port) as s:
            s.sendall(post_bytes(b"")[:-len(b"Content-Length: 0\r\n\r\n")] +
                      b"Content-Length: %d\r\n\r\n" % len(body))
            start = time.monotonic()
            s.setblocking(False)
            answer = b""
            sent = 0
            while time.monotonic() - start < 8:
                try:
                    s.send(body[sent:sent + 1])
                    sent += 1
                except (BlockingIOError, BrokenPipeError, ConnectionResetError, OSError):
                    pass
                rd, _, _ = select.select([s], [], [], 0.2)
                if rd:
                    try:
                        c = s.recv(4096)
                    except ConnectionResetError:
                        break
                    if not c:
                        break
                    answer += c
            elapsed = time.monotonic() - start
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer[:200])
        self.assertIn(b"body_timeout_s", answer)
        self.assertLess(elapsed, 4.5)
        self.assertEqual(r.metric("graphrouter_http_timeouts_total", phase="body"), 1)
        self.assertEqual(r.metric("graphrouter_items_accepted_total"), 0)

    def test_kept_alive_connection_cannot_trickle_its_next_head(self):
        r = self.router(base_config(limits={"header_timeout_s": 1, "connection_timeout_s": 2}))
        with connect(r.port) as s:
            s.sendall(post_bytes(json.dumps(batch(item(id="first"))).encode()))
            status, _, _ = read_answer(s)
            self.assertEqual(status, 202)
            start = time.monotonic()
            s.setblocking(False)
            answer = b""
            head = b"POST /notifications HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
            sent = 0
            while time.monotonic() - start < 8:
                try:
                    s.send(head[sent:sent + 1])
                    sent += 1
                except OSError:
                    pass
                rd, _, _ = select.select([s], [], [], 0.3)
                if rd:
                    try:
                        c = s.recv(4096)
                    except ConnectionResetError:
                        break
                    if not c:
                        break
                    answer += c
            elapsed = time.monotonic() - start
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer[:200])
        self.assertLess(elapsed, 5.5)  # connection_timeout_s + header_timeout_s + a tick
        self.assertEqual(r.metric("graphrouter_http_timeouts_total", phase="head"), 1)
        self.assertEqual([l["id"] for l in r.wait_jsonl(1)], ["first"])

    # -- connection caps --------------------------------------------------
    def test_idle_flood_past_the_cap_gets_503(self):
        r = self.router(base_config(limits={"max_connections": 20, "header_timeout_s": 3,
                                            "max_connections_per_ip": 100}))
        idle = fill_to_cap(r.port, 20)
        try:
            start = time.monotonic()
            with connect(r.port) as s:
                status, headers, body = read_answer(s, 5)
            self.assertLess(time.monotonic() - start, 1.0)
            self.assertEqual(status, 503)
            self.assertEqual(headers.get("retry-after"), "5")
            self.assertEqual(headers.get("connection"), "close")
            self.assertEqual(headers.get("x-content-type-options"), "nosniff")
            # the idle ones are answered 408 at the header deadline, and the door reopens
            for s in idle:
                status, _, _ = read_answer(s, 8)
                self.assertEqual(status, 408)
        finally:
            for s in idle:
                s.close()
        self.assertEqual(r.post(batch(item(id="after")))[0], 202)
        self.assertGreaterEqual(r.metric("graphrouter_connections_refused_total",
                                         reason="max_connections"), 1)
        self.assertEqual(r.metric("graphrouter_http_timeouts_total", phase="head"), 20)
        r.wait_log(r"connection refused with 503: 20 connections open")

    def test_per_address_cap_gets_429(self):
        r = self.router(base_config(limits={"max_connections_per_ip": 5}))
        held = [connect(r.port, "127.0.0.2") for _ in range(5)]
        try:
            r.wait_for(lambda: r.metric("graphrouter_connections", state="head") >= 5, 5,
                       "connections held")
            with connect(r.port, "127.0.0.2") as s:
                status, headers, body = read_answer(s, 5)
            self.assertEqual(status, 429)
            self.assertEqual(headers.get("x-content-type-options"), "nosniff")
            # another address is not affected
            self.assertEqual(r.post(batch(item(id="other")))[0], 202)
            self.assertEqual(r.metric("graphrouter_connections_refused_total",
                                      reason="max_connections_per_ip"), 1)
        finally:
            for s in held:
                s.close()
        # once they close, the address may connect again
        time.sleep(0.5)
        with connect(r.port, "127.0.0.2") as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(read_answer(s)[0], 200)
        r.wait_log(r"connection refused with 429: client=127.0.0.2")

    def test_2000_hostile_connections_do_not_delay_a_notification(self):
        """The goal: while 2,000 hostile connections (idle, slow headers, slow
        body) are held, a normal client's POST is answered 202 within one
        second, every time, and nothing acknowledged is lost."""
        raise_fd_limit(8192)
        r = self.router(base_config())  # the default limits
        port = r.port
        hostile = []
        kinds = ("idle", "head", "body")
        try:
            for i in range(2000):
                src = "127.0.0.%d" % (10 + i % 40)  # 40 addresses, 50 each (cap: 128)
                s = connect(port, src, timeout=5)
                s.setblocking(False)
                kind = kinds[i % 3]
                if kind == "body":
                    s.send(b"POST /notifications HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 100000\r\n\r\n{")
                hostile.append((s, kind))
            self.assertGreater(r.metric("graphrouter_connections", state="head") +
                               r.metric("graphrouter_connections", state="served"), 1900)
            stop = threading.Event()

            def trickle():  # one byte per connection per second
                while not stop.is_set():
                    for s, kind in hostile:
                        if kind != "idle":
                            try:
                                s.send(b"a" if kind == "head" else b" ")
                            except OSError:
                                pass
                    stop.wait(1.0)
            t = threading.Thread(target=trickle, daemon=True)
            t.start()
            slowest = 0.0
            try:
                for n in range(30):
                    start = time.monotonic()
                    status, _, _ = r.post(batch(item(id="n%d" % n)))
                    took = time.monotonic() - start
                    slowest = max(slowest, took)
                    self.assertEqual(status, 202)
                    self.assertLess(took, 1.0, "POST %d took %.3f s" % (n, took))
                    time.sleep(0.1)
            finally:
                stop.set()
                t.join()
            print("slowest of 30 POSTs beside 2000 hostile connections: %.1f ms"
                  % (slowest * 1000))
        finally:
            for s, _ in hostile:
                s.close()
        got = sorted(l["id"] for l in r.wait_jsonl(30))
        self.assertEqual(got, sorted("n%d" % n for n in range(30)))

    # -- strict HTTP/1.1 --------------------------------------------------
    def test_content_length_with_transfer_encoding_is_refused(self):
        r = self.router(base_config())
        smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        body = b"0\r\n\r\n" + smuggled
        status, headers, _ = self.one_answer_then_close(
            r, b"POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" % len(body) + body)
        self.assertEqual(status, 400)
        self.assertEqual(headers.get("connection"), "close")
        # the same as the second request of a kept-alive connection
        good = post_bytes(b'{"value": []}')
        with connect(r.port) as s:
            s.sendall(good + b"POST /notifications HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                      b"chunked\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            got, closed = read_all(s, 10)
        first = parse_answer(got)
        self.assertEqual(first[0], 202)
        second = parse_answer(first[3])
        self.assertEqual(second[0], 400)
        self.assertEqual(second[3], b"")
        self.assertTrue(closed)
        self.assertEqual(r.metric("graphrouter_http_refused_total", reason="content_length"), 2)

    def test_conflicting_or_malformed_content_length_is_refused(self):
        r = self.router(base_config())
        for cl in (b"Content-Length: 13\r\nContent-Length: 14\r\n",
                   b"Content-Length: 13\r\nContent-Length: 13\r\n",
                   b"Content-Length: 13, 13\r\n", b"Content-Length: +13\r\n",
                   b"Content-Length: 0x0d\r\n", b"Content-Length: \r\n"):
            status, _, body = self.one_answer_then_close(
                r, b"POST /notifications HTTP/1.1\r\nHost: x\r\n" + cl + b"\r\n" +
                   b'{"value": []}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
            self.assertEqual(status, 400, cl)
            self.assertIn(b"Content-Length", body)
        self.assertEqual(r.metric("graphrouter_http_refused_total", reason="content_length"), 6)

    def test_unknown_or_stacked_transfer_coding_gets_501(self):
        r = self.router(base_config())
        for te in (b"gzip", b"gzip, chunked", b"chunked, chunked", b"identity"):
            start = time.monotonic()
            status, _, _ = self.one_answer_then_close(
                r, b"POST /notifications HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te +
                   b"\r\n\r\n0\r\n\r\n")
            self.assertEqual(status, 501, te)
            self.assertLess(time.monotonic() - start, 2.0)
        status, _, _ = self.one_answer_then_close(
            r, b"POST /notifications HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertEqual(status, 501)
        self.assertEqual(r.metric("graphrouter_http_refused_total", reason="transfer_coding"), 5)

    def test_chunked_bodies_and_chunk_extensions_get_411(self):
        r = self.router(base_config())
        ext = b"1;" + b"e" * 100000 + b"\r\nx\r\n0\r\n\r\n"
        status, _, body = self.one_answer_then_close(
            r, b"POST /notifications HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + ext)
        self.assertEqual(status, 411)
        trailer = b"1\r\nx\r\n0\r\nX-Trailer: " + b"t" * 100000 + b"\r\n\r\n"
        status, _, _ = self.one_answer_then_close(
            r, b"POST /notifications HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
               trailer)
        self.assertEqual(status, 411)
        self.assertEqual(r.metric("graphrouter_http_refused_total", reason="chunked"), 2)

    def test_malformed_heads_are_answered_by_graphrouter(self):
        r = self.router(base_config())
        cases = [
            (b"POST /notifications HTTP/1.1\nHost: x\n\n", 400),            # bare LF
            (b"POST /notifications HTTP/1.1\r\nHost : x\r\n\r\n", 400),      # space before ':'
            (b"POST /notifications HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
            (b"POST  /notifications HTTP/1.1\r\nHost: x\r\n\r\n", 400),     # two spaces
            (b"POST notifications HTTP/1.1\r\nHost: x\r\n\r\n", 400),       # not origin-form
            (b"POST /notifications HTTP/1.1\r\n\r\n", 400),                 # no Host
            (b"POST /notifications HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
            (b"POST /notifications HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", 400),
            (b"POST /notifications HTTP/2.0\r\nHost: x\r\n\r\n", 505),
            (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n", 431),
            (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
        ]
        for data, want in cases:
            status, _, _ = self.one_answer_then_close(r, data)
            self.assertEqual(status, want, data[:80])

    def test_half_closed_client_is_answered(self):
        """A client that shuts down its sending side right after the request
        (as some proxies do) still gets its 202, every time: with the FIN in
        the same segment as the body or a moment later (while the commit
        runs), for one item or for 400."""
        r = self.router(base_config())
        n, items = 60, 0
        for i in range(n):
            count = 400 if i % 3 == 0 else 1
            items += count
            body = json.dumps(batch(*[item(id="h%d-%d" % (i, k)) for k in range(count)])).encode()
            with connect(r.port) as s:
                data = post_bytes(body)
                if i % 2:  # head and body in two segments
                    s.sendall(data[:-len(body)])
                    time.sleep(0.002)
                    s.sendall(data[-len(body):])
                else:
                    s.sendall(data)
                delay = (0, 0.0005, 0.003)[i % 3]
                if delay:
                    time.sleep(delay)
                s.shutdown(socket.SHUT_WR)
                got, closed = read_all(s, 10)
            ans = parse_answer(got)
            self.assertIsNotNone(ans, "try %d: no answer (%r)" % (i, got[:100]))
            self.assertEqual(ans[0], 202, "try %d" % i)
        self.assertEqual(len(r.wait_jsonl(items)), items)

    def test_nosniff_on_every_status(self):
        r = self.router(base_config(limits={"max_body_bytes": 2048, "max_connections": 30,
                                            "header_timeout_s": 2}))
        seen = {}

        def check(status, headers):
            self.assertEqual(headers.get("x-content-type-options"), "nosniff", status)
            seen[status] = True

        for method, path, body in (("GET", "/healthz", None),
                                   ("POST", "/notifications", json.dumps(batch(item()))),
                                   ("POST", "/notifications", "{}"),
                                   ("POST", "/notifications", "not json"),
                                   ("POST", "/nope", "{}"), ("GET", "/notifications", None),
                                   ("POST", "/notifications", "x" * 3000)):
            status, headers, _ = r.request(method, path, body)
            check(status, headers)
        for data in (b"POST /notifications HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                     b"POST /notifications HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
                     b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n",
                     b"GET / HTTP/3.0\r\nHost: x\r\n\r\n",
                     b"GET / HTTP/1.1\nHost: x\n\n"):
            status, headers, _ = self.one_answer_then_close(r, data)
            check(status, headers)
        with connect(r.port) as s:  # 408
            s.sendall(b"GET / HTTP/1.1\r\n")
            status, headers, _ = read_answer(s, 6)
            check(status, headers)
        idle = fill_to_cap(r.port, 30)  # 503 at the cap
        try:
            with connect(r.port) as s:
                status, headers, _ = read_answer(s, 5)
                check(status, headers)
        finally:
            for s in idle:
                s.close()
        self.assertEqual(sorted(seen), [200, 202, 400, 404, 405, 408, 411, 413, 414, 431, 501,
                                        503, 505])

    # -- logs --------------------------------------------------------------
    def test_handshake_log_is_rate_limited(self):
        r = self.router(base_config())
        for i in range(300):
            status, _, body = r.request("POST", "/notifications?validationToken=t%d" % i, "")
            self.assertEqual((status, body), (200, b"t%d" % i))
        lines = re.findall(r"validation handshake answered", r.log())
        self.assertLessEqual(len(lines), 20)
        self.assertGreaterEqual(len(lines), 1)
        time.sleep(10.5)  # the next window's first line says how many were left out
        r.request("POST", "/notifications?validationToken=last", "")
        r.wait_log(r"suppressed=\d+ .*validation handshake answered|"
                   r"validation handshake answered.*suppressed=\d+")

    # -- addresses ----------------------------------------------------------
    def test_allow_from_refuses_other_addresses_and_reloads(self):
        cfg = base_config(limits={"allow_from": ["127.0.0.1/32", "10.0.0.0/8"]})
        r = self.router(cfg)
        self.assertEqual(r.post(batch(item(id="allowed")))[0], 202)
        with connect(r.port, "127.0.0.3") as s:
            s.sendall(post_bytes(b'{"value": []}'))
            got, closed = read_all(s, 5)
        self.assertEqual(got, b"")  # closed without a word
        self.assertTrue(closed)
        self.assertEqual(r.metric("graphrouter_connections_refused_total", reason="allow_from"), 1)
        r.wait_log(r"connection refused: client=127.0.0.3 is not in limits.allow_from")
        cfg["limits"]["allow_from"] = ["127.0.0.3"]
        r.write_config(cfg)
        r.send_signal(signal.SIGHUP)
        r.wait_log(r"reloaded: generation 2 serves now", 20)
        with connect(r.port, "127.0.0.3") as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(read_answer(s)[0], 200)
        with connect(r.port, "127.0.0.1") as s:
            self.assertEqual(read_all(s, 5), (b"", True))
        self.assertEqual([l["id"] for l in r.wait_jsonl(1)], ["allowed"])

    def test_trusted_proxies_forward_the_client_address(self):
        cfg = base_config(limits={"trusted_proxies": ["127.0.0.1"],
                                  "allow_from": ["203.0.113.0/24"],
                                  "max_connections_per_ip": 2, "body_timeout_s": 20})
        r = self.router(cfg)
        body = b'{"value": [{"subscriptionId": "s", "clientState": "e2e-fallback-secret", ' \
               b'"changeType": "created", "resource": "users/u/messages/fwd"}]}'
        with connect(r.port) as s:  # from the proxy, for an allowed client
            s.sendall(post_bytes(body, b"X-Forwarded-For: 198.51.100.9, 203.0.113.7\r\n"))
            self.assertEqual(read_answer(s)[0], 202)
        with connect(r.port) as s:  # for a client outside allow_from
            s.sendall(post_bytes(b'{"value": []}', b"X-Forwarded-For: 198.51.100.9\r\n"))
            self.assertEqual(read_answer(s)[0], 403)
        r.wait_log(r"request refused with 403: .*client=198.51.100.9 \(forwarded\)")
        with connect(r.port) as s:  # the proxy forgot the header: its own address is not allowed
            s.sendall(post_bytes(b'{"value": []}'))
            self.assertEqual(read_answer(s)[0], 403)
        # an untrusted client's X-Forwarded-For is ignored: it is refused at accept
        with connect(r.port, "127.0.0.4") as s:
            s.sendall(post_bytes(b'{"value": []}', b"X-Forwarded-For: 203.0.113.7\r\n"))
            self.assertEqual(read_all(s, 5), (b"", True))
        # the per-address cap counts forwarded clients: two slow bodies hold 203.0.113.50
        slow = []
        try:
            for _ in range(2):
                s = connect(r.port)
                s.sendall(b"POST /notifications HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: "
                          b"203.0.113.50\r\nContent-Length: 100\r\n\r\n{")
                slow.append(s)
            time.sleep(0.3)
            with connect(r.port) as s:
                s.sendall(post_bytes(b'{"value": []}', b"X-Forwarded-For: 203.0.113.50\r\n"))
                self.assertEqual(read_answer(s)[0], 429)
            with connect(r.port) as s:
                s.sendall(post_bytes(b'{"value": []}', b"X-Forwarded-For: 203.0.113.51\r\n"))
                self.assertEqual(read_answer(s)[0], 202)
        finally:
            for s in slow:
                s.close()
        r.wait_log(r"request refused with 429: .*client=203.0.113.50 \(forwarded\)")
        self.assertEqual([l["resource"] for l in r.wait_jsonl(1)], ["users/u/messages/fwd"])


if __name__ == "__main__":
    unittest.main()
