#!/usr/bin/env python3
"""mcpctl key export, import and rotate (issue 18, part A: every site of a
group shares the master key).

  a. export (sealed, and --plain) beside a live keeper; an existing file, a
     wrong passphrase, a damaged or oversized file refused with nothing
     written; import into a fresh state directory, restore of a backup
     there, and every token works (a refresh of each against the peer).
  b. import refused next to a live keeper, where the key does not open the
     store, over another key without --force; an empty store's key replaced
     with --force; $CREDENTIALS_DIRECTORY: import and rotate refused, export
     reads the credential.
  c. rotate refused next to a live keeper; rotate, then every token still
     works and the old key no longer opens the store.
  d. rotate killed (SIGKILL) with master.key.new written and the transaction
     not committed, and after the commit before the rename: the store opens
     with every record, with the old key and the new one respectively.
  e. a rotation of 20 000 records (the lock table sized for it).
"""
import os
import re
import signal
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keeperlib  # noqa: E402
from keeperlib import EV_REFRESHED, wait_until  # noqa: E402

EXIT_USAGE = 2
EXIT_KEEPER_RUNNING = 9
PASSPHRASE = "correct horse battery staple"
NAMES = ["one", "two", "three"]


def log(msg):
    print("    %s" % msg, file=sys.stderr, flush=True)


def mcpctl(keeper, *args, env=None, timeout=120):
    r = subprocess.run([keeperlib.MCPCTL, "--config", keeper.config_path] + list(args),
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout * keeperlib.SLOW,
                       env=keeperlib.child_env(env))
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def key_of(keeper):
    with open(os.path.join(keeper.data_dir, "master.key"), "rb") as f:
        return f.read()


