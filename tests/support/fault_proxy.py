#!/usr/bin/env python3
"""A TCP proxy that misbehaves the way real networks do, for repofs's tests.

    fault_proxy.py --target PORT [--port 0] [--seed N] [faults...] [--stats FILE]

Listens on 127.0.0.1 (--port 0: a port chosen by the OS), prints `PORT <n>`
on stdout once listening (and `SEED <n>` on stderr), and relays every
connection to 127.0.0.1:--target byte for byte (HTTP keep-alive included:
faults are per connection stream). Only the server->client direction is
broken. It follows the HTTP/1.1 framing of both directions (Content-Length,
chunked, read-to-close) so that faults hit response bodies only (after the
headers were passed; --anywhere: headers too), and so it can count requests
and Range headers.

Random faults, decided once per 16 KiB of answer with probabilities:
  --cut P          the connection is cut (RST or FIN, at random);
  --stall P        nothing more is sent for --stall-secs S, then the cut;
  --flip P         one byte of body data (not of the chunk framing) flipped.
Deterministic faults:
  --cut-after B --cut-count K   the first K responses whose body passes B
                   bytes are cut there (0 = every one);
  --trickle-after B --trickle-rate R [--trickle-connections K]: once a
                   connection has passed B bytes of answer it goes on at R
                   bytes/s (only the first K connections that get there;
                   0 = all).
--match TEXT limits every fault to responses whose request line contains
TEXT (e.g. `git-upload-pack`, `GET /data/`). --seed N makes the dice replay
(each connection draws from Random("N:<connection number>")).

SIGUSR1 turns every fault off (a trickling connection goes on at full
speed); SIGUSR2 turns them on again. --stats FILE is rewritten (atomically)
at most every 0.1 s and on every fault, as JSON: {"seed", "enabled",
"connections", "open", "requests", "responses", "bytes_down", "bytes_up",
"faults": {"cut", "stall", "flip", "cut_after", "trickle"},
"ranges": [{"seq", "connection", "request", "range"}], "cuts": [{"seq",
"connection", "request", "range", "body", "t", "upstream"}]} (seq: the
request's number, from 1; cuts: the deterministic ones, `body` bytes of body
passed, at time `t`, on the upstream connection from local port `upstream`). --capture DIR writes each
connection's server->client bytes as they were passed to DIR/<n>.down.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time

BLOCK = 16 * 1024
STATE = {"seed": 0, "enabled": True, "connections": 0, "open": 0, "requests": 0,
         "responses": 0, "bytes_down": 0, "bytes_up": 0,
         "faults": {"cut": 0, "stall": 0, "flip": 0, "cut_after": 0, "trickle": 0},
         "ranges": [], "cuts": []}
COUNTS = {"cut_after": 0, "trickle": 0}
DIRTY = [False]


class Http:
    """Follows HTTP/1.1 messages in one direction of a stream.

    feed(data) yields (piece, kind, message) with kind "head", "frame" (chunk
    size lines and trailers) or "data" (body bytes); `message` is the head of
    the message the piece belongs to (bytes). Requests without a length have
    no body; responses without one run to the close. `methods` (for
    responses) is the queue of request methods they answer (HEAD: no body).
    """

    def __init__(self, response, methods=None):
        self.response, self.methods = response, methods
        self.state, self.buf, self.left, self.head = "head", b"", 0, b""

    def start(self, head):
        self.head = head
        lines = head.split(b"\r\n")
        fields = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            fields[k.strip().lower()] = v.strip()
        method = b""
        if self.response:
            method = self.methods.pop(0) if self.methods else b""
            parts = lines[0].split()
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 200
            if status < 200 or status in (204, 304) or method == b"HEAD":
                return "head"
        if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            return "size"
        length = fields.get(b"content-length")
        if length is not None and length.isdigit():
            self.left = int(length)
            return "len" if self.left else "head"
        return "eof" if self.response else "head"

    def feed(self, data):
        out = []
        while data:
            if self.state == "head":
                before = len(self.buf)
                self.buf += data
                i = self.buf.find(b"\r\n\r\n")
                if i < 0:
                    out.append((data, "head", self.head))
                    if len(self.buf) > 65536:
                        self.state, self.buf = "eof", b""  # not HTTP: pass it through
                    return out
                take = i + 4 - before
                head, piece, data, self.buf = self.buf[:i], data[:take], data[take:], b""
                out.append((piece, "head", head))
                out.append((b"", "start", head))
                self.state = self.start(head)
            elif self.state in ("len", "data"):
                n = min(self.left, len(data))
                out.append((data[:n], "data", self.head))
                data, self.left = data[n:], self.left - n
                if not self.left:
                    self.state, self.left = ("head", 0) if self.state == "len" else ("crlf", 2)
            elif self.state == "crlf":
                n = min(self.left, len(data))
                out.append((data[:n], "frame", self.head))
                data, self.left = data[n:], self.left - n
                if not self.left:
                    self.state = "size"
            elif self.state in ("size", "trailer"):
                i = data.find(b"\n")
                line = data if i < 0 else data[: i + 1]
                out.append((line, "frame", self.head))
                data, self.buf = data[len(line):], self.buf + line
                if i < 0:
                    continue
                text, self.buf = self.buf.strip(), b""
                if self.state == "trailer":
                    if not text:
                        self.state = "head"
                    continue
                try:
                    size = int(text.split(b";")[0], 16)
                except ValueError:
                    self.state = "eof"
                    continue
                self.state, self.left = ("trailer", 0) if size == 0 else ("data", size)
            else:  # eof: the rest of the stream is this body
                out.append((data, "data", self.head))
                data = b""
        return [(p, k, h) for p, k, h in out if p or k == "start"]


def mark():
    DIRTY[0] = True


def write_stats(path):
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(STATE, f)
    os.replace(tmp, path)
    DIRTY[0] = False


def fault(kind, args):
    STATE["faults"][kind] += 1
    write_stats(args.stats)


class Conn:
    def __init__(self, n, args, reader, writer):
        self.n, self.args, self.reader, self.writer = n, args, reader, writer
        self.rng = random.Random("%d:%d" % (args.seed, n))
        self.methods, self.request_lines = [], []
        self.up = Http(False)
        self.down = Http(True, self.methods)
        self.line = (b"", 0, None)  # (request line, seq, Range) the current response answers
        self.answer = 0  # bytes of answer counted for the 16 KiB blocks
        self.body = 0  # bytes of the current response's body
        self.trickling = False
        self.upstream = 0  # the local port of the connection to the target
        self.capture = open(os.path.join(args.capture, "%d.down" % n), "wb") if args.capture else None

    def cut(self, rst=True):
        if rst:
            self.writer.transport.abort()
        else:
            self.writer.close()

    async def client_to_server(self, server):
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                STATE["bytes_up"] += len(data)
                for piece, kind, head in self.up.feed(data):
                    if kind == "start":
                        self.request(head)
                server.write(data)
                await server.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                server.write_eof()
            except (OSError, RuntimeError):
                pass

    def request(self, head):
        lines = head.split(b"\r\n")
        self.methods.append(lines[0].split(b" ")[0])
        STATE["requests"] += 1
        rng = None
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"range" and len(STATE["ranges"]) < 10000:
                rng = v.strip().decode("latin-1")
                STATE["ranges"].append({"seq": STATE["requests"], "connection": self.n,
                                        "request": lines[0].decode("latin-1"), "range": rng})
        self.request_lines.append((lines[0], STATE["requests"], rng))
        mark()

    def matches(self):
        return self.args.match is None or self.args.match.encode() in self.line[0]

    async def send(self, piece):
        if self.capture:
            self.capture.write(piece)
            self.capture.flush()
        self.writer.write(piece)
        await self.writer.drain()
        STATE["bytes_down"] += len(piece)
        mark()

    async def server_to_client(self, server_reader):
        a = self.args
        while True:
            data = await server_reader.read(65536)
            if not data:
                return
            for piece, kind, head in self.down.feed(data):
                if kind == "start":
                    self.line = self.request_lines.pop(0) if self.request_lines else (b"", 0, None)
                    self.body = 0
                    STATE["responses"] += 1
                    continue
                if kind == "head" and not a.anywhere:
                    await self.send(piece)
                    continue
                if not await self.relay(piece, kind == "data"):
                    return

    async def relay(self, piece, is_data):
        """Passes `piece` with the faults due; False once the connection is cut."""
        a = self.args
        while piece:
            on = STATE["enabled"] and self.matches()
            if not on:
                await self.send(piece)
                return True
            # Up to the next 16 KiB boundary, the deterministic cut, the trickle point.
            n = BLOCK - self.answer % BLOCK
            if a.cut_after and (a.cut_count == 0 or COUNTS["cut_after"] < a.cut_count) and is_data:
                if self.body >= a.cut_after:
                    COUNTS["cut_after"] += 1
                    STATE["cuts"].append({"seq": self.line[1], "connection": self.n, "body": self.body,
                                          "request": self.line[0].decode("latin-1"), "range": self.line[2],
                                          "t": time.time(), "upstream": self.upstream})
                    fault("cut_after", a)
                    self.cut(rst=False)  # FIN: the client got every byte passed
                    return False
                n = min(n, a.cut_after - self.body)
            if a.trickle_rate and not self.trickling and self.answer >= a.trickle_after:
                if a.trickle_connections == 0 or COUNTS["trickle"] < a.trickle_connections:
                    COUNTS["trickle"] += 1
                    self.trickling = True
                    fault("trickle", a)
            if a.trickle_rate and not self.trickling and self.answer < a.trickle_after:
                n = min(n, a.trickle_after - self.answer)
            if self.trickling:
                n = min(n, max(1, a.trickle_rate // 10))
            part, piece = piece[:n], piece[n:]
            if self.answer % BLOCK == 0 and is_data:
                r = self.rng.random()
                if r < a.cut:
                    fault("cut", a)
                    self.cut(self.rng.random() < 0.5)
                    return False
                if r < a.cut + a.stall:
                    fault("stall", a)
                    await asyncio.sleep(a.stall_secs)
                    self.cut(self.rng.random() < 0.5)
                    return False
                if r < a.cut + a.stall + a.flip:
                    fault("flip", a)
                    i = self.rng.randrange(len(part))
                    part = part[:i] + bytes([part[i] ^ 0x20]) + part[i + 1:]
            if self.trickling:
                await asyncio.sleep(len(part) / a.trickle_rate)
            await self.send(part)
            self.answer += len(part)
            if is_data:
                self.body += len(part)
        return True


async def handle(reader, writer, args):
    STATE["connections"] += 1
    STATE["open"] += 1
    mark()
    conn = Conn(STATE["connections"], args, reader, writer)
    try:
        server_reader, server = await asyncio.open_connection("127.0.0.1", args.target)
    except OSError:
        writer.close()
        STATE["open"] -= 1
        return
    conn.upstream = server.get_extra_info("sockname")[1]
    up = asyncio.ensure_future(conn.client_to_server(server))
    try:
        await conn.server_to_client(server_reader)
    except (ConnectionError, OSError):
        pass
    finally:
        up.cancel()
        server.close()
        if not writer.is_closing():
            writer.close()
        if conn.capture:
            conn.capture.close()
        STATE["open"] -= 1
        mark()


async def flusher(args):
    while True:
        await asyncio.sleep(0.1)
        if DIRTY[0]:
            write_stats(args.stats)


def switch(on, args):
    STATE["enabled"] = on
    write_stats(args.stats)


async def main(args):
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, switch, False, args)
    loop.add_signal_handler(signal.SIGUSR2, switch, True, args)
    srv = await asyncio.start_server(lambda r, w: handle(r, w, args), "127.0.0.1", args.port)
    write_stats(args.stats)
    asyncio.ensure_future(flusher(args))
    sys.stderr.write("fault_proxy: SEED %d\n" % args.seed)
    print("PORT %d" % srv.sockets[0].getsockname()[1], flush=True)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--cut", type=float, default=0.0)
    ap.add_argument("--stall", type=float, default=0.0)
    ap.add_argument("--stall-secs", type=float, default=3.0)
    ap.add_argument("--flip", type=float, default=0.0)
    ap.add_argument("--cut-after", type=int, default=0)
    ap.add_argument("--cut-count", type=int, default=1)
    ap.add_argument("--trickle-after", type=int, default=0)
    ap.add_argument("--trickle-rate", type=int, default=0)
    ap.add_argument("--trickle-connections", type=int, default=0)
    ap.add_argument("--match", default=None)
    ap.add_argument("--anywhere", action="store_true")
    ap.add_argument("--stats", default="")
    ap.add_argument("--capture", default="")
    ap.add_argument("--off", action="store_true", help="start with the faults off")
    a = ap.parse_args()
    if a.seed is None:
        a.seed = int.from_bytes(os.urandom(4), "big")
    STATE["seed"], STATE["enabled"] = a.seed, not a.off
    try:
        asyncio.run(main(a))
    except KeyboardInterrupt:
        pass
