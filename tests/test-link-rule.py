#!/usr/bin/env python3
"""The privilege lines, as the build draws them (HACKING.md, "What each
process may touch"), checked on what was actually built:

1. Only mcpkeeperd and mcpctl may reach the store. For every other program
   that meson builds (the children, test peers, fuzzers, tools; the few tests
   of the store itself are named below), `readelf -d` shows no libdb among the
   needed libraries, `nm --defined-only` shows no store_* symbol, and the
   compiler was not even given common/store/ as an include directory.
2. The keeper, mcpctl and the http child parse no OAuth or upstream HTTP:
   none of them needs libcurl.

Before judging the programs the checks are run on mcpkeeperd, which must
trip each of them: a check that cannot fail would prove nothing.

argv: BUILD_ROOT. Exits 1 with one line per violation.
"""
import json
import os
import re
import subprocess
import sys

# May link the store: the keeper, mcpctl, and the tests of the store itself.
STORE_ALLOWED = {"mcpkeeperd", "mcpctl", "test-store", "store-tool", "fuzz-token", "fuzz-token-libfuzzer"}
# Must not need libcurl.
NO_CURL = {"mcpkeeperd", "mcpctl", "mcpkeeper-http"}


def run(argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def needed(path):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run(["readelf", "-d", path]))


def store_symbols(path):
    syms = []
    for line in run(["nm", "--defined-only", path]).splitlines():
        parts = line.split()
        if parts and re.match(r"store_\w+$", parts[-1]):
            syms.append(parts[-1])
    return syms


def store_includes(target):
    return [p for src in target.get("target_sources", []) for p in src.get("parameters", [])
            if p.startswith("-I") and os.path.normpath(p[2:]).endswith(os.path.join("common", "store"))]


def store_problems(target, path):
    problems = []
    libs = [lib for lib in needed(path) if lib.startswith("libdb")]
    if libs:
        problems.append("needs %s" % ", ".join(libs))
    syms = store_symbols(path)
    if syms:
        problems.append("defines %s%s" % (", ".join(syms[:3]), " ..." if len(syms) > 3 else ""))
    inc = store_includes(target)
    if inc:
        problems.append("compiles with %s" % inc[0])
    return problems


def curl_problems(path):
    return ["needs %s" % lib for lib in needed(path) if lib.startswith("libcurl")]


def main():
    build = sys.argv[1]
    targets = json.loads(run(["meson", "introspect", build, "--targets"]))
    exes = {t["name"]: t for t in targets if t["type"] == "executable"}
    for name in ("mcpkeeperd", "mcpctl", "mcpkeeper-oauth", "mcpkeeper-http", "mcpkeeper-worker"):
        if name not in exes:
            print("link-rule: the build has no program %s" % name)
            return 1

    # The checks must be able to fail: the keeper trips every store check.
    keeper = exes["mcpkeeperd"]
    found = store_problems(keeper, keeper["filename"][0])
    if len(found) != 3:
        print("link-rule: the checks do not see the store in mcpkeeperd (found: %r)" % found)
        return 1
    if not curl_problems(exes["mcpkeeper-oauth"]["filename"][0]):
        print("link-rule: the libcurl check does not see libcurl in mcpkeeper-oauth")
        return 1

    violations = []
    checked = 0
    for name, t in sorted(exes.items()):
        path = t["filename"][0]
        if not os.path.exists(path):
            continue  # not built (a target this run does not depend on)
        checked += 1
        if name not in STORE_ALLOWED:
            violations += ["%s may not reach the store but %s" % (name, p) for p in store_problems(t, path)]
        if name in NO_CURL:
            violations += ["%s parses no HTTP of the outside but %s" % (name, p) for p in curl_problems(path)]
    for v in violations:
        print("link-rule: " + v)
    print("link-rule: %d programs checked, %d violations" % (checked, len(violations)))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
