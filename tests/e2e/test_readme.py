"""The README's promises about plugins: its example plugin compiles out of
graphrouter's tree with the command it shows, also through the installed
pkg-config file, loads into the router and works; its second example, which
calls Graph and keeps state, builds the same way and counts against the fake
Graph across a restart; the quick start has exactly two commands."""

import os
import re
import subprocess
import tempfile

from grtest import BINARY, BUILD, SECRET, SOURCE, RouterTest, base_config, batch, item
from graphtest import TENANT, GraphTest


def readme():
    with open(os.path.join(SOURCE, "README.md")) as f:
        return f.read()


def example_source(marker="readme-example-plugin"):
    m = re.search(r"<!-- %s: begin -->\n```c\n(.*?)```\n<!-- %s: end -->" % (marker, marker),
                  readme(), re.S)
    assert m, "the README's example plugin (%s) is missing" % marker
    return m.group(1)


def build(directory, name, *libs):
    """The README's build command, with the real include directory and -Werror."""
    p = subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-fPIC",
                        "-fvisibility=hidden", "-I", os.path.join(SOURCE, "include"), "-shared",
                        "-Wl,--no-undefined", "-o", name + ".so", name + ".c", *libs],
                       cwd=directory, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return os.path.join(directory, name + ".so")


class ReadmeTest(RouterTest):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="gr-readme-")
        with open(os.path.join(self.tmp, "hello.c"), "w") as f:
            f.write(example_source())

    def cc(self, *args):
        p = subprocess.run(["cc", *args], cwd=self.tmp, capture_output=True, text=True,
                           timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)

    def run_hello(self, so, plugin_dir):
        r = self.router(base_config(plugin_dir=plugin_dir, handlers={
            "greeter": {"plugin": so, "config": {"greeting": "hi"}},
            "out": {"plugin": "file", "config": {"path": "out.jsonl"}}},
            routes=[{"name": "everything", "to": ["greeter", "out"]}]))
        self.assertEqual(r.post(batch(item(resource="Users/u1/Messages/m1")))[0], 202)
        r.wait_log(r"hi: a message notification for user u1")
        r.wait_for(lambda: r.metric("graphrouter_plugin_hello_seen_total", handler="greeter") == 1)
        r.wait_jsonl(1)

    def test_builds_as_the_readme_shows_and_runs(self):
        build(self.tmp, "hello")
        exported = subprocess.run(["nm", "-D", "--defined-only", "hello.so"], cwd=self.tmp,
                                  capture_output=True, text=True).stdout
        self.assertEqual(re.findall(r" T (\w+)", exported), ["gr_plugin_entry"])
        self.run_hello(os.path.join(self.tmp, "hello.so"), os.path.join(BUILD, "plugins"))

    def test_builds_with_installed_pkg_config(self):
        prefix = os.path.join(self.tmp, "prefix")
        p = subprocess.run(["cmake", "--install", BUILD, "--prefix", prefix],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        pcdirs = [d for d, _, files in os.walk(prefix) if "graphrouter-plugin.pc" in files]
        self.assertEqual(len(pcdirs), 1)
        env = dict(os.environ, PKG_CONFIG_PATH=pcdirs[0])
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "graphrouter-plugin"],
                               env=env, capture_output=True, text=True, check=True).stdout.split()
        self.cc("-std=c11", "-Werror", "-O2", *flags, "-o", "hello2.so", "hello.c")
        plugin_dir = subprocess.run(["pkg-config", "--variable=plugindir", "graphrouter-plugin"],
                                    env=env, capture_output=True, text=True,
                                    check=True).stdout.strip()
        self.assertTrue(os.path.exists(os.path.join(plugin_dir, "file.so")), plugin_dir)
        self.assertTrue(os.path.exists(os.path.join(prefix, "bin", "graphrouter")))
        # the installed bundled plugins load by bare name from the installed plugin dir
        self.run_hello(os.path.join(self.tmp, "hello2.so"), plugin_dir)

    def test_quick_start_has_two_commands(self):
        m = re.search(r"## Quick start\n.*?```sh\n(.*?)```", readme(), re.S)
        commands = [l for l in m.group(1).splitlines() if l.strip()]
        self.assertEqual([c.split()[0] for c in commands], ["scripts/run.sh", "scripts/test.sh"])
        with open(os.path.join(SOURCE, ".ci", "run")) as f:
            self.assertIn("scripts/test.sh", f.read())


class ReadmeGraphPluginTest(GraphTest):
    """unread.c: a Graph request per new message, a counter per user in the handler's state."""

    def test_counts_unread_messages_across_a_restart(self):
        tmp = tempfile.mkdtemp(prefix="gr-readme-")
        with open(os.path.join(tmp, "unread.c"), "w") as f:
            f.write(example_source("readme-example-graph-plugin"))
        so = build(tmp, "unread", "-ljansson")
        for user, mid, read in (("u1", "m1", False), ("u1", "m2", True), ("u1", "m3", False),
                                ("u2", "m4", False)):
            self.fake.put_item(TENANT, "messages", user, mid, {"subject": mid, "isRead": read})
        r = self.graph_router([], handlers={"unread": {"plugin": so}},
                              routes=[{"name": "new mail", "match": {
                                  "resource_type": "message", "change_type": "created"},
                                  "to": ["unread"]}])

        def new(user, mid):
            return {"subscriptionId": "sub-readme", "clientState": SECRET,
                    "changeType": "created", "resource": "Users/%s/Messages/%s" % (user, mid),
                    "tenantId": TENANT, "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z"}

        self.assertEqual(r.post(batch(new("u1", "m1"), new("u1", "m2"), new("u2", "m4")))[0], 202)
        r.wait_log(r"user u2: 1 unread messages so far")
        r.wait_log(r"user u1: 1 unread messages so far")
        r.wait_idle()
        self.assertEqual(len(self.fake.requests_matching("GET", r"/messages/m2$")), 1)  # read
        self.assertEqual(r.stop(), 0)
        r.start()  # the counters are in the store
        self.assertEqual(r.post(batch(new("u1", "m3"), new("u1", "gone")))[0], 202)
        r.wait_log(r"user u1: 2 unread messages so far")
        r.wait_idle()  # a message Graph no longer has (404) counts nothing, and fails nothing
        self.assertEqual(r.metric("graphrouter_dead_letters", handler="unread"), 0)
        self.assertEqual(r.metric("graphrouter_handler_graph_requests_total", handler="unread",
                                  code="404"), 1)
        self.assertEqual([q.query["$select"] for q in
                          self.fake.requests_matching("GET", r"/messages/m3$")], ["isRead"])
