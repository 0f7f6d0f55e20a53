#!/bin/bash
# The docs test (meson test docs):
#  (a) doc/mcpctl.bash loads in a non-interactive bash, registers its function
#      for mcpctl, and completes the command lines below as expected, with a
#      stand-in mcpctl for server names;
#  (b) every man page in the tree (doc/*.5, ctl/*.1, daemon/*.8) formats
#      without a single warning: groff -man -ww -z when groff is installed,
#      else man --warnings -l, else a SKIPPED line for this part (which
#      fails CI: tests/allowed-skips does not allow it).
# Usage: test-docs.sh SOURCE_ROOT
set -u

src=${1:-${MCPKEEPER_SOURCE_ROOT:-}}
if [[ -z $src || ! -f $src/doc/mcpctl.bash ]]; then
    echo "usage: $0 SOURCE_ROOT (the directory that holds doc/mcpctl.bash)" >&2
    exit 2
fi

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/test-docs.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

# ---- (a) bash completion ----

# shellcheck source=/dev/null
if ! source "$src/doc/mcpctl.bash"; then
    fail "sourcing doc/mcpctl.bash failed"
fi

spec=$(complete -p mcpctl 2>/dev/null)
func=
if [[ $spec =~ -F[[:space:]]+([^[:space:]]+) ]]; then
    func=${BASH_REMATCH[1]}
fi
if [[ -n $func ]] && declare -F "$func" >/dev/null; then
    pass "complete -p mcpctl names the function $func ($spec)"
else
    fail "complete -p mcpctl does not name a defined function: '${spec}'"
    func=_mcpctl
fi

# Simulates TAB at the end of a command line given as separate words; an
# empty last word stands for the cursor after a space. Sets $reply to the
# sorted offers, space-separated.
complete_words()
{
    COMP_WORDS=("$@")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMP_LINE="$*"
    COMP_POINT=${#COMP_LINE}
    COMPREPLY=()
    local prev=
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD - 1]}
    "$func" "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "$prev" 2>"$tmp/stderr"
    if [[ -s $tmp/stderr ]]; then
        fail "'$*': the completion function wrote to stderr: $(head -c 300 "$tmp/stderr")"
    fi
    reply=$(printf '%s\n' "${COMPREPLY[@]}" | sed '/^$/d' | LC_ALL=C sort | tr '\n' ' ')
    reply=${reply% }
}

# The line is split at spaces; a trailing space adds the empty word.
complete_line()
{
    local -a w
    read -ra w <<<"$1"
    [[ $1 == *' ' ]] && w+=("")
    complete_words "${w[@]}"
}

# expect_has LINE WORD...: every WORD is offered.
expect_has()
{
    local line=$1 word missing=
    shift
    complete_line "$line"
    for word in "$@"; do
        [[ " $reply " == *" $word "* ]] || missing+=" $word"
    done
    if [[ -z $missing ]]; then
        pass "'$line' offers $*"
    else
        fail "'$line' does not offer$missing (offers: '$reply')"
    fi
}

# expect_not LINE WORD...: no WORD is offered.
expect_not()
{
    local line=$1 word extra=
    shift
    complete_line "$line"
    for word in "$@"; do
        [[ " $reply " == *" $word "* ]] && extra+=" $word"
    done
    if [[ -z $extra ]]; then
        pass "'$line' does not offer $*"
    else
        fail "'$line' offers$extra (offers: '$reply')"
    fi
}

# expect_exact LINE OFFERS: the sorted offers, space-separated.
expect_exact()
{
    complete_line "$1"
    if [[ $reply == "$2" ]]; then
        pass "'$1' offers exactly '$2'"
    else
        fail "'$1' offers '$reply', expected '$2'"
    fi
}

# expect_words_exact OFFERS WORD...: the same for a line given as words.
expect_words_exact()
{
    local want=$1
    shift
    complete_words "$@"
    if [[ $reply == "$want" ]]; then
        pass "[$*] offers exactly '$want'"
    else
        fail "[$*] offers '$reply', expected '$want'"
    fi
}

# Commands and global options.
expect_exact "mcpctl au" "auth"
expect_exact "mcpctl s" "servers status"
expect_has "mcpctl " status servers auth events connect tools help
expect_has "mcpctl --" --socket --config --system --timeout --version --help
expect_has "mcpctl -" -V -h
expect_exact "mcpctl --sy" "--system"
expect_exact "mcpctl --system st" "status"
expect_exact "mcpctl --timeout " ""
expect_exact "mcpctl --timeout 5 au" "auth"

