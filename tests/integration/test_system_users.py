#!/usr/bin/env python3
"""
System mode with the installed programs (issue 14, part B): one uid per
child role, every child non-dumpable from its exec, and a keeper started by
hand as root that keeps CAP_SETUID and CAP_SETGID only (bounding set too)
under no_new_privs.

Needs root (CI runs it as root; otherwise every case skips). The build is
installed into a temporary destdir (meson install --destdir), the users
mcpkeeper-oauth, mcpkeeper-http and mcpkeeper-worker are created when
missing (and only those created here are removed), and the installed keeper
runs in a private mount namespace where the destdir's prefix is mounted over
the real one: it starts the installed children (mode 0711) and no others.

The attacker is a process of the worker user, which is what a stdio
upstream's command is: it must not open the memory or the environment of
the oauth child, the http child or the keeper, nor, racing their restarts,
that of a child just exec'd: the oauth or http child (other uids), or a
worker, which shares its uid and is kept out only by being non-dumpable
from the exec on (which mode 0711 gives it).
"""
import errno
import grp
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402

ROLES = {"oauth": "mcpkeeper-oauth", "http": "mcpkeeper-http", "worker": "mcpkeeper-worker"}
CHILD_MODE = 0o711
CAP_SETGID, CAP_SETUID = 6, 7
NOBODY = 65534
# The attacker's sweep: the pids just below the last one the kernel gave out.
RACE_WINDOW = 48
RACE_SECONDS = 4.0


# ---------------------------------------------------------------------------
# The attacker, run in a forked child under the worker user's ids

def attack_open(paths):
    """{path: "ok" or the errno name} for an O_RDONLY open of each path."""
    out = {}
    for p in paths:
        try:
            os.close(os.open(p, os.O_RDONLY))
            out[p] = "ok"
        except OSError as e:
            out[p] = errno.errorcode.get(e.errno, str(e.errno))
    return out


def attack_race(seconds):
    """Until SIGUSR1 (or for at most seconds), opens /proc/PID/mem of every
    pid near the last one given out, as fast as it can. Reports each project
    process it opened and the pids that refused it (proof that it reached
    them while they lived)."""
    me = os.getpid()
    opened, denied, sweeps = {}, set(), 0
    deadline = time.monotonic() + seconds
    stop = []
    signal.signal(signal.SIGUSR1, lambda sig, frame: stop.append(sig))
    with open("/proc/sys/kernel/ns_last_pid", "rb", buffering=0) as last_f:
        while not stop and time.monotonic() < deadline:
            last_f.seek(0)
            last = int(last_f.read())
            for pid in range(last, max(last - RACE_WINDOW, 1), -1):
                if pid == me:
                    continue
                try:
                    fd = os.open("/proc/%d/mem" % pid, os.O_RDONLY)
                except OSError as e:
                    if e.errno in (errno.EACCES, errno.EPERM):
                        denied.add(pid)
                    continue
                try:
                    with open("/proc/%d/comm" % pid) as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                os.close(fd)
                if comm.startswith("mcpkeeper"):
                    opened[pid] = comm
            sweeps += 1
    return {"opened": opened, "denied": sorted(denied), "sweeps": sweeps}


