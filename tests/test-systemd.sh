#!/usr/bin/env bash
# systemd units: install into a temporary root, then
#  - systemd-sysusers and systemd-tmpfiles accept our sysusers.d / tmpfiles.d
#    files there (and create the users, so the root looks like a real system),
#  - `systemd-analyze verify` is clean (no output at all) on the installed
#    service and both sockets (control, and the optional http one, whose
#    name, service and loopback address are checked), with ExecStart=
#    pointing at the installed keeper,
#  - `systemd-analyze security --offline=true` rates the service at 1.7 or less.
#
# Usage: test-systemd.sh [SOURCE_ROOT BUILD_ROOT]
# (or MCPKEEPER_SOURCE_ROOT / MCPKEEPER_BUILD_ROOT). Exit 77 (skip) only when
# systemd-analyze is missing, and then 1 with $CI set.
set -euo pipefail

src=${1:-${MCPKEEPER_SOURCE_ROOT:-}}
build=${2:-${MCPKEEPER_BUILD_ROOT:-}}
max_exposure=1.7

if [ -z "$src" ] || [ -z "$build" ]; then
	echo "usage: $0 SOURCE_ROOT BUILD_ROOT (or set MCPKEEPER_SOURCE_ROOT and MCPKEEPER_BUILD_ROOT)" >&2
	exit 2
fi
if ! command -v systemd-analyze >/dev/null; then
	# scripts/install-deps installs it; CI must run this test.
	if [ -n "${CI:-}" ]; then
		echo "FAIL: systemd-analyze not installed (Debian package systemd), and CI is set" >&2
		exit 1
	fi
	echo "SKIP: systemd-analyze not installed (Debian package systemd)"
	exit 77
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/test-systemd.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dest=$tmp/dest

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# Run a command, show what it printed, and fail if it failed.
run() {
	local out=$tmp/out rc=0

	echo "+ $*"
	"$@" >"$out" 2>&1 || rc=$?
	sed 's/^/  | /' "$out"
	[ "$rc" -eq 0 ] || fail "exit status $rc: $*"
}

# --- install -----------------------------------------------------------------
# --no-rebuild: meson test has built everything already, and no second ninja
# may run in the build directory while the suite does. meson install only
# reads the install plan and copies files (it writes meson-logs/install-log.txt).
run meson install -C "$build" --no-rebuild --quiet --destdir "$dest"

# Where meson put things: the install plan knows, so ask it rather than
# repeating the directory logic of systemd/meson.build.
installed=$(meson introspect --installed "$build" |
	python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin).values()))')
find_installed() { # SUFFIX -> absolute path inside $dest
	local p

	p=$(grep -E -- "$1\$" <<<"$installed" | head -n 1)
	[ -n "$p" ] || fail "nothing installed that ends in $1"
	[ -e "$dest$p" ] || fail "$dest$p missing after install"
	printf '%s\n' "$dest$p"
}
service=$(find_installed /mcpkeeper.service)
socket=$(find_installed /mcpkeeper.socket)
http_socket=$(find_installed /mcpkeeper-http.socket)
sysusers=$(find_installed /sysusers.d/mcpkeeper.conf)
tmpfiles=$(find_installed /tmpfiles.d/mcpkeeper.conf)
keeper=$(find_installed /mcpkeeperd)

# ExecStart= names the installed keeper (configure_file substituted sbindir).
exec_start=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$service")
[ "$dest$exec_start" = "$keeper" ] ||
	fail "ExecStart=$exec_start, but the keeper is installed at ${keeper#"$dest"}"
grep -q '@[a-z]*@' "$service" && fail "unsubstituted @variable@ in $service"

# The HTTP socket: named "http" for the keeper (api.c), on loopback, for
# the keeper's service.
grep -qx 'FileDescriptorName=http' "$http_socket" || fail "$http_socket: FileDescriptorName= is not http"
grep -qx 'Service=mcpkeeper.service' "$http_socket" || fail "$http_socket: Service= is not mcpkeeper.service"
grep -qE '^ListenStream=(127\.0\.0\.1|\[::1\]):[0-9]+$' "$http_socket" ||
	fail "$http_socket: ListenStream= is not a loopback address"
