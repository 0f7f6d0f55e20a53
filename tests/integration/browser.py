#!/usr/bin/env python3
"""A non-interactive $BROWSER for login tests.

mcpctl runs it as `browser.py URL` (no shell); a keeper's login.browser may
put words after the URL (a "%s" word), so the URL is the first argument that
is one, and the log records the arguments. It fetches the authorization
URL from the test peer without following redirects, then requests the
redirect target (the oauth child's loopback callback), the way a browser
would after an instant approval. What it saw goes to a JSON lines file
($MCPKEEPER_TEST_BROWSER_LOG) for the test to read.

$MCPKEEPER_TEST_BROWSER_MODE:
  follow            (default) as above
  tamper-state      change the state in the redirect before following it
  tamper-challenge  change the code_challenge in the authorization URL (the
                    PKCE verifier then fails at the token endpoint)
  ignore            record the URL and do nothing (the login times out)
"""
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def fetch(url):
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode(errors="replace")


def replace_param(url, key, value):
    parts = urllib.parse.urlsplit(url)
    q = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    q = [(k, value if k == key else v) for k, v in q]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(q)))


def main():
    url = next((a for a in sys.argv[1:] if a.startswith(("http://", "https://"))), sys.argv[-1])
    mode = os.environ.get("MCPKEEPER_TEST_BROWSER_MODE", "follow")
    record = {"url": url, "mode": mode, "argv": sys.argv[1:]}
    try:
        if mode != "ignore":
            if mode == "tamper-challenge":
                url = replace_param(url, "code_challenge", "A" * 43)
            status, headers, body = fetch(url)
            record["authorize_status"] = status
            loc = headers.get("Location")
            if loc:
                if mode == "tamper-state":
                    loc = replace_param(loc, "state", "not-the-state")
                record["callback"] = loc.split("?")[0]
                status, headers, body = fetch(loc)
                record["callback_status"] = status
                record["page"] = body
            else:
                record["authorize_body"] = body[:500]
    except Exception as e:  # the test reads what went wrong
        record["exception"] = repr(e)
    log = os.environ.get("MCPKEEPER_TEST_BROWSER_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
