#!/usr/bin/env python3
"""
Whom the keeper and mcpctl trust (issue 14, part C), played as the attacker:

  - a runtime directory another user can write to, owns, or points to
    through a symlink: the keeper refuses to start, naming it;
  - a control socket served by another uid: mcpctl refuses it before
    sending a byte (exit 8), whoever owns the socket's directory;
  - authorization server metadata that aims the login or a refresh at a
    link-local or private address: refused before any connection, unless
    oauth.allow_private_endpoints;
  - OAuth over plain http to a host that is not loopback: refused at load
    unless allow_insecure_http, and then warned in the log and status.

Every address the keeper is sent to is refused before a socket exists, so
nothing here leaves 127.0.0.1. Needs root for the other uid (skipped
otherwise).
"""
import http.server
import json
import os
import select
import socket
import subprocess
import sys
import threading
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402
from keeperlib import EV_FAILED, EV_REFRESHED  # noqa: E402

BROWSER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser.py")
NOBODY = 65534
NOBODY_GID = 65534


def needs_root(case):
    kl.needs_root(case, "needs root (another uid)")


def mcpctl(*args, env=None, timeout=60):
    r = subprocess.run([kl.MCPCTL] + list(args), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                       env=kl.child_env(env or {}))
    r.out = r.stdout.decode(errors="replace")
    r.err = r.stderr.decode(errors="replace")
    return r


# ---------------------------------------------------------------------------

class TestRuntimeDir(kl.KeeperTestCase):
    """The keeper binds its control socket only in a directory nobody else controls."""

    def start_refused(self, k, *words):
        k.start(wait=False)
        try:
            rc = k.proc.wait(timeout=30)
        finally:
            k.stop()
        log = k.log()
        self.assertNotEqual(rc, 0, "the keeper must not start; log:\n%s" % kl.tail(log))
        self.assertIn("runtime directory %s" % k.runtime_dir, log)
        for w in words:
            self.assertIn(w, log)
        self.assertFalse(os.path.exists(os.path.join(os.path.realpath(k.runtime_dir), "control.sock")),
                         "no socket was bound there")

    def test_a_world_writable(self):
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        os.makedirs(k.runtime_dir)
        os.chmod(k.runtime_dir, 0o777)
        self.start_refused(k, "mode 0777", "group or others may write")

    def test_b_group_writable(self):
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        os.makedirs(k.runtime_dir)
        os.chmod(k.runtime_dir, 0o770)
        self.start_refused(k, "mode 0770")

    def test_c_owned_by_another_user(self):
        needs_root(self)
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        os.makedirs(k.runtime_dir, mode=0o700)
        os.chown(k.runtime_dir, NOBODY, NOBODY_GID)
        self.start_refused(k, "owned by uid %d" % NOBODY, "not by the keeper's user (uid %d)" % os.geteuid())

    def test_d_symlink(self):
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        target = os.path.join(self.tmp, "elsewhere")
        os.makedirs(target, mode=0o700)
        os.symlink(target, k.runtime_dir)
        self.start_refused(k, "is a symbolic link")

    def test_e_private_or_readable_is_used(self):
        """Absent: created 0700. Present 0755 and ours (no write bit for
        others, as the unit's 0750): used."""
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        k.start()
        self.assertEqual(os.stat(k.runtime_dir).st_mode & 0o7777, 0o700)
        k.stop()
        os.chmod(k.runtime_dir, 0o755)
        k.start()
        self.assertIsNotNone(k.status())


# ---------------------------------------------------------------------------

