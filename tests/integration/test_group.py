#!/usr/bin/env python3
"""
Replication groups (issue 18): three keepers on 127.0.0.1, each with its own
state directory and replication port, form a Berkeley DB replication group
against the C test peer in strict rotation (a refresh token works once).

  a. the group forms: one master, two replicas that read every record;
     status and `mcpctl replication status` name the master; a replica
     refuses logins and logouts naming the master; mcpctl without the keeper
     refuses a group's directory; a site whose key does not open the
     group's records refuses to join.
  b. the master killed with SIGKILL a few times and restarted as a replica:
     a new master each time, refreshes go on, no refresh token presented
     twice at the peer, no chain lost without an intent.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402
import test_workers  # noqa: E402  (its MCP client at `mcpctl connect`)
from test_keeper_b import by_name, put_many  # noqa: E402

LIFETIME = 12           # s; threshold 0.5: each server refreshes every 6 s
SERVERS = 10
NOT_MASTER = "not_master"


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class GroupCase(kl.KeeperTestCase):

    def setup_group(self, servers=SERVERS, lifetime=LIFETIME):
        self.peer = self.start_peer(lifetime=lifetime, grace=0)
        self.cid = self.peer.register()
        self.names = ["s%02d" % i for i in range(servers)]
        conf = {n: self.peer.server_conf(self.cid) for n in self.names}
        ports = free_ports(3)
        self.sites = ["127.0.0.1:%d" % p for p in ports]
        self.keepers = []
        for i in range(3):
            rep = {"listen": self.sites[i], "peers": [s for j, s in enumerate(self.sites) if j != i],
                   "priority": 100, "lease_timeout": 3000, "heartbeat": 500, "ack_timeout": 1000}
            if i == 0:
                rep["create"] = True
            k = self.make_keeper(servers=conf, refresh={"threshold": 0.5},
                                 extra_config={"replication": rep}, name="site%d" % i)
            self.keepers.append(k)
        # The tokens go into the creating site's store before it first starts;
        # every site shares its master key (mcpctl key export/import in real
        # life: here the file).
        first = self.keepers[0]
        now = int(time.time())
        rows = []
        for n in self.names:
            a, r = self.peer.login(self.cid)
            rows.append((n, self.peer.mcp_url, a, r, now, now + lifetime, self.peer.token_endpoint))
        put_many(first, rows)
        for k in self.keepers[1:]:
            shutil.copy2(os.path.join(first.data_dir, "master.key"), os.path.join(k.data_dir, "master.key"))
        first.start()
        for k in self.keepers[1:]:
            k.start()
        return self.keepers

    def group(self, k):
        return k.rpc("replication.status")

    def wait_roles(self, live, timeout=60):
        """Until exactly one of live is master and the others are readable
        replicas that name it. Returns the master."""
        def settled():
            sts = [self.group(k) for k in live]
            masters = [k for k, st in zip(live, sts) if st["role"] == "master"]
            if len(masters) != 1:
                return None
            m = self.group(masters[0])["site"]
            for st in sts:
                if st["role"] == "replica" and (st["master"] != m or not st["ready"] or not st["caught_up"]):
                    return None
                if st["role"] not in ("master", "replica"):
                    return None
            return masters[0]
        return kl.wait_until(settled, timeout, 0.2, "one master and readable replicas")

    def test_a_group_forms_and_replicas_refuse_changes(self):
        ks = self.setup_group()
        master = self.wait_roles(ks)
        self.assertIs(master, ks[0], "the creating site is master at first")
        for k in ks:
            st = self.group(k)
            self.assertEqual(len(st["sites"]), 2, st)
            self.assertTrue(st["majority"], st)
            self.assertEqual(st["lease"], "held" if k is master else "none", st)
        # Replicas read every record: their status shows every server logged in.
        for k in ks[1:]:
            kl.wait_until(lambda: all(s["oauth_status"] == "authenticated" for s in k.status()["servers"]),
                          30, 0.2, "the replica to show every token")
            self.assertEqual(k.status()["replication"]["role"], "replica")
        # A replica refuses what only the master may do, naming the master.
        for method, params in (("auth.login", {"server": "s00", "wait": False}),
                               ("auth.logout", {"server": "s00"})):
            with self.assertRaises(kl.RpcError) as cm:
                ks[1].rpc(method, params)
            self.assertEqual(cm.exception.kind, NOT_MASTER, cm.exception)
            self.assertIn(self.sites[0], str(cm.exception))
        # mcpctl replication status (through the keeper).
        r = subprocess.run([kl.MCPCTL, "--socket", ks[1].socket_path, "replication", "status"],
                           capture_output=True, timeout=30, env=kl.child_env())
        out = r.stdout.decode()
        self.assertEqual(r.returncode, 0, out + r.stderr.decode())
        self.assertIn("replica", out)
        self.assertIn(self.sites[0], out)
        # Refreshes run on the master only: the strict peer sees no reuse.
        sub = master.subscribe()
        for n in self.names[:3]:
            sub.wait_for(kl.EV_REFRESHED, lambda d, n=n: d.get("server_name") == n, LIFETIME + 10)
        self.assertEqual(self.peer.stats()["reused_refresh_tokens"], 0)
        for k in ks[1:]:
            self.assertNotIn("refreshed", k.log())
        # The REST API of a replica names the master too.
        import re
        web = kl.wait_until(lambda: ks[1].status().get("web_ui"), 30, 0.2, "the replica's http child")
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/#key=([A-Za-z0-9_\-]+)", web)
        self.assertTrue(m, web)
        r = kl.http("GET", "http://127.0.0.1:%s/api/v1/servers" % m.group(1), None,
                    {"X-API-Key": m.group(2), "Host": "127.0.0.1:%s" % m.group(1)})
        self.assertEqual(r.status, 200, r.body[:300])
        rep = r.json()["replication"]
        self.assertEqual((rep["role"], rep["master"]), ("replica", self.sites[0]), rep)
        # A site whose file defines a server otherwise than the master's says so.
        self.assertEqual({s["group_config"] for s in ks[2].status()["servers"]}, {"same"})
        ks[2].servers["s01"] = dict(ks[2].servers["s01"], headers={"X-Site": "2"})
        ks[2].write_config()
        ks[2].rpc("reload")
        st = by_name(ks[2].status())
        self.assertEqual(st["s01"]["group_config"], "differs", st["s01"])
        self.assertEqual(st["s00"]["group_config"], "same", st["s00"])
        self.assertEqual(self.group(ks[2])["servers_differing"], 1)
        self.assertIn("s01: this site's definition of the server differs from the master's", ks[2].log())
        self.assertEqual(self.group(ks[1])["servers_differing"], 0)
        # Without its keeper, a site's directory is not opened by mcpctl.
        self.assertEqual(ks[2].stop(), 0)
        for args in (["auth", "logout", "-s", "s00"], ["backup", os.path.join(self.tmp, "b.bak")]):
            r = subprocess.run([kl.MCPCTL, "--config", ks[2].config_path] + args,
                               capture_output=True, timeout=30, env=kl.child_env())
            out = (r.stdout + r.stderr).decode()
            self.assertNotEqual(r.returncode, 0, out)
            self.assertIn("belongs to a replication group", out)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "b.bak")))
        # Nor does restore replace a group site's directory, even with --force.
        bak = os.path.join(self.tmp, "m.bak")
        r = subprocess.run([kl.MCPCTL, "--socket", ks[0].socket_path, "backup", bak],
                           capture_output=True, timeout=60, env=kl.child_env())
        self.assertNotEqual(r.returncode, 0, "backup of a group site while its keeper runs")
        single = self.make_keeper(servers={}, name="single")
        single.put_token("x", self.peer.mcp_url, "a", "r", 60, self.peer.token_endpoint)
        r = subprocess.run([kl.MCPCTL, "--config", single.config_path, "backup", bak],
                           capture_output=True, timeout=60, env=kl.child_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        r = subprocess.run([kl.MCPCTL, "--config", ks[2].config_path, "restore", "--force", bak],
                           capture_output=True, timeout=60, env=kl.child_env())
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("belongs to a replication group", r.stderr.decode())

    def test_b_master_killed_new_master_takes_over(self):
        ks = self.setup_group()
        master = self.wait_roles(ks)
        kills = 3
        for i in range(kills):
            live = [k for k in ks if k is not master]
            t0 = time.monotonic()
            master.kill()
            new = self.wait_roles(live, 60)
            took = time.monotonic() - t0
            print("kill %d: new master %s after %.1f s" % (i + 1, self.group(new)["site"], took), file=sys.stderr)
            sub = new.subscribe()
            sub.wait_for(kl.EV_REFRESHED, None, LIFETIME + 20)
            master.start()
            master = self.wait_roles(ks, 60)
        time.sleep(LIFETIME)
        stats = self.peer.stats()
        self.assertEqual(stats["reused_refresh_tokens"], 0, stats)
        st = by_name(master.status())
        lost = [n for n in self.names if st[n]["refresh"]["state"] == "failed"]
        self.assertEqual(lost, [], "chains lost: %r" % {n: st[n]["refresh"] for n in lost})
        for n in self.names:
            self.assertIn(st[n]["refresh"]["state"], ("scheduled", "refreshing", "interrupted"), st[n])

    def test_c_paused_master_replaced_and_rejoins(self):
        ks = self.setup_group()
        old = self.wait_roles(ks)
        live = [k for k in ks if k is not old]
        old.signal(signal.SIGSTOP)
        try:
            new = self.wait_roles(live, 60)
            sub = new.subscribe()
            # Refreshes go on at the new master while the old one sleeps
            # with its own timers due.
            for _ in range(3):
                sub.wait_for(kl.EV_REFRESHED, None, LIFETIME + 10)
        finally:
            old.signal(signal.SIGCONT)
        # Back, the old master finds a newer generation and becomes a replica.
        master = self.wait_roles(ks, 60)
        self.assertIn(master, live)
        self.assertEqual(self.group(old)["role"], "replica")
        time.sleep(LIFETIME / 2 + 2)    # every server due once more
        stats = self.peer.stats()
        self.assertEqual(stats["reused_refresh_tokens"], 0, stats)
        st = by_name(master.status())
        for n in self.names:
            self.assertNotEqual(st[n]["refresh"]["state"], "failed", st[n])

    def test_d_empty_site_joins_wrong_key_refused(self):
        ks = self.setup_group(servers=4)
        master = self.wait_roles(ks)
        site = ks[2]
        self.assertEqual(site.stop(), 0)
        kl.remove_store_segments(site.data_dir)
        key = open(os.path.join(site.data_dir, "master.key"), "rb").read()
        shutil.rmtree(site.data_dir)
        os.makedirs(site.data_dir, mode=0o700)
        # Another key: the site joins, receives the records, cannot open them.
        with open(os.path.join(site.data_dir, "master.key"), "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(os.urandom(32))
        site.start(wait=False)
        rc = site.proc.wait(timeout=60)
        self.assertNotEqual(rc, 0)
        self.assertIn("does not open the group's records", site.log())
        site.stop()
        kl.remove_store_segments(site.data_dir)
        # The group's key: the empty site joins and reads every record.
        shutil.rmtree(site.data_dir)
        os.makedirs(site.data_dir, mode=0o700)
        with open(os.path.join(site.data_dir, "master.key"), "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(key)
        site.start()
        self.assertIs(self.wait_roles(ks), master)
        kl.wait_until(lambda: all(s["oauth_status"] == "authenticated" for s in site.status()["servers"]),
                      30, 0.2, "the new site to show every token")
        # A site that holds a store of its own does not join (joining would replace it).
        other = self.make_keeper(servers={}, extra_config={"replication": {
            "listen": "127.0.0.1:%d" % free_ports(1)[0], "peers": self.sites[:2]}}, name="stranger")
        other.put_token("x", self.peer.mcp_url, "a", "r", 60, self.peer.token_endpoint)
        other.start(wait=False)
        self.assertNotEqual(other.proc.wait(timeout=60), 0)
        self.assertIn("holds a store of its own", other.log())

    def test_e_replicas_serve_fresh_tokens(self):
        """Clients of `mcpctl connect` on the replicas keep working while the
        master refreshes: tokens live 8 s, so without the change sequence a
        replica's worker would hold an expired one after 8 s."""
        ks = self.setup_group(servers=2, lifetime=8)
        master = self.wait_roles(ks)
        replicas = [k for k in ks if k is not master]
        clients = [test_workers.Client(k, "s00") for k in replicas]
        try:
            for c in clients:
                c.initialize()
            errors, calls = [], 0
            deadline = time.monotonic() + 3 * 8 + 2
            while time.monotonic() < deadline:
                for i, c in enumerate(clients):
                    calls += 1
                    r = c.echo("call %d" % calls)
                    if "result" not in r or r["result"].get("isError"):
                        errors.append((i, r))
                time.sleep(0.5)
        finally:
            for c in clients:
                c.close()
        self.assertEqual(errors, [], "%d of %d calls failed" % (len(errors), calls))
        # The master's intents reached the replicas as changes: its refreshes
        # under way, not crashes.
        for k in replicas:
            self.assertNotIn("interrupted by a crash", k.log(), k.dir)
            self.assertFalse(any(s["refresh"]["state"] == "interrupted" for s in k.status()["servers"]))
        self.assertGreaterEqual(self.peer.stats()["refresh_grants"], 8)
        # The replicas show the master's current token, not the one they read at start.
        want = by_name(master.status())["s00"]["token_expires_at"]
        for k in replicas:
            kl.wait_until(lambda: by_name(k.status())["s00"]["token_expires_at"] == want, 10, 0.1,
                          "the replica to show the master's token")

    def test_f_no_majority_no_refresh(self):
        """A master cut off from its majority stops refreshing (its tokens
        live on); a site that starts alone runs and says there is no master;
        with the majority back, refreshing resumes."""
        ks = self.setup_group(servers=3, lifetime=10)
        master = self.wait_roles(ks)
        others = [k for k in ks if k is not master]
        for k in others:
            self.assertEqual(k.stop(), 0)
        kl.wait_until(lambda: not self.group(master)["majority"], 30, 0.2, "the master to see no majority")
        time.sleep(1)
        grants = self.peer.stats()["refresh_grants"]
        time.sleep(10)     # every token due at least once meanwhile
        self.assertEqual(self.peer.stats()["refresh_grants"], grants, "a master without a majority refreshed")
        st = self.group(master)
        self.assertFalse(st["majority"], st)
        with self.assertRaises(kl.RpcError) as cm:
            master.rpc("auth.logout", {"server": "s00"})
        self.assertEqual(cm.exception.kind, NOT_MASTER, cm.exception)
        # The master restarted alone: it runs, with no master in the group.
        self.assertEqual(master.stop(), 0)
        master.start(timeout=60)
        st = self.group(master)
        self.assertEqual(st["role"], "none", st)
        self.assertIsNone(st["master"], st)
        r = subprocess.run([kl.MCPCTL, "--socket", master.socket_path, "replication", "status"],
                           capture_output=True, timeout=30, env=kl.child_env())
        self.assertIn("NOT reachable", r.stdout.decode())
        # The majority back: a master again, and refreshes go on without reuse.
        others[0].start(timeout=60)
        new = self.wait_roles([master, others[0]], 60)
        sub = new.subscribe()
        sub.wait_for(kl.EV_REFRESHED, None, 30)
        self.assertEqual(self.peer.stats()["reused_refresh_tokens"], 0)

    def test_g_unacknowledged_intent_sends_nothing(self):
        """Replicas paused (their connections stay open, so the master still
        counts them): the master's intent commits gather no acknowledgement
        (DB_EVENT_REP_PERM_FAILED) and its lease runs out (inside a commit
        Berkeley DB waits for it, then panics: the keeper recovers); no
        refresh token leaves meanwhile. Resumed, the group goes on without
        reuse."""
        ks = self.setup_group(servers=3, lifetime=6)
        master = self.wait_roles(ks)
        others = [k for k in ks if k is not master]
        for k in others:
            k.signal(signal.SIGSTOP)
        try:
            time.sleep(0.5)
            grants = self.peer.stats()["refresh_grants"]
            time.sleep(8)      # every token due at least once meanwhile
            self.assertEqual(self.peer.stats()["refresh_grants"], grants,
                             "a refresh went out with no replica acknowledging its intent")
        finally:
            for k in others:
                k.signal(signal.SIGCONT)
        # What the master met meanwhile (a commit short of its acknowledgements,
        # an expired lease, Berkeley DB's panic inside a commit and the
        # keeper's recovery, or a commit that waited for the replicas to come
        # back) depends on timing; what must hold is above and below.
        new = self.wait_roles(ks, 60)
        sub = new.subscribe()
        sub.wait_for(kl.EV_REFRESHED, None, 30)
        self.assertEqual(self.peer.stats()["reused_refresh_tokens"], 0)

    def mcpctl(self, k, *args, socket=True):
        where = ["--socket", k.socket_path] if socket else ["--config", k.config_path]
        r = subprocess.run([kl.MCPCTL] + where + list(args), capture_output=True, timeout=60, env=kl.child_env())
        return r.returncode, (r.stdout + r.stderr).decode()

    def test_h_group_key_rotation(self):
        """The group's key rotated in place: the next key on every site, the
        master re-seals, every site switches; the old key opens nothing."""
        ks = self.setup_group(servers=3, lifetime=20)
        master = self.wait_roles(ks)
        replica = [k for k in ks if k is not master][0]
        rc, out = self.mcpctl(master, "key", "rotate", socket=False)
        self.assertNotEqual(rc, 0)
        self.assertIn("no next master key", out)
        rc, out = self.mcpctl(replica, "key", "rotate", socket=False)
        self.assertNotEqual(rc, 0)
        self.assertIn("replica", out)
        old = open(os.path.join(master.data_dir, "master.key"), "rb").read()
        new = os.urandom(32)
        path = os.path.join(self.tmp, "next.key")
        with open(path, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(new.hex() + "\n")
        for k in ks:
            rc, out = self.mcpctl(k, "key", "import", "--next", path, socket=False)
            self.assertEqual(rc, 0, out)
            rc, out = self.mcpctl(k, "reload")
            self.assertEqual(rc, 0, out)
        rc, out = self.mcpctl(master, "key", "rotate", socket=False)
        self.assertEqual(rc, 0, out)
        self.assertIn("re-sealed", out)
        for k in ks:
            key_file = os.path.join(k.data_dir, "master.key")
            kl.wait_until(lambda: open(key_file, "rb").read() in (new, new.hex().encode() + b"\n") and
                          not os.path.exists(key_file + ".next"), 20, 0.2, "the site to switch keys")
            self.assertTrue(all(s["oauth_status"] == "authenticated" for s in k.status()["servers"]), k.dir)
        # Refreshing goes on with the new key, and the replicas read what it seals.
        sub = master.subscribe()
        sub.wait_for(kl.EV_REFRESHED, None, 30)
        want = by_name(master.status())
        kl.wait_until(lambda: all(by_name(replica.status())[n]["token_expires_at"] == want[n]["token_expires_at"]
                                  for n in self.names), 15, 0.2, "the replica to read the new records")
        # A replica restarted with the new key joins again.
        self.assertEqual(replica.stop(), 0)
        replica.start(timeout=60)
        self.wait_roles(ks, 60)
        self.assertEqual(self.peer.stats()["reused_refresh_tokens"], 0)
        self.assertNotEqual(old, new)


if __name__ == "__main__":
    kl.main()
