#!/usr/bin/env bash
# The quickstart's end-to-end script ("Quickstart: Proactive OAuth Token
# Refresh", section 8, scripts/test-oauth-refresh-e2e.sh) with mcpkeeper's
# names: the project's OAuth + MCP test peer issuing 30 s tokens, the
# keeper with the server in its config, `mcpctl auth login` (a
# non-interactive $BROWSER plays the user), a wait past 80 % of the token's
# lifetime, the REST API's oauth_status "authenticated", the refresh line in
# the keeper's log, `mcpctl auth logout`, and oauth_status "none".
#
# Usage: quickstart.sh [SOURCE_ROOT [BUILD_ROOT]] (meson test quickstart).
# Everything listens on 127.0.0.1; every wait is bounded; it stops what it
# started, by PID, whatever happens.
set -euo pipefail

src=${1:-${MCPKEEPER_SOURCE_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}}
build=${2:-${MCPKEEPER_BUILD_ROOT:-$src/build}}
LIFETIME=30
THRESHOLD=0.8
NAME=test-oauth

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mcpkeeper-quickstart.XXXXXX")
chmod 700 "$tmp"
peer_pid=
keeper_pid=

stop() {
	local pid=$1
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local status=$?
	stop "$keeper_pid"
	stop "$peer_pid"
	# A sanitizer report from the keeper or any of its children (their
	# stderr is the keeper's log) fails the test.
	local san='ERROR: (Address|Leak|Memory)Sanitizer|runtime error:|WARNING: ThreadSanitizer'
	if grep -qE "$san" "$tmp/keeper.log" 2>/dev/null; then
		echo "FAIL: sanitizer report in the keeper log:" >&2
		grep -m1 -A40 -E "$san" "$tmp/keeper.log" >&2
		status=1
	fi
	if [ "$status" -ne 0 ]; then
		echo "--- keeper log (last 40 lines)" >&2
		tail -n 40 "$tmp/keeper.log" >&2 2>/dev/null || true
		echo "--- peer log (last 10 lines)" >&2
		tail -n 10 "$tmp/peer.log" >&2 2>/dev/null || true
	fi
	rm -rf "$tmp"
	exit "$status"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds.
wait_for() {
	local seconds=$1 what=$2 i
	shift 2
	for ((i = 0; i < seconds * 5; i++)); do
		"$@" && return 0
		sleep 0.2
	done
	fail "$what (waited $seconds s)"
}

# json KEY...: the value at that path of the JSON on stdin ("" for null).
json() {
	python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1:]:
    v = v[int(k)] if isinstance(v, list) else v[k]
print("" if v is None else v)' "$@"
}

ctl=("$build/ctl/mcpctl" --socket "$tmp/run/control.sock")

# GET /api/v1/servers/NAME through the keeper's REST API: its oauth_status.
rest_oauth_status() {
	API="$api" KEY="$key" python3 -c '
import json, os, sys, urllib.request
req = urllib.request.Request(os.environ["API"] + "api/v1/servers/" + sys.argv[1],
                             headers={"X-API-Key": os.environ["KEY"], "Accept": "application/json"})
with urllib.request.urlopen(req, timeout=10) as r:
    body = json.load(r)
print(body["data"]["oauth_status"])' "$NAME"
}

echo "=== OAuth Proactive Refresh E2E Test ==="

# The OAuth + MCP test peer with short token lifetimes.
"$build/tests/peer/mcpkeeper-test-peer" --port 0 --token-lifetime "$LIFETIME" --port-file "$tmp/peer.port" \
	>/dev/null 2>"$tmp/peer.log" &
peer_pid=$!
wait_for 20 "the test peer to listen" grep -qs '^PORT ' "$tmp/peer.port"
peer_port=$(awk '/^PORT /{print $2}' "$tmp/peer.port")

# The keeper, with the server in its config.
cat >"$tmp/config.json" <<JSON
{
  "data_dir": "$tmp/state",
  "runtime_dir": "$tmp/run",
  "listen": "127.0.0.1:0",
  "refresh": { "threshold": $THRESHOLD },
  "mcpServers": {
    "$NAME": { "url": "http://127.0.0.1:$peer_port/mcp" }
  }
}
JSON
"$build/daemon/mcpkeeperd" --config "$tmp/config.json" >"$tmp/keeper.log" 2>&1 &
keeper_pid=$!
http_up() {
	"${ctl[@]}" status --json >"$tmp/status.json" 2>/dev/null &&
		[ "$(json http state <"$tmp/status.json")" = running ] &&
		[ -n "$(json web_ui <"$tmp/status.json")" ]
}
wait_for 30 "the keeper and its REST API to start" http_up
web_ui=$(json web_ui <"$tmp/status.json")
api=${web_ui%%#*}
key=${web_ui#*#key=}
[ "$(rest_oauth_status)" = none ] || fail "before the login the REST status is not none"

# Log in (the test's $BROWSER approves at once).
BROWSER="$src/tests/integration/browser.py" MCPKEEPER_TEST_BROWSER_MODE=follow \
	MCPKEEPER_TEST_BROWSER_LOG="$tmp/browser.jsonl" \
	"${ctl[@]}" auth login --server "$NAME" || fail "mcpctl auth login"
"${ctl[@]}" status --json -s "$NAME" >"$tmp/server.json"
obtained=$(json token_obtained_at_unix <"$tmp/server.json")
next_at=$(json refresh next_at <"$tmp/server.json")
[ -n "$obtained" ] && [ -n "$next_at" ] || fail "no token times in the status after the login"
grep -q "$NAME: Proactive refresh scheduled at $next_at" "$tmp/keeper.log" ||
	fail "no 'Proactive refresh scheduled' line for $next_at in the keeper's log"

# Wait past 80 % of the token's lifetime (24 s), and a little more.
echo "Waiting for proactive refresh (due at $next_at)..."
wait_s=$(python3 -c "import sys, time; print(max(0, int($obtained + $LIFETIME * $THRESHOLD + 2 - time.time()) + 1))")
sleep "$wait_s"
wait_for 30 "the refresh line in the keeper's log" grep -q "$NAME: Proactive refresh succeeded" "$tmp/keeper.log"

# Still authenticated.
STATUS=$(rest_oauth_status)
[ "$STATUS" = authenticated ] || fail "Expected authenticated, got $STATUS"
echo "PASS: Proactive refresh triggered"

# The refresh reached the peer no earlier than its instant.
first_refresh_ms=$(python3 -c '
import json, sys, urllib.request
with urllib.request.urlopen("http://127.0.0.1:%s/test/last" % sys.argv[1], timeout=10) as r:
    reqs = json.load(r)["token_requests"]
print(min(q["at_ms"] for q in reqs if q["grant_type"] == "refresh_token"))' "$peer_port")
due_ms=$(python3 -c '
import calendar, sys, time
t = sys.argv[1]
print(calendar.timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) * 1000 + int(t[20:23]))' "$next_at")
[ "$first_refresh_ms" -ge "$due_ms" ] || fail "the refresh reached the peer $((due_ms - first_refresh_ms)) ms early"

# Log out: the token goes, and the REST status says so.
"${ctl[@]}" auth logout --server "$NAME" || fail "mcpctl auth logout"
wait_for 10 "the logout line in the keeper's log" grep -q "$NAME: OAuth logout completed" "$tmp/keeper.log"
STATUS=$(rest_oauth_status)
[ "$STATUS" = none ] || fail "Expected none after the logout, got $STATUS"
echo "PASS: logged out"

echo "=== Test Passed ==="
