#!/usr/bin/env python3
"""
Issue 16, part C: the rough edges a new user hits on a first try, each with
the attack or mistake that showed it.

- mcpctl's options: -c FILE like mcpkeeperd, an option given to the wrong
  command named by its name (not by the value getopt consumed with it), the
  standalone `auth logout --all` naming servers, not store keys.
- A disabled server says "disabled" in status and auth status (JSON and
  tables), not "idle none", whether or not it still stores a token.
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402


def ctl(*args, env=None, timeout=60):
    e = {"MCPKEEPER_CONFIG": "/nonexistent/mcpkeeper-rough.json"}
    e.update(env or {})
    r = subprocess.run([kl.MCPCTL] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout, env=kl.child_env(e))
    r.out = r.stdout.decode(errors="replace")
    r.err = r.stderr.decode(errors="replace")
    return r


class TestCtlOptions(kl.KeeperTestCase):
    def test_short_config_option(self):
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        k.start()
        r = ctl("-c", k.config_path, "status")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        self.assertRegex(r.out, r"(?m)^files\s")
        r = ctl("-c", k.config_path, "--timeout", "5", "servers", "--json")
        self.assertEqual(r.returncode, 0, r.out + r.err)

    def test_wrong_option_named_not_its_value(self):
        cases = [
            (("auth", "logout", "--all", "--timeout", "30"), "--timeout"),
            (("auth", "logout", "--timeout=30", "--all"), "--timeout"),
            (("servers", "--server", "secret-looking-value"), "--server"),
            (("servers", "-s", "secret-looking-value"), "-s"),
            (("status", "--timeout", "30"), "--timeout"),
            (("status", "--socket=/x"), "--socket"),
            (("status", "-c", "/x"), "-c"),
        ]
        for args, name in cases:
            r = ctl(*args)
            self.assertEqual(r.returncode, 2, "%s: %s%s" % (args, r.out, r.err))
            self.assertIn("'%s'" % name, r.err, args)
            for value in ("30", "secret-looking-value", "/x"):
                self.assertNotIn(value, r.err, args)
        r = ctl("status", "--timeout", "30")
        self.assertIn("before the command", r.err)

    def test_standalone_logout_all_names_servers(self):
        k = self.make_keeper(servers={
            "demo": {"url": "http://127.0.0.1:9/mcp", "oauth": {"client_id": "c"}},
        })
        key = k.put_token("demo", "http://127.0.0.1:9/mcp", "acc-1", "ref-1", 3600, "http://127.0.0.1:9/token")
        okey = k.put_token("gone", "http://127.0.0.1:9/old", "acc-2", "ref-2", 3600, "http://127.0.0.1:9/token")
        self.assertIn("#", key)
        r = ctl("-c", k.config_path, "auth", "logout", "--all")
        self.assertEqual(r.returncode, 0, r.out + r.err)
        self.assertIn("not running", r.out)
        self.assertIn("demo: deleted the stored token\n", r.out)
        self.assertIn("gone: deleted the stored token (orphaned)\n", r.out)
        self.assertNotIn(key, r.out + r.err)
        self.assertNotIn(okey, r.out + r.err)
        self.assertIn("deleted 2 stored tokens", r.out)
        self.assertEqual(k.store_tool("list").stdout.decode().strip(), "")


class TestDisabled(kl.KeeperTestCase):
    def test_disabled_everywhere(self):
        url = "http://127.0.0.1:9/mcp"
        k = self.make_keeper(servers={
            "off": {"url": url, "enabled": False},
            "offtok": {"url": url + "2", "enabled": False},
            "on": {"url": url + "3"},
        })
        k.put_token("offtok", url + "2", "acc-1", "ref-1", 3600, "http://127.0.0.1:9/token")
        k.start()
        st = {s["name"]: s for s in k.status()["servers"]}
        self.assertEqual(st["off"]["worker"]["state"], "disabled")
        self.assertEqual(st["offtok"]["worker"]["state"], "disabled")
        self.assertEqual(st["on"]["worker"]["state"], "idle")
        for args in (("status",), ("auth", "status")):
            r = ctl("-c", k.config_path, *args)
            self.assertEqual(r.returncode, 0, r.out + r.err)
            rows = {line.split()[0]: line for line in r.out.splitlines() if line.strip()}
            self.assertNotRegex(rows["off"], r"\b(idle|none)\b", args)
            self.assertRegex(rows["off"], r"\bdisabled\b", args)
            self.assertIn("disabled (token authenticated)", rows["offtok"], args)
            self.assertRegex(rows["on"], r"\bnone\b", args)
        r = ctl("-c", k.config_path, "status")
        self.assertRegex(r.out, r"(?m)^off\s+streamable-http\s+disabled\s+disabled\s")


if __name__ == "__main__":
    kl.main()