class FakeKeeper:
    """A socket at path served by NOBODY: bound as root, then listen() after
    setuid, so that SO_PEERCRED names nobody. It accepts one connection,
    reads until the peer closes (or 20 s), and reports the byte count."""

    def __init__(self, path):
        r, w = os.pipe()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        os.chmod(path, 0o666)
        pid = os.fork()
        if pid == 0:  # the other user
            code = 1
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(NOBODY_GID)
                os.setuid(NOBODY)
                s.listen(4)
                os.write(w, b"listening\n")
                s.settimeout(30)
                c, _ = s.accept()
                c.settimeout(20)
                got = 0
                try:
                    while True:
                        b = c.recv(65536)
                        if not b:
                            break
                        got += len(b)
                        if got > 0 and b"\n" in b:
                            break  # a line came: enough to prove it was sent
                except OSError:
                    pass
                os.write(w, b"%d\n" % got)
                c.close()
                code = 0
            finally:
                os._exit(code)
        s.close()
        os.close(w)
        self.pid, self.r = pid, r
        self.buf = b""
        if self._line(30) != b"listening":
            raise AssertionError("the fake keeper did not start listening")

    def _line(self, timeout):
        while b"\n" not in self.buf:
            ready, _, _ = select.select([self.r], [], [], timeout)
            if not ready:
                raise AssertionError("the fake keeper reported nothing")
            data = os.read(self.r, 64)
            if not data:
                break
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line.strip()

    def received(self, timeout=30):
        """Bytes the fake got before the client hung up."""
        return int(self._line(timeout) or b"-1")

    def close(self):
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.r)


class TestControlTrust(kl.KeeperTestCase):
    """mcpctl asks the kernel who answers (SO_PEERCRED), not who owns the path."""

    def setUp(self):
        super().setUp()
        needs_root(self)
        os.chmod(self.tmp, 0o755)

    def fake_at(self, path):
        f = FakeKeeper(path)
        self.addCleanup(f.close)
        return f

    def test_a_socket_of_another_uid_refused(self):
        run = os.path.join(self.tmp, "run")
        os.makedirs(run, mode=0o700)
        sock = os.path.join(run, "control.sock")
        fake = self.fake_at(sock)
        r = mcpctl("--socket", sock, "status")
        self.assertEqual(r.returncode, 8, r.err)
        self.assertIn("refusing the keeper at %s: it runs as uid %d" % (sock, NOBODY), r.err)
        self.assertIn("neither this user (uid %d) nor root" % os.getuid(), r.err)
        self.assertEqual(fake.received(), 0, "not a byte went to the impostor")

    def test_b_owning_the_directory_proves_nothing(self):
        """The impostor owns the runtime directory and the state directory
        named by --config: a user-mode mcpctl still refuses it."""
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        os.makedirs(k.runtime_dir, mode=0o700)
        os.chown(k.runtime_dir, NOBODY, NOBODY_GID)
        os.chown(k.data_dir, NOBODY, NOBODY_GID)
        fake = self.fake_at(k.socket_path)
        r = mcpctl("--config", k.config_path, "servers")
        self.assertEqual(r.returncode, 8, r.err)
        self.assertIn("it runs as uid %d" % NOBODY, r.err)
        self.assertEqual(fake.received(), 0)

    def test_c_system_keeper_user_trusted(self):
        """--system: the owner of the configured state directory is the
        keeper's user and is trusted (the fake then hangs up: exit 5, not 8)."""
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        os.makedirs(k.runtime_dir, mode=0o750)
        os.chmod(k.dir, 0o755)
        os.chown(k.data_dir, NOBODY, NOBODY_GID)
        fake = self.fake_at(k.socket_path)
        r = mcpctl("--system", "--config", k.config_path, "--timeout", "20", "servers")
        self.assertEqual(r.returncode, 5, r.err)
        self.assertGreater(fake.received(), 0, "the hello went to the trusted keeper")

    def test_d_system_mode_refuses_others(self):
        """--system and a state directory of root's: nobody is not the keeper's user."""
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        os.makedirs(k.runtime_dir, mode=0o750)
        fake = self.fake_at(k.socket_path)
        r = mcpctl("--system", "--config", k.config_path, "servers")
        self.assertEqual(r.returncode, 8, r.err)
        self.assertIn("neither root nor the system keeper's user (uid 0)", r.err)
        self.assertEqual(fake.received(), 0)

    def test_e_real_keeper_trusted(self):
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}})
        k.start()
        r = mcpctl("--socket", k.socket_path, "servers")
        self.assertEqual(r.returncode, 0, r.err)
        self.assertIn("files", r.out)


# ---------------------------------------------------------------------------

