#!/usr/bin/env python3
"""moto's S3-compatible server for repofs's tests: 127.0.0.1, a port chosen
by the OS, printed as `PORT <n>`. moto keeps S3's key semantics (`//`, `.`,
`..`, markers, 1000-byte keys, pagination, If-Match).

Two things are made closer to real S3 than moto alone:

* Keys may contain a newline (moto's routes use `.+`, which stops at one).
* Buckets live in their region: a request signed for another region than
  the bucket's gets what S3 answers, `301 PermanentRedirect` with the
  bucket's region in `x-amz-bucket-region` (and no body for HEAD).
  Unsigned requests are let through (their region is only in S3's host
  name, which a loopback endpoint does not have).
"""

import argparse
import os
import re
import sys
from urllib.parse import parse_qs

CREDENTIAL_REGION = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/s3/")


def allow_newlines_in_keys():
    # moto (re)imports its route table when a backend is created, so the
    # routes are patched where they become werkzeug rules.
    import moto.core.base_backend as base

    convert = base.convert_regex_to_flask_path

    def patched(path):
        return convert(path).replace('<regex(".+"):key_name>', '<regex("[\\s\\S]+"):key_name>')

    base.convert_regex_to_flask_path = patched


def bucket_region(name):
    """The region moto created bucket `name` in, or None."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    try:
        bucket = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets.get(name)
    except Exception:
        return None
    return getattr(bucket, "region_name", None) if bucket else None


def pin_regions(app):
    """WSGI middleware: S3's answer to a request signed for the wrong region."""

    def wrapped(environ, start_response):
        # Signed in a header, or presigned in the query string.
        presigned = parse_qs(environ.get("QUERY_STRING", "")).get("X-Amz-Credential", [""])[0]
        m = CREDENTIAL_REGION.search(environ.get("HTTP_AUTHORIZATION", "")) or (
            CREDENTIAL_REGION.search("Credential=" + presigned)
        )
        bucket = environ.get("PATH_INFO", "/").lstrip("/").split("/", 1)[0]
        region = bucket_region(bucket) if m and bucket else None
        if region and m.group(1) != region:
            body = b""
            if environ.get("REQUEST_METHOD") != "HEAD":
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
                    "<Code>PermanentRedirect</Code><Message>The bucket you are attempting "
                    "to access must be addressed using the specified endpoint. Please send "
                    "all future requests to this endpoint.</Message>"
                    f"<Endpoint>{bucket}.s3.{region}.amazonaws.com</Endpoint>"
                    f"<Bucket>{bucket}</Bucket><RequestId>0</RequestId><HostId>0</HostId></Error>"
                ).encode()
            start_response(
                "301 Moved Permanently",
                [
                    ("x-amz-bucket-region", region),
                    ("Content-Type", "application/xml"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        return app(environ, start_response)

    return wrapped


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iam-after", type=int, default=-1,
                    help="enforce IAM (access keys, policies) after this many requests")
    a = ap.parse_args()
    if a.iam_after >= 0:
        os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(a.iam_after)
    allow_newlines_in_keys()
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = pin_regions(DomainDispatcherApplication(create_backend_app))
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    print("PORT %d" % srv.server_port, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
