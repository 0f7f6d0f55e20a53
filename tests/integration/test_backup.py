#!/usr/bin/env python3
"""mcpctl backup and restore (issue 17, part B): a hot copy of the store taken
while the keeper refreshes, restored into a fresh state directory where every
token works.

  a. backup during refreshes: one file, mode 0600, no token byte in clear;
     restore refused next to a live keeper (socket, and the DB_REGISTER
     registry when the socket is elsewhere); a truncated or damaged file and
     a missing master key refused with nothing written; the restore into a
     fresh directory: every server authenticated, a tool call through each
     worker, a refresh of each against the peer; a backup of another master
     key refused; restore over a store needs --force (here a cold backup) and
     keeps the old one.
"""
import glob
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keeperlib  # noqa: E402
from keeperlib import EV_REFRESHED, wait_until  # noqa: E402

EXIT_KEEPER_RUNNING = 9


def log(msg):
    print("    %s" % msg, file=sys.stderr, flush=True)


def mcpctl(keeper, *args, config=None, timeout=60):
    r = subprocess.run([keeperlib.MCPCTL, "--config", config or keeper.config_path] + list(args),
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                       env=keeperlib.child_env())
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


class TestBackup(keeperlib.KeeperTestCase):

    def assert_untouched(self, keeper, what):
        """Only the master key in the fresh state directory, no leftover beside it."""
        self.assertEqual(sorted(os.listdir(keeper.data_dir)), ["master.key"], what)
        self.assertEqual(glob.glob(keeper.data_dir + ".*"), [], what)

    def test_a_backup_restore(self):
        names = ["one", "two", "three"]
        peer = self.start_peer(lifetime=6)
        peer.config(rotate=False)  # a backed-up refresh token stays valid (see mcpctl(1))
        cid = peer.register()
        tokens = {n: peer.login(cid) for n in names}
        servers = {n: peer.server_conf(cid) for n in names}
        k = self.make_keeper(servers=servers, refresh={"threshold": 0.5}, name="orig")
        for n in names:
            k.put_token(n, peer.mcp_url, tokens[n][0], tokens[n][1], 6, peer.token_endpoint)
        k.start()
        wait_until(lambda: peer.stats()["refresh_grants"] >= len(names), 60, 0.2, "the first refreshes")

        # Backups while refreshes run (threshold 0.5 of 6 s: one every 3 s per server).
        backup = os.path.join(self.tmp, "store.backup")
        first = peer.stats()["refresh_grants"]
        t_end = time.monotonic() + 7.0
        i = 0
        while time.monotonic() < t_end:
            rc, out, err = mcpctl(k, "backup", backup)
            self.assertEqual(rc, 0, out + err)
            self.assertIn("wrote %s (mode 0600)" % backup, out)
            self.assertIn("holds no master key", out)
            i += 1
            time.sleep(0.3)
        log("%d backups; refresh grants meanwhile: %d -> %d; last: %s" %
            (i, first, peer.stats()["refresh_grants"], out.strip().splitlines()[0]))
        self.assertGreaterEqual(peer.stats()["refresh_grants"], first + len(names), "refreshes ran during the backups")
        st = os.stat(backup)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(glob.glob(backup + ".tmp.*"), [])
        data = open(backup, "rb").read()
        self.assertEqual(data[:8], b"MCPKBAK\0")
        for n in names:
            for tok in tokens[n]:
                self.assertNotIn(tok.encode(), data, "a token of %s in clear in the backup" % n)
        key = open(os.path.join(k.data_dir, "master.key"), "rb").read()
        self.assertNotIn(key, data, "the master key is in the backup")
        self.assertNotIn(key.hex().encode(), data)
        keeperlib.assert_no_secrets(k.log(), [t for n in names for t in tokens[n]])

        # The fresh state directory, with the master key of the backed-up store.
        k2 = self.make_keeper(servers=servers, refresh={"threshold": 0.5}, name="fresh")
        shutil.copyfile(os.path.join(k.data_dir, "master.key"), os.path.join(k2.data_dir, "master.key"))
        os.chmod(os.path.join(k2.data_dir, "master.key"), 0o600)

        # Refused next to a live keeper: its socket answers ...
        rc, out, err = mcpctl(k, "restore", "--force", backup)
        self.assertEqual(rc, EXIT_KEEPER_RUNNING, out + err)
        self.assertIn("a keeper is running", err)
        # ... and with the socket elsewhere, the registry shows the keeper.
        other = os.path.join(self.tmp, "other.json")
        with open(other, "w") as f:
            f.write('{"data_dir": "%s", "runtime_dir": "%s", "mcpServers": {}}' %
                    (k.data_dir, os.path.join(self.tmp, "nowhere")))
        rc, out, err = mcpctl(k, "restore", "--force", backup, config=other)
        self.assertEqual(rc, EXIT_KEEPER_RUNNING, out + err)
        self.assertIn("process %d has the store" % k.proc.pid, err)
        self.assertTrue(k.running())

        self.assertEqual(k.stop(), 0, "keeper exit status")
        grants_at_stop = peer.stats()["refresh_grants"]

        # Damaged backups: refused, nothing written.
        bad = os.path.join(self.tmp, "bad.backup")
        for what, content in (("truncated", data[:len(data) // 2]), ("empty", b""),
                              ("one byte flipped", data[:100] + bytes([data[100] ^ 1]) + data[101:]),
                              ("not a backup", b"hello" * 100)):
            with open(bad, "wb") as f:
                f.write(content)
            rc, out, err = mcpctl(k2, "restore", bad)
            self.assertEqual(rc, 1, what + ": " + out + err)
            self.assertIn("is not a usable backup", err, what)
            self.assertIn("nothing was restored", err, what)
            self.assert_untouched(k2, what)

        # Well-formed archives (the hash is no MAC: anyone can recompute it)
        # carrying a file no store has: refused, nothing written.
        entries = parse_backup(data)
        self.assertTrue(entries and all(n.endswith(".db") or n.startswith("log.") for n, _ in entries))
        with open(bad, "wb") as f:
            f.write(make_backup(entries))
        rc, out, err = mcpctl(k2, "restore", "--force", bad)
        self.assertEqual(rc, 0, "the rebuilt archive itself restores: " + out + err)
        shutil.rmtree(k2.data_dir)
        for g in glob.glob(k2.data_dir + ".*"):
            shutil.rmtree(g)
        os.mkdir(k2.data_dir, 0o700)
        shutil.copyfile(os.path.join(k.data_dir, "master.key"), os.path.join(k2.data_dir, "master.key"))
        os.chmod(os.path.join(k2.data_dir, "master.key"), 0o600)
        for name in ("master.key", "../x", "store.shmkey", "store.lock", "__db.001", "x.db", "log.1",
                     "log.00000000001", "log.000000000a", "tokens.db/x"):
            with open(bad, "wb") as f:
                f.write(make_backup(entries + [(name, b"planted")]))
            rc, out, err = mcpctl(k2, "restore", bad)
            self.assertEqual(rc, 1, name + ": " + out + err)
            self.assertIn("is not a usable backup", err, name)
            self.assertIn("a name no store file has", err, name)
            self.assert_untouched(k2, name)
            self.assertFalse(os.path.exists(os.path.join(self.tmp, "x")), name)

        # No master key: refused, nothing written.
        k3 = self.make_keeper(servers=servers, name="nokey")
        rc, out, err = mcpctl(k3, "restore", backup)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("master key", err)
        self.assertIn("missing", err)
        self.assertEqual(os.listdir(k3.data_dir), [])

        rc, out, err = mcpctl(k3, "backup", os.path.join(self.tmp, "none.backup"))
        self.assertEqual(rc, 1, out + err)
        self.assertIn("no token store", err)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "none.backup")))

        # Another store's master key: refused after the recovery, nothing written.
        k4 = self.make_keeper(servers=servers, name="otherkey")
        fd = os.open(os.path.join(k4.data_dir, "master.key"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(32))
        os.close(fd)
        rc, out, err = mcpctl(k4, "restore", backup)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("wrong master key", err)
        self.assertIn("another master key", err)
        self.assert_untouched(k4, "another key")

        # A cold backup (no keeper running), for the --force restore below.
        cold = os.path.join(self.tmp, "cold.backup")
        rc, out, err = mcpctl(k, "backup", cold)
        self.assertEqual(rc, 0, out + err)

        # The restore.
        rc, out, err = mcpctl(k2, "restore", backup)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("restored %s into %s" % (backup, k2.data_dir), out)
        log(out.strip())
        self.assertEqual(glob.glob(k2.data_dir + ".*"), [])
        self.assertFalse([f for f in os.listdir(k2.data_dir) if f.startswith("__db")], "region files left")

        k2.start()
        sub = k2.subscribe()
        for n in names:
            s = k2.server(n)
            self.assertEqual(s["oauth_status"], "authenticated", n)
        mcp_before = peer.stats()
        for n in names:
            rc, out, err = mcpctl(k2, "tools", "--json", n, timeout=60)
            self.assertEqual(rc, 0, "%s: %s %s" % (n, out, err))
            self.assertIn('"tools"', out)
        mcp_after = peer.stats()
        self.assertGreaterEqual(mcp_after["mcp_requests"], mcp_before["mcp_requests"] + len(names))
        refreshed = set()
        while refreshed != set(names):
            ev = sub.wait_for(EV_REFRESHED, lambda d: d.get("server_name") in set(names) - refreshed, 30)
            refreshed.add(ev["data"]["server_name"])
        self.assertGreater(peer.stats()["refresh_grants"], grants_at_stop)
        for n in names:
            self.assertEqual(k2.server(n)["oauth_status"], "authenticated", n)
        self.assertEqual(k2.stop(), 0, "keeper exit status")

        # Over a store: only with --force, the old one kept beside it.
        rc, out, err = mcpctl(k2, "restore", backup)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("already holds a store", err)
        rc, out, err = mcpctl(k2, "restore", "--force", cold)
        self.assertEqual(rc, 0, out + err)
        kept = glob.glob(k2.data_dir + ".replaced-*")
        self.assertEqual(len(kept), 1, out)
        self.assertIn("tokens.db", os.listdir(kept[0]))
        k2.start()
        for n in names:
            self.assertEqual(k2.server(n)["oauth_status"], "authenticated", n)
        self.assertEqual(k2.stop(), 0, "keeper exit status")


    def test_b_restore_locked(self):
        """A process holding store.lock shared (a keeper, its socket elsewhere) stops a restore."""
        k = self.make_keeper(servers={}, name="locked")
        k.start()
        self.assertEqual(k.stop(), 0, "keeper exit status")
        backup = os.path.join(self.tmp, "locked.backup")
        rc, out, err = mcpctl(k, "backup", backup)
        self.assertEqual(rc, 0, out + err)
        before = sorted(os.listdir(k.data_dir))
        self.assertIn("store.lock", before)
        self.assertIn("store.shmkey", before)
        key_before = open(os.path.join(k.data_dir, "store.shmkey")).read()
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(k.data_dir, "store.shmkey")).st_mode), 0o600)
        # No socket answers and no process is in __db.register: only the lock shows it.
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import fcntl, os, sys\n"
             "fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "fcntl.flock(fd, fcntl.LOCK_SH)\n"
             "print('held', flush=True)\n"
             "sys.stdin.read()\n",
             os.path.join(k.data_dir, "store.lock")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            self.assertEqual(holder.stdout.readline(), b"held\n")
            rc, out, err = mcpctl(k, "restore", "--force", backup)
            self.assertEqual(rc, EXIT_KEEPER_RUNNING, out + err)
            self.assertIn("a keeper or another mcpctl has the store in %s open" % k.data_dir, err)
            self.assertEqual(sorted(os.listdir(k.data_dir)), before)
            self.assertEqual(glob.glob(k.data_dir + ".*"), [])
        finally:
            holder.stdin.close()
            self.assertEqual(holder.wait(10), 0)
        # Released: the restore goes through, with a state directory of its own shm key.
        rc, out, err = mcpctl(k, "restore", "--force", backup)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(len(glob.glob(k.data_dir + ".replaced-*")), 1)
        key_after = open(os.path.join(k.data_dir, "store.shmkey")).read()
        self.assertNotEqual(key_after, key_before, "the restored directory reuses the old one's shm key")
        k.start()
        self.assertEqual(k.stop(), 0, "keeper exit status")


def parse_backup(data):
    """The (name, bytes) entries of a backup file (store.h: its format)."""
    assert data[:8] == b"MCPKBAK\0"
    at, entries = 12, []
    while True:
        n = int.from_bytes(data[at:at + 2], "big")
        at += 2
        if n == 0:
            return entries
        name = data[at:at + n].decode()
        size = int.from_bytes(data[at + n:at + n + 8], "big")
        at += n + 8
        entries.append((name, data[at:at + size]))
        at += size


def make_backup(entries):
    out = bytearray(b"MCPKBAK\0" + (1).to_bytes(4, "big"))
    for name, content in entries:
        out += len(name).to_bytes(2, "big") + name.encode() + len(content).to_bytes(8, "big") + content
    out += b"\0\0"
    return bytes(out + hashlib.blake2b(bytes(out), digest_size=32).digest())


if __name__ == "__main__":
    keeperlib.main()
