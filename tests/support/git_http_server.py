#!/usr/bin/env python3
"""A git smart-HTTP server for repofs's tests and benchmarks.

Serves the bare repositories under --root through `git http-backend` (CGI),
protocol v2, on 127.0.0.1 at a port chosen by the OS, printed on stdout as
`PORT <n>` once listening. On top of plain git it offers what tests need:

- token auth per repository: `<root>/_auth.json` maps "name.git" to a token;
  accepted as `Authorization: Bearer <token>` or Basic with it as password;
- counters: GET /_stats gives {"name.git": {"requests": n, "bytes": n}} of
  response body bytes sent; POST /_stats/reset zeroes them;
- fault injection: GET /_fault?mode=ok|500|hang;
- LFS: with --lfs-upstream URL, POST <name>.git/info/lfs/objects/batch is
  checked against the same tokens and forwarded to URL/test/<name>/objects/batch
  (a real LFS server, whose download hrefs point at its own host:port);
  /_fault?mode=lfs401|lfs403|lfs404 makes those batch requests fail;
- a GitHub App API: with --app-public-key PEM --app-id N --app-installation N
  [--app-token-ttl S] [--app-repos a,b], POST /api/v3/app/installations/<id>/
  access_tokens verifies the RS256 JWT with the public key and issues a
  token valid for S seconds, accepted (as x-access-token) for the listed
  repositories; GET /_app shows how many tokens were issued;
- --no-filter: serve with uploadpack.allowFilter=false (the fallback path);
- --no-object-info: hide the object-info capability.
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

STATE = {"fault": "ok", "stats": {}, "app_tokens": {}, "issued": 0}
LOCK = threading.Lock()


def repo_of(path):
    """The repository's name (`x.git`, for tokens and counters)."""
    for part in path.split("/"):
        if part.endswith(".git"):
            return part
    return None


