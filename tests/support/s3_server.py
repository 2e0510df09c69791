#!/usr/bin/env python3
"""moto's S3-compatible server for repofs's tests: 127.0.0.1, a port chosen
by the OS, printed as `PORT <n>`. moto keeps S3's key semantics (`//`, `.`,
`..`, markers, 1000-byte keys, pagination, If-Match)."""

import sys
import time

from moto.server import ThreadedMotoServer


def main():
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    port = srv._server.server_port
    print("PORT %d" % port, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
