#!/usr/bin/env python3
"""
The sandbox of stdio upstreams (issue 14, part A), attacked.

A keeper runs in user mode as a non-root user (nobody: root inside a user
namespace would still override file permissions, so a root run proves
little) with one stdio upstream, tests/stdio-mcp/hostile-stdio.c, reached
through `mcpctl connect` run as the same user. On every request the hostile
server tries to read the master key and the database files, to list and
write the state directory, to read the config file, to connect to the
control socket, to open /proc/PID/mem and environ of (and read with
process_vm_readv, and
signal) every project process (the client included), to umount what hides a path and to walk `..`
from its cwd; it also checks that what its config grants (a folder to
read, one to write, HOME, TMPDIR) works. Once per mechanism, forced with
MCPKEEPER_TEST_SANDBOX: namespaces, landlock; "none" (neither available)
refuses to start the server unless its config says "sandbox": false, and
with "sandbox": false the same probes do reach the master key, which shows
the probes can see a hole.

Needs root to become nobody (CI runs as root); otherwise every case skips,
and with CI set the file fails instead.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402

NOBODY = 65534
NOGROUP = 65534
HOSTILE = os.path.join(kl.BUILD_ROOT, "tests", "stdio-mcp", "mcpkeeper-test-hostile-stdio")


def reachable_by_nobody(path):
    """Can uid nobody walk to path (search permission on every parent)?"""
    r = subprocess.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOGROUP, "--clear-groups",
                        "test", "-x", path], capture_output=True, timeout=10)
    return r.returncode == 0


def as_nobody(argv):
    """argv run as nobody. A build tree nobody cannot walk to (a clone under
    /root) is reached with CAP_DAC_READ_SEARCH, held by the keeper and mcpctl
    only: the keeper clears it before every child's exec, and the sandbox
    under test is what the child sees."""
    pre = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOGROUP, "--clear-groups"]
    if not reachable_by_nobody(kl.KEEPERD):
        pre += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return pre + list(argv)


class SandboxCase(unittest.TestCase):
    mechanism = None

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            if os.environ.get("CI"):
                raise AssertionError("test_sandbox needs root (to run the keeper as nobody); CI runs as root")
            raise unittest.SkipTest("needs root to run the keeper as nobody")
        if not os.path.exists(HOSTILE):
            raise AssertionError("hostile stdio server not built: %s" % HOSTILE)

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mcpkeeper-sandbox-")
        os.chmod(self.tmp, 0o755)
        # The attacker's program where nobody can run it, outside the state directory.
        self.bin_dir = os.path.join(self.tmp, "bin")
        os.makedirs(self.bin_dir)
        self.hostile = os.path.join(self.bin_dir, "hostile-stdio")
        shutil.copy(HOSTILE, self.hostile)
        self.granted = os.path.join(self.tmp, "granted")
        self.writable = os.path.join(self.tmp, "writable")
        os.makedirs(self.granted)
        os.makedirs(self.writable)
        with open(os.path.join(self.granted, "readme"), "w") as f:
            f.write("granted\n")
        self.k = None

    def tearDown(self):
        report = None
        if self.k:
            self.k.stop()
            # The keeper's, its children's or the hostile server's (through its worker).
            report = kl.sanitizer_report(self.k.log())
        shutil.rmtree(self.tmp, ignore_errors=True)
        if report:
            raise AssertionError("sanitizer report in the keeper log:\n%s" % report)

    def keeper(self, sandbox=None, knob=None, before_start=None):
        kdir = os.path.join(self.tmp, "keeper")
        env = {"PROBE_STATE": os.path.join(kdir, "data"),
               "PROBE_CONFIG": os.path.join(kdir, "config.json"),
               "PROBE_SOCKET": os.path.join(kdir, "run", "control.sock"),
               "PROBE_READ": self.granted, "PROBE_WRITE": self.writable}
        server = {"command": self.hostile, "env": env}
        server["sandbox"] = sandbox if sandbox is not None else {"read": [self.granted], "write": [self.writable]}
        k = kl.Keeper(self.tmp, servers={"evil": server}, env={"MCPKEEPER_TEST_SANDBOX": knob or self.mechanism})
        for root, dirs, files in os.walk(self.tmp):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), NOBODY, NOGROUP)
        os.chown(self.tmp, NOBODY, NOGROUP)
        self.k = k
        if before_start:
            before_start(k)
        k.start(command=as_nobody([kl.KEEPERD]))
        return k

    def probe(self, k, pids=()):
        """One request through `mcpctl connect evil`, as nobody: the hostile
        server's report, or None when the connection gave no answer."""
        req = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "probe"}) + "\n"
        try:
            r = subprocess.run(as_nobody([kl.MCPCTL, "--config", k.config_path, "connect", "evil"]),
                               input=req.encode(), capture_output=True, timeout=30, env=kl.child_env())
        except subprocess.TimeoutExpired:
            raise AssertionError("mcpctl connect evil gave no answer in 30 s; the keeper's log:\n%s" %
                                 kl.tail(k.log()))
        lines = [x for x in r.stdout.decode(errors="replace").splitlines() if x.strip()]
        if not lines:
            return None, r.stderr.decode(errors="replace")
        return json.loads(lines[0]), r.stderr.decode(errors="replace")

    def assert_contained(self, report):
        self.assertIn("result", report, report)
        res = report["result"]
        names = {p["name"] for p in res["probes"]}
        # The attacks that must have been tried, whatever the mechanism.
        for want in ("master_key", "tokens_db", "list_state", "write_state", "config_file", "control_socket",
                     "dotdot_master_key", "chdir_up_master_key", "umount__", "umount__proc",
                     "granted_read_refused", "granted_write_refused", "home_write_refused",
                     "tmpdir_write_refused"):
            self.assertIn(want, names, "probe %s not run: %s" % (want, sorted(names)))
        self.assertTrue(any(n.startswith("proc_") and n.endswith("_mem") for n in names),
                        "no /proc/PID/mem attack was tried: %s" % sorted(names))
        won = [p for p in res["probes"] if p["won"]]
        self.assertEqual(won, [], "attacks that worked under %s:\n%s" % (
            self.mechanism, "\n".join("%s: %s" % (p["name"], p["detail"]) for p in won)))
        self.assertEqual(res["uid"], NOBODY, "the command runs as the keeper's user")
        return res

    def assert_master_key_exists(self, k):
        self.assertTrue(os.path.exists(os.path.join(k.data_dir, "master.key")))


