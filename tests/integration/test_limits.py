#!/usr/bin/env python3
"""
Limits that keep one party from spending what the others need (issue 14,
part C), each played as the attacker against the real binaries:

- the oauth child's redirect listener: forged callbacks (a wrong, missing or
  repeated state, a provider error without the state, another path, a GET
  sent by a page elsewhere) during a pending login get a 400 (or 404) page
  that echoes nothing, and the login still completes with the real redirect;
- the http child: 1000 idle TCP connections, of which those past
  http.max_connections are answered 503 and closed at once, while the child's
  descriptors stay bounded and the API answers again as soon as others go;
  connections that never send a whole request (idle, slow, or kept alive
  after an answer) are closed after http.header_timeout;
- the keeper: a hostile http child (a script in place of mcpkeeper-http)
  that asks for 100 control connections gets 64 and a clear error for the
  rest, with no descriptor.
"""
import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keeperlib as kl  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BROWSER = os.path.join(HERE, "browser.py")
HTTP_BIN = os.path.join(kl.BUILD_ROOT, "daemon", "http", "mcpkeeper-http")
IDLE = 1000
CAP = 256                   # http.max_connections' default
CONTROL_CAP = 64            # common/proto.h API_CONTROL_CONNS_MAX


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise AssertionError("this test needs %d descriptors; the hard limit is %d" % (want, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def get(port, target, headers=None, timeout=10.0):
    """One GET on a fresh connection: (status, body text, closed after the answer)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        h = {"Host": "127.0.0.1:%d" % port}
        h.update(headers or {})
        s.sendall(("GET %s HTTP/1.1\r\n" % target + "".join("%s: %s\r\n" % kv for kv in h.items()) +
                   "\r\n").encode())
        buf, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([s], [], [], deadline - time.monotonic())
            if not r:
                break
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                head, _, body = buf.partition(b"\r\n\r\n")
                return int(head.split()[1]), body.decode(errors="replace"), True
            buf += chunk
        raise AssertionError("GET %s: the listener did not answer and close within %.0f s (got %r)" %
                             (target.split("?")[0], timeout, buf[:200]))
    finally:
        s.close()


class Idle:
    """A connection that sends nothing, and what the server did to it."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setblocking(False)
        self.got = b""
        self.closed = False

    def poll(self):
        """Reads what is there; True once the server has closed it."""
        while not self.closed:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
            self.got += chunk
        return self.closed


# ---------------------------------------------------------------------------

class TestRedirectListener(kl.KeeperTestCase):

    def test_a_forged_callbacks_do_not_end_the_login(self):
        peer = self.start_peer(lifetime=3600)
        k = self.make_keeper(servers={"demo": {"url": peer.mcp_url}})
        k.start()
        log = os.path.join(self.tmp, "browser.jsonl")
        env = kl.child_env({"BROWSER": BROWSER, "MCPKEEPER_TEST_BROWSER_MODE": "ignore",
                            "MCPKEEPER_TEST_BROWSER_LOG": log, "MCPKEEPER_CONFIG": k.config_path})
        ctl = subprocess.Popen([kl.MCPCTL, "auth", "login", "-s", "demo", "--timeout", "60"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            kl.wait_until(lambda: os.path.exists(log) and os.path.getsize(log) > 0, 30, 0.1,
                          "the browser to get the authorization URL")
            with open(log) as f:
                url = json.loads(f.readline())["url"]
            # The user's browser at the provider: the real redirect, not followed yet.
            r = kl.http("GET", url)
            self.assertEqual(r.status, 302, r.body[:200])
            real = r.headers["Location"]
            parts = urllib.parse.urlsplit(real)
            port = parts.port
            q = urllib.parse.parse_qsl(parts.query)
            state = dict(q)["state"]
            self.assertEqual(parts.path, "/oauth/callback")

            def target(pairs):
                return parts.path + ("?" + urllib.parse.urlencode(pairs) if pairs else "")
            marker = "forged<b>x</b>"
            without_state = [(a, b) for a, b in q if a != "state"]
            forged = {
                "wrong state": target(without_state + [("state", marker)]),
                "no state": target(without_state),
                "no query": target([]),
                "state twice": target(q + [("state", state)]),
                "state and another": target(q + [("state", marker)]),
                "a provider error without the state": target([("error", "access_denied"),
                                                              ("error_description", marker)]),
                "a provider error with a wrong state": target([("error", "access_denied"), ("state", marker)]),
                "an empty state": target(without_state + [("state", "")]),
            }
            for what, t in forged.items():
                # As a page elsewhere would make the browser send it.
                for headers in ({}, {"Origin": "https://evil.example", "Referer": "https://evil.example/"}):
                    status, body, closed = get(port, t, headers)
                    self.assertEqual(status, 400, (what, body))
                    self.assertIn("does not belong to the login in progress", body, what)
                    self.assertNotIn("forged", body, "%s: the page echoes nothing it was sent" % what)
                    self.assertNotIn(state, body, what)
                    self.assertTrue(closed, "%s: the connection closes after the answer" % what)
            for path in ("/favicon.ico", "/", "/oauth/callback/"):
                status, body, closed = get(port, path + "?state=" + urllib.parse.quote(marker))
                self.assertEqual(status, 404, (path, body))
                self.assertTrue(closed, path)
            # Nothing of that ended the login.
            self.assertIsNone(ctl.poll(), "mcpctl auth login ended on a forged callback")
            self.assertTrue(k.server("demo")["login_in_progress"])
            self.assertEqual(peer.stats()["token_grants"], 0)
            # The real redirect still completes it.
            status, body, _ = get(port, real[len("http://127.0.0.1:%d" % port):])
            self.assertEqual(status, 200, body)
            out, err = ctl.communicate(timeout=60)
            self.assertEqual(ctl.returncode, 0, (out, err))
            self.assertIn(b"demo: authenticated", out)
            self.assertEqual(k.server("demo")["oauth_status"], "authenticated")
            self.assertEqual(peer.stats()["token_grants"], 1)
            self.assertIn("without this login's state", k.log())
            self.assertNotIn(marker, k.log())
            kl.assert_no_secrets(k.log(), [state], "the keeper's log")
        finally:
            if ctl.poll() is None:
                kl.stop_process(ctl)
            ctl.stdout.close()
            ctl.stderr.close()


# ---------------------------------------------------------------------------

class HttpLimitsCase(kl.KeeperTestCase):

    def setUp(self):
        super().setUp()
        if not os.path.exists(HTTP_BIN):
            self.fail("%s is not built" % HTTP_BIN)
        raise_nofile(IDLE + 512)
        self.socks = []
        self.addCleanup(self._close_socks)

    def _close_socks(self):
        for i in self.socks:
            i.sock.close()
        self.socks = []

    def run_keeper(self, http):
        self.k = self.make_keeper(servers={"files": {"command": "/bin/cat"}}, extra_config={"http": http})
        self.k.start()
        st = kl.wait_until(lambda: (lambda s: s if s.get("web_ui") else None)(self.k.status()), 30, 0.1,
                           "the http child to listen")
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/#key=([A-Za-z0-9_\-]+)", st["web_ui"])
        self.assertTrue(m, st["web_ui"])
        self.port, self.key = int(m.group(1)), m.group(2)
        self.child = st["http"]["pid"]
        kl.wait_until(lambda: self.api_ok(), 30, 0.2, "the API to answer")
        self.base_fds = fd_count(self.child)

    def api_ok(self):
        try:
            r = kl.http("GET", "http://127.0.0.1:%d/api/v1/servers" % self.port, headers={"X-API-Key": self.key},
                        timeout=10)
        except OSError:
            return False
        return r.status == 200 and [s["name"] for s in r.json()["data"]] == ["files"]

    def open_idle(self, n):
        for _ in range(n):
            self.socks.append(Idle(self.port))

    def n_open(self):
        return sum(1 for i in self.socks if not i.poll())

    def assert_alive(self):
        self.k.assert_alive()
        self.assertEqual(self.k.status()["http"]["pid"], self.child, "the http child was not restarted")


class TestHttpConnections(HttpLimitsCase):

    def test_b_idle_connections_past_the_cap_are_refused(self):
        # A long request timeout: the cap alone decides here.
        self.run_keeper({"header_timeout": 300})
        self.open_idle(IDLE)
        kl.wait_until(lambda: self.n_open() <= CAP, 60, 0.5,
                      "%d of %d idle connections refused" % (IDLE - CAP, IDLE))
        time.sleep(1)
        self.assertEqual(self.n_open(), CAP, "the http child holds exactly http.max_connections")
        for i in self.socks:
            if i.closed:
                self.assertTrue(i.got.startswith(b"HTTP/1.1 503 "), i.got[:100])
                self.assertIn(b"too many connections", i.got)
            else:
                self.assertEqual(i.got, b"")
        self.assertLessEqual(fd_count(self.child), self.base_fds + CAP + 8,
                             "the http child's descriptors stay bounded")
        self.assert_alive()
        self.assertIn("the most http.max_connections allows", self.k.log())
        # Full: a new client is refused too, with the 503 ...
        status, body, closed = get(self.port, "/api/v1/servers", {"X-API-Key": self.key})
        self.assertEqual((status, closed), (503, True), body)
        # ... until others go: then the API answers again.
        gone = [i for i in self.socks if not i.closed][:10]
        for i in gone:
            i.sock.close()
            self.socks.remove(i)
        kl.wait_until(self.api_ok, 30, 0.2, "the API to answer once others went")
        self.assert_alive()

    def test_c_idle_and_slow_connections_time_out(self):
        self.run_keeper({"header_timeout": 1})
        self.open_idle(IDLE)
        # One that trickles a request head, a byte now and then.
        slow = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(slow.close)
        slow.sendall(b"GET /api/v1/servers HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow_open = True
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (slow_open or self.n_open()):
            try:
                slow.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                slow_open = False
            time.sleep(0.3)
        self.assertFalse(slow_open, "a request head sent a byte at a time is cut off")
        self.assertEqual(self.n_open(), 0, "every idle connection was closed")
        # The test still holds every socket; the API answers.
        self.assertTrue(self.api_ok())
        kl.wait_until(lambda: fd_count(self.child) <= self.base_fds + 4, 30, 0.2,
                      "the http child's descriptors back to where they were")
        # A connection kept alive after its answer has the same time for its next request.
        alive = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(alive.close)
        alive.sendall(("GET /api/v1/servers HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-API-Key: %s\r\n\r\n" %
                       (self.port, self.key)).encode())
        self.assertTrue(alive.recv(65536).startswith(b"HTTP/1.1 200 "))
        alive.settimeout(30)
        t0 = time.monotonic()
        try:
            while alive.recv(65536):
                pass
        except ConnectionResetError:
            pass
        self.assertLess(time.monotonic() - t0, 20, "an idle kept-alive connection is closed before the 60 s "
                        "idle timeout")
        self.assert_alive()
        self.assertIsNone(kl.sanitizer_report(self.k.log()))


# ---------------------------------------------------------------------------

HOSTILE = r'''#!PYTHON
# A compromised http child: a correct hello, then as many control.connect
# requests as it likes; what it got goes to REPORT.
import array, json, os, socket, sys, time
REPORT, VERSION, ASK = REPORT_PATH, PROTO_VERSION, 100
chan = socket.socket(fileno=3)
desc = socket.socket(fileno=4)
buf = b""
def read_msg():
    global buf
    while b"\n" not in buf:
        data = chan.recv(65536)
        if not data:
            sys.exit(0)
        buf += data
    line, buf = buf.split(b"\n", 1)
    return json.loads(line)
def send(obj):
    chan.sendall(json.dumps(obj).encode() + b"\n")
hello = read_msg()
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
send({"jsonrpc": "2.0", "id": hello["id"], "result": {"version": VERSION, "pid": os.getpid(),
      "landlock": "unavailable", "port": listener.getsockname()[1]}})
def recv_fd():
    fds = array.array("i")
    msg, anc, flags, addr = desc.recvmsg(16, socket.CMSG_LEN(4 * fds.itemsize))
    for level, type_, data in anc:
        fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    return list(fds)
def ask(first_id, n):
    for i in range(n):
        send({"jsonrpc": "2.0", "id": first_id + i, "method": "control.connect", "params": {}})
    ok, errors = 0, []
    for _ in range(n):
        m = read_msg()
        if "result" in m:
            ok += 1
        else:
            errors.append(m["error"])
    fds = []
    desc.settimeout(5)
    while len(fds) < ok:
        fds += recv_fd()
    desc.settimeout(0.5)
    try:
        extra = recv_fd()
    except socket.timeout:
        extra = []
    return ok, errors, fds, extra
ok, errors, fds, extra = ask(1, ASK)
report = {"ok": ok, "errors": errors, "fds": len(fds), "extra_fds": len(extra)}
# Ten go; ten more come, once the keeper has seen them go.
for fd in fds[:10]:
    os.close(fd)
again, next_id = 0, 1000
for _ in range(50):
    n, errs, got, _ = ask(next_id, 1)
    next_id += 1
    again += n
    if again == 10:
        break
    if not n:
        time.sleep(0.2)
report["after_closing_ten"] = again
with open(REPORT + ".tmp", "w") as f:
    json.dump(report, f)
os.rename(REPORT + ".tmp", REPORT)
while chan.recv(65536):
    pass
'''


class TestControlConnectionCap(kl.KeeperTestCase):

    def test_d_hostile_http_child_gets_at_most_64(self):
        libexec = os.path.join(self.tmp, "libexec")
        os.makedirs(libexec)
        os.symlink(os.path.join(kl.BUILD_ROOT, "daemon", "oauth", "mcpkeeper-oauth"),
                   os.path.join(libexec, "mcpkeeper-oauth"))
        os.symlink(os.path.join(kl.BUILD_ROOT, "worker", "mcpkeeper-worker"),
                   os.path.join(libexec, "mcpkeeper-worker"))
        with open(os.path.join(kl.SOURCE_ROOT, "common", "proto.h")) as f:
            proto = f.read()
        version = int(re.search(r"#define PROTO_VERSION (\d+)", proto).group(1))
        self.assertEqual(int(re.search(r"#define API_CONTROL_CONNS_MAX (\d+)", proto).group(1)), CONTROL_CAP)
        report = os.path.join(self.tmp, "hostile.json")
        script = os.path.join(libexec, "mcpkeeper-http")
        with open(script, "w") as f:
            f.write(HOSTILE.replace("PYTHON", sys.executable).replace("REPORT_PATH", repr(report))
                    .replace("PROTO_VERSION", str(version), 1))
        os.chmod(script, 0o755)
        k = self.make_keeper(servers={"files": {"command": "/bin/cat"}}, env={"MCPKEEPER_LIBEXECDIR": libexec})
        k.start()
        kl.wait_until(lambda: os.path.exists(report), 60, 0.2, "the hostile http child's report")
        with open(report) as f:
            got = json.load(f)
        self.assertEqual(got["ok"], CONTROL_CAP, got)
        self.assertEqual(got["fds"], CONTROL_CAP, got)
        self.assertEqual(got["extra_fds"], 0, "no descriptor with a refusal")
        self.assertEqual(len(got["errors"]), 100 - CONTROL_CAP, got)
        for e in got["errors"]:
            self.assertEqual(e["data"]["kind"], "unavailable", e)
            self.assertIn("too many control connections", e["message"])
            self.assertIn("64", e["message"])
        self.assertEqual(got["after_closing_ten"], 10, "the cap counts connections held, not ever made")
        # The keeper is fine, kept the child (no protocol violation) and holds bounded descriptors.
        k.assert_alive()
        st = k.status()
        self.assertEqual(st["http"]["state"], "running", st["http"])
        self.assertEqual(st["servers"][0]["name"], "files")
        self.assertLess(k.fd_count(), 3 * CONTROL_CAP, "the keeper's descriptors stay bounded")
        self.assertIn("control.connect refused", k.log())
        self.assertNotIn("restarting it", k.log())


if __name__ == "__main__":
    kl.main()
