#!/usr/bin/env python3
"""A git smart-HTTP server for repofs's tests and benchmarks, shaped like the real hosts.

Serves the bare repositories under --root through `git http-backend` (CGI),
protocol v2, on 127.0.0.1 at --port (0: chosen by the OS), printed on stdout
as `PORT <n>` once listening (nothing else is ever printed on stdout). A
repository's clone URL is its path under the root (`<root>/acme/models.git`
is http://127.0.0.1:P/acme/models.git); its name, for tokens and counters,
is the last part (`models.git`).

Transfer: HTTP/1.1 with keep-alive. Responses of git-upload-pack (and every
CGI answer other than info/refs) are streamed as they come out of git, with
`Transfer-Encoding: chunked` in chunks of at most 64 KiB, over a socket whose
SO_SNDBUF is 64 KiB; only chunks whose write succeeded are counted, and when
the client disconnects the git processes are killed. info/refs answers are
buffered (they are small) and pass the capability filter of the profile.
Request bodies may be chunked and/or gzip-encoded (as git sends them).

Capability profiles:
- default: git's own advertisement with uploadpack.allowFilter=true,
  uploadpack.allowAnySHA1InWant=true and transfer.advertiseObjectInfo=false,
  as GitLab (Gitaly) and Bitbucket Data Center advertise;
- --object-info: also advertise (and accept) object-info (the opt-in
  friendly host; ignored with --profile github);
- --profile github: the v2 advertisement is exactly `version 2`,
  `agent=git/github-g1a2b3c4d5e6`, `ls-refs=unborn`,
  `fetch=shallow wait-for-done filter`, `server-option`, `object-format=sha1`;
  an object-info command is refused as git refuses a command it does not
  offer (HTTP 200, empty body: upload-pack dies "invalid command");
- --no-filter: uploadpack.allowFilter=false (and no `filter` in the github
  fetch line); --no-object-info: accepted, no effect (the default already).

Auth: `<root>/_auth.json` maps "name.git" to a token; a repository without an
entry is public. git accepts `Authorization: Bearer <token>` or Basic with it
as password; the APIs accept what their host accepts (see host_api.py).

Host APIs (host_api.py), answered from the bare repository, counted per repo:
- GitHub: GET /api/v3/repos/{owner}/{repo}/git/trees/{sha}[?recursive=1],
  x-ratelimit-* headers, --github-rate-limit N calls per hour (default 5000,
  then 403), --github-size-skew N adds N to every size it reports (an API
  that lies, for tests), --github-tree-limit N entries of a recursive answer (default
  100000, then "truncated": true);
- Bitbucket Server: GET /rest/api/1.0/projects/{KEY}/repos/{slug}/browse/
  {path}?at=&start=&limit= for <root>/scm/{key lowercased}/{slug}.git,
  pages of at most --page-max (default 500) entries;
- GitLab: POST [--gitlab-root]/api/graphql, the repository.blobs(ref,
  paths) query for <root>[--gitlab-root]/{fullPath}.git, scored and refused
  above GitLab's complexity limits (200 anonymous, 250 with a token);
  --gitlab-root /gitlab serves it as a GitLab under a relative URL root
  (the git repositories are then under <root>/gitlab/ too);
  --gitlab-stale-oids answers every blob with another id and size + 1
  (opt-in lie: sizes of another version);
  --gitlab-path-cost N charges N per path instead of GitLab's 1 (opt-in:
  releases that scored paths higher, gitlab-org/gitlab#576497);
- --github-api-listener: the GitHub API also on a second port, at its root
  (`/repos/...`, as api.SUBDOMAIN.ghe.com serves it); GET /_api_port tells
  the port.

Control endpoints:
- GET /_stats: {"name.git": {"requests": n, "bytes": n, "fetches": n,
  "api_requests": n, "api_bytes": n}} (json.dumps default separators, keys
  in this order): every request for the repo (git, LFS, API, refused ones
  too), response body bytes actually written (API bodies included; api_bytes
  is their part), v2 fetch commands, API calls;
- GET /_fetches: every v2 fetch in order, [{"repo", "t", "port",
  "wants", "throttled"}] (tests/support/wants.py);
- GET /_wants: {"name.git": {"<oid>": {"asked": n, "delivered": m}}}: how
  often each oid was in a `want` of a fetch, and in a fetch whose response
  carried a packfile, was written completely (final chunk included), whose
  git exited 0 and whose client read it all (a client that stopped reading
  early resets the connection within 3 s: that is not a delivery, even if
  the whole response fitted in the socket buffers);
- POST /_stats (or /_stats/reset): zeroes /_stats, /_wants and /_api_log;
- GET /_api_log: [{"t": epoch, "kind": "github"|"gitlab", "status": n,
  "host": ..., "accept": ..., "version": ... (X-GitHub-Api-Version), and for GitLab
  "paths", "complexity", "refused"}] per API request, in order;
- GET /_fault?mode=ok|500|hang|slow|lfs401|lfs403|lfs404|lfsquota|api500|ratelimit|secondary: 500
  and hang hit every request but control ones; slow sends git's responses at
  about 1.3 MB/s (64 KiB every 50 ms); lfs* the LFS batch API (lfsquota:
  GitHub's 403 "over its data quota");
  api500 (HTTP 500) and ratelimit (HTTP 429, retry-after: 60) the host APIs
  only; secondary&seconds=S: GitHub's secondary rate limit, S seconds (from
  the first API request) of HTTP 403 with `retry-after` and
  x-ratelimit-remaining above 0; ok clears it;
- GET /_ratelimit: {"limit": n, "used": n, "reset": epoch}; POST clears `used`;
- GET /_app: {"issued": n} GitHub App tokens issued;
- with --hostile only: GET /_hostile?repo=NAME.git&mode=MODE makes that
  repository's v2 fetches answer as a hostile server would (mode=ok clears
  it; everything else, and every other repository, is served as usual):
  progress: a blob fetch (no `deepen`) answers `packfile` and then sideband-2
  progress packets without end; error-body: a blob fetch answers HTTP 500
  with a body without end; after-flush: a blob fetch gets git's own answer
  and then, after its final flush, pkt-lines without end; tree-bomb: a
  commit fetch (with `deepen`) answers a valid pack of 100 trees of 16 MiB
  each (zlib of zeros: about 16 KiB each on the wire); 429:S:N: the next N
  fetches (commit fetches too) answer HTTP 429 with `Retry-After: S`.

LFS: with --lfs-upstream URL, POST <name>.git/info/lfs/objects/batch is
checked against the same tokens and forwarded to URL/test/<name>/objects/batch
(a real LFS server, whose download hrefs point at its own host:port).

GitHub App: with --app-public-key PEM --app-id N --app-installation N
[--app-token-ttl S] [--app-repos a,b], POST /api/v3/app/installations/<id>/
access_tokens verifies the RS256 JWT (PyJWT) and issues a token valid for S
seconds, accepted (git: as x-access-token password; API: as bearer) for the
listed repositories.

GitLab OAuth application: with --oauth, oauth_server.py (Authlib) answers
/oauth/* and /_oauth/* on this same origin, and its live access tokens are
accepted wherever a token is (options --oauth-client-id, --oauth-access-ttl,
--oauth-device-ttl, --oauth-interval, --oauth-revoke; see that file).
"""

