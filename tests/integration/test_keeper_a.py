#!/usr/bin/env python3
"""
Integration tests of mcpkeeperd (issue 3, part A): the refresh engine against
the test peer, logout, the control socket's peer policy and input handling,
the store under a crashed second process, SIGHUP reload, a second keeper,
and mcpctl status.

Everything asserts counts and order; waits are bounded but generous (the
suite also runs under ASan on 2 cores) and are never the thing under test.
"""
import json
import shutil
import os
import pwd
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402
from keeperlib import EV_CHANGED, EV_FAILED, EV_REFRESHED, RpcError  # noqa: E402

MiB = 1024 * 1024


def for_server(name):
    return lambda d: d.get("server_name", d.get("server")) == name


class OAuthKeeperCase(kl.KeeperTestCase):
    """A peer, a registered public client, and a keeper with tokens from real logins."""

    def setup_oauth(self, names=("gh",), lifetime=10, stored_lifetime=None, refresh=None, extra_config=None,
                    extra_servers=None, peer_args=None, start=True, early_subscribe=False):
        self.peer = self.start_peer(lifetime=lifetime, extra_args=peer_args)
        self.cid = self.peer.register()
        servers = {n: self.peer.server_conf(self.cid) for n in names}
        servers.update(extra_servers or {})
        self.k = self.make_keeper(servers=servers, refresh=refresh, extra_config=extra_config)
        self.tokens = {}
        for n in names:
            access, refresh_token = self.peer.login(self.cid)
            self.k.put_token(n, self.peer.mcp_url, access, refresh_token,
                             lifetime if stored_lifetime is None else stored_lifetime, self.peer.token_endpoint)
            self.tokens[n] = (access, refresh_token)
        self.sub = None
        if start:
            if early_subscribe:
                self.k.start(wait=False)
                self.sub = self.k.subscribe_when_up()
                self.k.wait_ready()
            else:
                self.k.start()
                self.sub = self.k.subscribe()
        return self.k

    def all_tokens(self):
        return [t for pair in self.tokens.values() for t in pair if t]

    def assert_log_clean(self):
        kl.assert_no_secrets(self.k.log(), self.all_tokens(), "keeper log")


# ---------------------------------------------------------------------------
# a-e: the refresh engine

