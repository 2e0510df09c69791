"""Fakes of the git hosts' REST/GraphQL tree APIs, for git_http_server.py.

Each fake answers from the bare repository itself (`git ls-tree` and
`git cat-file`), so sizes are the real blob sizes. A repository lives under
the server's --root at the path of its clone URL; its name for tokens and
counters is the last part of that path (`models.git`).

- GitHub (Enterprise) REST: GET /api/v3/repos/{owner}/{repo}/git/trees/{sha}
  [?recursive=<anything>], repository <root>/{owner}/{repo}.git.
- Bitbucket Server / Data Center: GET /rest/api/1.0/projects/{KEY}/repos/
  {slug}/browse[/{path}]?at=&start=&limit=, repository
  <root>/scm/{key lowercased}/{slug}.git.
- GitLab GraphQL: POST [/RELATIVE_ROOT]/api/graphql, the `repository {
  blobs(...) }` query, repository <root>[/RELATIVE_ROOT]/{fullPath}.git, with
  `path size rawSize oid` per blob. Queries are scored as GitLab scores
  them ([`gitlab_complexity`]) and refused above GitLab's limits: 200
  without a token, 250 with one.

Every API request is logged for /_api_log (`log_api`): its time, host kind,
status, `Host`, `Accept` and `X-GitHub-Api-Version` headers, and for GitLab the
number of paths and the complexity.

`route(h)` answers the request of handler `h` (a git_http_server.Handler,
used for `send_body`, `account`, `api_token_state`, `fault`) and returns
True, or returns False when the path is none of these APIs.
"""

import base64
import hashlib
import json
import math
import os
import re
import subprocess
import threading
import time
from urllib.parse import parse_qs, unquote, urlsplit

from graphql import parse as graphql_parse  # graphql-core (requirements.txt)
from graphql.utilities import value_from_ast_untyped

JSON = "application/json; charset=utf-8"
GH_TREES = re.compile(r"^/api/v3/repos/([^/]+)/([^/]+)/git/trees/([^/]+)$")
GH_REPOS = re.compile(r"^/api/v3/repos/([^/]+)/([^/]+)(/.*)?$")
BB_BROWSE = re.compile(r"^/rest/api/1\.0/projects/([^/]+)/repos/([^/]+)/browse(/.*)?$")
BB_ERR = "com.atlassian.bitbucket."
RATE_DOC = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
TREES_DOC = "https://docs.github.com/rest/git/trees#get-a-tree"
BB_AUTH_FAILED = "Authentication failed. Please check that the provided credentials are correct."

# The GitHub rate-limit window: `used` calls since `start`, reset hourly.
RATE = {"start": time.time(), "used": 0}
RATE_LOCK = threading.Lock()
# GitHub's secondary limit (opt-in, /_fault?mode=secondary&seconds=S): from
# the first API request after it is set, S seconds of 403 answers with
# `retry-after` and x-ratelimit-remaining above 0, as GitHub documents them
# (https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits).
SECONDARY = {"seconds": 0, "until": None}
# What /_api_log shows: one record per API request since the last reset.
API_LOG = []

# GitLab's maximum query complexity (app/graphql/gitlab_schema.rb:
# DEFAULT_MAX_COMPLEXITY for anonymous requests, AUTHENTICATED_MAX_COMPLEXITY).
GITLAB_MAX_ANONYMOUS = 200
GITLAB_MAX_AUTHENTICATED = 250
# GitlabSchema's default_max_page_size.
GITLAB_PAGE = 100


def log_api(h, kind, status, **extra):
    rec = {"t": time.time(), "kind": kind, "status": status, "host": h.headers.get("Host"),
           "accept": h.headers.get("Accept"),
           "version": h.headers.get("X-GitHub-Api-Version"), **extra}
    with RATE_LOCK:
        API_LOG.append(rec)


