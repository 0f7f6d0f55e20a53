#!/usr/bin/env python3
"""
Between fork and exec (issue 18, part A): the keeper will run Berkeley DB's
replication threads, and a forked copy of a threaded process may only make
async-signal-safe calls until its exec. tests/forkcheck-shim.c, preloaded
into the keeper alone, records every forked child of the keeper that calls
the allocator, stdio or formatting, an NSS lookup, getenv/setenv, strerror,
localtime or exit() before its exec; these cases start every kind of child
the keeper makes and hold the record to "no such call":

- user mode: the oauth child, the http child, an HTTP worker and a stdio
  worker in its sandbox (with the keeper's probe for user namespaces), each
  serving a real request;
- the keeper's own login opener (login.browser), whose first entry does not
  exist;
- system mode as root: every child switched to its role's user;
- a child binary the kernel refuses to run: the failed exec is reported to
  the keeper, which logs it naming the step.

The shim replaces malloc, which a sanitizer's runtime cannot share: meson
runs this file in plain builds only.
"""
import os
import pwd
import subprocess
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402
from test_stepup import OLDER, STEPUP_WAIT, StepupCase  # noqa: E402
from test_login import BROWSER  # noqa: E402
from test_workers import STDIO_SERVER, WorkerCase, text_of  # noqa: E402

SHIM = os.path.join(kl.BUILD_ROOT, "tests", "libforkcheck-shim.so")
DAEMON_USERS = {"users": {"oauth": "daemon", "http": "daemon", "worker": "daemon"}}


def linked_with_asan(path):
    r = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=20)
    return "libasan" in r.stdout


class ForkCheck:
    """The shim's record for one keeper."""

    def __init__(self, tmp):
        self.path = os.path.join(tmp, "forkcheck.log")

    def env(self):
        return {"LD_PRELOAD": SHIM, "MCPKEEPER_FORKCHECK_LOG": self.path,
                "MCPKEEPER_FORKCHECK_PROGRAM": "mcpkeeperd"}

    def lines(self):
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [line.split() for line in f if line.strip()]

    def count(self, what):
        return sum(1 for f in self.lines() if f[0] == what)

    def violations(self):
        return [" ".join(f) for f in self.lines() if f[0] == "VIOLATION"]


class ForkCheckMixin:

    def setUp(self):
        super().setUp()
        if not os.path.exists(SHIM):
            raise AssertionError("the test shim is not built: %s (plain builds only)" % SHIM)
        if linked_with_asan(kl.KEEPERD):
            self.skipTest("a sanitizer build: the shim's malloc cannot stand beside ASan's")
        self.fc = ForkCheck(self.tmp)

    def assert_safe_forks(self, at_least, what):
        """At least that many forked children were seen (the shim was there
        and the children were started), and none made an unsafe call."""
        self.assertEqual(self.fc.violations(), [], "unsafe calls in a forked child before its exec (%s)" % what)
        forks = self.fc.count("fork")
        self.assertGreaterEqual(forks, at_least, "forked children seen by the shim (%s): %r" %
                                (what, self.fc.lines()))


