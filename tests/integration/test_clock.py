#!/usr/bin/env python3
"""Wall-clock jumps (issue 17, part C): the keeper under libfaketime
(FAKETIME_DONT_FAKE_MONOTONIC=1: its wall clock moves, the monotonic clock
its timers run on does not), the peers on the real clock. Token requests are
counted at the peer, one peer per server.

  a. forward jump past every due time: each server refreshes once (not
     zero times, not twice), and a refresh in flight during the jump is not
     taken for a hung oauth child.
  b. backward jump right after the refreshes: the next refreshes come on
     time by the real clock (none missed: every access token keeps working at
     the peer) and none is doubled.
"""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keeperlib  # noqa: E402
from keeperlib import EV_REFRESHED, wait_until  # noqa: E402

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
NAMES = ["alpha", "beta"]


def log(msg):
    print("    %s" % msg, file=sys.stderr, flush=True)


def asan_runtime(binary):
    """The ASan runtime binary links, to preload before libfaketime."""
    try:
        r = subprocess.run(["ldd", binary], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in r.stdout.decode(errors="replace").splitlines():
        if "libasan" in line and "=>" in line:
            return line.split("=>")[1].split("(")[0].strip() or None
    return None


class TestClock(keeperlib.KeeperTestCase):

    def faketime_env(self):
        """The keeper's environment under libfaketime, and the offset file."""
        if not os.path.exists(FAKETIME_LIB):
            self.skipTest("libfaketime is not installed (%s); Debian package faketime" % FAKETIME_LIB)
        self.tsfile = os.path.join(self.tmp, "faketime")
        self.set_offset("+0")
        asan = asan_runtime(keeperlib.KEEPERD)
        env = {"FAKETIME_TIMESTAMP_FILE": self.tsfile, "FAKETIME_NO_CACHE": "1",
               "FAKETIME_DONT_FAKE_MONOTONIC": "1",
               "LD_PRELOAD": (asan + " " if asan else "") + FAKETIME_LIB}
        if asan:
            opts = os.environ.get("ASAN_OPTIONS", "")
            env["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "verify_asan_link_order=0"
        probe = subprocess.run(["date", "+%s"], capture_output=True, timeout=30,
                               env=keeperlib.child_env(dict(env, LD_PRELOAD=FAKETIME_LIB)))
        self.set_offset("+3000")
        probe2 = subprocess.run(["date", "+%s"], capture_output=True, timeout=30,
                                env=keeperlib.child_env(dict(env, LD_PRELOAD=FAKETIME_LIB)))
        self.set_offset("+0")
        try:
            jump = int(probe2.stdout) - int(probe.stdout)
        except ValueError:
            jump = None
        if jump is None or not 2990 <= jump <= 3010:
            self.skipTest("libfaketime does not move the clock of `date` here (%r, %r)" %
                          (probe.stdout, probe2.stderr[:200]))
        return env

    def set_offset(self, text):
        with open(self.tsfile + ".tmp", "w") as f:
            f.write(text + "\n")
        os.rename(self.tsfile + ".tmp", self.tsfile)

    def setup_keeper(self, lifetime, stored_lifetime):
        env = self.faketime_env()
        self.peers = {}
        servers, tokens = {}, {}
        for n in NAMES:
            p = self.start_peer(lifetime=lifetime)
            cid = p.register()
            tokens[n] = p.login(cid)
            servers[n] = p.server_conf(cid)
            self.peers[n] = p
        if getattr(self, "start_hang", False):
            self.peers["alpha"].config(hang_seconds=8)
            self.peers["alpha"].fail("hang")
        k = self.make_keeper(servers=servers, refresh={"threshold": 0.5}, env=env)
        for n in NAMES:
            p = self.peers[n]
            life = stored_lifetime[n] if isinstance(stored_lifetime, dict) else stored_lifetime
            k.put_token(n, p.mcp_url, tokens[n][0], tokens[n][1], life, p.token_endpoint)
        k.start()
        return k

    def requests(self):
        return {n: self.peers[n].stats()["refresh_requests"] for n in NAMES}

    def wait_jump_seen(self, k, seconds):
        def seen():
            moved = [int(m) for m in re.findall(r"wall clock moved by ([-+]\d+) s", k.log())]
            return any(abs(m - seconds) <= 5 for m in moved)
        wait_until(seen, 20, 0.2, "the keeper to notice the %+d s jump" % seconds)

    def tools_work(self, k):
        for n in NAMES:
            r = subprocess.run([keeperlib.MCPCTL, "--socket", k.socket_path, "tools", "--json", n],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                               env=keeperlib.child_env())
            self.assertEqual(r.returncode, 0, "%s: %s" % (n, (r.stdout + r.stderr).decode(errors="replace")))

    def test_a_forward_jump(self):
        # alpha's stored token is due 2 s after the start, and its token
        # endpoint answers only after 8 s: its refresh is in flight when the
        # clock jumps (the keeper's watchdog for it is an instant 45 s away,
        # which a +3000 s jump passes). beta is due in 1800 s.
        self.start_hang = True
        k = self.setup_keeper(lifetime=3600, stored_lifetime={"alpha": 4, "beta": 3600})
        sub = k.subscribe()
        wait_until(lambda: self.requests()["alpha"] == 1, 20, 0.1, "alpha's refresh to be in flight")
        self.assertEqual(self.requests()["beta"], 0)
        self.assertEqual(k.server("beta")["refresh"]["state"], "scheduled")
        oauth = keeperlib.children_of(k.proc.pid, "mcpkeeper-oauth")

        self.set_offset("+3000")
        self.wait_jump_seen(k, 3000)
        seen = {}
        while set(seen) != set(NAMES):
            ev = sub.wait_for(EV_REFRESHED, lambda d: d.get("server_name") in NAMES, 40)
            seen[ev["data"]["server_name"]] = time.monotonic()
        # Quiet afterwards: the new tokens live 3600 s.
        sub.drain(3.0)
        got = self.requests()
        log("refresh requests per server after the +3000 s jump: %r" % (got,))
        # beta: one request. alpha: the hung one (answered 503 after 8 s) and its retry.
        self.assertEqual(got, {"alpha": 2, "beta": 1})
        self.assertEqual(self.peers["alpha"].stats()["refresh_grants"], 1)
        self.assertEqual(self.peers["beta"].stats()["refresh_grants"], 1)
        self.assertNotIn("did not answer a refresh", k.log())
        self.assertEqual(keeperlib.children_of(k.proc.pid, "mcpkeeper-oauth"), oauth,
                         "the oauth child was restarted")
        for n in NAMES:
            s = k.server(n)
            self.assertEqual((s["oauth_status"], s["refresh"]["state"]), ("authenticated", "scheduled"), n)
        self.tools_work(k)
        self.assertEqual(k.stop(), 0, "keeper exit status")

    def test_b_backward_jump(self):
        lifetime = 20   # threshold 0.5: a refresh every 10 s
        k = self.setup_keeper(lifetime=lifetime, stored_lifetime=lifetime)
        sub = k.subscribe()
        # The first refreshes (10 s after the stored tokens were obtained).
        wait_until(lambda: all(v == 1 for v in self.requests().values()), 30, 0.2, "the first refreshes")
        sub.drain(0.5)
        self.set_offset("-3000")
        self.wait_jump_seen(k, -3000)
        jumped = time.monotonic()
        # Over the next 25 s of real time: two refreshes per server (at about
        # 10 and 20 s after the first), neither missed nor doubled.
        counts = {n: 0 for n in NAMES}
        end = jumped + 25.0
        while time.monotonic() < end:
            try:
                ev = sub.wait_for(EV_REFRESHED, lambda d: d.get("server_name") in NAMES,
                                  max(0.1, end - time.monotonic()))
            except keeperlib.WaitTimeout:
                break
            counts[ev["data"]["server_name"]] += 1
        got = self.requests()
        log("refreshed in the 25 s after the -3000 s jump: %r; requests at the peers: %r" % (counts, got))
        for n in NAMES:
            self.assertIn(counts[n], (2, 3), "%s: refreshes after the backward jump" % n)
            self.assertEqual(got[n], 1 + counts[n], "%s: token requests at the peer" % n)
            self.assertEqual(self.peers[n].stats()["refresh_grants"], got[n], n)
            self.assertEqual(k.server(n)["oauth_status"], "authenticated", n)
        self.tools_work(k)
        self.assertEqual(k.stop(), 0, "keeper exit status")


if __name__ == "__main__":
    keeperlib.main()
