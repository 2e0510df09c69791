#!/usr/bin/env python3
"""A real Git LFS server (giftless, local storage) for repofs's tests.

Listens on 127.0.0.1 at a port chosen by the OS, printed as `PORT <n>`.
Anonymous read/write; legacy endpoints `/<org>/<repo>/objects/batch`.
A WSGI middleware around giftless adds what tests need to observe and
break it:

- GET /_seen: JSON list of the download (storage GET) requests it saw, with
  their headers, and the number of batch requests;
- GET /_control?lifetime=N&lie=0|1&corrupt=0|1&rate=BYTES_PER_SEC&cut=N&norange=0|1&reset=1:
  download hrefs expire N seconds after the batch (enforced here: an expired
  href answers 403; with lie=1 the batch claims they last an hour); corrupt
  flips a byte of every download; rate throttles them; cut drops the
  connection after N bytes of the first download of each object; norange
  ignores Range headers (the whole object again, 200), as some stores do;
- every download action carries an extra header (X-Lfs-Test) that the
  client must send back exactly.
"""

import argparse
import json
import sys
import threading
import time
from urllib.parse import parse_qs

from werkzeug.serving import make_server

from giftless.app import init_app
from giftless.auth.identity import DefaultIdentity


class Anyone(DefaultIdentity):
    """Anonymous, allowed everything (giftless's own allow_anon mis-checks
    per-object permissions, so uploads would be refused)."""

    def is_authorized(self, organization, repo, permission, oid=None):
        return True


def allow_all(_request):
    return Anyone(name="anonymous")

STATE = {"seen": [], "batches": 0, "lifetime": 900, "lie": False, "corrupt": False, "rate": 0,
         "cut": 0, "cut_done": set(), "norange": False}
LOCK = threading.Lock()
TEST_HEADER = "from-the-batch-response"


def respond(start_response, status, body, ctype="application/json"):
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def buffered(app, environ):
    captured = {}

    def sr(status, headers, exc_info=None):
        captured["status"], captured["headers"] = status, headers

    body = b"".join(app(environ, sr))
    return captured["status"], captured["headers"], body


class Middleware:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/_seen":
            with LOCK:
                body = json.dumps({"downloads": STATE["seen"], "batches": STATE["batches"]}).encode()
            return respond(start_response, "200 OK", body)
        if path == "/_control":
            with LOCK:
                if "reset" in query:
                    STATE["seen"], STATE["batches"] = [], 0
                if "lifetime" in query:
                    STATE["lifetime"] = int(query["lifetime"][0])
                if "lie" in query:
                    STATE["lie"] = query["lie"][0] == "1"
                if "corrupt" in query:
                    STATE["corrupt"] = query["corrupt"][0] == "1"
                if "rate" in query:
                    STATE["rate"] = int(query["rate"][0])
                if "cut" in query:
                    STATE["cut"] = int(query["cut"][0])
                    STATE["cut_done"] = set()
                if "norange" in query:
                    STATE["norange"] = query["norange"][0] == "1"
            return respond(start_response, "200 OK", b"{}")
        if path.endswith("/objects/batch") and method == "POST":
            return self.batch(environ, start_response)
        if "/objects/storage/" in path and method == "GET":
            return self.download(environ, start_response, query)
        return self.app(environ, start_response)

    def batch(self, environ, start_response):
        status, headers, body = buffered(self.app, environ)
        with LOCK:
            STATE["batches"] += 1
            lifetime = STATE["lifetime"]
            lie = STATE["lie"]
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            for obj in doc.get("objects", []):
                dl = obj.get("actions", {}).get("download")
                if dl:
                    sep = "&" if "?" in dl["href"] else "?"
                    dl["href"] += "%sexp=%f" % (sep, time.time() + lifetime)
                    # With lie=1 the href expires as usual but the response claims an
                    # hour: the client only learns of the expiry from the 403.
                    dl["expires_in"] = 3600 if lie else lifetime
                    dl.setdefault("header", {})["X-Lfs-Test"] = TEST_HEADER
            body = json.dumps(doc).encode()
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    def download(self, environ, start_response, query):
        seen = {
            "path": environ.get("PATH_INFO", ""),
            "headers": {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")},
        }
        exp = query.get("exp")
        expired = exp is not None and float(exp[0]) < time.time()
        seen["expired"] = expired
        with LOCK:
            STATE["seen"].append(seen)
            corrupt, rate = STATE["corrupt"], STATE["rate"]
        if expired:
            return respond(start_response, "403 Forbidden", b'{"message":"expired href"}')
        with LOCK:
            if STATE["norange"]:
                environ.pop("HTTP_RANGE", None)
            cut = 0
            if STATE["cut"] and seen["path"] not in STATE["cut_done"]:
                STATE["cut_done"].add(seen["path"])
                cut = STATE["cut"]
        if cut:
            return cut_after(self.app(environ, start_response), cut)
        if not corrupt:
            # Stream through (a 300 MB object must not be buffered first).
            body = self.app(environ, start_response)
            return throttled(body, rate) if rate else body
        status, headers, body = buffered(self.app, environ)
        if body:
            body = bytearray(body)
            body[len(body) // 2] ^= 0xFF
            body = bytes(body)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]


def cut_after(chunks, limit):
    """Passes the first `limit` bytes of a body, then drops the connection."""
    sent = 0
    for chunk in chunks:
        if sent + len(chunk) >= limit:
            yield chunk[: limit - sent]
            raise ConnectionAbortedError("cut by the test")
        sent += len(chunk)
        yield chunk


def throttled(chunks, rate):
    """Passes a response body through at no more than `rate` bytes per second."""
    start, sent = time.monotonic(), 0
    for chunk in chunks:
        yield chunk
        sent += len(chunk)
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--storage", required=True)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    app = init_app(
        additional_config={
            "AUTH_PROVIDERS": ["__main__:allow_all"],
            # Downloads are anonymous here; no pre-signed JWTs (and their
            # PyJWT version quirks) are needed.
            "PRE_AUTHORIZED_ACTION_PROVIDER": None,
            "TRANSFER_ADAPTERS": {
                "basic": {
                    "options": {"storage_options": {"path": a.storage}},
                }
            },
        }
    )
    app.wsgi_app = Middleware(app.wsgi_app)
    srv = make_server("127.0.0.1", a.port, app, threaded=True)
    print("PORT %d" % srv.server_port, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