class TestShim(ForkCheckMixin, kl.KeeperTestCase):

    def test_a_the_shim_sees_an_unsafe_call(self):
        """The checker itself, on a process that breaks the rule: Python
        allocates in its forked child before that child execs."""
        prog = textwrap.dedent("""
            import os
            pid = os.fork()
            if pid == 0:
                os.environ["X"] = "y" * 1000
                os.execv("/bin/true", ["/bin/true"])
            os.waitpid(pid, 0)
        """)
        env = kl.child_env(dict(self.fc.env(), MCPKEEPER_FORKCHECK_PROGRAM=os.path.basename(sys.executable)))
        r = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.fc.count("fork"), 1, self.fc.lines())
        self.assertTrue(any(v.endswith(" malloc") for v in self.fc.violations()), self.fc.lines())
        self.assertEqual(self.fc.count("exec"), 1, self.fc.lines())

    def test_b_no_other_way_to_make_a_process(self):
        """The shim wraps fork, vfork and _Fork: the keeper must make its
        processes with those alone (clone, posix_spawn, system and popen
        would go past the check)."""
        r = subprocess.run(["nm", "-D", "--undefined-only", kl.KEEPERD], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        imported = {line.split()[-1].split("@")[0] for line in r.stdout.splitlines() if line.strip()}
        self.assertIn("fork", imported, "the check looks at the right binary")
        for name in ("clone", "clone3", "posix_spawn", "posix_spawnp", "system", "popen"):
            self.assertNotIn(name, imported, "mcpkeeperd imports %s: extend tests/forkcheck-shim.c" % name)


class TestChildren(ForkCheckMixin, WorkerCase):

    def test_a_every_child_kind_in_user_mode(self):
        """oauth, http, an HTTP worker and a stdio worker in its sandbox,
        each serving a request: no unsafe call before any exec."""
        if not os.path.exists(STDIO_SERVER):
            raise AssertionError("stdio test server not built: %s" % STDIO_SERVER)
        self.peer = self.start_peer(lifetime=3600)
        cid = self.peer.register()
        servers = {"gh": self.peer.server_conf(cid), "files": {"command": STDIO_SERVER}}
        # No MCPKEEPER_TEST_SANDBOX: the keeper probes for user namespaces
        # in a forked child of its own.
        self.k = self.make_keeper(servers=servers, env=self.fc.env())
        access, refresh = self.peer.login(cid)
        self.k.put_token("gh", self.peer.mcp_url, access, refresh, 3600, self.peer.token_endpoint)
        self.k.start()
        self.k.wait_http()
        for name, text in (("gh", "over http"), ("files", "over stdio")):
            c = self.client(name)
            c.initialize()
            self.assertEqual(text_of(c.echo(text)), text)
            if name == "files":
                self.assertIn(self.k.server(name)["worker"].get("sandbox"), ("namespaces", "landlock"))
            self.assertEqual(c.close(), 0)
        self.assertIn("sandbox: user namespaces are", self.k.log(), "the keeper's probe ran")
        # oauth, http, two workers; the namespace probe when no mechanism is forced.
        self.assert_safe_forks(4, "user mode")
        self.assertGreaterEqual(self.fc.count("exec"), 4, self.fc.lines())
        self.assertEqual(self.k.stop(), 0)

    def test_d_with_replication_threads(self):
        """A site of a replication group (the creating one, alone): Berkeley
        DB's replication threads run inside the keeper while it forks its
        children; still no unsafe call before any exec."""
        import socket
        ports = []
        for _ in range(3):
            with socket.socket() as sk:
                sk.bind(("127.0.0.1", 0))
                ports.append(sk.getsockname()[1])
        rep = {"listen": "127.0.0.1:%d" % ports[0], "peers": ["127.0.0.1:%d" % p for p in ports[1:]],
               "create": True}
        self.peer = self.start_peer(lifetime=3600)
        cid = self.peer.register()
        self.k = self.make_keeper(servers={"gh": self.peer.server_conf(cid)}, extra_config={"replication": rep},
                                  env=self.fc.env())
        access, refresh = self.peer.login(cid)
        self.k.put_token("gh", self.peer.mcp_url, access, refresh, 3600, self.peer.token_endpoint)
        self.k.start()
        self.k.wait_http()
        self.assertEqual(self.k.rpc("replication.status")["role"], "master")
        threads = len(os.listdir("/proc/%d/task" % self.k.proc.pid))
        self.assertGreater(threads, 1, "the replication manager's threads run in the keeper")
        c = self.client("gh")
        c.initialize()
        self.assertEqual(text_of(c.echo("with threads")), "with threads")
        self.assertEqual(c.close(), 0)
        self.assert_safe_forks(3, "replication group site")
        self.assertEqual(self.k.stop(), 0)

    def test_b_system_mode(self):
        """Root with --system: each child switches to its role's user
        between fork and exec (daemon for all three here)."""
        kl.needs_root(self)
        self.k = self.make_keeper(servers={"files": {"command": "/bin/cat", "eager": True}},
                                  extra_config=DAEMON_USERS, env=self.fc.env())
        for d in (self.tmp, self.k.dir):
            os.chmod(d, 0o755)
        os.chown(self.k.data_dir, 65534, 65534)
        # The keeper drops to the state directory's owner before its first fork.
        with open(self.fc.path, "w"):
            pass
        os.chmod(self.fc.path, 0o666)
        self.k.start(args=["--system"])
        daemon = str(pwd.getpwnam("daemon").pw_uid)
        kids = {}
        for name in ("mcpkeeper-oauth", "mcpkeeper-http"):
            kids[name] = kl.wait_until(lambda: kl.children_of(self.k.proc.pid, name), 20, 0.1,
                                       "the %s child" % name)
        # The worker's pid 1 is in its own pid namespace: the keeper's child
        # is the process that waits for it (mcpkeeper-jail).
        kids["worker"] = [kl.wait_until(lambda: (self.k.server("files")["worker"] or {}).get("pid"), 20, 0.1,
                                        "the files worker")]
        for name, pids in kids.items():
            uid = kl.proc_status(pids[0])["Uid"]
            self.assertEqual(uid[:2], [daemon] * 2, (name, uid))
        self.assertNotIn("is incomplete", self.k.log())
        self.assert_safe_forks(4, "system mode")

    def test_c_a_failed_exec_is_reported_by_the_parent(self):
        """A child binary that passes the keeper's checks but that the
        kernel refuses (not a program, yet executable): the child reports
        the step and errno over its pipe, the keeper logs them, and the
        child is restarted as before."""
        libexec = os.path.join(self.tmp, "libexec")
        os.makedirs(libexec)
        bad = os.path.join(libexec, "mcpkeeper-http")
        with open(bad, "wb") as f:
            f.write(b"\x7fELF not really\n")
        os.chmod(bad, 0o755)
        self.k = self.make_keeper(env=dict(self.fc.env(), MCPKEEPER_LIBEXECDIR=libexec))
        self.k.start()
        want = "http child: cannot run %s: execveat: Exec format error" % bad
        kl.wait_until(lambda: self.k.log().count(want) >= 2, 30, 0.2, "two failed starts of the http child, named")
        http = self.k.status().get("http") or {}
        self.assertNotEqual(http.get("state"), "running", http)
        self.k.assert_alive()
        self.assert_safe_forks(3, "failed exec")


class TestKeeperOpensBrowser(ForkCheckMixin, StepupCase):

    def test_a_login_browser_list(self):
        """The keeper's own opener (a step-up with login.browser): the
        entries are split and found before the fork, the first one does not
        exist, the second is run."""
        opener = "/nonexistent/mcpkeeper-opener %s:" + BROWSER + " %s --opened-by-keeper"
        self.setup_stepup(login={"browser": opener},
                          keeper_env=dict(self.fc.env(), BROWSER="/nonexistent/other-browser"))
        c = self.connect(OLDER)
        self.peer.config(tool_scope="tools:write")
        r, _ = self.echo(c, "stepped up", STEPUP_WAIT)
        self.assert_echoed(r, "stepped up")
        rec = self.browser_records_at_least(2)
        self.assertEqual(len(rec), 2, rec)
        self.assertEqual(rec[1]["argv"], [rec[1]["url"], "--opened-by-keeper"], "%s replaced by the URL")
        # oauth, the worker, the opener's intermediate child and the opener.
        self.assert_safe_forks(4, "login.browser")


if __name__ == "__main__":
    kl.main()