class FakeProvider(http.server.ThreadingHTTPServer):
    """An MCP server on 127.0.0.1 whose metadata names the endpoints the test
    chooses: the hostile server of a login."""

    daemon_threads = True

    def __init__(self, endpoints):
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.origin = "http://127.0.0.1:%d" % self.server_address[1]
        self.endpoints = endpoints
        self.paths = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()


class FakeHandler(http.server.BaseHTTPRequestHandler):

    def log_message(self, *a):
        pass

    def send(self, status, body=None, headers=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route(self):
        srv = self.server
        path = urllib.parse.urlsplit(self.path).path
        srv.paths.append("%s %s" % (self.command, path))
        if self.command == "POST" and int(self.headers.get("Content-Length") or 0):
            self.rfile.read(int(self.headers["Content-Length"]))
        if path == "/mcp":
            return self.send(401, None, {"WWW-Authenticate": 'Bearer resource_metadata="%s/.well-known/'
                                         'oauth-protected-resource/mcp"' % srv.origin})
        if path == "/.well-known/oauth-protected-resource/mcp":
            return self.send(200, {"resource": srv.origin + "/mcp", "authorization_servers": [srv.origin],
                                   "scopes_supported": ["mcp"]})
        if path == "/.well-known/oauth-authorization-server":
            meta = {"issuer": srv.origin, "authorization_endpoint": srv.origin + "/authorize",
                    "response_types_supported": ["code"], "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["none"]}
            meta.update(srv.endpoints)
            return self.send(200, meta)
        if path == "/authorize":
            q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            loc = "%s?%s" % (q["redirect_uri"], urllib.parse.urlencode({"code": "fake-code-4711",
                                                                          "state": q["state"]}))
            return self.send(302, None, {"Location": loc})
        return self.send(404)

    do_GET = route
    do_POST = route


class TestEndpoints(kl.KeeperTestCase):
    """The login-time targets a server's metadata names, checked by the
    address the oauth child is about to connect to."""

    def provider(self, endpoints):
        p = FakeProvider(endpoints)
        self.addCleanup(p.stop)
        return p

    def login(self, k, name="demo"):
        log = os.path.join(self.tmp, "browser.jsonl")
        return mcpctl("auth", "login", "-s", name, "--timeout", "60",
                      env={"BROWSER": BROWSER, "MCPKEEPER_TEST_BROWSER_MODE": "follow",
                           "MCPKEEPER_TEST_BROWSER_LOG": log, "MCPKEEPER_CONFIG": k.config_path}, timeout=120)

    def failed_login(self, endpoints, oauth=None):
        """A login against a provider whose metadata names endpoints: it must fail."""
        p = self.provider(endpoints)
        conf = {"url": p.origin + "/mcp"}
        if oauth:
            conf["oauth"] = oauth
        k = self.make_keeper(servers={"demo": conf})
        k.start()
        r = self.login(k)
        self.assertEqual(r.returncode, 1, r.out + r.err)
        return p, k, r

    def test_a_registration_at_link_local_refused(self):
        p, k, r = self.failed_login({"token_endpoint": "https://169.254.169.254/token",
                                     "registration_endpoint": "https://169.254.169.254/register"})
        self.assertIn("refusing to connect to 169.254.169.254 (link-local) for the registration endpoint", r.err)
        self.assertIn("the MCP server's own address is loopback", r.err)
        self.assertIn("oauth.allow_private_endpoints", r.err)
        self.assertIn("GET /.well-known/oauth-authorization-server", p.paths, "discovery ran")
        self.assertEqual(k.server("demo")["oauth_status"], "none")
        k.assert_alive()

    def test_b_token_endpoint_at_private_address_refused(self):
        """A configured client: the browser comes back with a code, and the
        code (with the PKCE verifier) is not sent to 10.0.0.1."""
        p, k, r = self.failed_login({"token_endpoint": "https://10.0.0.1/token"}, {"client_id": "fixed"})
        self.assertIn("refusing to connect to 10.0.0.1 (private) for the token endpoint", r.err)
        self.assertIn("GET /authorize", p.paths, "the browser went through the authorization")
        self.assertEqual(k.server("demo")["oauth_status"], "none")

    def test_c_ipv4_mapped_is_its_ipv4(self):
        _, _, r = self.failed_login({"token_endpoint": "https://[::ffff:169.254.169.254]/token"},
                                    {"client_id": "fixed"})
        self.assertIn("(link-local) for the token endpoint", r.err)

    def refresh_case(self, server_url, token_endpoint, oauth_extra=None):
        peer = self.start_peer(lifetime=4)
        cid = peer.register()
        access, refresh_token = peer.login(cid)
        oauth = {"client_id": cid, "resource": peer.mcp_url}
        oauth.update(oauth_extra or {})
        k = self.make_keeper(servers={"gh": {"url": server_url, "oauth": oauth}},
                             refresh={"max_retries": 0})
        k.put_token("gh", server_url, access, refresh_token, 4, token_endpoint or peer.token_endpoint)
        k.start(wait=False)
        sub = k.subscribe_when_up()
        k.wait_ready()
        return peer, k, sub

    def test_d_refresh_at_link_local_refused(self):
        """A stored token whose token endpoint is the cloud metadata address."""
        _, k, sub = self.refresh_case("http://127.0.0.1:9/mcp", "https://169.254.169.254/latest/token")
        ev = sub.wait_for(EV_FAILED, lambda d: d.get("server_name") == "gh", 40)
        self.assertIn("refusing to connect to 169.254.169.254 (link-local) for the token endpoint", ev["data"]["error"])
        self.assertIn("refusing to connect to 169.254.169.254",
                      k.server("gh")["refresh"]["last_error"] or "")

    def test_e_public_server_loopback_endpoint(self):
        """A server named by a public host name may not aim its refresh at
        this machine; allow_private_endpoints lets it (and it works)."""
        url = "https://mcp.example.invalid/mcp"
        peer, k, sub = self.refresh_case(url, None)
        ev = sub.wait_for(EV_FAILED, lambda d: d.get("server_name") == "gh", 40)
        self.assertIn("refusing to connect to 127.0.0.1 (loopback) for the token endpoint: the MCP server's own "
                      "address is public", ev["data"]["error"])
        self.assertEqual(peer.stats()["refresh_requests"], 0, "nothing reached the endpoint")
        k.stop()

        peer2, _, sub2 = self.refresh_case(url, None, {"allow_private_endpoints": True})
        sub2.wait_for(EV_REFRESHED, lambda d: d.get("server_name") == "gh", 40)
        self.assertGreaterEqual(peer2.stats()["refresh_requests"], 1)


# ---------------------------------------------------------------------------

class TestInsecureHttp(kl.KeeperTestCase):
    """No bearer token over plain http to another machine without saying so."""

    def test_a_refused_without_the_flag(self):
        k = self.make_keeper(servers={"lan": {"url": "http://10.0.0.1/mcp"}})
        k.start(wait=False)
        try:
            rc = k.proc.wait(timeout=30)
        finally:
            k.stop()
        self.assertNotEqual(rc, 0)
        self.assertIn("mcpServers.lan.url: plain http to a host that is not loopback would send the OAuth bearer "
                      "token in clear", k.log())
        # mcpctl reads the same file the same way.
        r = mcpctl("--config", k.config_path, "status")
        self.assertEqual(r.returncode, 2, r.err)
        self.assertIn("allow_insecure_http", r.err)

    def test_b_allowed_warned_and_shown(self):
        k = self.make_keeper(servers={"lan": {"url": "http://10.0.0.1/mcp", "allow_insecure_http": True},
                                      "tls": {"url": "https://10.0.0.1/mcp", "allow_insecure_http": True}})
        k.start()
        self.assertIn("mcpServers.lan.url: plain http with OAuth (allow_insecure_http): the bearer token and the "
                      "login's secrets travel in clear", k.log())
        self.assertNotIn("mcpServers.tls.url", k.log(), "https needs no warning")
        self.assertIs(k.server("lan")["worker"].get("insecure_http"), True)
        self.assertNotIn("insecure_http", k.server("tls")["worker"])
        r = mcpctl("--socket", k.socket_path, "status")
        self.assertEqual(r.returncode, 0, r.err)
        self.assertIn("warning: OAuth over plain http (allow_insecure_http)", r.out)
        self.assertEqual(r.out.count("warning: OAuth over plain http"), 1, r.out)


if __name__ == "__main__":
    kl.main()
