#!/usr/bin/env python3
"""
keeper-b: the keeper's refresh engine under load and under abuse.

  a. scale:    1000 tokens (lifetime 180 s) due within the next 1..5 s,
               refresh.max_in_flight 16: all refreshed before their original
               expiry, never more than the cap at the peer at once (the peer
               holds the first 32 requests, so the keeper's concurrency shows),
               no refresh token presented twice.
  b. SIGKILL:  the keeper killed while it starts, then at random points of a
               refresh loop (every other round right after the peer granted a
               refresh, i.e. between rotation and commit) and restarted,
               looped; with the peer's grace window (and
               refresh.retry_after_crash) every token survives; without it a
               kill inside a refresh leaves that server `interrupted` (its
               refresh intent): never a reused refresh token, never a retry
               storm, never a corrupt store.
  c. socket activation with systemd-socket-activate: the first connection
               starts the keeper and is answered.
  d. a wall-clock jump (libfaketime) past a due time: the refresh runs at once.
  e. 1500 servers with tokens (the start reads them in one walk over the
               store, three batches) and a reload that removes 500, moves
               100 to another URL and adds 100: kept servers keep their
               schedule, the others' tokens show as orphaned; reloading the
               first config finds every token again.

Counts and order are asserted, not wall-clock deadlines; every wait is bounded.
Run: meson test -C build keeper-b --print-errorlogs
"""