import argparse
import base64
import gzip
import json
import hashlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import host_api  # noqa: E402  (next to this file)
import wants as fetch_log  # noqa: E402  (next to this file)

CHUNK = 64 * 1024
STATE = {"fault": "ok", "stats": {}, "wants": {}, "app_tokens": {}, "issued": 0, "hostile": {}}
LOCK = threading.Lock()
GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
GITHUB_CAPS = ["version 2", "agent=git/github-g1a2b3c4d5e6", "ls-refs=unborn",
               "fetch=shallow wait-for-done filter", "server-option", "object-format=sha1"]


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
        if part in ("", ".", ".."):
            return None
        parts.append(part)
        if part.endswith(".git"):
            return os.path.join(root, *parts)
    return None


def pkt(text):
    data = text.encode() if isinstance(text, str) else text
    return b"%04x" % (len(data) + 4) + data


def pkt_lines(data):
    """[(raw pkt, payload without its newline or None for 0000/0001/0002)]."""
    out, i = [], 0
    while i + 4 <= len(data):
        try:
            n = int(data[i: i + 4], 16)
        except ValueError:
            break
        if n < 4:
            out.append((data[i: i + 4], None))
            i += 4
            continue
        out.append((data[i: i + n], data[i + 4: i + n].rstrip(b"\n")))
        i += n
    return out