class TestRefresh(OAuthKeeperCase):

    def test_a_refresh_before_expiry_repeatedly(self):
        k = self.setup_oauth(lifetime=10, refresh={"threshold": 0.8})
        self.assertEqual(k.server("gh")["oauth_status"], "authenticated")
        self.assertEqual(k.server("gh")["refresh"]["state"], "scheduled")
        first_expiry = k.server("gh")["token_expires_at"]
        expiries = [first_expiry]
        for i in range(2):
            ev = self.sub.wait_for(EV_REFRESHED, for_server("gh"), 40)
            expiries.append(ev["data"]["expires_at"])
            st = k.server("gh")
            self.assertEqual(st["oauth_status"], "authenticated", "after refresh %d: %r" % (i + 1, st))
            self.assertEqual(st["refresh"]["retry_count"], 0)
        for prev, cur in zip(expiries, expiries[1:]):
            self.assertGreater(cur, prev, "expires_at must move forward: %r" % expiries)
        self.assertEqual(self.sub.of_type(EV_FAILED), [], "no refresh failed")
        stats = self.peer.stats()
        self.assertEqual(stats["reused_refresh_tokens"], 0, stats)
        self.assertGreaterEqual(stats["refresh_grants"], 2, stats)
        self.assertEqual(stats["refresh_requests"], stats["refresh_grants"], "every request granted: %r" % stats)
        self.assert_log_clean()

    def test_b_500_twice_then_success(self):
        self.setup_oauth(lifetime=10, start=False)
        self.peer.fail("500", 2)
        self.k.start()
        self.sub = self.k.subscribe()
        ev = self.sub.wait_for(EV_REFRESHED, for_server("gh"), 60)
        stats = self.peer.stats()
        self.assertEqual(stats["refresh_requests"], 3, "refreshed on the third attempt: %r" % stats)
        self.assertEqual(stats["failures_injected"], 2, stats)
        self.assertEqual(stats["refresh_grants"], 1, stats)
        self.assertEqual(self.sub.of_type(EV_FAILED), [], "two failures stay within the fast retries")
        st = self.k.server("gh")
        self.assertEqual(st["oauth_status"], "authenticated", st)
        self.assertEqual(st["refresh"]["retry_count"], 0, st)
        self.assertIsNone(st["refresh"]["last_error"], st)
        self.assertEqual(st["token_expires_at"], ev["data"]["expires_at"])
        self.assert_log_clean()

    def test_c_500_five_times_error_then_slow_retry_past_expiry(self):
        self.setup_oauth(lifetime=10, refresh={"max_retries": 3}, start=False)
        self.peer.fail("500", 5)
        self.k.start()
        self.sub = self.k.subscribe()
        stored_expiry = self.k.server("gh")["token_expires_at_unix"]

        # The first attempt and three fast retries fail: one refresh_failed.
        ev = self.sub.wait_for(EV_FAILED, for_server("gh"), 40)
        self.assertTrue(ev["data"].get("error"), ev)
        self.assertEqual(self.peer.stats()["refresh_requests"], 4,
                         "refresh_failed once the third fast retry failed")
        st = self.k.server("gh")
        self.assertEqual(st["oauth_status"], "error", st)
        self.assertEqual(st["refresh"]["state"], "retrying", st)
        self.assertEqual(st["refresh"]["retry_count"], 4, st)
        self.assertTrue(st["refresh"]["last_error"], st)
        self.assertIsNotNone(st["refresh"]["next_at"], st)

        # Slow backoff (30 s +-10 %): the fifth request, past the token's expiry.
        kl.wait_until(lambda: self.peer.stats()["refresh_requests"] >= 5, 60, 0.5, "the fifth token request")
        self.assertGreater(time.time(), stored_expiry, "the fifth attempt comes after the access token expired")
        st = kl.wait_until(lambda: (lambda s: s if s["refresh"]["retry_count"] == 5 else None)(self.k.server("gh")),
                           30, 0.2, "retry_count 5")
        self.assertEqual(st["oauth_status"], "error", st)
        self.assertEqual(st["refresh"]["state"], "retrying", "still retrying past expiry: %r" % st)

        # The next slow retry (60 s +-10 % after the fifth) succeeds.
        self.sub.wait_for(EV_REFRESHED, for_server("gh"), 90)
        stats = self.peer.stats()
        self.assertEqual(stats["refresh_requests"], 6, stats)
        self.assertEqual(stats["refresh_grants"], 1, stats)
        st = self.k.server("gh")
        self.assertEqual(st["oauth_status"], "authenticated", st)
        self.assertEqual(st["refresh"]["retry_count"], 0, st)
        self.assertIsNone(st["refresh"]["last_error"], st)
        failed = self.sub.of_type(EV_FAILED, "gh")
        self.assertEqual(len(failed), 1, "exactly one refresh_failed for the run: %r" % failed)
        types = [e["type"] for e in self.sub.events if for_server("gh")(e["data"])]
        self.assertEqual(types, [EV_FAILED, EV_REFRESHED], "order of events")
        self.assert_log_clean()

    def test_d_invalid_grant_is_terminal(self):
        self.setup_oauth(lifetime=10, start=False)
        self.peer.fail("invalid_grant", 1)
        self.k.start()
        self.sub = self.k.subscribe()
        ev = self.sub.wait_for(EV_FAILED, for_server("gh"), 40)
        self.assertEqual(ev["data"].get("error"), "invalid_grant", ev)
        st = self.k.server("gh")
        self.assertEqual(st["oauth_status"], "expired", st)
        self.assertEqual(st["refresh"]["state"], "failed", st)
        requests = self.peer.stats()["refresh_requests"]
        self.assertEqual(requests, 1, "one attempt, no retries")
        later = self.sub.drain(5.0)
        self.assertEqual(self.peer.stats()["refresh_requests"], requests, "no token request after invalid_grant")
        self.assertEqual([e for e in later if for_server("gh")(e["data"])], [], "no further events")
        st = self.k.server("gh")
        self.assertEqual((st["oauth_status"], st["refresh"]["state"]), ("expired", "failed"), st)
        # The refusal is kept in the record: a restarted keeper does not
        # present the dead refresh token again.
        self.k.stop()
        self.k.start()
        st = self.k.server("gh")
        self.assertEqual((st["oauth_status"], st["refresh"]["state"]), ("expired", "failed"), st)
        self.assertEqual(st["refresh"]["last_error"], "invalid_grant", st)
        time.sleep(2)
        self.assertEqual(self.peer.stats()["refresh_requests"], requests, "no token request after restart")
        self.assert_log_clean()

    def test_e2_disabled_server_not_refreshed(self):
        # A disabled server keeps its token but is not refreshed, even when due.
        self.setup_oauth(lifetime=3600, stored_lifetime=-5, start=False)
        self.k.servers["gh"]["enabled"] = False
        self.k.write_config()
        self.k.start()
        time.sleep(3)
        self.assertEqual(self.peer.stats()["refresh_requests"], 0)
        st = self.k.server("gh")
        self.assertEqual(st["refresh"]["state"], "idle", st)
        code, out = self.k.check_token("gh", self.peer.mcp_url, self.tokens["gh"][0])
        self.assertEqual(code, 0, out)
        # Enabled again (reload): refreshed at once.
        self.k.servers["gh"]["enabled"] = True
        self.k.write_config()
        self.k.signal(signal.SIGHUP)
        kl.wait_until(lambda: self.peer.stats()["refresh_grants"] == 1, 30, 0.2, "the refresh after enabling")

    def test_e_expired_at_start_refreshed_at_once(self):
        # The stored token expired 5 s ago; the peer issues hour-long ones.
        self.setup_oauth(lifetime=3600, stored_lifetime=-5, early_subscribe=True)
        ev = self.sub.wait_for(EV_REFRESHED, for_server("gh"), 30)
        self.assertEqual(self.sub.events[0]["type"], EV_REFRESHED, "the first event: %r" % self.sub.events)
        self.assertGreater(ev["data"]["expires_at_unix"], time.time(), ev)
        stats = self.peer.stats()
        self.assertEqual((stats["refresh_requests"], stats["refresh_grants"]), (1, 1), stats)
        st = self.k.server("gh")
        self.assertEqual(st["oauth_status"], "authenticated", st)
        self.assertEqual(st["refresh"]["state"], "scheduled", st)
        self.assert_log_clean()


# ---------------------------------------------------------------------------
# f: logout

