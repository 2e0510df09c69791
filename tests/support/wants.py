#!/usr/bin/env python3
"""What the test git server's fetches asked for, and a throttling mode.

Imported by git_http_server.py:
- log_fetch(repo, wants): every v2 fetch, in order, for GET /_fetches:
  [{"repo", "t" (time.time()), "port" (the client's), "wants": [oid...],
  "throttled": bool}];
  reset() empties it (POST /_stats);
- the --hostile mode `429:SECONDS:COUNT` (arm() when it is set): the next
  COUNT fetches of the repository answer HTTP 429 with `Retry-After:
  SECONDS` (as GitHub and GitLab do when rate limiting git traffic); later
  ones are served as usual.

Run as a script, it reads what tests/support/fault_proxy.py --capture wrote
for a connection (the server->client bytes that reached the client) and
prints, one a line, the oids of the objects that arrived complete in the
packs of its fetch responses, the last one possibly cut:

    python3 wants.py received CAPTURE_FILE...
    python3 wants.py last CAPTURE_FILE   (the last response's objects only)

Only whole (non-delta) objects are named: a delta's oid needs its base.
"""

import hashlib
import json
import sys
import threading
import time
import zlib

LOCK = threading.Lock()
FETCHES = []
THROTTLE = {}  # (repo, mode) -> fetches still to refuse


def log_fetch(repo, wants, port):
    """`port`: the client's (a proxy's upstream connection names its client)."""
    with LOCK:
        FETCHES.append({"repo": repo, "t": time.time(), "port": port, "wants": list(wants),
                        "throttled": False})


def fetches_json():
    with LOCK:
        return json.dumps(FETCHES).encode()


def reset():
    with LOCK:
        FETCHES.clear()


def arm(repo, mode):
    """Called when /_hostile sets `mode` for `repo`."""
    if mode.startswith("429:"):
        with LOCK:
            THROTTLE[(repo, mode)] = int(mode.split(":")[2])


def throttle(handler, repo, mode):
    """Answers 429 if `mode` still refuses fetches of `repo`; False: serve it."""
    secs = mode.split(":")[1]
    with LOCK:
        left = THROTTLE.get((repo, mode), 0)
        if left <= 0:
            return False
        THROTTLE[(repo, mode)] = left - 1
        for f in reversed(FETCHES):
            if f["repo"] == repo:
                f["throttled"] = True
                break
    handler.send_body(429, b"Too many requests, retry later\n",
                      headers={"Retry-After": secs})
    return True


def pkts(data):
    """Payloads of the pkt-lines in `data` (None for flush/delim), as far as complete."""
    out, i = [], 0
    while i + 4 <= len(data):
        try:
            n = int(data[i: i + 4], 16)
        except ValueError:
            break
        if n < 4:
            out.append(None)
            i += 4
            continue
        if i + n > len(data):
            break
        out.append(data[i + 4: i + n])
        i += n
    return out


def pack_objects(pack):
    """The oids of the whole objects that are complete in `pack` (a prefix)."""
    names = {1: b"commit", 2: b"tree", 3: b"blob", 4: b"tag"}
    oids, i = [], 12
    if pack[:4] != b"PACK":
        return oids
    while i < len(pack):
        c = pack[i]
        kind, size, shift, i = (c >> 4) & 7, c & 15, 4, i + 1
        while c & 0x80 and i < len(pack):
            c = pack[i]
            size, shift, i = size | ((c & 0x7F) << shift), shift + 7, i + 1
        if kind == 6:  # ofs-delta: a varint offset first
            while i < len(pack) and pack[i] & 0x80:
                i += 1
            i += 1
        elif kind == 7:  # ref-delta: the base oid first
            i += 20
        z = zlib.decompressobj()
        try:
            data = z.decompress(pack[i:])
        except zlib.error:
            return oids
        if not z.eof:
            return oids  # cut inside this object
        i = len(pack) - len(z.unused_data)
        if kind in names and len(data) == size:
            oids.append(hashlib.sha1(names[kind] + b" %d\0" % size + data).hexdigest())
    return oids


def received(stream):
    """Per response of one captured connection: the oids complete in its pack."""
    from fault_proxy import Http  # next to this file

    parser, bodies = Http(True, None), []
    for piece, kind, _head in parser.feed(stream):
        if kind == "start":
            bodies.append(b"")
        elif kind == "data" and bodies:
            bodies[-1] += piece
    per = []
    for body in bodies:
        lines, pack, on = pkts(body), b"", False
        for p in lines:
            if p is None:
                continue
            if not on:
                on = p.rstrip(b"\n") == b"packfile"
            elif p[:1] == b"\x01":
                pack += p[1:]
        per.append(pack_objects(pack))
    return per


if __name__ == "__main__":
    sys.dont_write_bytecode = True
    if len(sys.argv) < 3 or sys.argv[1] not in ("received", "last"):
        sys.exit("usage: wants.py received|last CAPTURE_FILE...")
    for path in sys.argv[2:]:
        with open(path, "rb") as f:
            per = received(f.read())
        for oids in (per[-1:] if sys.argv[1] == "last" else per):
            for oid in oids:
                print(oid)