grep -qx 'FileDescriptorName=control' "$socket" || fail "$socket: FileDescriptorName= is not control"

# --- the rest of a system ----------------------------------------------------
# verify builds a start transaction inside the root: it needs systemd's own units
# (sysinit.target, sockets.target, ...) and the binaries our Exec lines name
# that are not ours (kill for ExecReload=). Copy them from this machine.
mkdir -p "$dest/usr/lib/systemd" "$dest/usr/bin" "$dest/etc"
cp -a /usr/lib/systemd/system "$dest/usr/lib/systemd/"
cp -a "$(type -P kill)" "$dest/usr/bin/kill"

# Users, groups and directories, as a package's postinst would create them.
# Anything these tools print besides "Creating ..." is a complaint about our files.
quiet_except_creating() {
	local out=$tmp/out rc=0

	echo "+ $*"
	"$@" >"$out" 2>&1 || rc=$?
	sed 's/^/  | /' "$out"
	[ "$rc" -eq 0 ] || fail "exit status $rc: $*"
	if grep -v -E '^Creating (user|group) ' "$out" | grep -q .; then
		fail "unexpected output from $1"
	fi
}
quiet_except_creating systemd-sysusers --root="$dest" "$sysusers"
for u in mcpkeeper mcpkeeper-oauth mcpkeeper-http mcpkeeper-worker; do
	grep -q "^$u:" "$dest/etc/passwd" || fail "sysusers did not create user $u"
done
grep -q '^mcpkeeper:' "$dest/etc/group" || fail "sysusers did not create group mcpkeeper"
quiet_except_creating systemd-tmpfiles --create --root="$dest" "$tmpfiles"
name_in_root() { # passwd|group ID -> name in $dest/etc/FILE
	[ "$2" = 0 ] && { echo root; return; }
	awk -F: -v id="$2" '$3 == id { print $1; exit }' "$dest/etc/$1"
}
check_dir() { # PATH MODE USER GROUP
	local mode uid gid got

	read -r mode uid gid < <(stat -c '%a %u %g' "$dest$1" 2>/dev/null) ||
		fail "tmpfiles did not create $1"
	got="$mode $(name_in_root passwd "$uid") $(name_in_root group "$gid")"
	[ "$got" = "$2 $3 $4" ] || fail "$1 is '$got', want '$2 $3 $4'"
}
check_dir /etc/mcpkeeper 750 root mcpkeeper
check_dir /var/lib/mcpkeeper 700 mcpkeeper mcpkeeper
check_dir /run/mcpkeeper 750 mcpkeeper mcpkeeper

# --- verify ------------------------------------------------------------------
# Must print nothing at all: every warning counts.
out=$tmp/verify
rc=0
echo "+ systemd-analyze verify --root=$dest --man=no --generators=no ${service#"$dest"} ${socket#"$dest"} ${http_socket#"$dest"}"
systemd-analyze verify --root="$dest" --man=no --generators=no "$service" "$socket" "$http_socket" >"$out" 2>&1 || rc=$?
if [ -s "$out" ] || [ "$rc" -ne 0 ]; then
	sed 's/^/  | /' "$out"
	fail "systemd-analyze verify is not clean (exit status $rc)"
fi
echo "  | (no output)"

# --- security ----------------------------------------------------------------
out=$tmp/security
rc=0
echo "+ systemd-analyze security --offline=true --root=$dest mcpkeeper.service"
systemd-analyze security --offline=true --root="$dest" --no-pager mcpkeeper.service >"$out" 2>&1 || rc=$?
# The items that still cost something, for the log.
grep -E '^✗' "$out" | sed 's/^/  | /' || true
level=$(sed -n 's/.*Overall exposure level for mcpkeeper\.service: \([0-9][0-9]*\.[0-9]\).*/\1/p' "$out")
if [ -z "$level" ]; then
	sed 's/^/  | /' "$out"
	fail "no overall exposure level in the output of systemd-analyze security (exit status $rc)"
fi
[ "$rc" -eq 0 ] || fail "systemd-analyze security exited with $rc"
echo "overall exposure level: $level (at most $max_exposure)"
awk -v l="$level" -v m="$max_exposure" 'BEGIN { exit !(l <= m) }' ||
	fail "exposure level $level is above $max_exposure"
echo "PASS"