# auth and its verbs.
expect_exact "mcpctl auth " "login logout status"
expect_exact "mcpctl auth lo" "login logout"
expect_has "mcpctl auth login --" --server --all --no-browser --timeout
expect_has "mcpctl auth login " --server --all --no-browser --timeout
expect_has "mcpctl auth login -" -s --server --all
expect_has "mcpctl auth logout --" --server --all
expect_not "mcpctl auth logout --" --no-browser --timeout --json
expect_has "mcpctl auth status --" --server --json
expect_not "mcpctl auth status --" --all --no-browser
expect_exact "mcpctl auth login --all --" "--no-browser --timeout"
expect_exact "mcpctl auth login --no-browser --" "--all --server --timeout"
expect_exact "mcpctl auth login --timeout " ""
expect_exact "mcpctl --system auth login --no" "--no-browser"

# The other commands.
expect_has "mcpctl status --" --json --server
expect_exact "mcpctl status --json --" "--server"
expect_exact "mcpctl servers --" "--json"
expect_exact "mcpctl servers " "add disable enable remove set"
expect_exact "mcpctl servers add gh --pro" "--protocol"
expect_exact "mcpctl servers add gh --protocol s" "sse stdio streamable-http"
expect_has "mcpctl servers add gh --" --url --scope --header-file --header --no-oauth
expect_exact "mcpctl servers add gh -- " ""
expect_exact "mcpctl servers set gh --header-" "--header-file"
expect_exact "mcpctl rel" "reload"
expect_exact "mcpctl reload --" "--json"
expect_exact "mcpctl events --" "--json"
expect_exact "mcpctl help " ""

# Server names come from "mcpctl [globals] servers --json": a stand-in
# mcpctl records its arguments and answers like the real one. The url holds
# a decoy "name" inside a JSON string, which must not be offered.
fake=$tmp/fake-mcpctl
cat >"$fake" <<EOF
#!/bin/sh
printf '%s\n' "\$*" >"$tmp/args"
cat <<'JSON'
{
  "servers": [
    {
      "name": "github",
      "protocol": "streamable-http",
      "url": "https://api.example.com/mcp?x=\"name\": \"decoy\"",
      "enabled": true,
      "oauth": true
    },
    {
      "name":"gitlab.internal",
      "protocol":"sse",
      "url":"https://gitlab.example/sse",
      "enabled":true,
      "oauth":true
    },
    { "name": "files_1", "protocol": "stdio", "url": null, "enabled": false, "oauth": false }
  ]
}
JSON
EOF
chmod +x "$fake"

expect_exact "$fake status --server " "files_1 github gitlab.internal"
expect_exact "$fake status -s git" "github gitlab.internal"
expect_exact "$fake connect " "files_1 github gitlab.internal"
expect_exact "$fake connect github " ""
expect_exact "$fake connect --b" "--bridge"
expect_exact "$fake connect --bridge " "files_1 github gitlab.internal"
expect_exact "$fake connect --bridge github " ""
expect_exact "$fake tools " "files_1 github gitlab.internal"
expect_exact "$fake tools github " ""
expect_exact "$fake tools --j" "--json"
expect_exact "$fake tools --json " "files_1 github gitlab.internal"
expect_exact "$fake tools --json github " ""
expect_has "mcpctl " backup restore
expect_exact "mcpctl restore --f" "--force"
expect_exact "mcpctl backup --f" ""
: >"$tmp/store.backup"
expect_exact "mcpctl restore --force $tmp/store.b" "$tmp/store.backup"
expect_exact "mcpctl backup $tmp/store.b" "$tmp/store.backup"
expect_exact "mcpctl restore $tmp/store.backup " ""
expect_has "mcpctl " key
expect_exact "mcpctl key " "export import rotate"
expect_exact "mcpctl key export --p" "--passphrase-file --plain"
expect_exact "mcpctl key import --" "--force --next --passphrase-file"
expect_exact "mcpctl key export --passphrase-file $tmp/store.b" "$tmp/store.backup"
expect_exact "mcpctl key import --passphrase-file $tmp/store.backup $tmp/store.b" "$tmp/store.backup"
expect_exact "mcpctl key import $tmp/store.backup " ""
expect_exact "mcpctl key rotate " ""
expect_exact "$fake auth login --server gitl" "gitlab.internal"
expect_exact "$fake auth logout -s f" "files_1"
expect_exact "$fake servers remove git" "github gitlab.internal"
expect_exact "$fake servers disable " "files_1 github gitlab.internal"
expect_exact "$fake auth status --server " "files_1 github gitlab.internal"

