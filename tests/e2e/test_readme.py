"""The README's promises about plugins: its example plugin compiles out of
graphrouter's tree with the command it shows, also through the installed
pkg-config file, loads into the router and works; the quick start has
exactly two commands."""

import os
import re
import subprocess
import tempfile

from grtest import BINARY, BUILD, SOURCE, RouterTest, base_config, batch, item


def readme():
    with open(os.path.join(SOURCE, "README.md")) as f:
        return f.read()


def example_source():
    m = re.search(r"<!-- readme-example-plugin: begin -->\n```c\n(.*?)```\n"
                  r"<!-- readme-example-plugin: end -->", readme(), re.S)
    assert m, "the README's example plugin is missing"
    return m.group(1)


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
        # the README's command, with the real include directory and -Werror
        self.cc("-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-fPIC", "-fvisibility=hidden",
                "-I", os.path.join(SOURCE, "include"), "-shared", "-Wl,--no-undefined",
                "-o", "hello.so", "hello.c")
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