class TestLogout(OAuthKeeperCase):

    def setUp(self):
        super().setUp()
        self.setup_oauth(names=("github", "github-enterprise", "linear"), lifetime=3600,
                         extra_servers={"files": {"command": "/bin/cat"}})

    def assertRpcError(self, kind, method, params):
        with self.assertRaises(RpcError, msg="%s %r" % (method, params)) as cm:
            self.k.rpc(method, params)
        self.assertEqual(cm.exception.kind, kind, "%s %r: %s" % (method, params, cm.exception))
        return cm.exception

    def listed_keys(self):
        out = self.k.store_tool("list").stdout.decode()
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def test_f1_logout_one_exact_server(self):
        k, url = self.k, self.peer.mcp_url
        self.assertEqual(k.auth_status("github")["oauth_status"], "authenticated")
        res = k.rpc("auth.logout", {"server": "github"})
        self.assertEqual(res.get("server"), "github", res)
        self.assertIs(res.get("logged_out"), True, res)
        ev = self.sub.wait_for(EV_CHANGED, None, 10)
        self.assertEqual(ev["data"], {"reason": "oauth_logout", "server": "github"})
        self.assertEqual(k.auth_status("github")["oauth_status"], "none")
        self.assertEqual(k.server("github")["refresh"]["state"], "idle")
        # check-token: non-zero and neither "match" nor "mismatch" means no record.
        rc, out = k.check_token("github", url, self.tokens["github"][0])
        self.assertNotEqual(rc, 0, "record deleted: %s" % out)
        self.assertNotIn("match", out)
        keys = self.listed_keys()
        self.assertFalse([x for x in keys if x.startswith("github#")], keys)
        self.assertTrue([x for x in keys if x.startswith("github-enterprise#")], keys)
        # github-enterprise shares the prefix and must be untouched.
        rc, out = k.check_token("github-enterprise", url, self.tokens["github-enterprise"][0])
        self.assertEqual((rc, out.strip()), (0, "match"))
        self.assertEqual(k.auth_status("github-enterprise")["oauth_status"], "authenticated")
        self.assertEqual(k.server("github-enterprise")["refresh"]["state"], "scheduled")
        self.assertEqual([e["data"] for e in self.sub.of_type(EV_CHANGED)],
                         [{"reason": "oauth_logout", "server": "github"}])
        self.assert_log_clean()

    def test_f2_logout_errors(self):
        e = self.assertRpcError("not_found", "auth.logout", {"server": "nosuch"})
        self.assertEqual(e.code, -32000)
        self.assertRpcError("not_found", "auth.logout", {"server": "githu"})
        self.assertRpcError("not_oauth", "auth.logout", {"server": "files"})
        for bad in ({"server": 5}, {}, {"all": False}, {"all": "yes"}, {"server": "github", "all": True}, None):
            e = self.assertRpcError("invalid_params", "auth.logout", bad)
            self.assertEqual(e.code, -32602, bad)
        # Nothing was logged out by any of those.
        for n in ("github", "github-enterprise", "linear"):
            self.assertEqual(self.k.auth_status(n)["oauth_status"], "authenticated", n)
        self.assertEqual(self.sub.drain(0.5), [])

    def test_f3_logout_all(self):
        res = self.k.rpc("auth.logout", {"all": True})
        results = {r["server"]: r for r in res["results"]}
        self.assertEqual(sorted(results), ["github", "github-enterprise", "linear"], res)
        for n, r in results.items():
            self.assertIs(r.get("logged_out"), True, r)
            self.assertIs(r.get("had_token"), True, r)
        changed = [self.sub.wait_for(EV_CHANGED, None, 10)["data"] for _ in range(3)]
        self.assertEqual(sorted(d["server"] for d in changed), ["github", "github-enterprise", "linear"])
        self.assertTrue(all(d["reason"] == "oauth_logout" for d in changed), changed)
        for n in results:
            self.assertEqual(self.k.auth_status(n)["oauth_status"], "none", n)
            rc, out = self.k.check_token(n, self.peer.mcp_url, self.tokens[n][0])
            self.assertNotEqual(rc, 0, n)
            self.assertNotIn("match", out)
        self.assertEqual(self.listed_keys(), [])
        self.assertNotIn("files", results, "stdio servers are not OAuth servers")
        # Again: every server reports it had no token.
        res = self.k.rpc("auth.logout", {"all": True})
        self.assertTrue(all(r.get("had_token") is False for r in res["results"]), res)
        self.assert_log_clean()

    def test_f4_management_disabled(self):
        self.k.stop()
        self.k.extra_config["disable_management"] = True
        self.k.write_config()
        self.k.start()
        for params in ({"server": "github"}, {"all": True}):
            with self.assertRaises(RpcError) as cm:
                self.k.rpc("auth.logout", params)
            self.assertEqual(cm.exception.kind, "forbidden", params)
        rc, out = self.k.check_token("github", self.peer.mcp_url, self.tokens["github"][0])
        self.assertEqual((rc, out.strip()), (0, "match"))
        self.assertEqual(self.k.auth_status("github")["oauth_status"], "authenticated")


# ---------------------------------------------------------------------------
# g: peer policy

NOBODY = 65534
CLIENT_SCRIPT = r'''
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(15)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
except OSError:
    pass
buf = b""
closed = False
while True:
    try:
        c = s.recv(65536)
    except ConnectionResetError:
        c = b""
    except socket.timeout:
        break
    if not c:
        closed = True
        break
    buf += c
    if b"\n" in buf and sys.argv[2] == "one":
        break
sys.stdout.write(("CLOSED\n" if closed else "OPEN\n") + buf.decode("utf-8", "replace"))
'''