class TestNamespaces(SandboxCase):
    mechanism = "namespaces"

    def test_a_hostile_upstream_is_contained(self):
        k = self.keeper()
        self.assert_master_key_exists(k)
        report, err = self.probe(k, pids=[k.proc.pid])
        self.assertIsNotNone(report, "no answer through mcpctl connect: %s\n%s" % (err, kl.tail(k.log())))
        res = self.assert_contained(report)
        # pid 2: the worker is pid 1 of its own pid namespace, the command its child.
        self.assertEqual(res["pid"], 2, res)
        self.assertEqual(k.server("evil")["worker"]["sandbox"], "namespaces")
        self.assertIn("sandbox namespaces", k.log())
        k.assert_alive()


class TestLandlock(SandboxCase):
    mechanism = "landlock"

    def test_a_hostile_upstream_is_contained(self):
        k = self.keeper()
        report, err = self.probe(k)
        self.assertIsNotNone(report, "no answer through mcpctl connect: %s\n%s" % (err, kl.tail(k.log())))
        res = self.assert_contained(report)
        if res["landlock_abi"] >= 6:
            # Signal scoping: the keeper, its children and other workers are out of reach.
            kills = [p for p in res["probes"] if p["name"].startswith("kill_")]
            self.assertTrue(all(not p["won"] for p in kills), kills)
        self.assertEqual(k.server("evil")["worker"]["sandbox"], "landlock")
        k.assert_alive()

    def test_b_parent_of_the_project_granted(self):
        """A grant of a folder that holds the state directory, the config
        and the runtime directory shows the rest of it, never those."""
        k = self.keeper(sandbox={"read": [self.tmp], "write": [self.writable]})
        report, err = self.probe(k)
        self.assertIsNotNone(report, "no answer: %s\n%s" % (err, kl.tail(k.log())))
        self.assert_contained(report)


    def test_c_reload_applies_new_grants(self):
        """A reload that takes a grant away restarts the worker without it."""
        k = self.keeper()
        report, err = self.probe(k)
        self.assertIsNotNone(report, "no answer: %s\n%s" % (err, kl.tail(k.log())))
        self.assert_contained(report)
        k.servers["evil"]["sandbox"] = {"read": [], "write": [self.writable]}
        k.write_config()
        k.signal(signal.SIGHUP)

        def granted_gone():
            report, _ = self.probe(k)
            probes = {p["name"]: p for p in (report or {}).get("result", {}).get("probes", [])}
            return probes.get("granted_read_refused", {}).get("won")
        kl.wait_until(granted_gone, 30, 0.5, "the reloaded sandbox without the read grant")
        k.assert_alive()


    def test_d_sandbox_root_of_another_user_refused(self):
        """A sandbox directory someone else owns (where they could plant a
        server's HOME) stops stdio servers, with the reason."""
        k = self.keeper(before_start=lambda k: os.mkdir(k.data_dir + "-sandbox", 0o777))
        report, err = self.probe(k)
        self.assertNotIn("result", report or {}, "started in a foreign sandbox directory: %r" % (report,))
        self.assertIn("belongs to uid 0", (report or {}).get("error", {}).get("message", "") + err)
        k.assert_alive()


    def test_e_planted_link_not_followed(self):
        """What a command may write it may turn into a link to the state
        directory; a read grant beneath it then must not show the state
        directory at the worker's next start."""
        sub = os.path.join(self.writable, "sub")
        os.mkdir(sub)
        k = self.keeper(sandbox={"read": [self.granted, sub], "write": [self.writable]})
        report, err = self.probe(k)
        self.assertIsNotNone(report, "no answer: %s\n%s" % (err, kl.tail(k.log())))
        self.assert_contained(report)
        os.rmdir(sub)
        os.symlink(os.path.relpath(k.data_dir, self.writable), sub)
        os.kill(k.server("evil")["worker"]["pid"], signal.SIGKILL)
        kl.wait_until(lambda: k.server("evil")["worker"]["pid"] is None, 20, 0.1, "the worker gone")
        report, err = self.probe(k)
        self.assertNotIn("result", report or {}, "started with a link to the state directory: %r" % (report,))
        self.assertIn("is inside the state directory", (report or {}).get("error", {}).get("message", "") + err)