def fetch_wants(body):
    """The oids wanted by a v2 `command=fetch` request, None if it is no fetch."""
    lines = [p for _, p in pkt_lines(body)]
    if not lines or lines[0] != b"command=fetch":
        return None
    return [p.split()[1].decode() for p in lines if p and p.startswith(b"want ") and len(p.split()) > 1]


def advertise(payload, profile, allow_filter):
    """The info/refs answer as the profile's host shows it."""
    if profile != "github":
        return payload
    lines = pkt_lines(payload)
    pre = b""
    if len(lines) > 1 and lines[0][1] and lines[0][1].startswith(b"# service="):
        pre, lines = lines[0][0] + lines[1][0], lines[2:]
    if not lines or lines[0][1] != b"version 2":
        return payload  # a v0 ref advertisement: left as git made it
    caps = [c if allow_filter or not c.startswith("fetch=") else "fetch=shallow wait-for-done"
            for c in GITHUB_CAPS]
    return pre + b"".join(pkt(c + "\n") for c in caps) + b"0000"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "repofs-test-git/2"
    body = b""
    counted = None  # (repo, is an API call) whose counters this request's bodies go to
    endless_tail = None  # --hostile after-flush: what follows git's answer, forever

    def setup(self):
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)
        super().setup()

    def log_message(self, fmt, *args):  # quiet
        if os.environ.get("GIT_SERVER_VERBOSE"):
            sys.stderr.write("git-server: " + (fmt % args) + "\n")

    def send_body(self, status, body, ctype="text/plain", headers=None):
        """Sends a whole response, counting its body for the request's repository."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except GONE:
            self.close_connection = True
            return
        if self.counted:
            self.account(self.counted[0], nbytes=len(body), api=self.counted[1])

    def account(self, repo, requests=0, nbytes=0, api=False, fetches=0):
        if repo is None:
            return
        if requests:
            self.counted = (repo, api)
        with LOCK:
            s = STATE["stats"].setdefault(repo, {"requests": 0, "bytes": 0, "fetches": 0,
                                                 "api_requests": 0, "api_bytes": 0})
            s["requests"] += requests
            s["bytes"] += nbytes
            s["fetches"] += fetches
            if api:
                s["api_requests"] += requests
                s["api_bytes"] += nbytes

    def count_wants(self, repo, oids, field):
        with LOCK:
            per = STATE["wants"].setdefault(repo, {})
            for oid in oids:
                per.setdefault(oid, {"asked": 0, "delivered": 0})[field] += 1

    def fault(self):
        with LOCK:
            return STATE["fault"]

    def tokens(self):
        try:
            with open(os.path.join(self.server.root, "_auth.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def app_token_ok(self, token, repo):
        with LOCK:
            expires = STATE["app_tokens"].get(token)
        ok = expires is not None and expires > time.time()
        return ok and (repo is None or repo[: -len(".git")] in self.server.app_repos)

    def extra_ok(self, token, repo):
        """A GitHub App token for `repo`, or a live GitLab OAuth token."""
        return self.app_token_ok(token, repo) or (self.server.oauth is not None and self.server.oauth.token_ok(token))

    def api_token_state(self, repo, token):
        """(token is None or known to the server, may it read `repo`)."""
        tokens = self.tokens()
        known = token is None or token in tokens.values() or self.extra_ok(token, None)
        want = tokens.get(repo) if repo else None
        allowed = want is None or (token is not None and (token == want or self.extra_ok(token, repo)))
        return known, allowed

    def authorized(self, repo):
        want = self.tokens().get(repo)
        if want is None:
            return True
        got = self.headers.get("Authorization", "")
        if got.startswith("Bearer "):
            return got[7:] == want or self.extra_ok(got[7:], repo)
        if got.startswith("Basic "):
            try:
                token = base64.b64decode(got[6:]).decode().split(":", 1)[-1]
            except Exception:
                return False
            return token == want or self.extra_ok(token, repo)
        return False

    def control(self):
        url = urlsplit(self.path)
        if url.path in ("/_stats", "/_stats/reset"):
            with LOCK:
                if self.command == "POST":
                    STATE["stats"], STATE["wants"] = {}, {}
                    fetch_log.reset()
                    with host_api.RATE_LOCK:
                        host_api.API_LOG.clear()
                body = json.dumps(STATE["stats"]).encode()
            return self.send_body(200, b"{}" if self.command == "POST" else body, "application/json")
        if url.path == "/_wants":
            with LOCK:
                body = json.dumps(STATE["wants"]).encode()
            return self.send_body(200, body, "application/json")
        if url.path == "/_fetches":
            return self.send_body(200, fetch_log.fetches_json(), "application/json")
        if url.path == "/_api_log":
            with host_api.RATE_LOCK:
                body = json.dumps(host_api.API_LOG).encode()
            return self.send_body(200, body, "application/json")
        if url.path == "/_api_port":
            port = self.server.api_listener.server_address[1] if self.server.api_listener else 0
            return self.send_body(200, str(port).encode())
        if url.path == "/_app":
            with LOCK:
                body = json.dumps({"issued": STATE["issued"]}).encode()
            return self.send_body(200, body, "application/json")
        if url.path == "/_ratelimit":
            with host_api.RATE_LOCK:
                if self.command == "POST":
                    host_api.RATE.update(start=time.time(), used=0)
                info = {"limit": self.server.github_rate_limit, "used": host_api.RATE["used"],
                        "reset": int(host_api.RATE["start"] + 3600)}
            return self.send_body(200, json.dumps(info).encode(), "application/json")
        if url.path == "/_hostile" and self.server.hostile:
            q = parse_qs(url.query)
            repo, mode = q.get("repo", [""])[0], q.get("mode", ["ok"])[0]
            with LOCK:
                if mode == "ok":
                    STATE["hostile"].pop(repo, None)
                else:
                    STATE["hostile"][repo] = mode
            fetch_log.arm(repo, mode)
            return self.send_body(200, mode.encode())
        if url.path == "/_fault":
            q = parse_qs(url.query)
            mode = q.get("mode", ["ok"])[0]
            with LOCK:
                STATE["fault"] = mode
            with host_api.RATE_LOCK:
                host_api.SECONDARY.update(seconds=float(q.get("seconds", ["60"])[0]), until=None)
            return self.send_body(200, mode.encode())
        return self.send_body(404, b"no such control endpoint")

    def app_token(self):
        import jwt  # PyJWT with cryptography

        srv = self.server
        parts = urlsplit(self.path).path.strip("/").split("/")
        # api/v3/app/installations/<id>/access_tokens
        auth = self.headers.get("Authorization", "")
        bad = b'{"message":"A JSON web token could not be decoded"}'
        if not auth.startswith("Bearer "):
            return self.send_body(401, bad, "application/json")
        try:
            claims = jwt.decode(auth[7:], srv.app_public_key, algorithms=["RS256"])
        except Exception:
            return self.send_body(401, bad, "application/json")
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

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(n))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def handle_any(self):
        self.body, self.counted = self.read_body(), None
        if getattr(self.server, "api_only", False):
            # The API's own host (api.SUBDOMAIN.ghe.com): its root is /api/v3's.
            if not self.path.startswith("/repos/"):
                return self.send_body(404, b'{"message":"Not Found"}', "application/json")
            self.path = "/api/v3" + self.path
        path = urlsplit(self.path).path
        if self.server.oauth is not None and self.server.oauth.route(self):
            return
        if path.startswith("/_"):
            return self.control()
        if path.startswith("/api/v3/app/") and self.command == "POST":
            return self.app_token()
        fault = self.fault()
        if fault in ("500", "hang"):
            self.account(repo_of(path), requests=1)
            if fault == "hang":
                time.sleep(3600)
                return
            return self.send_body(500, b"injected failure")
        if host_api.route(self):
            return
        repo = repo_of(path)
        self.account(repo, requests=1)
        if "/info/lfs/" in path and repo is not None:
            return self.lfs(repo, fault)
        rdir = repo_dir(self.server.root, path)
        if repo is None or rdir is None or not os.path.isdir(rdir):
            return self.send_body(404, b"Repository not found")
        if not self.authorized(repo):
            return self.send_body(401, b"Authentication required",
                                  headers={"WWW-Authenticate": 'Basic realm="git"'})
        return self.git_backend(repo)

    do_GET = handle_any
    do_POST = handle_any

    def client_read_all(self):
        """Whether the client read the whole response it was sent.

        A response that fits in the socket buffers is "written" even when the
        client stops reading early (a size probe does) and closes; Linux then
        answers with a reset, because unread data was left behind. A client
        that read everything keeps the connection (or closes it cleanly).
        """
        sock = self.connection
        try:
            ready, _, _ = select.select([sock], [], [], 3.0)
            if not ready:
                return True
            sock.recv(1, socket.MSG_PEEK)
            return True
        except ConnectionResetError:
            return False
        except OSError:
            return True

    def git_backend(self, repo):
        srv, url, body = self.server, urlsplit(self.path), self.body
        encoding = self.headers.get("Content-Encoding", "")
        env = dict(os.environ)
        env.update({
            "GIT_PROJECT_ROOT": srv.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": encoding,
            "REMOTE_ADDR": self.client_address[0],
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        })
        object_info = srv.object_info and srv.profile != "github"
        cfg = [("uploadpack.allowFilter", "false" if srv.no_filter else "true"),
               ("uploadpack.allowAnySHA1InWant", "true"),
               ("transfer.advertiseObjectInfo", "true" if object_info else "false")]
        env["GIT_CONFIG_COUNT"] = str(len(cfg))
        for i, (k, v) in enumerate(cfg):
            env["GIT_CONFIG_KEY_%d" % i] = k
            env["GIT_CONFIG_VALUE_%d" % i] = v
        wants = None
        if self.command == "POST" and url.path.endswith("/git-upload-pack"):
            try:
                plain = gzip.decompress(body) if "gzip" in encoding else body
            except (OSError, EOFError):
                plain = b""
            wants = fetch_wants(plain)
            if wants is not None:
                self.account(repo, fetches=1)
                self.count_wants(repo, wants, "asked")
                fetch_log.log_fetch(repo, wants, self.client_address[1])
                with LOCK:
                    hostile = STATE["hostile"].get(repo) if srv.hostile else None
                self.endless_tail = None
                if hostile and self.hostile(hostile, plain, repo):
                    return
        proc = subprocess.Popen(["git", "http-backend"], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        err = []
        threading.Thread(target=feed, args=(proc.stdin, body), daemon=True).start()
        errors = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        errors.start()
        try:
            head, rest = read_cgi_head(proc.stdout)
            if head is None:
                proc.wait()
                errors.join(5)
                return self.send_body(500, b"bad CGI output: " + b"".join(err)[-500:])
            status, headers = 200, {}
            for line in head.decode("latin-1").splitlines():
                k, sep, v = line.partition(":")
                if not sep:
                    continue
                if k.lower() == "status":
                    status = int(v.strip().split()[0])
                elif k.lower() not in ("content-length", "transfer-encoding"):
                    headers[k.strip()] = v.strip()
            ctype = headers.pop("Content-Type", "application/octet-stream")
            if url.path.endswith("/info/refs"):
                payload = advertise(rest + proc.stdout.read(), srv.profile, not srv.no_filter)
                return self.send_body(status, payload, ctype, headers)
            complete, packed = self.stream(repo, proc, status, ctype, headers, rest)
            if wants and complete and packed and self.client_read_all():
                self.count_wants(repo, wants, "delivered")
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
            proc.stdout.close()

    def hostile(self, mode, plain, repo):
        """Answers a fetch as hostile `mode` says; False: serve it as usual
        (after-flush is served by `stream`, which then sends bytes forever)."""
        if mode.startswith("429:"):
            return fetch_log.throttle(self, repo, mode)
        commit_fetch = any(p and p.startswith(b"deepen") for _, p in pkt_lines(plain))
        if mode == "tree-bomb" and commit_fetch:
            pack = tree_bomb_pack()
            body = pkt("packfile\n") + b"".join(
                pkt(b"\x01" + pack[i: i + 65000]) for i in range(0, len(pack), 65000)) + b"0000"
            self.send_forever(200, body, b"")
            return True
        if commit_fetch:
            return False
        if mode == "progress":
            noise = pkt(b"\x02" + b"Counting objects: 42% (4242/10000)\r" * 1800)
            self.send_forever(200, pkt("packfile\n"), noise)
            return True
        if mode == "error-body":
            self.send_forever(500, b"<html><body>", b"<p>internal error</p>\n" * 3000)
            return True
        if mode == "after-flush":
            self.endless_tail = pkt(b"\x01" + b"after the end" * 5000)
        return False

    def send_forever(self, status, first, piece):
        """A chunked response: `first`, then `piece` until the client goes."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-git-upload-pack-result")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(first), first))
            if not piece:
                self.wfile.write(b"0\r\n\r\n")
                return
            chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
            while True:
                self.wfile.write(chunk)
        except GONE + (OSError,):
            self.close_connection = True

    def stream(self, repo, proc, status, ctype, headers, first):
        """Relays git's output; (written completely with git's success, carried a packfile)."""
        chunked = self.request_version == "HTTP/1.1"
        packed, tail = False, b""
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for k, v in headers.items():
                self.send_header(k, v)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            data = first
            while True:
                if not data:
                    data = proc.stdout.read1(CHUNK)
                    if not data:
                        break
                if not packed:
                    packed = b"000dpackfile\n" in tail + data
                    tail = (tail + data)[-12:]
                for i in range(0, len(data), CHUNK):
                    piece = data[i: i + CHUNK]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                    self.account(repo, nbytes=len(piece))
                    if self.fault() == "slow":
                        time.sleep(0.05)  # about 1.3 MB/s
                data = b""
            ok = proc.wait() == 0
            forever = self.endless_tail
            while forever and chunked:  # --hostile after-flush: until the client goes
                self.wfile.write(b"%x\r\n%s\r\n" % (len(forever), forever))
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            return ok, packed
        except GONE:
            self.close_connection = True
            return False, packed

    def lfs(self, repo, fault):
        rdir = repo_dir(self.server.root, urlsplit(self.path).path)
        ctype = "application/vnd.git-lfs+json"
        if rdir is None or not os.path.isdir(rdir):
            return self.send_body(404, b'{"message":"Repository not found"}', ctype)
        if not self.authorized(repo):
            return self.send_body(401, b'{"message":"Credentials needed"}', ctype,
                                  {"LFS-Authenticate": 'Basic realm="git"'})
        codes = {"lfs401": 401, "lfs403": 403, "lfs404": 404}
        if fault == "lfsquota":
            # GitHub's refusal when the owner's LFS bandwidth is used up.
            return self.send_body(403, json.dumps({
                "message": "This repository is over its data quota. Account responsible for LFS"
                           " bandwidth should purchase more data packs to restore access.",
                "documentation_url": "https://docs.github.com/lfs"}).encode(), ctype)
        if fault in codes:
            return self.send_body(codes[fault], b'{"message":"injected LFS failure"}', ctype)
        if not self.server.lfs_upstream or not self.path.endswith("/objects/batch"):
            return self.send_body(404, b'{"message":"no LFS here"}', ctype)
        name = repo[: -len(".git")]
        url = "%s/test/%s/objects/batch" % (self.server.lfs_upstream, name)
        req = urllib.request.Request(url, data=self.body, method="POST", headers={
            "Content-Type": ctype, "Accept": ctype})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, payload = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        self.send_body(status, payload, ctype)


