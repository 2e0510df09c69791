#!/usr/bin/env python3
"""moto's S3-compatible server for repofs's tests: 127.0.0.1, a port chosen
by the OS, printed as `PORT <n>`. moto keeps S3's key semantics (`//`, `.`,
`..`, markers, 1000-byte keys, pagination, If-Match)."""

import argparse
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iam-after", type=int, default=-1,
                    help="enforce IAM (access keys, policies) after this many requests")
    a = ap.parse_args()
    if a.iam_after >= 0:
        os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(a.iam_after)
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    port = srv._server.server_port
    print("PORT %d" % port, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