def git(rdir, *args, data=None):
    """stdout of a git command in bare repository `rdir`, None if it failed."""
    p = subprocess.run(["git", "--git-dir=" + rdir, *args], input=data,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return p.stdout if p.returncode == 0 else None


def resolve(rdir, rev, peel):
    """The object id of `rev^{peel}`, or None."""
    if not rev or rev.startswith("-"):
        return None
    out = git(rdir, "rev-parse", "--verify", "--quiet", "--end-of-options", "%s^{%s}" % (rev, peel))
    return out.decode().strip() if out else None


def ls_tree(rdir, treeish, recursive=False):
    """[(mode, type, oid, size or None, path)] in git's order."""
    out = git(rdir, "ls-tree", "-l", "-z", *(["-r", "-t"] if recursive else []),
              "--end-of-options", treeish)
    if out is None:
        return None
    entries = []
    for rec in out.split(b"\0"):
        if not rec:
            continue
        meta, path = rec.split(b"\t", 1)
        mode, typ, oid, size = meta.decode().split()
        entries.append((mode, typ, oid, None if size == "-" else int(size),
                        path.decode("utf-8", "replace")))
    return entries


def safe_parts(parts):
    return all(p and p not in (".", "..") for p in parts)


def route(h):
    path = urlsplit(h.path).path
    if path.startswith("/api/v3/"):
        return github(h, path) or True
    if path.startswith("/rest/api/1.0/"):
        return bitbucket(h, path) or True
    if path == h.server.gitlab_root + "/api/graphql":
        return gitlab(h) or True
    return False


def reply(h, status, obj, headers=None, ctype=JSON):
    """Sends JSON (or bytes), counted for the repo this request `h.account`ed."""
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    h.send_body(status, body, ctype, headers)


def bearer(h, *schemes):
    """The token of an `Authorization: <scheme> <token>` header, or None."""
    got = h.headers.get("Authorization", "")
    scheme, _, token = got.partition(" ")
    scheme, token = scheme.lower(), token.strip()
    if scheme == "basic" and scheme in schemes:
        try:
            return base64.b64decode(token).decode().split(":", 1)[-1]
        except Exception:
            return ""
    return token if scheme in schemes and token else None


# --- GitHub -----------------------------------------------------------------

def github(h, path):
    m = GH_REPOS.match(path)
    owner, name = (unquote(m.group(1)), unquote(m.group(2))) if m else (None, None)
    repo = name + ".git" if m else None
    if repo:
        h.account(repo, requests=1, api=True)
    srv = h.server
    rate = {"x-ratelimit-limit": str(srv.github_rate_limit), "x-ratelimit-resource": "core"}

    def send(status, obj, extra=None):
        with RATE_LOCK:
            rate["x-ratelimit-used"] = str(RATE["used"])
            rate["x-ratelimit-remaining"] = str(max(0, srv.github_rate_limit - RATE["used"]))
            rate["x-ratelimit-reset"] = str(int(RATE["start"] + 3600))
        log_api(h, "github", status)
        reply(h, status, obj, {**rate, **(extra or {})})

    fault = h.fault()
    if fault == "secondary":
        with RATE_LOCK:
            now = time.time()
            if SECONDARY["until"] is None:
                SECONDARY["until"] = now + SECONDARY["seconds"]
            left = SECONDARY["until"] - now
        if left > 0:
            return send(403, {"message": "You have exceeded a secondary rate limit. Please wait a"
                              " few minutes before you try again. If you reach out to GitHub"
                              " Support for help, please include the request ID.",
                              "documentation_url": RATE_DOC},
                        {"retry-after": str(math.ceil(left))})
    if fault == "api500":
        return send(500, {"message": "Server Error"})
    if fault == "ratelimit":
        return send(429, {"message": "You have exceeded a secondary rate limit. Please wait a"
                          " few minutes before you try again.", "documentation_url": RATE_DOC},
                    {"retry-after": "60"})
    token = bearer(h, "bearer", "token")
    known, allowed = h.api_token_state(repo, token)
    if token is not None and not known:
        return send(401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
    with RATE_LOCK:
        if time.time() >= RATE["start"] + 3600:
            RATE.update(start=time.time(), used=0)
        limited = RATE["used"] >= srv.github_rate_limit
        if not limited:
            RATE["used"] += 1
    if limited:
        who = "user ID 1" if token else h.client_address[0]
        return send(403, {"message": "API rate limit exceeded for %s." % who, "documentation_url": RATE_DOC})
    not_found = {"message": "Not Found", "documentation_url": TREES_DOC}
    t = GH_TREES.match(path)
    rdir = os.path.join(srv.root, owner, repo) if m and safe_parts([owner, repo]) else None
    if h.command != "GET" or not t or rdir is None or not os.path.isdir(rdir) or not allowed:
        return send(404, not_found)
    sha = unquote(t.group(3))
    tree = resolve(rdir, sha, "tree")
    if tree is None:
        if git(rdir, "rev-parse", "--verify", "--quiet", "HEAD") is None:
            return send(409, {"message": "Git Repository is empty."})
        if resolve(rdir, sha, "object"):  # exists, but no tree (a blob)
            return send(422, {"message": "Validation Failed", "errors": [
                {"resource": "Tree", "field": "sha", "code": "invalid"}]})
        return send(404, not_found)
    recursive = "recursive" in parse_qs(urlsplit(h.path).query, keep_blank_values=True)
    base = "http://%s/api/v3/repos/%s/%s/git" % (h.headers.get("Host", "127.0.0.1"), owner, name)
    entries = ls_tree(rdir, tree, recursive)
    truncated = recursive and len(entries) > srv.github_tree_limit
    if truncated:
        entries = entries[: srv.github_tree_limit]
    items = []
    for mode, typ, oid, size, p in entries:
        item = {"path": p, "mode": mode, "type": typ, "sha": oid}
        if typ == "blob":
            # --github-size-skew: an API that lies (tests that contents win).
            item["size"] = max(0, size + getattr(srv, "github_size_skew", 0))
            item["url"] = "%s/blobs/%s" % (base, oid)
        elif typ == "tree":
            item["url"] = "%s/trees/%s" % (base, oid)
        items.append(item)
    return send(200, {"sha": tree, "url": "%s/trees/%s" % (base, tree), "tree": items,
                      "truncated": bool(truncated)})


# --- Bitbucket Server / Data Center ------------------------------------------

def bb_path(components):
    p = {"components": components, "parent": "/".join(components[:-1]),
         "name": components[-1] if components else "", "toString": "/".join(components)}
    if components and "." in components[-1].lstrip("."):
        p["extension"] = components[-1].rsplit(".", 1)[1]
    return p


def bb_error(name, message):
    return {"errors": [{"context": None, "message": message, "exceptionName": BB_ERR + name}]}


def bitbucket(h, path):
    m = BB_BROWSE.match(path)
    if not m:
        return reply(h, 404, bb_error("rest.NotFoundException", "Not found"))
    key, slug = unquote(m.group(1)), unquote(m.group(2))
    repo = slug + ".git"
    h.account(repo, requests=1, api=True)
    fault = h.fault()
    if fault == "api500":
        return reply(h, 500, bb_error("ServiceException", "Injected server error"))
    if fault == "ratelimit":
        return reply(h, 429, bb_error("throttle.ThrottledException", "Rate limit exceeded"),
                     {"retry-after": "60"})
    rdir = None
    if safe_parts([key, slug]):
        for s in (slug, slug.lower()):
            d = os.path.join(h.server.root, "scm", key.lower(), s + ".git")
            if os.path.isdir(d):
                rdir = d
                break
    token = bearer(h, "bearer", "basic")
    known, allowed = h.api_token_state(repo, token)
    if (token is not None and not known) or not allowed:
        return reply(h, 401, bb_error("auth.IncorrectPasswordAuthenticationException", BB_AUTH_FAILED))
    if h.command != "GET":
        return reply(h, 405, bb_error("rest.MethodNotAllowedException", "Method not allowed"))
    if rdir is None:
        return reply(h, 404, bb_error("repository.NoSuchRepositoryException",
                                            "Repository %s/%s does not exist." % (key, slug)))
    q = parse_qs(urlsplit(h.path).query)
    at = q.get("at", [""])[0]
    try:
        start = max(0, int(q.get("start", ["0"])[0]))
        limit = max(1, min(int(q.get("limit", ["500"])[0]), h.server.page_max))
    except ValueError:
        return reply(h, 400, bb_error("rest.BadRequestException", "Bad paging parameters"))
    commit = resolve(rdir, at or "HEAD", "commit")
    if commit is None:
        return reply(h, 404, bb_error("commit.NoSuchCommitException",
                                            "Commit '%s' does not exist in repository '%s'." % (at, slug)))
    revision = at or (git(rdir, "symbolic-ref", "HEAD") or b"HEAD").decode().strip()
    comps = [c for c in unquote(m.group(3) or "").split("/") if c]
    kind, oid = "tree", commit + ":"
    if comps:
        found = [e for e in ls_tree(rdir, commit + ":" + "/".join(comps[:-1])) or [] if e[4] == comps[-1]]
        kind, oid = (found[0][1], found[0][2]) if found else (None, None)
    if kind not in ("tree", "blob"):
        return reply(h, 404, bb_error("content.NoSuchPathException",
                                            'The path "%s" does not exist at revision "%s"'
                                            % ("/".join(comps), revision)))

    def page(values):
        part = values[start: start + limit]
        last = start + len(part) >= len(values)
        out = {"size": len(part), "limit": limit, "isLastPage": last, "start": start}
        if not last:
            out["nextPageStart"] = start + len(part)
        return out, part

    if kind == "blob":  # a file: its lines, as Bitbucket's browse gives them
        data = git(rdir, "cat-file", "blob", oid) or b""
        if b"\0" in data:
            return reply(h, 200, {"binary": True, "path": bb_path(comps), "revision": revision})
        lines = data.decode("utf-8", "replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        out, part = page([{"text": t} for t in lines])
        out["lines"] = part
        return reply(h, 200, out)
    types = {"blob": "FILE", "tree": "DIRECTORY", "commit": "SUBMODULE"}
    values = []
    for mode, typ, eoid, size, name in ls_tree(rdir, oid):
        v = {"path": bb_path([name]), "contentId": eoid, "type": types[typ]}
        if typ == "blob":
            v["size"] = size
        values.append(v)
    children, part = page(values)
    children["values"] = part
    return reply(h, 200, {"path": bb_path(comps), "revision": revision, "children": children})


# --- GitLab GraphQL -----------------------------------------------------------

def gitlab(h):
    try:
        req = json.loads(h.body or b"{}")
        query, var = req.get("query") or "", req.get("variables") or {}
        full = var.get("p")
    except (ValueError, AttributeError):
        return reply(h, 400, {"errors": [{"message": "Invalid JSON"}]})
    parts = full.strip("/").split("/") if isinstance(full, str) else []
    repo = parts[-1] + ".git" if parts and parts[-1] else None
    if repo:
        h.account(repo, requests=1, api=True)
    fault = h.fault()
    if fault == "api500":
        return reply(h, 500, {"message": "500 Internal Server Error"})
    if fault == "ratelimit":
        return reply(h, 429, b"Retry later\n", {"retry-after": "60"}, "text/plain")
    if h.command != "POST":
        return reply(h, 404, {"message": "404 Not Found"})
    token = h.headers.get("PRIVATE-TOKEN") or bearer(h, "bearer")
    known, allowed = h.api_token_state(repo, token)
    if token is not None and not known:
        return reply(h, 401, {"error": "invalid_token"})
    if "blobs(" not in query:
        return reply(h, 200, {"errors": [{
            "message": "This fake GitLab answers only the repository.blobs query",
            "locations": [{"line": 1, "column": 1}]}]})
    try:
        score = gitlab_complexity(query, var, h.server.gitlab_path_cost)
    except Exception as e:  # a document graphql-core cannot parse
        return reply(h, 200, {"errors": [{"message": "Parse error: %s" % e}]})
    limit = GITLAB_MAX_AUTHENTICATED if token is not None else GITLAB_MAX_ANONYMOUS
    npaths = len(var.get("paths") or []) if isinstance(var.get("paths"), list) else 0
    if score > limit:
        # GitLab's answer (graphql-ruby's max_complexity analyzer), HTTP 200.
        log_api(h, "gitlab", 200, paths=npaths, complexity=score, refused=True)
        return reply(h, 200, {"errors": [{
            "message": "Query has complexity of %d, which exceeds max complexity of %d" % (score, limit)}]})
    log_api(h, "gitlab", 200, paths=npaths, complexity=score, refused=False)
    paths, after = var.get("paths"), var.get("after")
    if not isinstance(paths, list) or not isinstance(var.get("r"), str) or repo is None:
        return reply(h, 200, {"errors": [{
            "message": "Variable $p, $r or $paths was provided an invalid value",
            "locations": [{"line": 1, "column": 7}]}]})
    under = [p for p in h.server.gitlab_root.split("/") if p]
    rdir = os.path.join(h.server.root, *under, *parts[:-1], repo) if safe_parts(parts) else None
    if rdir is None or not os.path.isdir(rdir) or not allowed:
        return reply(h, 200, {"data": {"project": None}})
    commit = resolve(rdir, var["r"], "commit")
    found = []
    wanted = [p for p in paths if isinstance(p, str) and p and "\n" not in p]
    if commit and wanted:
        lines = "".join("%s:%s\n" % (commit, p) for p in wanted).encode()
        out = git(rdir, "cat-file", "--batch-check=%(objecttype) %(objectsize) %(objectname)",
                  data=lines) or b""
        for p, line in zip(wanted, out.decode().splitlines()):
            typ, _, rest = line.partition(" ")
            size, _, oid = rest.partition(" ")
            if typ == "blob":
                # As GitLab: `size` is the blob's, `rawSize` "the blob target
                # if stored externally" (an LFS object's size).
                raw = size
                if int(size) < 1024:
                    text = git(rdir, "cat-file", "-p", "%s:%s" % (commit, p)) or b""
                    if text.startswith(b"version https://git-lfs.github.com/spec/v1"):
                        for l in text.decode("utf-8", "replace").splitlines():
                            if l.startswith("size "):
                                raw = l[5:].strip()
                if h.server.gitlab_stale_oids:
                    # Opt-in lie: another blob's id and size (an answer for
                    # another version of the file).
                    oid = hashlib.sha1(oid.encode()).hexdigest()
                    size = raw = str(int(size) + 1)
                found.append({"path": p, "size": size, "rawSize": raw, "oid": oid})
    first = page_size(query, var)
    try:
        start = int(base64.b64decode(after).decode()) if after else 0
    except (ValueError, TypeError):
        start = 0
    nodes = found[start: start + first]
    end = start + len(nodes)
    info = {"hasNextPage": end < len(found),
            "endCursor": base64.b64encode(str(end).encode()).decode() if nodes else None}
    blobs = {"nodes": nodes, "pageInfo": info}
    return reply(h, 200, {"data": {"project": {"repository": {"blobs": blobs}}}})


# --- GitLab's query complexity -------------------------------------------------
#
# graphql-ruby's (legacy) QueryComplexity with GitLab's field costs, from
# app/graphql/types/base_field.rb (Types::BaseField): a field costs 1 plus
# its children; a field with a resolver costs its children plus the
# resolver's `resolver_complexity` (Resolvers::BaseResolver: 1, +1 with a
# `sort`, +5 with a `search`; Resolvers::BlobsResolver adds one per path),
# plus 1 when it calls Gitaly, and a connection grows by itself times
# min(first, last, 100) times the resolver's `complexity_multiplier`
# (BaseResolver: 0.01, so a full page doubles it), truncated to an integer.
# The fields below are this fake's approximation of the schema (only what
# the blobs query can select): `project` (Resolvers::ProjectResolver),
# `blobs` (Resolvers::BlobsResolver, calls_gitaly!), and the blob data
# fields, which call Gitaly. Everything else costs 1 plus its children.
# With `path_cost` > 1 (opt-in, --gitlab-path-cost) each path costs that
# much, as some releases scored paths far higher (gitlab-org/gitlab#576497).

GITLAB_RESOLVERS = {"project": {}, "blobs": {"gitaly": True, "connection": True, "per_path": True}}
GITLAB_GITALY_FIELDS = {"rawBlob", "rawTextBlob", "plainData", "base64EncodedBlob"}


def _args(field, variables):
    return {a.name.value: value_from_ast_untyped(a.value, variables) for a in field.arguments or []}


def _fields(selection_set):
    for sel in selection_set.selections if selection_set else []:
        if sel.kind == "field":
            yield sel
        elif sel.kind == "inline_fragment":
            yield from _fields(sel.selection_set)


def _cost(field, variables, path_cost):
    children = sum(_cost(f, variables, path_cost) for f in _fields(field.selection_set))
    name = field.name.value
    res = GITLAB_RESOLVERS.get(name)
    if res is None:
        return (2 if name in GITLAB_GITALY_FIELDS else 1) + children
    args = _args(field, variables)
    c = children + 1 + (1 if args.get("sort") else 0) + (5 if args.get("search") else 0)
    if res.get("per_path"):
        c += len(args.get("paths") or []) * path_cost
    if res.get("gitaly"):
        c += 1
    if res.get("connection"):
        limit = min(v for v in (args.get("first"), args.get("last"), GITLAB_PAGE) if isinstance(v, int))
        c += c * (limit * 0.01)
    return int(c)


def gitlab_complexity(query, variables, path_cost=1):
    """The complexity GitLab computes for `query` with `variables`."""
    doc = graphql_parse(query)
    total = 0
    for op in doc.definitions:
        if op.kind == "operation_definition":
            total += sum(_cost(f, variables or {}, path_cost) for f in _fields(op.selection_set))
    return total


def page_size(query, variables):
    """`first` of the blobs field (at most GitLab's page), 100 without it."""
    try:
        doc = graphql_parse(query)
    except Exception:
        return GITLAB_PAGE

    def find(sel_set):
        for f in _fields(sel_set):
            if f.name.value == "blobs":
                return f
            got = find(f.selection_set)
            if got:
                return got
        return None

    for op in doc.definitions:
        f = find(getattr(op, "selection_set", None))
        if f:
            first = _args(f, variables or {}).get("first")
            return min(first, GITLAB_PAGE) if isinstance(first, int) and first > 0 else GITLAB_PAGE
    return GITLAB_PAGE
