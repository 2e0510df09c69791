"""GitLab's OAuth 2.0 provider for repofs's tests, built on Authlib.

Loaded by git_http_server.py with --oauth (one origin, as on GitLab, where
/oauth/* and the repositories share https://gitlab.example.com): requests
for /oauth/* and /_oauth* are answered by the Flask app below (through
Flask's WSGI test client, no second listener), and the git server accepts
a token for git (Basic `oauth2:<token>`, or Bearer) and for the API when
`token_ok` says it is a live access token.

Behaviour as GitLab documents and does (doc/api/oauth2.md, "Device
authorization grant flow"; config/initializers/doorkeeper.rb):
- POST /oauth/authorize_device (client_id, scope): device_code, user_code,
  verification_uri, verification_uri_complete, expires_in (--device-ttl,
  GitLab: 300) and interval (--device-interval, GitLab: 5);
- POST /oauth/token, grant_type=urn:ietf:params:oauth:grant-type:device_code:
  HTTP 400 authorization_pending until the user decides, slow_down when
  polled sooner than the interval (which then grows by 5 s, RFC 8628
  §3.5), access_denied, expired_token; on approval an access token
  (Bearer, expires_in --access-ttl, GitLab: 7200) and a refresh token;
- POST /oauth/token, grant_type=refresh_token: a new access token and a
  new refresh token. The old pair is revoked as Doorkeeper does with the
  `previous_refresh_token` column GitLab has (refresh_token_revoked_on_use):
  when the new access token is first used. `--revoke immediate` revokes
  it at the refresh itself (stricter than GitLab; the brief's reading).
  A revoked or unknown refresh token: HTTP 400 invalid_grant.
The application is public (non-confidential: no secret) with client id
--client-id and scopes read_repository read_api.

Control (tests only):
- POST /_oauth/approve?user_code=X, /_oauth/deny?user_code=X: the user's
  decision in the browser;
- POST /_oauth/slow_down_next: the next device-code poll answers slow_down
  whatever its timing (a client polling at the interval never sees one);
- POST /_oauth/expire: every access token expires now (refresh tokens stay);
- POST /_oauth/revoke: revokes every token (the user revoked the app);
- GET /_oauth/stats: counters (device_authorizations, polls, pending,
  slow_downs, denied, issued, refreshes, invalid_grant, revoked, rejected)
  and `poll_gaps`, the seconds between consecutive polls of a device code.
"""

import os
import threading
import time

os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # http on loopback

from authlib.common.security import generate_token  # noqa: E402
from authlib.integrations.flask_oauth2 import AuthorizationServer  # noqa: E402
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants  # noqa: E402
from authlib.oauth2.rfc6750 import BearerTokenGenerator  # noqa: E402
from authlib.oauth2.rfc8628 import (  # noqa: E402
    DeviceAuthorizationEndpoint,
    DeviceCodeGrant,
    DeviceCredentialDict,
)
from flask import Flask, jsonify, request  # noqa: E402

LOCK = threading.RLock()
CONF = {"client_id": "repofs-test", "access_ttl": 7200, "device_ttl": 300,
        "interval": 5, "revoke": "on-use", "base": "http://127.0.0.1"}
DEVICES = {}   # device_code -> DeviceCredentialDict (+ interval, last_poll)
DECISIONS = {}  # user_code -> bool (approved)
TOKENS = {}    # access_token -> Token
REFRESH = {}   # refresh_token -> Token
STATS = {"device_authorizations": 0, "polls": 0, "pending": 0, "slow_downs": 0,
         "denied": 0, "issued": 0, "refreshes": 0, "invalid_grant": 0, "revoked": 0,
         "rejected": 0, "poll_gaps": []}
FORCE = {"slow_down_next": False}


def count(key, n=1):
    with LOCK:
        STATS[key] += n


class Client(ClientMixin):
    """The registered application: public, device flow and refresh."""

    def __init__(self, client_id):
        self.client_id = client_id

    def get_client_id(self):
        return self.client_id

    def get_allowed_scope(self, scope):
        allowed = {"read_repository", "read_api"}
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_client_secret(self, client_secret):
        return False

    def check_endpoint_auth_method(self, method, endpoint):
        return method == "none"

    def check_grant_type(self, grant_type):
        return grant_type in (DeviceCodeGrant.GRANT_TYPE, "refresh_token")

    def check_response_type(self, response_type):
        return False

    def check_redirect_uri(self, redirect_uri):
        return False


class Token(TokenMixin):
    def __init__(self, client_id, scope, access_token, refresh_token, expires_in, previous):
        self.client_id, self.scope = client_id, scope
        self.access_token, self.refresh_token = access_token, refresh_token
        self.expires_at = time.time() + expires_in
        self.revoked = False
        self.used = False
        self.previous = previous  # the pair this one replaced (revoked on first use)

    def check_client(self, client):
        return client.get_client_id() == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return int(self.expires_at - time.time())

    def is_expired(self):
        return time.time() >= self.expires_at

    def is_revoked(self):
        return self.revoked


def query_client(client_id):
    return Client(client_id) if client_id == CONF["client_id"] else None


def save_token(token, req):
    with LOCK:
        old = getattr(req, "refresh_token", None)
        t = Token(req.client.get_client_id(), token.get("scope", ""), token["access_token"],
                  token.get("refresh_token"), token["expires_in"], old)
        TOKENS[t.access_token] = t
        if t.refresh_token:
            REFRESH[t.refresh_token] = t
        STATS["issued"] += 1


