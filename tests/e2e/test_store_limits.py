"""The store's limits on disk and its check: store.max_db_bytes counts the
database, its WAL and the -shm file, on a small tmpfs that must never fill;
a full disk (SQLITE_FULL) is a full store, never an error; --check opens the
store read-only and finds a corrupt one; the files and directories the store
creates are private whatever the umask.

The tmpfs tests need to mount: as root they mount directly; otherwise they run
themselves again inside `unshare --user --map-root-user --mount`; where that
is not allowed either, they check the same accounting on the ordinary disk."""

import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from grtest import BINARY, TIMEOUT, RouterTest, base_config, batch, item

MiB = 1 << 20
IN_USERNS = "GR_TEST_IN_USERNS"


def can_mount():
    return os.geteuid() == 0


def userns_available():
    if os.environ.get(IN_USERNS) or not shutil.which("unshare"):
        return False
    p = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                       capture_output=True, timeout=30)
    return p.returncode == 0


def rerun_in_userns(test):
    """Run this one test again as root of a new user and mount namespace."""
    name = "%s.%s.%s" % (os.path.splitext(os.path.basename(__file__))[0],
                         type(test).__name__, test._testMethodName)
    p = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable,
                        "-m", "unittest", "-v", name], cwd=os.path.dirname(__file__),
                       env=dict(os.environ, **{IN_USERNS: "1"}), capture_output=True,
                       text=True, timeout=240)
    test.assertEqual(p.returncode, 0, p.stdout + p.stderr)


def store_files(db):
    return [db, db + "-wal", db + "-shm"]


def sizes(db):
    """The sizes of the store's three files (0: absent)."""
    out = []
    for f in store_files(db):
        try:
            out.append(os.stat(f).st_size)
        except FileNotFoundError:
            out.append(0)
    return out


def on_disk(db):
    """Bytes the store's three files take."""
    return sum(sizes(db))


class Sampler:
    """Samples the store's size on disk, and the free space of its file
    system, every few milliseconds until stopped."""

    def __init__(self, db, fs):
        self.db, self.fs = db, fs
        self.max_bytes, self.min_free, self.at_max = 0, None, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            now = sizes(self.db)
            if sum(now) > self.max_bytes:
                self.max_bytes, self.at_max = sum(now), now
            if self.fs:
                st = os.statvfs(self.fs)
                free = st.f_bavail * st.f_frsize
                self.min_free = free if self.min_free is None else min(self.min_free, free)
            time.sleep(0.003)

    def stop(self):
        self._stop.set()
        self._thread.join()


class Flood:
    """`clients` threads, each POSTing `posts` notifications of one item with a
    `pad`-byte member (distinct ids), going on after a 503. `acked` holds the
    ids answered 202; `refused` the headers of the 503s."""

    def __init__(self, r, prefix, clients=4, posts=40, pad=20000):
        self.r, self.acked, self.refused, self.other = r, [], [], []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=("%s%d" % (prefix, t),
                                                                      posts, pad))
                         for t in range(clients)]
        for t in self._threads:
            t.start()
        for t in self._threads:
            t.join()

    def _client(self, prefix, posts, pad):
        for n in range(posts):
            i = "%s-%d" % (prefix, n)
            status, headers, _ = self.r.post(batch(item(id=i, pad="p" * pad)))
            with self._lock:
                if status == 202:
                    self.acked.append(i)
                elif status == 503:
                    self.refused.append(headers)
                else:
                    self.other.append(status)
            if status == 503:
                time.sleep(0.02)


def paused_exec(out="out.jsonl"):
    """A handler that holds its deliveries while the file `pause` exists (in
    the router's directory), then appends each one to `out`; one at a time."""
    script = ('while [ -e pause ]; do sleep 0.05; done; note=$(cat); '
              'printf "%%s\\n" "$note" >> %s' % out)
    return {"plugin": "exec", "concurrency": 1,
            "config": {"command": ["/bin/sh", "-c", script], "timeout_ms": 600000}}