class TestPeerPolicy(kl.KeeperTestCase):

    def setUp(self):
        super().setUp()
        kl.needs_root(self, "needs root (setpriv to another uid)")
        if not shutil.which("setpriv"):
            self.skipTest("setpriv not installed")

    def open_up(self, k):
        for d in (self.tmp, k.dir, k.runtime_dir):
            os.chmod(d, 0o755)
        os.chmod(k.socket_path, 0o666)

    def as_nobody(self, k, mode, gid=NOBODY, groups=None):
        argv = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % gid]
        argv += ["--groups=" + ",".join(str(g) for g in groups)] if groups else ["--clear-groups"]
        argv += [sys.executable, "-c", CLIENT_SCRIPT, k.socket_path, mode]
        r = subprocess.run(argv, capture_output=True, timeout=30, cwd="/", env=kl.child_env())
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        lines = r.stdout.decode().splitlines()
        return lines[0], [json.loads(x) for x in lines[1:] if x.strip()]

    def assert_refused(self, k, **kw):
        state, msgs = self.as_nobody(k, "all", **kw)
        self.assertEqual(state, "CLOSED", "the keeper closes a refused connection")
        self.assertEqual(len(msgs), 1, "one error line: %r" % msgs)
        self.assertNotIn("result", msgs[0])
        self.assertEqual(msgs[0]["error"]["data"]["kind"], "forbidden", msgs[0])

    def assert_allowed(self, k, **kw):
        _, msgs = self.as_nobody(k, "one", **kw)
        self.assertEqual(len(msgs), 1, msgs)
        self.assertIn("result", msgs[0], msgs[0])
        self.assertIn("servers", msgs[0]["result"])

    def test_g1_other_uid_refused_then_group_allows(self):
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        k.start()
        self.open_up(k)
        self.assert_refused(k)
        self.assertIn("refused pid", k.log())
        k.status()  # root still served

        # "nogroup" is uid 65534's primary group.
        k2 = self.make_keeper(servers={"files": {"command": "/bin/cat"}}, extra_config={"group": "nogroup"})
        k2.start()
        self.open_up(k2)
        self.assert_allowed(k2)
        # Another primary group and no supplementary one: refused.
        self.assert_refused(k2, gid=NOBODY - 1)

    def test_g3_mcpctl_refused_exit_4(self):
        if not os.path.exists(kl.MCPCTL):
            self.skipTest("mcpctl not built")
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        k.start()
        self.open_up(k)
        r = subprocess.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
                            kl.MCPCTL, "--socket", k.socket_path, "status"],
                           capture_output=True, timeout=30, cwd="/", env=kl.child_env())
        self.assertEqual(r.returncode, 4, r.stderr.decode(errors="replace"))
        self.assertIn("refused", r.stderr.decode(errors="replace"))

    def test_g2_supplementary_group_allows(self):
        if not shutil.which("groupadd") or not shutil.which("groupdel"):
            self.skipTest("groupadd/groupdel not installed")
        name = "mcpkit%d" % os.getpid()
        r = subprocess.run(["groupadd", name], capture_output=True, timeout=30)
        if r.returncode != 0:
            self.skipTest("groupadd failed: %s" % r.stderr.decode(errors="replace"))
        self.addCleanup(subprocess.run, ["groupdel", name], capture_output=True, timeout=30)
        gid = int(subprocess.run(["getent", "group", name], capture_output=True, timeout=10,
                                 check=True).stdout.decode().split(":")[2])
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}}, extra_config={"group": name})
        k.start()
        self.open_up(k)
        self.assert_refused(k)                 # primary nogroup, no supplementary groups
        self.assert_allowed(k, groups=[gid])   # SO_PEERGROUPS


# ---------------------------------------------------------------------------
# h: malformed input on the control socket

REQ_PREFIX = b'{"jsonrpc":"2.0","id":1,"method":"status","params":{"pad":"'


# Every child as daemon: a user that exists everywhere (the mcpkeeper users
# are test_system_users.py's).
DAEMON_USERS = {"users": {"oauth": "daemon", "http": "daemon", "worker": "daemon"}}


