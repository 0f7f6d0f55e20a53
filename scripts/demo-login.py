#!/usr/bin/env python3
"""Logs in to the bundled demo upstream (the test peer) the way an OAuth client
would -- dynamic registration, authorization code with PKCE S256 -- and prints
"CLIENT_ID ACCESS REFRESH TOKEN_ENDPOINT" for scripts/demo to store. It stands
in for `mcpctl auth login`, which comes with the login issue."""
import base64, hashlib, json, os, secrets, sys, urllib.parse, urllib.request

base = sys.argv[1]  # http://127.0.0.1:PORT


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None


def post(url, data, ctype):
    req = urllib.request.Request(url, data=data, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


meta = json.load(urllib.request.urlopen(base + "/.well-known/oauth-authorization-server", timeout=10))
redirect = "http://127.0.0.1:9/callback"
reg = post(meta["registration_endpoint"], json.dumps({
    "client_name": "mcpkeeper demo", "redirect_uris": [redirect],
    "token_endpoint_auth_method": "none",
    "grant_types": ["authorization_code", "refresh_token"]}).encode(), "application/json")
verifier = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
state = secrets.token_urlsafe(16)
query = urllib.parse.urlencode({
    "response_type": "code", "client_id": reg["client_id"], "redirect_uri": redirect,
    "code_challenge": challenge, "code_challenge_method": "S256", "state": state,
    "resource": base + "/mcp"})
opener = urllib.request.build_opener(NoRedirect)
try:
    opener.open(meta["authorization_endpoint"] + "?" + query, timeout=10)
    sys.exit("demo-login: the authorization endpoint did not redirect")
except urllib.error.HTTPError as e:
    location = e.headers["Location"]
params = urllib.parse.parse_qs(urllib.parse.urlparse(location).query)
if params.get("state") != [state]:
    sys.exit("demo-login: state mismatch")
tok = post(meta["token_endpoint"], urllib.parse.urlencode({
    "grant_type": "authorization_code", "code": params["code"][0], "redirect_uri": redirect,
    "client_id": reg["client_id"], "code_verifier": verifier, "resource": base + "/mcp"}).encode(),
    "application/x-www-form-urlencoded")
print(reg["client_id"], tok["access_token"], tok["refresh_token"], meta["token_endpoint"])