class StoreLimitsTest(RouterTest):
    def tearDown(self):
        for r in self._routers:  # a test that failed early leaves its handler paused
            if os.path.exists(r.path("pause")):
                os.unlink(r.path("pause"))
        super().tearDown()

    def mounted(self, size):
        """A fresh tmpfs of `size` bytes, unmounted at the end of the test
        (after the routers stopped), or None where mounting is impossible."""
        d = tempfile.mkdtemp(prefix="gr-e2e-disk-")
        self.addCleanup(shutil.rmtree, d, True)
        if not can_mount():
            return d, False
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0700" % size, "tmpfs", d],
                       check=True, timeout=30)
        self.addCleanup(subprocess.run, ["umount", "-l", d], timeout=30)
        return d, True

    def limited_router(self, disk, **store):
        db = os.path.join(disk, "graphrouter.db")
        cfg = base_config(workers=2, store=dict(path=db, retention_s=1, dedupe_window_s=1,
                                                **store),
                          handlers={"out": paused_exec()})
        r = self.router(cfg, start=False)
        with open(r.path("pause"), "w"):
            pass
        r.start()
        return r, db

    def drain(self, r, acked):
        os.unlink(r.path("pause"))
        try:
            r.wait_for(lambda: set(acked) <= {l["id"] for l in r.read_jsonl()}, 120,
                       "every acknowledged item delivered")
        except AssertionError:
            missing = set(acked) - {l["id"] for l in r.read_jsonl()}
            raise AssertionError("%d acknowledged items not delivered: %s\n%s"
                                 % (len(missing), sorted(missing)[:10], r.log()[-5000:]))

    def test_max_db_bytes_counts_the_wal_and_the_disk_never_fills(self):
        if not can_mount() and userns_available():
            return rerun_in_userns(self)
        disk, is_tmpfs = self.mounted(2560 * 1024)
        r, db = self.limited_router(disk, max_db_bytes=MiB)
        sampler = Sampler(db, disk if is_tmpfs else None)
        try:
            flood = Flood(r, "a")
        finally:
            sampler.stop()
        self.assertEqual(flood.other, [])
        self.assertGreater(len(flood.acked), 10, r.log())
        self.assertGreater(len(flood.refused), 0, "the cap was never reached")
        self.assertTrue(all(h.get("retry-after") == "5" for h in flood.refused))
        self.assertEqual(r.metric("graphrouter_store_rejected_total", reason="full"),
                         len(flood.refused))
        self.assertEqual(r.metric("graphrouter_store_rejected_total", reason="error"), 0)
        self.assertEqual(r.metric("graphrouter_store_failures_total"), 0)
        # the database, its WAL and the -shm file together stayed within the cap
        self.assertLessEqual(sampler.max_bytes, MiB, "database, WAL, -shm: %s" % sampler.at_max)
        self.assertGreater(sampler.max_bytes, MiB // 2)
        if is_tmpfs:
            self.assertGreater(sampler.min_free, 0, "the disk filled")
        self.assertNotIn("database or disk is full", r.log())
        self.assertNotIn("store: writing", r.log())
        # everything acknowledged is delivered once the handler drains, and
        # once retention has deleted it, POSTs are taken again
        self.drain(r, flood.acked)
        r.wait_for(lambda: r.post(batch(item(id="after")))[0] == 202, 60,
                   "appends to resume")
        r.wait_for(lambda: "after" in {l["id"] for l in r.read_jsonl()}, what="the new item")
        self.assertLessEqual(on_disk(db), MiB)

    def test_a_full_disk_is_a_full_store_and_appends_resume_when_room_comes_back(self):
        if not can_mount():
            if userns_available():
                return rerun_in_userns(self)
            self.skipTest("no file system of our own to fill (needs root or a user namespace)")
        disk, _ = self.mounted(2 * MiB)
        r, db = self.limited_router(disk)  # no max_db_bytes: the disk is the limit
        r.wait_for(lambda: r.post(batch(item(id="first")))[0] == 202)
        filler = os.path.join(disk, "filler")
        st = os.statvfs(disk)
        with open(filler, "wb") as f:  # leave some 400 KiB
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 400 * 1024))
        flood = Flood(r, "b", posts=30)
        self.assertEqual(flood.other, [])
        self.assertGreater(len(flood.refused), 0, "the disk never filled")
        self.assertTrue(all(h.get("retry-after") == "5" for h in flood.refused))
        self.assertEqual(r.metric("graphrouter_store_rejected_total", reason="full"),
                         len(flood.refused))
        self.assertEqual(r.metric("graphrouter_store_rejected_total", reason="error"), 0)
        r.wait_log(r"store: .*graphrouter\.db has no room \(database or disk is full\); POSTs "
                   r"get 503 \(store full\)")
        os.unlink(filler)
        r.wait_for(lambda: r.post(batch(item(id="after")))[0] == 202, 30, "appends to resume")
        r.wait_log(r"store: writing .*graphrouter\.db works again")
        self.drain(r, flood.acked + ["first", "after"])


def snapshot(files):
    """{path: bytes} of the files that exist."""
    out = {}
    for f in files:
        if os.path.exists(f):
            with open(f, "rb") as fh:
                out[f] = fh.read()
    return out