class TestSystemMode(kl.KeeperTestCase):
    """Started as root with --system: the keeper becomes the state directory's
    owner keeping only CAP_SETUID/CAP_SETGID, and its oauth child runs as
    users.oauth with no capabilities, unable to enter the state directory."""

    def test_m_root_start_drops_to_owner(self):
        kl.needs_root(self)
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}}, extra_config=DAEMON_USERS)
        for d in (self.tmp, k.dir):
            os.chmod(d, 0o755)
        os.chown(k.data_dir, NOBODY, NOBODY)
        k.start(args=["--system"])
        try:
            keeper = kl.proc_status(k.proc.pid)
            self.assertEqual(keeper["Uid"][:2], [str(NOBODY)] * 2, keeper["Uid"])
            self.assertEqual(int(keeper["CapEff"][0], 16), (1 << 6) | (1 << 7), keeper["CapEff"])
            kids = []
            kl.wait_until(lambda: kids.extend(kl.children_of(k.proc.pid, "mcpkeeper-oauth")) or kids, 20, 0.1,
                          "the oauth child")
            child = kl.proc_status(kids[0])
            daemon_uid = str(pwd.getpwnam("daemon").pw_uid)
            self.assertEqual(child["Uid"][:2], [daemon_uid] * 2, child["Uid"])
            for cap in ("CapEff", "CapPrm", "CapAmb"):
                self.assertEqual(int(child[cap][0], 16), 0, (cap, child[cap]))
            for name in os.listdir(k.data_dir):
                st = os.stat(os.path.join(k.data_dir, name))
                self.assertEqual(st.st_uid, NOBODY, name)
            self.assertIn("with CAP_SETUID and CAP_SETGID only", k.log())
        finally:
            k.stop()


    def test_m2_children_beyond_reach_of_their_user(self):
        """The children's binaries in a directory that neither the keeper's
        owner nor the child's user may enter (a build tree under /root): the
        keeper opens them before it drops root and still starts them; a
        binary that cannot be run is named with the reason."""
        kl.needs_root(self)
        hidden = os.path.join(self.tmp, "hidden")
        libexec = os.path.join(hidden, "libexec")
        os.makedirs(libexec)
        shutil.copy2(os.path.join(kl.BUILD_ROOT, "daemon", "oauth", "mcpkeeper-oauth"), libexec)
        with open(os.path.join(libexec, "mcpkeeper-http"), "w") as f:
            f.write("not a program\n")
        os.chmod(os.path.join(libexec, "mcpkeeper-http"), 0o644)
        os.chmod(hidden, 0o700)
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}}, extra_config=DAEMON_USERS,
                             env={"MCPKEEPER_LIBEXECDIR": libexec})
        for d in (self.tmp, k.dir):
            os.chmod(d, 0o755)
        os.chown(k.data_dir, NOBODY, NOBODY)
        k.start(args=["--system"])
        try:
            kids = []
            kl.wait_until(lambda: kids.extend(kl.children_of(k.proc.pid, "mcpkeeper-oauth")) or kids, 20, 0.1,
                          "the oauth child from a directory its user cannot enter")
            child = kl.proc_status(kids[0])
            self.assertEqual(child["Uid"][:2], [str(pwd.getpwnam("daemon").pw_uid)] * 2, child["Uid"])
            kl.wait_until(lambda: k.status()["servers"] is not None, 10, 0.1, "status")
            kl.wait_until(lambda: "cannot run %s/mcpkeeper-http: Permission denied" % libexec in k.log(), 10, 0.1,
                          "the http child's binary named with the reason")
        finally:
            k.stop()