BOMB = []


def tree_bomb_pack(count=100, size=16 << 20):
    """A valid pack of `count` trees of `size` zero bytes each (not real
    trees: a decoder holds them before it parses any)."""
    if not BOMB:
        def header(kind, n):
            c, n, out = (kind << 4) | (n & 15), n >> 4, bytearray()
            while n:
                out.append(c | 0x80)
                c, n = n & 0x7F, n >> 7
            out.append(c)
            return bytes(out)

        entry = header(2, size) + zlib.compress(b"\0" * size, 9)
        body = b"PACK" + (2).to_bytes(4, "big") + count.to_bytes(4, "big") + entry * count
        BOMB.append(body + hashlib.sha1(body).digest())
    return BOMB[0]


def feed(pipe, body):
    """Writes the request body to the CGI (a thread: git may answer before reading it all)."""
    try:
        pipe.write(body)
    except (BrokenPipeError, OSError):
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def read_cgi_head(out):
    """(CGI header block, body bytes already read), or (None, b"") on a bad answer."""
    buf = b""
    while True:
        for sep in (b"\r\n\r\n", b"\n\n"):
            i = buf.find(sep)
            if i >= 0:
                return buf[:i], buf[i + len(sep):]
        data = out.read1(CHUNK)
        if not data:
            return None, b""
        buf += data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--profile", choices=["default", "github"], default="default")
    ap.add_argument("--object-info", action="store_true", help="advertise object-info")
    ap.add_argument("--no-filter", action="store_true")
    ap.add_argument("--no-object-info", action="store_true", help="no effect: the default")
    ap.add_argument("--github-tree-limit", type=int, default=100000)
    ap.add_argument("--github-size-skew", type=int, default=0)
    ap.add_argument("--github-rate-limit", type=int, default=5000)
    ap.add_argument("--page-max", type=int, default=500)
    ap.add_argument("--gitlab-root", default="")
    ap.add_argument("--gitlab-path-cost", type=int, default=1)
    ap.add_argument("--gitlab-stale-oids", action="store_true")
    ap.add_argument("--github-api-listener", action="store_true")
    ap.add_argument("--lfs-upstream", default="")
    ap.add_argument("--app-public-key", default="")
    ap.add_argument("--app-id", default="")
    ap.add_argument("--app-installation", default="")
    ap.add_argument("--app-token-ttl", type=float, default=3600)
    ap.add_argument("--app-repos", default="")
    ap.add_argument("--hostile", action="store_true", help="enable /_hostile (tests only)")
    ap.add_argument("--oauth", action="store_true", help="GitLab OAuth provider (oauth_server.py)")
    ap.add_argument("--tls-cert", default="", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--tls-key", default="", help="the key of --tls-cert (PEM)")
    ap.add_argument("--oauth-client-id", default="repofs-test")
    ap.add_argument("--oauth-access-ttl", type=int, default=7200)
    ap.add_argument("--oauth-device-ttl", type=int, default=300)
    ap.add_argument("--oauth-interval", type=int, default=5)
    ap.add_argument("--oauth-revoke", choices=["on-use", "immediate"], default="on-use")
    a = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    srv.root = os.path.abspath(a.root)
    srv.profile = a.profile
    srv.object_info = a.object_info
    srv.no_filter = a.no_filter
    srv.github_tree_limit = a.github_tree_limit
    srv.github_size_skew = a.github_size_skew
    srv.github_rate_limit = a.github_rate_limit
    srv.page_max = max(1, a.page_max)
    srv.lfs_upstream = a.lfs_upstream.rstrip("/")
    srv.app_public_key = open(a.app_public_key).read() if a.app_public_key else ""
    srv.app_id = a.app_id
    srv.app_installation = a.app_installation
    srv.app_token_ttl = a.app_token_ttl
    srv.app_repos = set(filter(None, a.app_repos.split(",")))
    srv.hostile = a.hostile
    srv.oauth = None
    if a.oauth:
        import oauth_server  # Authlib: only needed with --oauth
        oauth_server.configure("http://127.0.0.1:%d" % srv.server_address[1], a.oauth_client_id,
                               a.oauth_access_ttl, a.oauth_device_ttl, a.oauth_interval, a.oauth_revoke)
        srv.oauth = oauth_server
    srv.gitlab_root = "/" + a.gitlab_root.strip("/") if a.gitlab_root.strip("/") else ""
    srv.gitlab_path_cost = max(1, a.gitlab_path_cost)
    srv.gitlab_stale_oids = a.gitlab_stale_oids
    srv.api_listener = None
    if a.github_api_listener:
        api = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        api.daemon_threads = True
        for k in ("root", "profile", "object_info", "no_filter", "github_tree_limit",
                  "github_size_skew", "github_rate_limit", "page_max", "lfs_upstream",
                  "app_public_key", "app_id", "app_installation", "app_token_ttl", "app_repos",
                  "hostile", "gitlab_root", "gitlab_path_cost", "gitlab_stale_oids", "oauth"):
            setattr(api, k, getattr(srv, k))
        api.api_listener, api.api_only = None, True
        srv.api_listener = api
        threading.Thread(target=api.serve_forever, daemon=True).start()
    if a.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("PORT %d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