# The global options typed so far are passed on; a short timeout is added
# unless one was typed.
rm -f "$tmp/args"
expect_exact "$fake --socket /tmp/x.sock --system auth login -s gith" "github"
if [[ -f $tmp/args && $(cat "$tmp/args") == "--socket /tmp/x.sock --system --timeout 2 servers --json" ]]; then
    pass "the global options were passed on: $(cat "$tmp/args")"
else
    fail "mcpctl was run with '$(cat "$tmp/args" 2>/dev/null)'"
fi
rm -f "$tmp/args"
expect_exact "$fake --config=/etc/x.json --timeout 7 status -s " "files_1 github gitlab.internal"
if [[ -f $tmp/args && $(cat "$tmp/args") == "--config /etc/x.json --timeout 7 servers --json" ]]; then
    pass "--config=FILE and --timeout were passed on: $(cat "$tmp/args")"
else
    fail "mcpctl was run with '$(cat "$tmp/args" 2>/dev/null)'"
fi

# --server=NAME as bash splits it at "=" (COMP_WORDBREAKS), and whole.
expect_words_exact "github gitlab.internal" "$fake" status --server = git
expect_words_exact "files_1 github gitlab.internal" "$fake" status --server =
expect_words_exact "--server=github --server=gitlab.internal" "$fake" status --server=git

# A keeper that cannot be asked: no names, no noise.
cat >"$tmp/broken-mcpctl" <<'EOF'
#!/bin/sh
echo "mcpctl: cannot connect" >&2
exit 3
EOF
chmod +x "$tmp/broken-mcpctl"
expect_exact "$tmp/broken-mcpctl status --server " ""
expect_exact "$tmp/broken-mcpctl connect " ""
expect_exact "$tmp/no-such-mcpctl connect " ""

# File names after --config and --socket.
mkdir -p "$tmp/etc"
: >"$tmp/etc/config.json"
: >"$tmp/etc/control.sock"
expect_exact "mcpctl --config $tmp/etc/con" "$tmp/etc/config.json $tmp/etc/control.sock"
expect_exact "mcpctl --socket $tmp/etc/cont" "$tmp/etc/control.sock"
expect_words_exact "$tmp/etc/config.json" mcpctl --config = "$tmp/etc/conf"
expect_words_exact "--config=$tmp/etc/config.json" mcpctl "--config=$tmp/etc/conf"

# ---- (b) man pages ----

shopt -s nullglob
pages=("$src"/doc/*.5 "$src"/ctl/*.1 "$src"/daemon/*.8)
shopt -u nullglob
if ((${#pages[@]} == 0)); then
    fail "no man pages found under $src"
fi

checker=
if command -v groff >/dev/null 2>&1; then
    checker='groff'
elif command -v man >/dev/null 2>&1; then
    checker='man'
fi

skipped=0
if [[ -z $checker ]]; then
    # scripts/install-deps installs both (groff-base, man-db).
    skipped=1
    echo "SKIPPED test-docs: man pages: neither groff nor man is installed"
else
    for page in "${pages[@]}"; do
        rel=${page#"$src"/}
        if [[ $checker == groff ]]; then
            out=$(groff -man -ww -z "$page" 2>&1)
            rc=$?
        else
            out=$(LC_ALL=C MANPAGER=cat PAGER=cat MANWIDTH=80 \
                man --warnings=all,mac -l "$page" 2>&1 >/dev/null)
            rc=$?
        fi
        if ((rc == 0)) && [[ -z $out ]]; then
            pass "$rel formats without warnings ($checker)"
        else
            fail "$rel ($checker, exit $rc):"
            printf '%s\n' "$out" | sed 's/^/    /'
        fi
    done
fi

echo "$passed passed, $failed failed"
echo "CASES test-docs passed=$passed failed=$failed skipped=$skipped"
((failed == 0))
