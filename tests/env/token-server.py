#!/usr/bin/env python3
"""Issues Bearer tokens for the token-auth test registry, as Docker Hub's auth service does.

GET /token?service=SERVICE&scope=repository:NAME:ACTIONS returns
{"token", "access_token", "expires_in", "issued_at"}. The token is a JWT signed with
RS256 by the `openssl` command line tool. Its header carries the signing certificate in
`x5c`, which CNCF distribution 2.8 checks against its `auth.token.rootcertbundle`.
Requests without credentials get `pull`; requests with the configured basic
credentials get `pull` and `push`; any other credentials get 401. Only Python's
standard library and the `openssl` binary are used.

Each request appends one JSON line to the request log: method, path, query (a map of
lists), credentials (none, valid or invalid), granted access and status.

usage: token-server.py --cert PEM --key PEM --issuer ISS --service SVC
                       --user USER --password PASSWORD --log FILE --addr-file FILE
The server listens on a free port on 127.0.0.1 chosen by the kernel and writes
127.0.0.1:PORT to --addr-file once it accepts connections.
"""

import argparse
import base64
import binascii
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

TOKEN_LIFETIME_SECONDS = 300


def base64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Issuer:
    """Builds and signs JWTs for one signing key and certificate."""

    def __init__(self, cert_path, key_path, issuer, service):
        with open(cert_path, encoding="ascii") as f:
            self.cert_der = ssl.PEM_cert_to_DER_cert(f.read())
        self.key_path = key_path
        self.issuer = issuer
        self.service = service

    def sign(self, signing_input):
        # RS256 is RSASSA-PKCS1-v1_5 with SHA-256, which `openssl dgst -sign` computes
        # for an RSA key.
        result = subprocess.run(
            ["openssl", "dgst", "-sha256", "-binary", "-sign", self.key_path],
            input=signing_input,
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                "openssl dgst -sign with %s failed: %s"
                % (self.key_path, result.stderr.decode(errors="replace").strip())
            )
        return result.stdout

    def token(self, subject, access, now):
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64.b64encode(self.cert_der).decode("ascii")],
        }
        claims = {
            "iss": self.issuer,
            "sub": subject,
            # distribution 2.8.2 accepts `aud` as a string equal to its auth.token.service.
            "aud": self.service,
            "exp": now + TOKEN_LIFETIME_SECONDS,
            "nbf": now,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "access": access,
        }
        signing_input = (
            base64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + base64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        return signing_input + "." + base64url(self.sign(signing_input.encode("ascii")))


def parse_scope(scope):
    """Split `TYPE:NAME:ACTION[,ACTION...]` into (type, name, actions), or return None."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return kind, name, [action for action in actions.split(",") if action]


def grant(scopes, allowed):
    """Return the `access` claim: each requested repository action that `allowed` contains."""
    access = []
    for scope in scopes:
        parsed = parse_scope(scope)
        if parsed is None or parsed[0] != "repository":
            continue
        kind, name, actions = parsed
        granted = [action for action in actions if action in allowed]
        if granted:
            access.append({"type": kind, "name": name, "actions": granted})
    return access


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "agentkernel-test-token-server"

    def log_message(self, format, *args):
        # The request log written by record() replaces the default line on stderr.
        pass

    def credentials(self):
        """Return (state, user): state is none, valid or invalid."""
        header = self.headers.get("Authorization")
        if header is None:
            return "none", None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return "invalid", None
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "invalid", None
        config = self.server.config
        if user == config.user and password == config.password:
            return "valid", user
        return "invalid", user

    def reply(self, status, body, extra_headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def record(self, url, credentials, user, access, status):
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": self.command,
            "path": url.path,
            "query": urllib.parse.parse_qs(url.query),
            "credentials": credentials,
            "user": user,
            "access": access,
            "status": status,
        }
        with self.server.log_lock, open(self.server.config.log, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry, sort_keys=True) + "\n")

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        credentials, user = self.credentials()
        access = None
        if url.path != "/token":
            status = 404
            self.reply(status, {"details": "not found: %s" % url.path})
        elif credentials == "invalid":
            status = 401
            self.reply(
                status,
                {"details": "incorrect username or password"},
                [("WWW-Authenticate", 'Basic realm="%s"' % self.server.config.service)],
            )
        else:
            query = urllib.parse.parse_qs(url.query)
            allowed = {"pull", "push"} if credentials == "valid" else {"pull"}
            access = grant(query.get("scope", []), allowed)
            now = int(time.time())
            issuer = self.server.issuer
            try:
                token = issuer.token(user or "", access, now)
            except RuntimeError as error:
                print("token-server.py: %s" % error, file=sys.stderr, flush=True)
                status = 500
                self.reply(status, {"details": str(error)})
            else:
                status = 200
                self.reply(
                    status,
                    {
                        "token": token,
                        "access_token": token,
                        "expires_in": TOKEN_LIFETIME_SECONDS,
                        "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                    },
                )
        self.record(url, credentials, user, access, status)


def main():
    parser = argparse.ArgumentParser(description="Bearer token server for the test registry.")
    for name in ("cert", "key", "issuer", "service", "user", "password", "log", "addr-file"):
        parser.add_argument("--" + name, required=True)
    config = parser.parse_args()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.config = config
    server.issuer = Issuer(config.cert, config.key, config.issuer, config.service)
    server.log_lock = threading.Lock()
    open(config.log, "a", encoding="utf-8").close()

    # Write the address through a temporary name so a reader never sees a partial line.
    address = "127.0.0.1:%d" % server.server_address[1]
    partial = config.addr_file + ".tmp"
    with open(partial, "w", encoding="ascii") as f:
        f.write(address + "\n")
    os.rename(partial, config.addr_file)
    print("token-server.py: listening on %s" % address, file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