class TestMalformed(kl.KeeperTestCase):

    def setUp(self):
        super().setUp()
        self.k = self.make_keeper(servers={"files": {"command": "/bin/cat"},
                                           "gh": {"url": "http://127.0.0.1:9/mcp"}})
        self.k.start()

    def still_serving(self, what):
        try:
            res = self.k.rpc("status", timeout=15)
        except Exception as e:
            self.fail("after %s the keeper does not answer status: %r" % (what, e))
        self.assertEqual(len(res["servers"]), 2, what)
        self.assertTrue(self.k.running(), what)

    def send_bad(self, data, kind, what, code=None, req_id=None, closes=None):
        """Sends data (in a thread: the keeper may close first), expects one error of kind."""
        conn = self.k.connect(timeout=30)
        errors = []

        def sender():
            try:
                conn.send(data)
            except OSError as e:  # EPIPE/ECONNRESET once the keeper gave up on us
                errors.append(e)
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        try:
            msg = conn.read_json(30)
            self.assertIsNotNone(msg, "%s: closed without an error reply" % what)
            self.assertIn("error", msg, "%s: %r" % (what, msg))
            self.assertEqual(msg["error"].get("data", {}).get("kind"), kind, "%s: %r" % (what, msg))
            self.assertEqual(msg.get("jsonrpc"), "2.0", what)
            if code is not None:
                self.assertEqual(msg["error"]["code"], code, "%s: %r" % (what, msg))
            if req_id is not None:
                self.assertEqual(msg.get("id"), req_id, "%s: the error answers the request's id" % what)
            if closes:
                self.assertTrue(conn.wait_closed(30), "%s: the keeper keeps a broken stream open" % what)
        finally:
            conn.close()
            t.join(30)
        self.still_serving(what)
        return msg

    def test_h1_battery(self):
        big = REQ_PREFIX + b"x" * (MiB + 4096)
        self.send_bad(big, "too_large", "oversize line without newline", closes=True)
        self.send_bad(big + b'"}}\n', "too_large", "oversize line with newline", closes=True)
        self.send_bad(b"{not json}\n", "parse_error", "invalid JSON", code=-32700)
        self.send_bad(b'{"jsonrpc":"2.0","id":1,"method":"status"\n', "parse_error", "truncated JSON", code=-32700)
        self.send_bad(b'{"jsonrpc":"2.0","id":1,"method":"st\xff\xfeatus"}\n', "parse_error", "invalid UTF-8",
                      code=-32700)
        self.send_bad(b'{"jsonrpc":"2.0","id":1,"method":"status","params":{"a":"\xc0\xaf"}}\n', "parse_error",
                      "overlong UTF-8", code=-32700)
        self.send_bad(b"[" * 100000 + b"\n", "parse_error", "deeply nested JSON")
        self.send_bad(b'[{"jsonrpc":"2.0","id":1,"method":"status"}]\n', "invalid_request", "array", code=-32600)
        self.send_bad(b'"status"\n', "invalid_request", "a string", code=-32600)
        self.send_bad(b'{"jsonrpc":"1.0","id":7,"method":"status"}\n', "invalid_request", "jsonrpc 1.0",
                      code=-32600, req_id=7)
        self.send_bad(b'{"id":8,"method":"status"}\n', "invalid_request", "no jsonrpc member", code=-32600)
        self.send_bad(b'{"jsonrpc":"2.0","id":9,"method":5}\n', "invalid_request", "method not a string",
                      code=-32600)
        self.send_bad(b'{"jsonrpc":"2.0","id":10,"method":"no.such.method"}\n', "unknown_method", "unknown method",
                      code=-32601, req_id=10)
        self.send_bad(b'{"jsonrpc":"2.0","id":11,"method":"status","params":[1,2]}\n', "invalid_params",
                      "params an array", code=-32602, req_id=11)
        # JSON-RPC 2.0: params other than an object or array make an invalid Request.
        self.send_bad(b'{"jsonrpc":"2.0","id":12,"method":"auth.status","params":"gh"}\n', "invalid_request",
                      "params a string", code=-32600, req_id=12)
        self.send_bad(b'{"jsonrpc":"2.0","id":"s","method":"auth.status","params":{"server":["gh"]}}\n',
                      "invalid_params", "server not a string", code=-32602, req_id="s")
        self.assertTrue(self.k.running())

    def test_h5_protocol_version(self):
        # Another version is refused by name, and the connection closes.
        msg = self.send_bad(b'{"jsonrpc":"2.0","id":3,"method":"hello","params":{"version":99}}\n'
                            b'{"jsonrpc":"2.0","id":4,"method":"status"}\n',
                            "version_mismatch", "hello with version 99", code=-32000, req_id=3, closes=True)
        self.assertIn("version 1", msg["error"]["message"])
        self.assertIn("version 99", msg["error"]["message"])
        self.send_bad(b'{"jsonrpc":"2.0","id":5,"method":"hello","params":{"version":"1"}}\n', "invalid_params",
                      "hello with a string version", code=-32602, req_id=5)
        self.send_bad(b'{"jsonrpc":"2.0","id":6,"method":"hello"}\n', "invalid_params", "hello without params",
                      code=-32602, req_id=6)
        # The same version: the hello is answered and the connection serves on.
        with self.k.connect(30) as c:
            c.send(b'{"jsonrpc":"2.0","id":1,"method":"hello","params":{"version":1,"client":"test"}}\n'
                   b'{"jsonrpc":"2.0","id":2,"method":"status"}\n')
            hello = c.read_json(30)
            self.assertEqual(hello.get("id"), 1, hello)
            self.assertEqual(hello["result"]["version"], 1, hello)
            self.assertTrue(hello["result"]["keeper"].startswith("mcpkeeperd "), hello)
            status = c.read_json(30)
            self.assertEqual(status.get("id"), 2, status)
            self.assertEqual(len(status["result"]["servers"]), 2, status)
        # Without a hello (socat): served as before.
        self.still_serving("hello tests")

    def test_h2_large_message_under_limit_is_served(self):
        with self.k.connect(30) as c:
            line = REQ_PREFIX + b"x" * (MiB - len(REQ_PREFIX) - 1024) + b'"}}\n'
            c.send(line)
            msg = c.read_json(30)
        self.assertIn("result", msg, str(msg)[:200])
        # Blank lines are skipped; a notification gets no answer; the connection stays usable.
        with self.k.connect(30) as c:
            c.send(b'\n\r\n{"jsonrpc":"2.0","method":"status"}\n{"jsonrpc":"2.0","id":2,"method":"status"}\n')
            msg = c.read_json(30)
            self.assertEqual(msg.get("id"), 2, msg)
        self.still_serving("blank lines")

    def test_h3_abandoned_connections(self):
        self.k.wait_http()
        fds0 = self.k.fd_count()
        conns = []
        for i in range(100):
            c = self.k.connect(30)
            if i % 3 == 1:
                c.send(b'{"jsonrpc":"2.0","id":1,"meth')       # half a line
            elif i % 3 == 2:
                c.send(b'{"jsonrpc":"2.0","id":1,"method":"events.subscribe"}\n')
            conns.append(c)
        self.still_serving("100 idle connections")
        for c in conns[::2]:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
        self.still_serving("abandoning half of them")
        for c in conns[1::2]:
            c.close()
        self.still_serving("abandoning all of them")
        # Half a line, then disconnect, one more time on its own.
        c = self.k.connect(30)
        c.send(b'{"jsonrpc":"2.0","id":1,"method":"sta')
        c.close()
        self.still_serving("half a line then disconnect")
        kl.wait_until(lambda: self.k.fd_count() <= fds0, 30, 0.2, "the keeper to release the descriptors")

    def test_h4_connection_cap_per_uid(self):
        self.k.stop()
        self.k.extra_config["max_connections_per_uid"] = 4
        self.k.write_config()
        self.k.start()
        held = []
        for i in range(4):
            c = self.k.connect(30)
            c.send_json({"jsonrpc": "2.0", "id": i, "method": "status"})
            self.assertIn("result", c.read_json(30))
            held.append(c)
        with self.k.connect(30) as c:
            msg = c.read_json(30)
            self.assertIsNotNone(msg, "the fifth connection gets an error line")
            self.assertEqual(msg["error"]["data"]["kind"], "busy", msg)
            self.assertTrue(c.wait_closed(30))
        held.pop().close()
        kl.wait_until(lambda: "servers" in self.k.rpc("status"), 30, 0.2, "a slot to free up")
        for c in held:
            c.close()


# ---------------------------------------------------------------------------
# i, j, k: store recovery, reload, a second keeper