class Device(DeviceAuthorizationEndpoint):
    def get_verification_uri(self):
        return CONF["base"] + "/oauth/device"

    def create_endpoint_response(self, req):
        self.EXPIRES_IN, self.INTERVAL = CONF["device_ttl"], CONF["interval"]
        return super().create_endpoint_response(req)

    def save_device_credential(self, client_id, scope, data):
        with LOCK:
            cred = DeviceCredentialDict(client_id=client_id, scope=scope,
                                        expires_at=time.time() + data["expires_in"], **data)
            cred["last_poll"] = None
            DEVICES[data["device_code"]] = cred
            STATS["device_authorizations"] += 1


class DeviceGrant(DeviceCodeGrant):
    def query_device_credential(self, device_code):
        with LOCK:
            cred = DEVICES.get(device_code)
            if cred is not None:
                now = time.time()
                STATS["polls"] += 1
                if cred["last_poll"] is not None:
                    STATS["poll_gaps"].append(round(now - cred["last_poll"], 2))
                cred["previous_poll"], cred["last_poll"] = cred["last_poll"], now
            return cred

    def query_user_grant(self, user_code):
        with LOCK:
            if user_code not in DECISIONS:
                return None
            approved = DECISIONS[user_code]
            if not approved:
                STATS["denied"] += 1
            return ("user", approved)

    def should_slow_down(self, credential):
        with LOCK:
            prev, last = credential.get("previous_poll"), credential["last_poll"]
            slow = FORCE["slow_down_next"] or (prev is not None and last - prev < credential["interval"] - 0.05)
            FORCE["slow_down_next"] = False
            if slow:
                credential["interval"] += 5
                STATS["slow_downs"] += 1
            else:
                STATS["pending"] += 1
            return slow


class RefreshGrant(grants.RefreshTokenGrant):
    INCLUDE_NEW_REFRESH_TOKEN = True  # GitLab rotates refresh tokens
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]

    def authenticate_refresh_token(self, refresh_token):
        with LOCK:
            t = REFRESH.get(refresh_token)
            if t is None or t.revoked:
                STATS["invalid_grant"] += 1
                return None
            return t

    def authenticate_user(self, refresh_token):
        return "user"

    def revoke_old_credential(self, refresh_token):
        with LOCK:
            STATS["refreshes"] += 1
            if CONF["revoke"] == "immediate":
                refresh_token.revoked = True
            # else: when the new access token is first used (token_ok).


def create_app():
    app = Flask("oauth_server")
    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_token_generator("default", BearerTokenGenerator(
        access_token_generator=lambda **_: generate_token(40),
        refresh_token_generator=lambda **_: generate_token(48),
        expires_generator=lambda client, grant_type: CONF["access_ttl"]))
    server.register_grant(DeviceGrant)
    server.register_grant(RefreshGrant)
    server.register_endpoint(Device)

    @app.post("/oauth/authorize_device")
    def authorize_device():
        return server.create_endpoint_response("device_authorization")

    @app.post("/oauth/token")
    def token():
        return server.create_token_response()

    def decide(approved):
        with LOCK:
            code = request.args.get("user_code", "")
            if not any(d["user_code"] == code for d in DEVICES.values()):
                return jsonify(error="no such user code"), 404
            DECISIONS[code] = approved
        return jsonify(ok=True)

    @app.post("/_oauth/approve")
    def approve():
        return decide(True)

    @app.post("/_oauth/deny")
    def deny():
        return decide(False)

    @app.post("/_oauth/slow_down_next")
    def slow_down_next():
        with LOCK:
            FORCE["slow_down_next"] = True
        return jsonify(ok=True)

    @app.post("/_oauth/expire")
    def expire():
        """Every access token expires now (refresh tokens stay valid): a
        client that believes its token has time left gets 401."""
        with LOCK:
            for t in TOKENS.values():
                t.expires_at = min(t.expires_at, time.time())
        return jsonify(ok=True)

    @app.post("/_oauth/revoke")
    def revoke():
        with LOCK:
            for t in TOKENS.values():
                t.revoked = True
            STATS["revoked"] += 1
        return jsonify(ok=True)

    @app.get("/_oauth/stats")
    def stats():
        with LOCK:
            return jsonify(STATS)

    return app


APP = None


def configure(base, client_id, access_ttl, device_ttl, interval, revoke):
    global APP
    CONF.update(base=base, client_id=client_id, access_ttl=access_ttl,
                device_ttl=device_ttl, interval=interval, revoke=revoke)
    APP = create_app()


def route(handler):
    """Answers /oauth/* and /_oauth* for git_http_server's handler; False
    for anything else."""
    path = handler.path.split("?", 1)[0]
    if APP is None or not (path.startswith("/oauth/") or path.startswith("/_oauth/")):
        return False
    headers = {k: v for k, v in handler.headers.items() if k.lower() != "content-length"}
    resp = APP.test_client().open(handler.path, method=handler.command, headers=headers,
                                  data=handler.body, base_url=CONF["base"])
    handler.send_body(resp.status_code, resp.get_data(), resp.headers.get("Content-Type", "application/json"))
    return True


def token_ok(token):
    """Whether `token` is a live access token; its first use revokes the
    pair it replaced (Doorkeeper's refresh_token_revoked_on_use)."""
    if APP is None or not token:
        return False
    with LOCK:
        t = TOKENS.get(token)
        ok = t is not None and not t.revoked and not t.is_expired()
        if not ok:
            STATS["rejected"] += 1
            return False
        if not t.used:
            t.used = True
            if t.previous is not None:
                t.previous.revoked = True
        return True
