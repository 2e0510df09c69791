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

Control endpoint (for tests and benchmarks that count what a bucket served;
no bucket can be named `_stats`, so it never shadows an S3 request):

* GET /_stats: {"bucket": {"requests": n, "bytes": n, "GetObject": n,
  "ListObjectsV2": n, ...}}: every request since the last reset, per bucket
  ("" for requests naming none), by S3 operation (GetObject, HeadObject,
  PutObject, DeleteObject, ListObjectsV2, ListObjects, HeadBucket,
  CreateBucket, ...; "Other" when unclassified), with the response body
  bytes written to the client ("bytes"), those of GetObject answers
  ("GetObject_bytes"), and the object bytes received by PutObject and
  UploadPart ("bytes_in");
* POST /_stats (or any request to /_stats/reset): zeroes them.

Counting is passive: every other request is served exactly as before.
"""

import argparse
import json
import os
import re
import sys
import threading
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


STATS = {}
STATS_LOCK = threading.Lock()


def operation(environ):
    """(bucket, S3 operation name) of a path-style request."""
    method = environ.get("REQUEST_METHOD", "GET")
    bucket, _, key = environ.get("PATH_INFO", "/").lstrip("/").partition("/")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    if not bucket:
        return "", "ListBuckets" if method == "GET" else "Other"
    if not key:
        if method == "GET":
            if query.get("list-type") == ["2"]:
                return bucket, "ListObjectsV2"
            if "location" in query:
                return bucket, "GetBucketLocation"
            if not query or set(query) <= {"prefix", "delimiter", "marker", "max-keys", "encoding-type"}:
                return bucket, "ListObjects"
            return bucket, "Other"
        if method == "POST" and "delete" in query:
            return bucket, "DeleteObjects"
        if query:
            return bucket, "Other"  # a bucket subresource (?policy, ?acl, ...)
        return bucket, {"HEAD": "HeadBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(
            method, "Other")
    if method == "PUT":
        if "partNumber" in query:
            return bucket, "UploadPart"
        if "HTTP_X_AMZ_COPY_SOURCE" in environ:
            return bucket, "CopyObject"
        return bucket, "PutObject"
    if method == "POST":
        return bucket, "CompleteMultipartUpload" if "uploadId" in query else "CreateMultipartUpload"
    return bucket, {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
        method, "Other")


def count_requests(app):
    """WSGI middleware: per-bucket counters of requests and bytes, at /_stats."""

    def add(bucket, field, n):
        with STATS_LOCK:
            per = STATS.setdefault(bucket, {"requests": 0, "bytes": 0})
            per[field] = per.get(field, 0) + n

    def wrapped(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path in ("/_stats", "/_stats/reset"):
            with STATS_LOCK:
                if path == "/_stats/reset" or environ.get("REQUEST_METHOD") == "POST":
                    STATS.clear()
                body = json.dumps(STATS).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        bucket, op = operation(environ)
        add(bucket, "requests", 1)
        add(bucket, op, 1)
        if op in ("PutObject", "UploadPart"):
            # The object's bytes (aws-chunked bodies say it in a header).
            size = environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH") or environ.get("CONTENT_LENGTH")
            add(bucket, "bytes_in", int(size) if (size or "").isdigit() else 0)

        def counted(chunks):
            try:
                for chunk in chunks:
                    add(bucket, "bytes", len(chunk))
                    if op == "GetObject":
                        add(bucket, "GetObject_bytes", len(chunk))
                    yield chunk
            finally:
                close = getattr(chunks, "close", None)
                if close:
                    close()

        return counted(app(environ, start_response))

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

    app = count_requests(pin_regions(DomainDispatcherApplication(create_backend_app)))
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    print("PORT %d" % srv.server_port, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