class Attacker:
    """fn(*args) in a forked child that has become uid:gid with no
    supplementary group, as a stdio command of the worker user would be;
    its JSON answer comes back on a pipe."""

    def __init__(self, uid, gid, fn, *args):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                data = json.dumps(fn(*args)).encode()
                while data:
                    data = data[os.write(w, data):]
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self.fd = pid, r

    def result(self, timeout):
        """The answer, or an AssertionError when there is none in time."""
        chunks, deadline = [], time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    raise AssertionError("the attacker did not answer within %d s" % timeout)
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            # End of the pipe: the child is exiting.
            status = os.waitpid(self.pid, 0)[1]
            self.pid = None
        finally:
            self.stop()
        if status != 0:
            raise AssertionError("the attacker failed (wait status %d)" % status)
        return json.loads(b"".join(chunks))

    def stop(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = None


# ---------------------------------------------------------------------------
# Setup shared by the cases: the install and the users

def installed_paths():
    """(prefix, {file name: installed absolute path}) from meson's plan."""
    out = subprocess.run(["meson", "introspect", "--installed", "--buildoptions", kl.BUILD_ROOT],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    prefix = next(o["value"] for o in info["buildoptions"] if o["name"] == "prefix")
    return prefix, {os.path.basename(p): p for p in info["installed"].values()}


class SystemUsersCase(kl.KeeperTestCase):
    destdir = None
    created_users = []

    @classmethod
    def cannot_run(cls):
        """Why this machine cannot run the cases, or None."""
        if os.geteuid() != 0:
            if os.environ.get("CI"):
                raise AssertionError("needs root (system mode, other users), and CI is set: run the suite as root")
            return "needs root (system mode, other users)"
        for tool in ("meson", "unshare", "mount", "useradd", "userdel"):
            if not shutil.which(tool):
                return "%s is not installed" % tool
        probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            why = "no mount namespace here: %s" % probe.stderr.strip()
            if os.environ.get("CI"):
                raise AssertionError(why)  # CI runs every case: no silent skip there
            return why
        return None

    @classmethod
    def setUpClass(cls):
        # Each case skips on its own (setUp): a class that skips as a whole
        # runs no test, which kl.main() counts as a failure.
        cls.skip_why = cls.cannot_run()
        if cls.skip_why:
            return
        cls.prefix, cls.files = installed_paths()
        if not os.path.isdir(cls.prefix) or not os.path.isabs(cls.prefix) or cls.prefix == "/":
            cls.skip_why = "the prefix %s is not a directory to mount over" % cls.prefix
            return
        cls.destdir = tempfile.mkdtemp(prefix="mcpkeeper-dest-")
        subprocess.run(["meson", "install", "-C", kl.BUILD_ROOT, "--no-rebuild", "--quiet",
                        "--destdir", cls.destdir], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
        cls.created_users = []
        for name in ROLES.values():
            try:
                pwd.getpwnam(name)
            except KeyError:
                subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                                "--shell", "/usr/sbin/nologin", name], check=True)
                cls.created_users.append(name)
        cls.ids = {role: pwd.getpwnam(name) for role, name in ROLES.items()}

    @classmethod
    def tearDownClass(cls):
        for name in cls.created_users:
            # userdel takes the user's group along where USERGROUPS_ENAB says so.
            subprocess.run(["userdel", name], check=False)
            try:
                grp.getgrnam(name)
                subprocess.run(["groupdel", name], check=False)
            except KeyError:
                pass
        if cls.destdir:
            shutil.rmtree(cls.destdir, ignore_errors=True)

    def dest(self, name):
        return self.destdir + self.files[name]

    def start_installed(self, k, wait=True):
        """The installed keeper, --system, with the destdir's prefix mounted
        over the real one in a mount namespace of its own."""
        k.start(args=["--system"], wait=wait, command=[
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", 'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh",
            self.destdir + self.prefix, self.prefix, self.files["mcpkeeperd"]])

    def setUp(self):
        if self.skip_why:
            self.skipTest(self.skip_why)
        super().setUp()
        self.seen = set()
        self.addCleanup(self.kill_children)

    def kill_children(self):
        """The keeper cannot kill children of other uids; it closes their
        channels and they exit. Whatever is left when the test ends goes."""
        for pid in self.seen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def child(self, k, binary, exclude=()):
        """The pid of a child of k that exec'd binary (not one in exclude)."""
        found = []

        def look():
            found[:] = [p for p in kl.children_of(k.proc.pid, binary) if p not in exclude]
            return found
        kl.wait_until(look, 20, 0.02, "%s child of the keeper" % binary)
        self.seen.update(found)
        return found[0]

    def attacker(self, fn, *args):
        w = self.ids["worker"]
        a = Attacker(w.pw_uid, w.pw_gid, fn, *args)
        self.addCleanup(a.stop)
        return a

    def assert_ids(self, pid, role):
        st = kl.proc_status(pid)
        want = self.ids[role]
        what = "%s child %d" % (role, pid)
        self.assertEqual(st["Uid"], [str(want.pw_uid)] * 4, what)
        self.assertEqual(st["Gid"], [str(want.pw_gid)] * 4, what)
        self.assertIn(st.get("Groups", []), ([], [str(want.pw_gid)]), what)
        for cap in ("CapEff", "CapPrm", "CapAmb", "CapInh"):
            self.assertEqual(int(st[cap][0], 16), 0, "%s: %s" % (what, cap))

    def assert_keeper_limited(self, k):
        st = kl.proc_status(k.proc.pid)
        caps = (1 << CAP_SETUID) | (1 << CAP_SETGID)
        for cap in ("CapBnd", "CapPrm", "CapEff"):
            self.assertEqual(int(st[cap][0], 16), caps, "keeper %s: %s" % (cap, st[cap]))
        self.assertEqual(int(st["CapAmb"][0], 16), 0, st["CapAmb"])
        self.assertEqual(st["NoNewPrivs"], ["1"], "the keeper runs without no_new_privs")

    def race(self, k, binary, role):
        """Kills the child of binary again and again while the attacker races
        to open the memory of each replacement; returns (replacement pids,
        the attacker's report)."""
        old = self.child(k, binary)
        replaced = []
        attacker = self.attacker(attack_race, RACE_SECONDS + 60)
        time.sleep(0.3)
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            os.kill(old, signal.SIGKILL)
            old = self.child(k, binary, exclude=[old] + replaced)
            replaced.append(old)
            self.assert_ids(old, role)
            # Let the attacker's sweeps reach it even on a loaded machine,
            # where other processes move the last pid on quickly.
            time.sleep(0.1)
        time.sleep(0.3)
        os.kill(attacker.pid, signal.SIGUSR1)
        report = attacker.result(30)
        self.assertGreater(len(replaced), 2, "too few restarts of the %s child to race" % role)
        return replaced, report


class TestSystemUsers(SystemUsersCase):

    def test_a_installed_children_are_mode_0711(self):
        for name in ("mcpkeeper-oauth", "mcpkeeper-http", "mcpkeeper-worker"):
            st = os.stat(self.dest(name))
            self.assertEqual(st.st_mode & 0o7777, CHILD_MODE, "%s is mode %o" % (name, st.st_mode & 0o7777))
            self.assertEqual(st.st_uid, 0, name)

    def test_b_one_uid_per_role_nothing_dumpable(self):
        """The keeper drops to the state directory's owner (nobody here),
        each child runs as its role's user, and the worker user reaches no
        other process of the project, not even one exec'd a moment ago."""
        # One worker: each one killed is the one that comes back.
        k = self.make_keeper(servers={"a": {"url": "http://127.0.0.1:9/mcp", "oauth": False, "eager": True}})
        for d in (self.tmp, k.dir):
            os.chmod(d, 0o755)
        os.chown(k.data_dir, NOBODY, NOBODY)
        self.start_installed(k)
        keeper = kl.proc_status(k.proc.pid)
        self.assertEqual(keeper["Uid"], [str(NOBODY)] * 4, keeper["Uid"])
        self.assert_keeper_limited(k)
        oauth = self.child(k, "mcpkeeper-oauth")
        http = self.child(k, "mcpkeeper-http")
        worker = self.child(k, "mcpkeeper-worker")
        self.assert_ids(oauth, "oauth")
        self.assert_ids(http, "http")
        self.assert_ids(worker, "worker")
        log = k.log()
        self.assertNotIn("readable by its child's user", log)
        self.assertNotIn("deprecated", log)

        targets = []
        for pid in (oauth, http, k.proc.pid, worker):
            targets += ["/proc/%d/mem" % pid, "/proc/%d/environ" % pid]
        got = self.attacker(attack_open, targets).result(30)
        self.assertEqual({p: r for p, r in got.items() if r == "ok"}, {},
                         "the worker user opened another process's memory or environment")

        for binary, role in (("mcpkeeper-oauth", "oauth"), ("mcpkeeper-http", "http"),
                             ("mcpkeeper-worker", "worker")):
            replaced, report = self.race(k, binary, role)
            print("race on the %s child: %d restarts, %d sweeps, opened %r" %
                  (role, len(replaced), report["sweeps"], report["opened"]), file=sys.stderr)
            self.assertEqual(report["opened"], {}, "the worker user opened a fresh %s child's memory" % role)
            missed = [p for p in replaced if p not in report["denied"]]
            self.assertEqual(missed, [], "the attacker never reached these %s children: the race proves "
                                         "nothing" % role)
        self.assertNotIn("is incomplete", k.log())

    def test_c_worker_user_alias(self):
        """The old worker_user still names the workers' user, with a warning;
        a keeper started as root that stays root (the state directory is
        root's) keeps CAP_SETUID and CAP_SETGID only, bounding set too."""
        try:
            daemon = pwd.getpwnam("daemon")
        except KeyError:
            self.skipTest("no user daemon")
        k = self.make_keeper(servers={"a": {"url": "http://127.0.0.1:9/mcp", "oauth": False, "eager": True}},
                             extra_config={"worker_user": "daemon"})
        self.start_installed(k)
        self.assertEqual(kl.proc_status(k.proc.pid)["Uid"], ["0"] * 4)
        self.assert_keeper_limited(k)
        self.assertIn("worker_user: deprecated, read as users.worker", k.log())
        st = kl.proc_status(self.child(k, "mcpkeeper-worker"))
        self.assertEqual(st["Uid"], [str(daemon.pw_uid)] * 4, st["Uid"])
        self.assert_ids(self.child(k, "mcpkeeper-oauth"), "oauth")

    def test_d_missing_user_refused(self):
        """A user that does not exist stops the keeper at start, named."""
        k = self.make_keeper(extra_config={"users": {"http": "mcpkeeper-no-such-user"}})
        self.start_installed(k, wait=False)
        rc = k.proc.wait(timeout=30)
        self.assertNotEqual(rc, 0)
        self.assertIn("users.http: there is no user mcpkeeper-no-such-user", k.log())


    def test_e_hostile_stdio_upstream_in_system_mode(self):
        """Issue 14, part A, with the installed programs: a stdio upstream's
        command (tests/stdio-mcp/hostile-stdio.c) runs as the worker user in
        the sandbox and reaches nothing of the project."""
        hostile = os.path.join(kl.BUILD_ROOT, "tests", "stdio-mcp", "mcpkeeper-test-hostile-stdio")
        self.assertTrue(os.path.exists(hostile), "hostile stdio server not built: %s" % hostile)
        bin_dir = os.path.join(self.tmp, "bin")
        os.makedirs(bin_dir)
        shutil.copy(hostile, os.path.join(bin_dir, "hostile"))
        k = self.make_keeper(name="sys-sandbox")
        env = {"PROBE_STATE": k.data_dir, "PROBE_CONFIG": k.config_path,
               "PROBE_SOCKET": k.socket_path}
        k.servers = {"evil": {"command": os.path.join(bin_dir, "hostile"), "env": env}}
        k.write_config()
        for d in (self.tmp, k.dir, bin_dir):
            os.chmod(d, 0o755)
        os.chown(k.data_dir, NOBODY, NOBODY)
        self.start_installed(k)
        sandbox_root = k.data_dir + "-sandbox"
        st = os.stat(sandbox_root)
        self.assertEqual((st.st_uid, st.st_mode & 0o777), (self.ids["worker"].pw_uid, 0o700),
                         "the sandbox root belongs to the worker user, private")
        with k.connect() as conn:
            conn.send_json({"jsonrpc": "2.0", "id": 1, "method": "connect", "params": {"server": "evil"}})
            self.assertIn("result", conn.read_json(20))
            conn.send_json({"jsonrpc": "2.0", "id": 2, "method": "probe"})
            report = conn.read_json(30)
        self.seen.update(kl.children_of(k.proc.pid, "mcpkeeper-worker"))
        self.assertIn("result", report, report)
        res = report["result"]
        self.assertEqual(res["uid"], self.ids["worker"].pw_uid)
        names = {p["name"] for p in res["probes"]}
        for want in ("master_key", "tokens_db", "list_state", "config_file", "control_socket",
                     "dotdot_master_key", "umount__", "home_write_refused", "tmpdir_write_refused"):
            self.assertIn(want, names)
        won = ["%s: %s" % (p["name"], p["detail"]) for p in res["probes"] if p["won"]]
        self.assertEqual(won, [], "attacks that worked in system mode")
        sandbox = k.server("evil")["worker"]["sandbox"]
        self.assertIn(sandbox, ("namespaces", "landlock"))
        self.assertIn("evil: the stdio worker runs with sandbox %s" % sandbox, k.log())


if __name__ == "__main__":
    kl.main()