class TestProcess(OAuthKeeperCase):

    def test_i_second_process_dies_inside_the_environment(self):
        k = self.setup_oauth(lifetime=10)
        self.sub.wait_for(EV_REFRESHED, for_server("gh"), 40)
        hold = subprocess.Popen([kl.STORE_TOOL, k.data_dir, "hold", "it-hold-key"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kl.child_env())
        kl._register(hold)
        try:
            r, _, _ = select.select([hold.stdout], [], [], 30)
            line = hold.stdout.readline() if r else b""
            self.assertEqual(line.strip(), b"holding", hold.stderr.read1(4096) if not r else line)
        finally:
            kl.stop_process(hold, 10, signal.SIGKILL)
            hold.stdout.close()
            hold.stderr.close()
        self.assertEqual(hold.returncode, -signal.SIGKILL)
        listing = k.store_tool("list", timeout=60).stdout.decode()
        self.assertRegex(listing, r"(?m)^gh#\S+ ok ")
        self.assertNotIn("it-hold-key", listing, "the uncommitted write was rolled back")
        k.status()
        n_before = len(self.sub.of_type(EV_REFRESHED, "gh"))
        ev = self.sub.wait_for(EV_REFRESHED, for_server("gh"), 40)
        self.assertGreater(len(self.sub.of_type(EV_REFRESHED, "gh")), n_before)
        self.assertEqual(k.server("gh")["oauth_status"], "authenticated")
        kl.wait_until(lambda: "reopen" in k.log().lower(), 20, 0.2, "the keeper to log the reopen")
        # The commit after the reopen is durable: the store lists the new expiry.
        listing = k.store_tool("list", timeout=60).stdout.decode()
        self.assertIn("expires_at=%d" % ev["data"]["expires_at_unix"], listing)
        self.assertTrue(k.running())
        self.assertEqual(self.peer.stats()["reused_refresh_tokens"], 0)
        self.assert_log_clean()

    def names(self):
        return sorted(s["name"] for s in self.k.status()["servers"])

    def test_j1_sighup_adds_and_removes_servers(self):
        k = self.setup_oauth(names=("gh",), lifetime=3600, extra_servers={"files": {"command": "/bin/cat"}})
        self.assertEqual(self.names(), ["files", "gh"])
        # A server added while running, with a token stored next to the running keeper.
        access, refresh_token = self.peer.login(self.cid)
        self.tokens["late"] = (access, refresh_token)
        k.put_token("late", self.peer.mcp_url, access, refresh_token, 3600, self.peer.token_endpoint)
        k.servers["late"] = self.peer.server_conf(self.cid)
        k.servers["more"] = {"command": "/bin/true"}
        k.write_config()
        k.signal(signal.SIGHUP)
        kl.wait_until(lambda: "more" in self.names(), 30, 0.1, "the added servers")
        self.assertEqual(self.names(), ["files", "gh", "late", "more"])
        self.assertEqual(k.server("late")["oauth_status"], "authenticated", "an added server loads its token")
        self.assertEqual(k.server("late")["refresh"]["state"], "scheduled")
        self.assertEqual(k.server("gh")["oauth_status"], "authenticated", "unchanged servers keep their token")

        del k.servers["files"]
        k.write_config()
        k.signal(signal.SIGHUP)
        kl.wait_until(lambda: "files" not in self.names(), 30, 0.1, "the removed server to go")
        self.assertEqual(self.names(), ["gh", "late", "more"])
        self.assertEqual(k.server("gh")["oauth_status"], "authenticated")
        self.assertTrue(k.running())
        self.assert_log_clean()

    def test_j2_sighup_bad_config_keeps_the_old_one(self):
        k = self.setup_oauth(names=("gh",), lifetime=3600, extra_servers={"files": {"command": "/bin/cat"}})
        k.write_config(raw='{"mcpServers": {"broken": ')
        k.signal(signal.SIGHUP)
        kl.wait_until(lambda: k.log().count("reload refused") == 1, 30, 0.1, "the reload error in the log")
        self.assertEqual(self.names(), ["files", "gh"], "a bad config keeps the old servers")
        self.assertIn("config.json", k.log().split("reload refused")[-1].splitlines()[0], "the error names the file")

        # A config that parses but is invalid is refused too, naming the field.
        k.write_config(raw=json.dumps({"data_dir": k.data_dir, "runtime_dir": k.runtime_dir,
                                       "mcpServers": {"bad": {"url": "ftp://x"}}}))
        k.signal(signal.SIGHUP)
        kl.wait_until(lambda: k.log().count("reload refused") == 2, 30, 0.1, "the second reload error")
        self.assertIn("mcpServers.bad.url", k.log().split("reload refused")[-1].splitlines()[0])
        self.assertEqual(self.names(), ["files", "gh"])
        self.assertEqual(k.server("gh")["oauth_status"], "authenticated")
        self.assertEqual(k.server("gh")["refresh"]["state"], "scheduled")
        self.assertTrue(k.running())
    def test_n_oauth_child_restarted(self):
        # A dead oauth child is restarted and refreshing goes on.
        self.setup_oauth(lifetime=10)
        first = []
        kl.wait_until(lambda: "oauth child ready" in self.k.log(), 20, 0.1, "the oauth child's hello")
        kl.wait_until(lambda: first.extend(kl.children_of(self.k.proc.pid, "mcpkeeper-oauth")) or first, 20, 0.1,
                      "the oauth child")
        os.kill(first[0], signal.SIGKILL)
        later = []
        kl.wait_until(lambda: later.extend(p for p in kl.children_of(self.k.proc.pid, "mcpkeeper-oauth")
                                           if p != first[0]) or later, 30, 0.1, "a new oauth child")
        self.sub.wait_for(EV_REFRESHED, for_server("gh"), 40)
        self.assertGreaterEqual(self.k.log().count("oauth child ready"), 2)
        self.assertEqual(self.k.server("gh")["oauth_status"], "authenticated")

    def test_o_descriptors_run_out(self):
        # With few descriptors the keeper stops accepting for a moment
        # instead of spinning or dying, and serves again once they are back.
        if not shutil.which("prlimit"):
            self.skipTest("prlimit not installed")
        self.setup_oauth(lifetime=3600, start=False, extra_config={"max_connections_per_uid": 1000})
        self.k.start()
        subprocess.run(["prlimit", "--pid", str(self.k.proc.pid), "--nofile=48:48"], check=True, timeout=10)
        conns = []
        for _ in range(80):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(5)
            try:
                c.connect(self.k.socket_path)
            except OSError:
                c.close()
                break
            conns.append(c)
        kl.wait_until(lambda: "cannot accept" in self.k.log(), 20, 0.1, "the keeper to pause accepting")
        for c in conns:
            c.close()
        kl.wait_until(lambda: self.k.rpc("status", timeout=5) is not None, 30, 0.2, "status after the burst")
        self.k.assert_alive()

    def test_k_second_keeper_refuses(self):
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        k.start()
        r = subprocess.run([kl.KEEPERD, "--config", k.config_path], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=60, env=kl.child_env())
        err = r.stderr.decode(errors="replace")
        self.assertNotEqual(r.returncode, 0, err)
        self.assertIn("another mcpkeeperd", err)
        self.assertIn(k.socket_path, err)
        # The first keeper still owns its socket.
        self.assertEqual(k.status()["pid"], k.proc.pid)


# ---------------------------------------------------------------------------
# l: mcpctl status

class TestMcpctl(OAuthKeeperCase):

    TIMING = ("next_at", "next_at_unix", "token_expires_at", "token_expires_at_unix", "token_obtained_at",
              "token_obtained_at_unix")

    def ctl(self, *args):
        return subprocess.run([kl.MCPCTL] + list(args), stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                              env=kl.child_env({"MCPKEEPER_CONFIG": "/nonexistent/mcpkeeper-it.json"}))

    def setUp(self):
        super().setUp()
        if not os.path.exists(kl.MCPCTL):
            self.skipTest("mcpctl not built")

    def strip_timing(self, obj):
        if isinstance(obj, dict):
            return {k: self.strip_timing(v) for k, v in obj.items() if k not in self.TIMING}
        if isinstance(obj, list):
            return [self.strip_timing(v) for v in obj]
        return obj

    def fake_keeper(self, answer):
        """A control socket that answers the hello with answer(id) and nothing
        else: the keeper of another release, as mcpctl meets it."""
        path = os.path.join(self.tmp, "fake-%d.sock" % len(os.listdir(self.tmp)))
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(4)
        srv.settimeout(30)
        self.addCleanup(srv.close)

        def serve():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while b"\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                hello = json.loads(buf.split(b"\n")[0])
                conn.sendall(json.dumps(answer(hello)).encode() + b"\n")
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        self.addCleanup(t.join, 30)
        return path

    def test_l2_mcpctl_refuses_another_protocol_version(self):
        cases = [
            (lambda h: {"jsonrpc": "2.0", "id": h["id"], "result": {"version": 2, "keeper": "mcpkeeperd 9"}},
             ("version 2", "version 1")),
            (lambda h: {"jsonrpc": "2.0", "id": h["id"],
                        "error": {"code": -32601, "message": "unknown method \"hello\"",
                                  "data": {"kind": "unknown_method"}}},
             ("older than this mcpctl", "version 1")),
        ]
        for answer, words in cases:
            path = self.fake_keeper(answer)
            r = self.ctl("--socket", path, "status", "--json")
            err = r.stderr.decode(errors="replace")
            self.assertEqual(r.returncode, 5, err)
            for w in words:
                self.assertIn(w, err)
            self.assertEqual(r.stdout, b"")

    def test_l_mcpctl_status(self):
        k = self.setup_oauth(names=("github", "github-enterprise"), lifetime=3600,
                             extra_servers={"files": {"command": "/bin/cat"}})
        # The http child's start changes status: compare once it is up.
        kl.wait_until(lambda: k.status()["http"]["state"] == "running" and k.status()["web_ui"], 30, 0.1,
                      "the http child")
        r = self.ctl("--socket", k.socket_path, "status", "--json")
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        printed = json.loads(r.stdout)
        self.assertEqual(self.strip_timing(printed), self.strip_timing(k.status()))

        r = self.ctl("--socket", k.socket_path, "status")
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        table = r.stdout.decode()
        for n in ("github", "github-enterprise", "files"):
            self.assertRegex(table, r"(?m)^\s*%s\s" % n.replace("-", r"\-"), "the table names %s" % n)
        kl.assert_no_secrets(table + r.stderr.decode(errors="replace"), self.all_tokens(), "mcpctl output")

        missing = os.path.join(self.tmp, "no-such-dir", "control.sock")
        for args in (("--socket", missing, "status"), ("--socket", missing, "status", "--json")):
            r = self.ctl(*args)
            self.assertEqual(r.returncode, 3, "%r: %s" % (args, r.stderr.decode(errors="replace")))
            self.assertIn(missing, r.stderr.decode(errors="replace"), "the message names the socket")
            self.assertEqual(r.stdout, b"", args)


if __name__ == "__main__":
    kl.main()