class TestKeys(keeperlib.KeeperTestCase):

    def setUp(self):
        super().setUp()
        self.pass_file = os.path.join(self.tmp, "passphrase")
        with open(self.pass_file, "w") as f:
            f.write(PASSPHRASE + "\n")

    def keeper_with_tokens(self, name, lifetime=6):
        """A peer in strict rotation and a keeper holding a token for each of NAMES (not started)."""
        peer = self.start_peer(lifetime=lifetime)
        cid = peer.register()
        tokens = {n: peer.login(cid) for n in NAMES}
        servers = {n: peer.server_conf(cid) for n in NAMES}
        k = self.make_keeper(servers=servers, refresh={"threshold": 0.5}, name=name)
        for n in NAMES:
            k.put_token(n, peer.mcp_url, tokens[n][0], tokens[n][1], lifetime, peer.token_endpoint)
        return peer, servers, tokens, k

    def assert_tokens_work(self, k, peer):
        """Each server refreshes against the peer (whatever its access token's age), and is authenticated."""
        grants = peer.stats()["refresh_grants"]  # before the start: a refresh may come at once
        k.start()
        sub = k.subscribe()
        refreshed = set()
        while refreshed != set(NAMES):
            ev = sub.wait_for(EV_REFRESHED, lambda d: d.get("server_name") in set(NAMES) - refreshed, 30)
            refreshed.add(ev["data"]["server_name"])
        self.assertGreaterEqual(peer.stats()["refresh_grants"], grants + len(NAMES))
        for n in NAMES:
            self.assertEqual(k.server(n)["oauth_status"], "authenticated", n)
        self.assertEqual(k.stop(), 0, "keeper exit status")

    def test_a_export_import_restore(self):
        peer, servers, tokens, k = self.keeper_with_tokens("orig")
        k.start()
        wait_until(lambda: peer.stats()["refresh_grants"] >= len(NAMES), 60, 0.2, "the first refreshes")
        key = key_of(k)
        self.assertEqual(len(key), 32)

        # Both forms, with the keeper running.
        sealed = os.path.join(self.tmp, "key.sealed")
        rc, out, err = mcpctl(k, "key", "export", "--passphrase-file", self.pass_file, sealed)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("wrote %s (mode 0600)" % sealed, out)
        plain = os.path.join(self.tmp, "key.plain")
        rc, out, err = mcpctl(k, "key", "export", "--plain", plain)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("IN CLEAR", out)
        self.assertTrue(k.running())
        for path in (sealed, plain):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        data = open(sealed, "rb").read()
        self.assertEqual(data[:8], b"MCPKKEY\0")
        self.assertEqual(len(data), 114)
        self.assertNotIn(key, data)
        self.assertNotIn(key.hex().encode(), data.lower())
        self.assertEqual(open(plain, "rb").read(), key.hex().encode() + b"\n")
        for text in (out, err, k.log()):
            self.assertNotIn(key.hex(), text.lower())

        # An existing file is never replaced; an empty passphrase is refused.
        rc, out, err = mcpctl(k, "key", "export", "--plain", sealed)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("exists", err)
        self.assertEqual(open(sealed, "rb").read(), data)
        empty = os.path.join(self.tmp, "empty-passphrase")
        open(empty, "w").write("\nsecond line\n")
        rc, out, err = mcpctl(k, "key", "export", "--passphrase-file", empty, os.path.join(self.tmp, "x"))
        self.assertEqual(rc, EXIT_USAGE, out + err)
        self.assertIn("empty passphrase is refused", err)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "x")))

        self.assertEqual(k.stop(), 0, "keeper exit status")
        backup = os.path.join(self.tmp, "store.backup")
        rc, out, err = mcpctl(k, "backup", backup)
        self.assertEqual(rc, 0, out + err)

        # The fresh site: wrong passphrase, damaged and oversized files refused, nothing written.
        k2 = self.make_keeper(servers=servers, refresh={"threshold": 0.5}, name="fresh")
        wrong = os.path.join(self.tmp, "wrong")
        open(wrong, "w").write("not the passphrase\n")
        rc, out, err = mcpctl(k2, "key", "import", "--passphrase-file", wrong, sealed)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("the passphrase does not open", err)
        self.assertIn("nothing was installed", err)
        bad = os.path.join(self.tmp, "bad")
        for what, content in (("a flipped byte", data[:60] + bytes([data[60] ^ 1]) + data[61:]),
                              ("the KDF limits raised", data[:18] + (1 << 40).to_bytes(8, "big") + data[26:]),
                              ("truncated", data[:100]), ("too large", data + b"\0" * 5000),
                              ("63 hex digits", key.hex()[:63].encode() + b"\n")):
            with open(bad, "wb") as f:
                f.write(content)
            rc, out, err = mcpctl(k2, "key", "import", "--passphrase-file", self.pass_file, bad)
            self.assertEqual(rc, 1, what + ": " + out + err)
            self.assertIn("nothing was installed", err, what)
        self.assertEqual(os.listdir(k2.data_dir), [], "the fresh state directory was written to")

        rc, out, err = mcpctl(k2, "key", "import", "--passphrase-file", self.pass_file, sealed)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("installed the key from %s" % sealed, out)
        self.assertEqual(key_of(k2), key)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(k2.data_dir, "master.key")).st_mode), 0o600)
        self.assertEqual(sorted(os.listdir(k2.data_dir)), ["master.key"])
        rc, out, err = mcpctl(k2, "key", "import", plain)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("already holds this key", out)

        rc, out, err = mcpctl(k2, "restore", backup)
        self.assertEqual(rc, 0, out + err)
        self.assert_tokens_work(k2, peer)
        keeperlib.assert_no_secrets(k2.log(), [t for n in NAMES for t in tokens[n]])

        # The clear form installs the same key.
        k3 = self.make_keeper(servers=servers, name="plain")
        rc, out, err = mcpctl(k3, "key", "import", plain)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(key_of(k3), key)

    def test_b_import_refused(self):
        peer, servers, tokens, k = self.keeper_with_tokens("site", lifetime=600)
        other = self.make_keeper(servers={}, name="other")
        other.start()
        self.assertEqual(other.stop(), 0)
        foreign = os.path.join(self.tmp, "foreign.plain")
        rc, out, err = mcpctl(other, "key", "export", "--plain", foreign)
        self.assertEqual(rc, 0, out + err)
        key = key_of(k)

        k.start()
        rc, out, err = mcpctl(k, "key", "import", foreign)
        self.assertEqual(rc, EXIT_KEEPER_RUNNING, out + err)
        self.assertIn("a keeper is running", err)
        self.assertIn("stop it before importing a key", err)
        self.assertEqual(k.stop(), 0)

        # A key that does not open the store: refused, with or without --force.
        for args in ([], ["--force"]):
            rc, out, err = mcpctl(k, "key", "import", *(args + [foreign]))
            self.assertEqual(rc, 1, out + err)
            self.assertIn("this key does not open the store in %s" % k.data_dir, err)
            self.assertEqual(key_of(k), key)
        self.assertFalse(os.path.exists(os.path.join(k.data_dir, "master.key.new")))
        for n in NAMES:
            self.assertEqual(k.check_token(n, peer.mcp_url, tokens[n][0])[0], 0, n)

        # A store without records: its key is replaced with --force only.
        empty = self.make_keeper(servers={}, name="empty")
        empty.put_token("gone", peer.mcp_url, "a", "r", 600, peer.token_endpoint)
        empty.store_tool("delete", empty.store_tool("list").stdout.decode().split()[0])
        old = key_of(empty)
        rc, out, err = mcpctl(empty, "key", "import", foreign)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("has no records: key import --force replaces it", err)
        self.assertEqual(key_of(empty), old)
        rc, out, err = mcpctl(empty, "key", "import", "--force", foreign)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(key_of(empty), key_of(other))
        empty.put_token("back", peer.mcp_url, "a2", "r2", 600, peer.token_endpoint)
        self.assertEqual(empty.check_token("back", peer.mcp_url, "a2")[0], 0)

        # No store, another key: --force only.
        nostore = self.make_keeper(servers={}, name="nostore")
        rc, out, err = mcpctl(nostore, "key", "import", foreign)
        self.assertEqual(rc, 0, out + err)
        mine = os.path.join(self.tmp, "mine.plain")
        rc, out, err = mcpctl(k, "key", "export", "--plain", mine)
        self.assertEqual(rc, 0, out + err)
        rc, out, err = mcpctl(nostore, "key", "import", mine)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("holds another key: key import --force replaces it", err)
        rc, out, err = mcpctl(nostore, "key", "import", "--force", mine)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(key_of(nostore), key)

        # systemd credentials: the key is not ours to write; export reads the credential.
        creds = os.path.join(self.tmp, "creds")
        os.mkdir(creds, 0o700)
        with open(os.path.join(creds, "master-key"), "w") as f:
            f.write(key.hex() + "\n")
        env = {"CREDENTIALS_DIRECTORY": creds}
        for args in (["import", foreign], ["rotate"]):
            rc, out, err = mcpctl(k, "key", *args, env=env)
            self.assertEqual(rc, EXIT_USAGE, " ".join(args) + ": " + out + err)
            self.assertIn("systemd's credentials", err)
        self.assertIn("systemd-creds encrypt", err)
        via = os.path.join(self.tmp, "via-creds.plain")
        rc, out, err = mcpctl(other, "key", "export", "--plain", via, env=env)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(open(via, "rb").read(), key.hex().encode() + b"\n")
        self.assertEqual(key_of(k), key)

    def test_c_rotate(self):
        peer, servers, tokens, k = self.keeper_with_tokens("rot")
        k.start()
        rc, out, err = mcpctl(k, "key", "rotate")
        self.assertEqual(rc, EXIT_KEEPER_RUNNING, out + err)
        self.assertIn("stop it before rotating the key", err)
        self.assertEqual(k.stop(), 0)
        old = key_of(k)
        records = len(k.store_tool("list").stdout.decode().splitlines())
        self.assertEqual(records, len(NAMES))

        rc, out, err = mcpctl(k, "key", "rotate")
        self.assertEqual(rc, 0, out + err)
        log(out.strip().splitlines()[0])
        m = re.search(r"re-sealed (\d+) records with a new master key", out)
        self.assertTrue(m, out)
        self.assertGreaterEqual(int(m.group(1)), records, "every token record re-sealed (and the keeper's others)")
        new = key_of(k)
        self.assertNotEqual(new, old)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(k.data_dir, "master.key")).st_mode), 0o600)
        self.assertFalse(os.path.exists(os.path.join(k.data_dir, "master.key.new")))
        self.assertNotIn(new.hex(), (out + err).lower())

        self.assert_tokens_work(k, peer)

        # The old key no longer opens the store.
        path = os.path.join(k.data_dir, "master.key")
        os.rename(path, path + ".saved")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, old)
        os.close(fd)
        r = k.store_tool("list", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("wrong master key", r.stderr.decode())
        rc, out, err = mcpctl(k, "key", "rotate")
        self.assertEqual(rc, 1, out + err)
        self.assertIn("wrong master key", err)
        os.rename(path + ".saved", path)
        self.assertEqual(len(k.store_tool("list").stdout.decode().splitlines()), records)

    def test_d_rotate_killed(self):
        peer, servers, tokens, k = self.keeper_with_tokens("killed")
        for point, adopted in (("before-commit", False), ("after-commit", True)):
            old = key_of(k)
            proc = subprocess.Popen([keeperlib.MCPCTL, "--config", k.config_path, "key", "rotate"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=keeperlib.child_env({"MCPKEEPER_TEST_ROTATE_PAUSE": point}))
            try:
                line = proc.stderr.readline().decode()
                self.assertIn("key rotation: test pause %s (pid " % point, line)
                pid = int(line.rsplit("pid ", 1)[1].rstrip(")\n"))
                new_path = os.path.join(k.data_dir, "master.key.new")
                self.assertTrue(os.path.exists(new_path), point)
                fresh = open(new_path, "rb").read()
                self.assertEqual(len(fresh), 32)
                os.kill(pid, signal.SIGKILL)
                self.assertEqual(proc.wait(30 * keeperlib.SLOW), 1, point)
            finally:
                if proc.poll() is None:
                    keeperlib.stop_process(proc, sig=signal.SIGKILL)
                proc.stdout.close()
                proc.stderr.close()
            self.assertEqual(key_of(k), old, point)

            # The keeper's start settles it: every record opens.
            self.assert_tokens_work(k, peer)
            self.assertFalse(os.path.exists(new_path), point)
            self.assertEqual(key_of(k), fresh if adopted else old, point)
            if adopted:
                self.assertIn("adopted %s as" % new_path, k.log())
            else:
                self.assertIn("removed %s, left by a key rotation that did not commit" % new_path, k.log())
            log("%s: the keeper %s master.key.new" % (point, "adopted" if adopted else "removed"))

    def test_e_rotate_many(self):
        """20 000 records in the one transaction: more page locks than Berkeley DB's default table holds."""
        k = self.make_keeper(servers={}, name="many")
        n, now = 20000, int(time.time())
        rows = os.path.join(k.dir, "many.tsv")
        with open(rows, "w") as f:
            for i in range(n):
                f.write("s%d\thttp://127.0.0.1:9/%d\tA%d%s\tR%d%s\t%d\t%d\t-\n" %
                        (i, i, i, "a" * 300, i, "r" * 300, now, now + 3600))
        self.assertEqual(k.store_tool("put-many", rows, timeout=600).stdout.decode().split()[-1], str(n))
        old = key_of(k)
        rc, out, err = mcpctl(k, "key", "rotate", timeout=600)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("re-sealed %d records" % n, out)
        self.assertNotEqual(key_of(k), old)
        self.assertEqual(len(k.store_tool("list").stdout.decode().splitlines()), n)
        for i in (0, n // 2, n - 1):
            rc, text = k.check_token("s%d" % i, "http://127.0.0.1:9/%d" % i, "A%d%s" % (i, "a" * 300))
            self.assertEqual(rc, 0, text)


if __name__ == "__main__":
    keeperlib.main()