class CheckTest(RouterTest):
    """--check opens the store read-only and runs quick_check on it."""

    def stored(self, n=30):
        """A router that stored n items (delivered), then stopped."""
        r = self.router(base_config())
        for i in range(n):
            self.assertEqual(r.post(batch(item(id="c%d" % i, pad="q" * 3000)))[0], 202)
        r.wait_jsonl(n)
        return r

    def check(self, r):
        status, out, err = r.cli("--check")
        return status, out, err.replace('\\"', '"')

    def test_a_healthy_store_with_a_live_wal_is_ok_and_unchanged(self):
        r = self.stored()
        db = r.path("var/graphrouter.db")
        status, out, err = self.check(r)  # beside the running daemon
        self.assertEqual(status, 0, err)
        self.assertRegex(out, r"(?m)^store var/graphrouter\.db: ok \(\d+ pages")
        self.assertTrue(out.strip().endswith("ok (1 handlers, 1 routes)"), out)
        r.stop(signal.SIGKILL)  # leaves the -wal (and -shm) as a crash would
        self.assertGreater(os.path.getsize(db + "-wal"), 0)
        for drop_shm in (False, True):
            if drop_shm:  # a -wal without its index
                os.unlink(db + "-shm")
            before = snapshot(store_files(db))
            status, out, err = self.check(r)
            self.assertEqual(status, 0, err)
            self.assertIn("store var/graphrouter.db: ok (", out)
            self.assertIn("with its write-ahead log", out)
            # the -shm is SQLite's index of the -wal, rebuilt by any reader
            self.assertEqual(set(snapshot(store_files(db))), set(before) | {db + "-shm"})
            for f in (db, db + "-wal"):
                self.assertEqual(snapshot([f]), {f: before[f]}, f)
        r.start()  # and the daemon takes it as it was
        self.assertEqual(r.post(batch(item(id="after")))[0], 202)
        r.wait_jsonl(31)

    def corrupted(self, damage):
        r = self.stored()
        self.assertEqual(r.stop(), 0)
        db = r.path("var/graphrouter.db")
        self.assertFalse(os.path.exists(db + "-wal"))
        with open(db, "r+b") as f:
            damage(f)
        before = snapshot(store_files(db))
        status, out, err = self.check(r)
        self.assertEqual(snapshot(store_files(db)), before, "--check changed the store")
        self.assertEqual(status, 1, out + err)
        self.assertNotIn(": ok (", out)
        self.assertIn("%s: store var/graphrouter.db: " % r.config_path, err)
        return err

    def test_garbage_over_pages_is_reported_as_corrupt(self):
        def damage(f):
            pages = os.fstat(f.fileno()).st_size // 4096
            self.assertGreater(pages, 8)
            for p in range(2, pages, 3):  # b-tree pages of every table and index
                f.seek(p * 4096 + 8)
                f.write(os.urandom(600))
        err = self.corrupted(damage)
        self.assertRegex(err, r"store var/graphrouter\.db: corrupt")

    def test_a_truncated_file_is_reported(self):
        def damage(f):
            f.truncate(os.fstat(f.fileno()).st_size // 2 + 100)
        err = self.corrupted(damage)
        self.assertRegex(err, r"store var/graphrouter\.db: corrupt")

    def test_a_file_that_is_not_a_database_is_reported(self):
        def damage(f):
            f.write(b"this is not SQLite" * 10)
        err = self.corrupted(damage)
        self.assertRegex(err, r"corrupt or unreadable: file is not a database")

    def test_a_layout_the_daemon_refuses_is_reported(self):
        r = self.stored(1)
        self.assertEqual(r.stop(), 0)
        db = sqlite3.connect(r.path("var/graphrouter.db"))
        db.execute("PRAGMA user_version = 99")
        db.commit()
        db.close()
        status, out, err = self.check(r)
        self.assertEqual(status, 1)
        self.assertIn("store var/graphrouter.db: holds store layout 99; this graphrouter reads "
                      "layout 4, and would refuse to start on it", err)

    def test_a_store_that_does_not_exist_yet_is_fine_and_not_created(self):
        r = self.router(base_config(store={"path": "var/new/graphrouter.db"}), start=False)
        status, out, err = self.check(r)
        self.assertEqual(status, 0, err)
        self.assertIn("store var/new/graphrouter.db: does not exist yet; graphrouter creates it "
                      "at start", out)
        self.assertFalse(os.path.exists(r.path("var")))


class ModeTest(RouterTest):
    def test_the_store_and_its_directories_are_private_whatever_the_umask(self):
        r = self.router(base_config(store={"path": "var/state/graphrouter.db"}), start=False)
        r.start(preexec=lambda: os.umask(0))
        self.assertEqual(r.post(batch(item(id="m")))[0], 202)
        r.wait_jsonl(1)
        db = r.path("var/state/graphrouter.db")
        modes = {p: stat.S_IMODE(os.stat(p).st_mode)
                 for p in (r.path("var"), r.path("var/state"), *store_files(db))}
        self.assertEqual(modes, {r.path("var"): 0o700, r.path("var/state"): 0o700,
                                 db: 0o600, db + "-wal": 0o600, db + "-shm": 0o600})


if __name__ == "__main__":
    unittest.main()