def repo_dir(root, path):
    """The bare repository's directory: the path up to its `.git` part."""
    parts = []
    for part in path.strip("/").split("/"):
        parts.append(part)
        if part.endswith(".git"):
            return os.path.join(root, *parts)
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "repofs-test-git/1"

    def log_message(self, fmt, *args):  # quiet
        if os.environ.get("GIT_SERVER_VERBOSE"):
            sys.stderr.write("git-server: " + (fmt % args) + "\n")

    def send_body(self, status, body, ctype="text/plain", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def control(self):
        url = urlsplit(self.path)
        if url.path == "/_stats":
            if self.command == "POST":
                with LOCK:
                    STATE["stats"] = {}
                return self.send_body(200, b"{}", "application/json")
            with LOCK:
                body = json.dumps(STATE["stats"]).encode()
            return self.send_body(200, body, "application/json")
        if url.path == "/_app":
            with LOCK:
                body = json.dumps({"issued": STATE["issued"]}).encode()
            return self.send_body(200, body, "application/json")
        if url.path == "/_fault":
            mode = parse_qs(url.query).get("mode", ["ok"])[0]
            with LOCK:
                STATE["fault"] = mode
            return self.send_body(200, mode.encode())
        return self.send_body(404, b"no such control endpoint")

    def authorized(self, repo):
        try:
            with open(os.path.join(self.server.root, "_auth.json")) as f:
                tokens = json.load(f)
        except FileNotFoundError:
            tokens = {}
        want = tokens.get(repo)
        if want is None:
            return True
        got = self.headers.get("Authorization", "")
        if got.startswith("Basic ") and repo[: -len(".git")] in self.server.app_repos:
            try:
                user_pw = base64.b64decode(got[6:]).decode()
            except Exception:
                user_pw = ""
            token = user_pw.split(":", 1)[-1]
            with LOCK:
                expires = STATE["app_tokens"].get(token)
            if expires is not None and expires > time.time():
                return True
        if got == "Bearer " + want:
            return True
        if got.startswith("Basic "):
            try:
                user_pw = base64.b64decode(got[6:]).decode()
            except Exception:
                return False
            return user_pw.split(":", 1)[-1] == want
        return False

    def app_token(self):
        import jwt  # PyJWT with cryptography

        srv = self.server
        parts = urlsplit(self.path).path.strip("/").split("/")
        # api/v3/app/installations/<id>/access_tokens
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return self.send_body(401, b'{"message":"A JSON web token could not be decoded"}', "application/json")
        try:
            claims = jwt.decode(auth[7:], srv.app_public_key, algorithms=["RS256"])
        except Exception:
            return self.send_body(401, b'{"message":"A JSON web token could not be decoded"}', "application/json")
        if str(claims.get("iss")) != str(srv.app_id):
            return self.send_body(401, b'{"message":"Integration not found"}', "application/json")
        if len(parts) != 6 or parts[4] != str(srv.app_installation):
            return self.send_body(404, b'{"message":"Not Found"}', "application/json")
        token = "ghs_" + os.urandom(12).hex()
        expires = time.time() + srv.app_token_ttl
        with LOCK:
            STATE["app_tokens"][token] = expires
            STATE["issued"] += 1
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        body = json.dumps({"token": token, "expires_at": stamp}).encode()
        return self.send_body(201, body, "application/json")

    def handle_git(self):
        if self.path.startswith("/_"):
            return self.control()
        if self.path.startswith("/api/v3/app/") and self.command == "POST":
            return self.app_token()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        repo = repo_of(urlsplit(self.path).path)
        with LOCK:
            fault = STATE["fault"]
        if fault == "500":
            return self.send_body(500, b"injected failure")
        if fault == "hang":
            time.sleep(3600)
            return
        if "/info/lfs/" in self.path and repo is not None:
            return self.lfs(repo, body, fault)
        rdir = repo_dir(self.server.root, urlsplit(self.path).path)
        if repo is None or rdir is None or not os.path.isdir(rdir):
            return self.send_body(404, b"Repository not found")
        if not self.authorized(repo):
            return self.send_body(
                401, b"Authentication required", headers={"WWW-Authenticate": 'Basic realm="git"'}
            )
        url = urlsplit(self.path)
        env = dict(os.environ)
        env.update(
            {
                "GIT_PROJECT_ROOT": self.server.root,
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": url.path,
                "QUERY_STRING": url.query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": self.client_address[0],
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            }
        )
        cfg = [
            ("uploadpack.allowFilter", "false" if self.server.no_filter else "true"),
            ("uploadpack.allowAnySHA1InWant", "true"),
            ("transfer.advertiseObjectInfo", "false" if self.server.no_object_info else "true"),
        ]
        env["GIT_CONFIG_COUNT"] = str(len(cfg))
        for i, (k, v) in enumerate(cfg):
            env["GIT_CONFIG_KEY_%d" % i] = k
            env["GIT_CONFIG_VALUE_%d" % i] = v
        proc = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True
        )
        out = proc.stdout
        sep = out.find(b"\r\n\r\n")
        sep_len = 4
        if sep < 0:
            sep = out.find(b"\n\n")
            sep_len = 2
        if sep < 0:
            return self.send_body(500, b"bad CGI output: " + proc.stderr[-500:])
        head, payload = out[:sep].decode("latin-1"), out[sep + sep_len :]
        status, headers = 200, {}
        for line in head.splitlines():
            if ":" not in line:
                continue
            k, v = line.split(":", 1)
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            else:
                headers[k.strip()] = v.strip()
        if self.server.no_object_info and payload.find(b"object-info") >= 0 and "info/refs" in url.path:
            payload = strip_capability(payload, b"object-info")
        ctype = headers.pop("Content-Type", "application/octet-stream")
        headers.pop("Content-Length", None)
        with LOCK:
            s = STATE["stats"].setdefault(repo, {"requests": 0, "bytes": 0})
            s["requests"] += 1
            s["bytes"] += len(payload)
        self.send_body(status, payload, ctype, headers)

    def lfs(self, repo, body, fault):
        rdir = repo_dir(self.server.root, urlsplit(self.path).path)
        if rdir is None or not os.path.isdir(rdir):
            return self.send_body(404, b'{"message":"Repository not found"}', "application/vnd.git-lfs+json")
        if not self.authorized(repo):
            return self.send_body(401, b'{"message":"Credentials needed"}', "application/vnd.git-lfs+json",
                                  {"LFS-Authenticate": 'Basic realm="git"'})
        codes = {"lfs401": 401, "lfs403": 403, "lfs404": 404}
        if fault in codes:
            msg = b'{"message":"injected LFS failure"}'
            return self.send_body(codes[fault], msg, "application/vnd.git-lfs+json")
        if not self.server.lfs_upstream or not self.path.endswith("/objects/batch"):
            return self.send_body(404, b'{"message":"no LFS here"}', "application/vnd.git-lfs+json")
        name = repo[: -len(".git")]
        url = "%s/test/%s/objects/batch" % (self.server.lfs_upstream, name)
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/vnd.git-lfs+json",
            "Accept": "application/vnd.git-lfs+json",
        })
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, payload = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        with LOCK:
            s = STATE["stats"].setdefault(repo, {"requests": 0, "bytes": 0})
            s["requests"] += 1
            s["bytes"] += len(payload)
        return self.send_body(status, payload, "application/vnd.git-lfs+json")

    do_GET = handle_git
    do_POST = handle_git


def strip_capability(payload, cap):
    """Removes one pkt-line capability from a v2 advertisement."""
    out, i = b"", 0
    while i + 4 <= len(payload):
        n = int(payload[i : i + 4], 16)
        if n < 4:
            out += payload[i : i + 4]
            i += 4
            continue
        line = payload[i : i + n]
        if line[4:].rstrip(b"\n") != cap:
            out += line
        i += n
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--no-filter", action="store_true")
    ap.add_argument("--no-object-info", action="store_true")
    ap.add_argument("--lfs-upstream", default="")
    ap.add_argument("--app-public-key", default="")
    ap.add_argument("--app-id", default="")
    ap.add_argument("--app-installation", default="")
    ap.add_argument("--app-token-ttl", type=float, default=3600)
    ap.add_argument("--app-repos", default="")
    a = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    srv.root = os.path.abspath(a.root)
    srv.no_filter = a.no_filter
    srv.no_object_info = a.no_object_info
    srv.lfs_upstream = a.lfs_upstream.rstrip("/")
    srv.app_public_key = open(a.app_public_key).read() if a.app_public_key else ""
    srv.app_id = a.app_id
    srv.app_installation = a.app_installation
    srv.app_token_ttl = a.app_token_ttl
    srv.app_repos = set(filter(None, a.app_repos.split(",")))
    print("PORT %d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