import json
import os
import random
import signal
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keeperlib  # noqa: E402
from keeperlib import EV_REFRESHED, wait_until  # noqa: E402

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def log(msg):
    print("    %s" % msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Small helpers the harness does not have

def put_many(keeper, rows, timeout=300.0):
    """Writes rows (name, url, access, refresh, obtained_at, expires_at, token_endpoint)
    with ONE `store-tool DIR put-many FILE`. Returns the number stored."""
    path = os.path.join(keeper.dir, "put-many.tsv")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for row in rows:
            fields = [str(x) for x in row]
            for x in fields:
                if "\t" in x or "\n" in x or not x:
                    raise ValueError("put_many: bad field %r" % (x,))
            f.write("\t".join(fields) + "\n")
    r = keeper.store_tool("put-many", path, timeout=timeout)
    os.unlink(path)  # it holds tokens
    return int(r.stdout.decode().split()[-1])


def store_records(keeper):
    """`store-tool list` as {key: (state, rest)}; state is ok, corrupt or undecodable."""
    r = keeper.store_tool("list", timeout=120)
    out = {}
    for line in r.stdout.decode().splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2:
            out[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return out


def by_name(status):
    return {s["name"]: s for s in status["servers"]}


def uses_asan(binary):
    try:
        r = subprocess.run(["ldd", binary], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in r.stdout.decode(errors="replace").splitlines():
        if "libasan" in line:
            parts = line.split("=>")
            if len(parts) == 2:
                return parts[1].split("(")[0].strip() or "libasan.so"
            return "libasan.so"
    return None


def sanitizer_env():
    """The sanitizer settings meson's test_env gives us, for processes started
    through something that clears the environment."""
    return {k: v for k, v in os.environ.items() if k.endswith("SAN_OPTIONS")}


def pids_logging_under(path, tmpdir):
    """Live (not zombie) processes running executable path whose stderr goes to
    a file under tmpdir: the children of this test's keepers, and nobody else's."""
    real = os.path.realpath(path)
    prefix = os.path.realpath(tmpdir) + os.sep
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.readlink("/proc/%s/exe" % d) != real:
                continue
            if not os.readlink("/proc/%s/fd/2" % d).startswith(prefix):
                continue
            with open("/proc/%s/stat" % d) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            out.append(int(d))
        except (OSError, IndexError):
            pass
    return out


class GrantWatcher:
    """Polls the peer's refresh_grants over one keep-alive connection, fast."""

    def __init__(self, port):
        import http.client
        self._mk = lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn = self._mk()

    def grants(self):
        for attempt in (0, 1):
            try:
                self.conn.request("GET", "/test/stats")
                return json.loads(self.conn.getresponse().read())["refresh_grants"]
            except (OSError, ValueError) as e:
                if attempt:
                    raise AssertionError("peer stats: %r" % (e,))
                self.conn.close()
                self.conn = self._mk()

    def close(self):
        self.conn.close()


class KeeperB(keeperlib.KeeperTestCase):

    def setUp(self):
        # Registered first so that it runs last, after the harness stopped the keepers.
        self.addCleanup(self._reap_orphans)
        super().setUp()

    def _reap_orphans(self):
        """oauth children of keepers this test SIGKILLed must go away by themselves
        (EOF on fd 3); report and kill any that did not, by PID. Only children
        of this test's keepers: their stderr is a log in this test's directory."""
        progs = [os.path.join(keeperlib.BUILD_ROOT, "daemon", d, p) for d, p in (("oauth", "mcpkeeper-oauth"), ("http", "mcpkeeper-http"))]

        def left_over():
            return sorted(pid for p in progs for pid in pids_logging_under(p, self.tmp))
        try:
            wait_until(lambda: not left_over(), 15, 0.2)
        except AssertionError:
            left = left_over()
            print("    orphaned oauth/http children still running 15 s after the test: %r; killing them" % left,
                  file=sys.stderr)
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # ------------------------------------------------------------------
    # a. 1000 tokens due within a few seconds

    def test_a_thousand_tokens_due_together(self):
        n = 1000
        cap = 16
        lifetime = 180                 # the stored tokens' lifetime
        due_frac = 0.8
        peer_lifetime = 3600           # what refreshes issue: no second refresh in this test
        hangs = 2 * cap                # held requests: what makes concurrency visible at the peer

        peer = self.start_peer(lifetime=peer_lifetime)
        cid = peer.register()
        t0 = time.monotonic()
        pairs = [peer.login(cid) for _ in range(n)]
        log("%d logins at the peer in %.1f s" % (n, time.monotonic() - t0))
        self.assertEqual(len(set(r for _, r in pairs)), n)

        names = ["s%04d" % i for i in range(n)]
        servers = {name: peer.server_conf(cid) for name in names}
        k = self.make_keeper(servers=servers, refresh={"max_in_flight": cap})

        # Due (obtained + 0.8 x lifetime) spread over the next 1..5 s; expiry
        # lifetime later, so "before expiry" has room.
        now = int(time.time())
        rows, orig_exp = [], {}
        for i, name in enumerate(names):
            due = now + 1 + (i * 5) // n
            obtained = due - int(due_frac * lifetime)
            exp = obtained + lifetime
            orig_exp[name] = exp
            a, r = pairs[i]
            rows.append((name, peer.mcp_url, a, r, obtained, exp, peer.token_endpoint))
        t0 = time.monotonic()
        self.assertEqual(put_many(k, rows), n)
        log("put-many of %d records in %.1f s" % (n, time.monotonic() - t0))

        # A peer that answers at once never has two token requests open; holding
        # the first requests (they end in 503 after 2 s, then the keeper retries)
        # shows how many the keeper has in flight at most.
        peer.config(hang_seconds=2)
        peer.reset()
        peer.fail("hang", hangs)

        t0 = time.monotonic()
        k.start(wait=False)
        sub = wait_until(lambda: k.subscribe(timeout=30), 60, 0.05, "the event subscription")
        k.wait_ready(60)

        def all_refreshed():
            st = by_name(k.status())
            done = sum(1 for name in names
                       if st[name]["oauth_status"] == "authenticated"
                       and (st[name]["token_expires_at_unix"] or 0) > orig_exp[name])
            return done == n

        deadline = max(orig_exp.values()) - time.time() + 60
        wait_until(all_refreshed, deadline, 1.0, "all %d servers refreshed" % n)
        elapsed = time.monotonic() - t0
        sub.drain(0.5)

        st = by_name(k.status())
        late = []
        for name in names:
            s = st[name]
            self.assertEqual(s["oauth_status"], "authenticated", name)
            self.assertEqual(s["refresh"]["state"], "scheduled", name)
            # The new token was obtained when the refresh succeeded:
            # token_expires_at = refresh time + the peer's lifetime.
            refreshed_at = s["token_expires_at_unix"] - peer_lifetime
            if refreshed_at >= orig_exp[name]:
                late.append((name, refreshed_at - orig_exp[name]))
        self.assertEqual(late, [], "refreshed at or after the original expiry")
        margin = min(orig_exp[name] - (st[name]["token_expires_at_unix"] - peer_lifetime) for name in names)

        stats = peer.stats()
        seen = {e["data"]["server_name"] for e in sub.of_type(EV_REFRESHED)}
        log("all %d refreshed %.1f s after the keeper started, the last one %d s before its original "
            "expiry; %d token_refreshed events (%d servers) seen by a subscriber; peer: %s" %
            (n, elapsed, margin, len(sub.of_type(EV_REFRESHED)), len(seen), json.dumps(stats, sort_keys=True)))
        self.assertEqual(stats["reused_refresh_tokens"], 0)
        self.assertEqual(stats["refresh_grants"], n)
        self.assertEqual(stats["failures_injected"], hangs)
        self.assertLessEqual(stats["max_in_flight"], cap, "more refreshes in flight than refresh.max_in_flight")
        self.assertGreater(stats["max_in_flight"], 1, "no concurrency at all")
        # Every hang is one transient failure and one more request; nothing else.
        self.assertLessEqual(stats["refresh_requests"], n + hangs)
        # Every refresh a subscriber saw is a distinct server, at most once each.
        self.assertEqual(len(seen), len(sub.of_type(EV_REFRESHED)))
        self.assertEqual(k.stop(), 0, "keeper exit status")

    # ------------------------------------------------------------------
    # b. SIGKILL at random points of a refresh loop, then restart, looped

    N_KILL_SERVERS = 20
    KILL_ROUNDS = 6

    def _kill_loop(self, grace, seed):
        n, rounds = self.N_KILL_SERVERS, self.KILL_ROUNDS
        rnd = random.Random(seed)
        log("seed %d (grace %d)" % (seed, grace))
        peer = self.start_peer(lifetime=10, grace=grace)
        cid = peer.register()
        names = ["k%02d" % i for i in range(n)]
        # With the grace window the provider forgives one reuse: that is what
        # refresh.retry_after_crash is for. Without it, a kill inside a
        # refresh leaves the server interrupted (the refresh intent).
        k = self.make_keeper(servers={name: peer.server_conf(cid) for name in names},
                             refresh={"retry_after_crash": True} if grace else None)

        now = int(time.time())
        rows = []
        for name in names:
            a, r = peer.login(cid)
            obtained = now - rnd.randint(0, 7)      # due between now+1 and now+8
            rows.append((name, peer.mcp_url, a, r, obtained, obtained + 10, peer.token_endpoint))
        self.assertEqual(put_many(k, rows), n)
        peer.reset()

        # Odd rounds aim at the window between rotation and commit: after the
        # random delay, kill as soon as the peer has granted one more refresh
        # (the keeper may not have committed it yet). Even rounds kill blind.
        # First, one kill while the keeper starts (store recovery, loading the
        # schedules, the first overdue refreshes). It comes first because a
        # restart refreshes at once whatever a kill left overdue: a second kill
        # that early could lose the grace exchange itself, which no keeper
        # can recover from (the peer accepts a retired token only once).
        kills = []
        k.start(wait=False)
        early = rnd.uniform(0.02, 0.4)
        time.sleep(early)
        k.kill()
        kills.append("%.2f" % early)

        watcher = GrantWatcher(peer.port)
        self.addCleanup(watcher.close)
        for i in range(rounds):
            k.start()
            alive = rnd.uniform(1.0, 6.0)
            time.sleep(alive)
            if i % 2:
                grants = watcher.grants()
                t0 = time.monotonic()
                while watcher.grants() == grants and time.monotonic() - t0 < 10:
                    pass
                k.kill()
                kills.append("%.2f+%.3f" % (alive, time.monotonic() - t0))
            else:
                k.kill()
                kills.append("%.2f" % alive)
            self.assertFalse(k.running())
        mid = peer.stats()
        log("killed after %r s; the peer meanwhile: %d refresh requests, %d grants, %d reused" %
            (kills, mid["refresh_requests"], mid["refresh_grants"], mid["reused_refresh_tokens"]))

        records = store_records(k)
        self.assertEqual(sorted(v[0] for v in records.values()), ["ok"] * n,
                         "store after the kills: %r" % (records,))

        # The last start: every server must settle.
        k.start()
        restarted = time.time()
        sub = k.subscribe()

        pending = {}

        def settled():
            sub.drain(0.3)
            st = by_name(k.status())
            refreshed = {e["data"]["server_name"] for e in sub.of_type(EV_REFRESHED)}
            out = {}
            pending.clear()
            for name in names:
                s = st[name]
                if name in refreshed and s["oauth_status"] == "authenticated":
                    out[name] = "authenticated"
                elif (s["oauth_status"] == "expired" and s["refresh"]["state"] == "failed"
                      and s["refresh"]["last_error"] == "invalid_grant"):
                    out[name] = "expired"
                elif (s["refresh"]["state"] == "interrupted"
                      and s["refresh"]["last_error"] == "refresh interrupted by a crash: log in again"):
                    out[name] = "interrupted"
                else:
                    pending[name] = s
            return None if pending else out

        try:
            result = wait_until(settled, 90, 0.2, "every server refreshed after the last restart or expired")
        except keeperlib.WaitTimeout as e:
            raise AssertionError("%s; unsettled: %s" % (e, json.dumps(pending, sort_keys=True)))
        sub.drain(1.0)
        st = by_name(k.status())
        stats = peer.stats()
        expired = sorted(name for name, v in result.items() if v == "expired")
        interrupted = sorted(name for name, v in result.items() if v == "interrupted")
        log("grace %d: %d of %d servers expired, %d interrupted (login needed) after %d kills: %r %r; peer: %s" %
            (grace, len(expired), n, len(interrupted), len(kills), expired, interrupted,
             json.dumps(stats, sort_keys=True)))

        for name in names:
            s = st[name]
            self.assertNotIn(s["oauth_status"], ("error", "none"), name)
            self.assertNotIn(s["refresh"]["state"], ("retrying",), name)
            if s["oauth_status"] == "authenticated" and name not in interrupted:
                self.assertEqual(s["refresh"]["state"], "scheduled", name)
                self.assertIsNotNone(s["refresh"]["next_at"], name)
                self.assertGreater(s["token_expires_at_unix"], restarted, name)
        self.assertLessEqual(stats["refresh_requests"], 3 * n * len(kills) + 50, "a retry storm")
        if grace:
            self.assertEqual(expired + interrupted, [], "with the grace window on, every token must survive")
            self.assertEqual(stats["reused_refresh_tokens"], 0)
        else:
            # A kill inside a refresh leaves an intent: that server is
            # interrupted and its refresh token never goes out again, so the
            # strict peer sees no reuse and no grant is revoked.
            self.assertEqual(stats["reused_refresh_tokens"], 0)
            self.assertEqual(expired, [], "a chain lost without an intent")

        # No more requests for expired servers; the others go on refreshing.
        before = peer.stats()["refresh_requests"]
        time.sleep(2.0)
        after = peer.stats()["refresh_requests"]
        self.assertLessEqual(after - before, n - len(expired) - len(interrupted) + 1)

        self.assertEqual(k.stop(), 0, "keeper exit status")
        records = store_records(k)
        self.assertEqual(len(records), n, records)
        bad = {key: v for key, v in records.items() if v[0] != "ok"}
        self.assertEqual(bad, {}, "corrupt or undecodable records")
        return expired

    def test_b1_sigkill_loop_grace(self):
        self._kill_loop(grace=30, seed=int(os.environ.get("KEEPER_B_SEED") or random.randrange(1 << 30)))

    def test_b2_sigkill_loop_no_grace(self):
        self._kill_loop(grace=0, seed=int(os.environ.get("KEEPER_B_SEED") or random.randrange(1 << 30)))

    # ------------------------------------------------------------------
    # c. socket activation

    def test_c_socket_activation(self):
        act = shutil.which("systemd-socket-activate")
        if not act:
            self.skipTest("systemd-socket-activate is not installed")
        import pwd
        k = self.make_keeper(servers={"plain": {"url": "http://127.0.0.1:9/mcp", "oauth": False}},
                             extra_config={"users": dict.fromkeys(("oauth", "http", "worker"),
                                                              pwd.getpwuid(os.geteuid()).pw_name)})
        os.makedirs(k.runtime_dir, mode=0o700, exist_ok=True)
        env = sanitizer_env()
        argv = [act, "-l", k.socket_path, "--fdname=control"]
        for name, val in sorted(env.items()):
            argv += ["-E", "%s=%s" % (name, val)]
        argv += [keeperlib.KEEPERD, "--config", k.config_path]
        logf = open(k.log_path, "ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                env=keeperlib.child_env())
        logf.close()
        keeperlib._register(proc)
        self.addCleanup(keeperlib.stop_process, proc)

        wait_until(lambda: os.path.exists(k.socket_path) or proc.poll() is not None, 30, 0.05,
                   "systemd-socket-activate to listen")
        self.assertIsNone(proc.poll(), "systemd-socket-activate exited: %s" % keeperlib.tail(k.log()))
        time.sleep(0.3)
        # Nothing started yet: no keeper has logged, the process is still the activator.
        self.assertNotIn("mcpkeeperd[", k.log())
        self.assertNotEqual(os.path.realpath("/proc/%d/exe" % proc.pid), os.path.realpath(keeperlib.KEEPERD))

        t0 = time.monotonic()
        res = k.rpc("status", timeout=60)
        log("first connection answered after %.2f s: mode %s, pid %s (activator pid %d)" %
            (time.monotonic() - t0, res.get("mode"), res.get("pid"), proc.pid))
        self.assertEqual([s["name"] for s in res["servers"]], ["plain"])
        text = k.log()
        self.assertIn("control socket from systemd", text)
        # A second connection, to the same keeper.
        self.assertEqual(k.rpc("status")["pid"], res["pid"])

        pid = res["pid"]
        if pid != proc.pid:
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not os.path.exists("/proc/%d" % pid), 30, 0.1, "the keeper to exit")
        rc = keeperlib.stop_process(proc, 30)
        log("keeper/activator exit status %s" % rc)
        self.assertEqual(rc, 0, keeperlib.tail(k.log()))
        self.assertIn("stopped", k.log())

    # ------------------------------------------------------------------
    # d. a wall-clock jump past the due time

    def test_d_wall_clock_jump(self):
        if not os.path.exists(FAKETIME_LIB):
            self.skipTest("libfaketime is not installed (%s); Debian package faketime" % FAKETIME_LIB)
        asan = uses_asan(keeperlib.KEEPERD)
        tsfile = os.path.join(self.tmp, "faketime")
        with open(tsfile, "w") as f:
            f.write("+0\n")
        env = {"FAKETIME_TIMESTAMP_FILE": tsfile, "FAKETIME_NO_CACHE": "1",
               "FAKETIME_DONT_FAKE_MONOTONIC": "1",
               "LD_PRELOAD": (asan + " " if asan else "") + FAKETIME_LIB}
        if asan:
            # gcc's ASan runs with libfaketime preloaded once it stops
            # insisting on being the first library.
            env["ASAN_OPTIONS"] = ":".join(filter(None, (os.environ.get("ASAN_OPTIONS"),
                                                         "verify_asan_link_order=0")))

        # Does libfaketime work here at all (in a plain program)?
        probe = subprocess.run(["date", "+%s"], capture_output=True, env=keeperlib.child_env(dict(env, LD_PRELOAD=FAKETIME_LIB)),
                               timeout=30)
        with open(tsfile, "w") as f:
            f.write("+3000\n")
        probe2 = subprocess.run(["date", "+%s"], capture_output=True,
                                env=keeperlib.child_env(dict(env, LD_PRELOAD=FAKETIME_LIB)), timeout=30)
        with open(tsfile, "w") as f:
            f.write("+0\n")
        try:
            jump = int(probe2.stdout) - int(probe.stdout)
        except ValueError:
            jump = None
        if jump is None or not 2990 <= jump <= 3010:
            self.skipTest("libfaketime does not move the clock of `date` here (%r, %r)" %
                          (probe.stdout, probe2.stderr[:200]))

        peer = self.start_peer(lifetime=3600)   # the peer is not under faketime
        cid = peer.register()
        a, r = peer.login(cid)
        # "probe" has no token: logging it out only emits servers.changed,
        # whose timestamp shows the keeper's wall clock.
        k = self.make_keeper(servers={"jump": peer.server_conf(cid), "probe": peer.server_conf(cid)}, env=env)
        k.put_token("jump", peer.mcp_url, a, r, 3600, peer.token_endpoint)
        k.start(wait=False)
        k.wait_ready(60)
        sub = k.subscribe()
        s0 = k.server("jump")
        self.assertEqual(s0["oauth_status"], "authenticated")
        self.assertEqual(s0["refresh"]["state"], "scheduled")
        due = s0["refresh"]["next_at_unix"]
        log("due at %s, %d s from now (monotonic schedule)" % (due, due - time.time()))
        self.assertGreater(due - time.time(), 2000)
        # Nothing happens on its own for a few maintenance ticks.
        self.assertEqual(sub.drain(3.0), [])
        self.assertEqual(peer.stats()["refresh_requests"], 0)

        with open(tsfile + ".tmp", "w") as f:
            f.write("+3000\n")
        os.rename(tsfile + ".tmp", tsfile)
        jumped = time.monotonic()
        try:
            ev = sub.wait_for(EV_REFRESHED, lambda d: d.get("server_name") == "jump", 20)
        except keeperlib.WaitTimeout:
            # Either libfaketime does not reach the keeper's clock, or the
            # keeper does not act on the jump: an event's timestamp tells which.
            k.rpc("auth.logout", {"server": "probe"})
            ev = sub.wait_for(keeperlib.EV_CHANGED, lambda d: d.get("server") == "probe", 10)
            text = k.log()
            stamp = ev.get("timestamp")
            try:
                import datetime
                keeper_clock = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
            except ValueError:
                keeper_clock = None
            if keeper_clock is not None and keeper_clock - time.time() < 1000:
                self.skipTest("libfaketime does not move the keeper's wall clock (event timestamp %s, "
                              "%.0f s from the real clock); the jump cannot be tested here" %
                              (stamp, keeper_clock - time.time()))
            self.fail("no refresh within 20 s of a +3000 s wall-clock jump although the keeper's clock "
                      "moved (event timestamp %s); log:\n%s" % (stamp, keeperlib.tail(text, 30)))
        log("token_refreshed %.1f s after the jump; event timestamp %r, expires_at %r; keeper log: %r" %
            (time.monotonic() - jumped, ev.get("timestamp"), ev["data"].get("expires_at"),
             [l for l in k.log().splitlines() if "wall clock" in l]))
        self.assertEqual(peer.stats()["refresh_grants"], 1)
        s1 = k.server("jump")
        self.assertEqual(s1["oauth_status"], "authenticated")
        # Obtained on the keeper's (jumped) wall clock.
        self.assertGreater(s1["token_expires_at_unix"], time.time() + 3000 + 3600 - 120)
        self.assertEqual(s1["refresh"]["state"], "scheduled")
        self.assertIn("wall clock moved", k.log())

    # ------------------------------------------------------------------
    # e. many servers: the start's walk over the store (more than one batch)
    #    and a reload that removes, changes and adds hundreds of servers

    def test_e_reload_many_servers(self):
        n = 1500
        peer = self.start_peer(lifetime=3600)   # never contacted: nothing is due
        cid = peer.register()
        names = ["s%04d" % i for i in range(n)]
        first = {name: peer.server_conf(cid) for name in names}
        k = self.make_keeper(servers=dict(first))
        now = int(time.time())
        rows = [(name, peer.mcp_url, "a%d-%s" % (i, "x" * 20), "r%d-%s" % (i, "y" * 20), now, now + 86400,
                 peer.token_endpoint) for i, name in enumerate(names + ["gone"])]
        self.assertEqual(put_many(k, rows), n + 1)
        k.start()

        st = k.status()
        by = by_name(st)
        self.assertEqual(len(by), n)
        wrong = [name for name in names
                 if (by[name]["oauth_status"], by[name]["refresh"]["state"]) != ("authenticated", "scheduled")]
        self.assertEqual(wrong, [], "servers not loaded from the store")
        self.assertEqual([o["name"] for o in st["orphaned_tokens"]], ["gone"])
        expires = {name: by[name]["token_expires_at"] for name in names}

        # Reload: s0000-s0499 removed, s0500-s0599 moved to another URL (their
        # tokens belong to the old one), 100 servers added.
        removed, moved, kept = names[:500], names[500:600], names[600:]
        added = ["n%04d" % i for i in range(100)]
        k.servers = {name: first[name] for name in kept}
        k.servers.update({name: peer.server_conf(cid, url=peer.url + "/mcp2") for name in moved})
        k.servers.update({name: peer.server_conf(cid) for name in added})
        k.write_config()
        k.signal(signal.SIGHUP)
        wait_until(lambda: len(k.status()["servers"]) == 1100, 60, 0.2, "the reload")
        st = k.status()
        by = by_name(st)
        self.assertEqual(sorted(by), sorted(kept + moved + added))
        for name in kept:
            self.assertEqual((by[name]["oauth_status"], by[name]["refresh"]["state"],
                              by[name]["token_expires_at"]), ("authenticated", "scheduled", expires[name]), name)
        for name in moved + added:
            self.assertEqual(by[name]["oauth_status"], "none", name)
        orphans = sorted(o["name"] for o in st["orphaned_tokens"])
        self.assertEqual(orphans, sorted(["gone"] + removed + moved))

        # And back: every token is found again under its server.
        k.servers = dict(first)
        k.write_config()
        k.signal(signal.SIGHUP)
        wait_until(lambda: len(k.status()["servers"]) == n, 60, 0.2, "the second reload")
        st = k.status()
        by = by_name(st)
        wrong = [name for name in names if (by[name]["oauth_status"], by[name]["token_expires_at"]) !=
                 ("authenticated", expires[name])]
        self.assertEqual(wrong, [], "servers not reloaded from the store")
        self.assertEqual([o["name"] for o in st["orphaned_tokens"]], ["gone"])
        self.assertEqual(peer.stats()["refresh_requests"], 0)
        self.assertEqual(k.stop(), 0, "keeper exit status")


if __name__ == "__main__":
    keeperlib.main()