class TestNamespacesParent(SandboxCase):
    mechanism = "namespaces"

    def test_b_parent_of_the_project_granted(self):
        k = self.keeper(sandbox={"read": [self.tmp], "write": [self.writable]})
        report, err = self.probe(k)
        self.assertIsNotNone(report, "no answer: %s\n%s" % (err, kl.tail(k.log())))
        self.assert_contained(report)


class TestNoMechanism(SandboxCase):
    mechanism = "none"

    def test_a_refused_without_a_sandbox(self):
        k = self.keeper()
        report, err = self.probe(k)
        self.assertNotIn("result", report, "the upstream ran without a sandbox: %r" % (report,))
        self.assertIn("no sandbox is available", report["error"]["message"] + err)
        self.assertEqual(report["error"]["data"]["kind"], "unavailable")
        self.assertIsNone(k.server("evil")["worker"]["pid"])
        k.assert_alive()

    def test_b_sandbox_false_runs_open(self):
        """"sandbox": false runs the command as before, and the same probes
        then reach the master key: they can see a hole."""
        k = self.keeper(sandbox=False)
        report, err = self.probe(k)
        self.assertIsNotNone(report, "no answer: %s\n%s" % (err, kl.tail(k.log())))
        won = {p["name"] for p in report["result"]["probes"] if p["won"]}
        self.assertIn("master_key", won)
        self.assertIn("config_file", won)
        self.assertIn("control_socket", won)
        self.assertEqual(k.server("evil")["worker"]["sandbox"], "off")

    def test_c_grant_inside_the_state_directory_refused(self):
        kdir = os.path.join(self.tmp, "keeper")
        k = self.keeper(sandbox={"read": [os.path.join(kdir, "data")]}, knob="landlock")
        report, err = self.probe(k)
        self.assertNotIn("result", report, "started with the state directory granted: %r" % (report,))
        self.assertIn("is inside the state directory", report["error"]["message"] + err)


if __name__ == "__main__":
    kl.main()
