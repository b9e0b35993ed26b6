"""A real OAuth 2.0 authorization server on loopback, and an SMTP upstream that checks
its tokens: the two peers of an ``auth = "xoauth2"`` upstream (Microsoft 365, Gmail).

:class:`TokenServer` is an aiohttp token endpoint (its own thread and loop) that issues
RS256-signed JWT access tokens with an expiry (joserfc, authlib's JOSE library) for
the client-credentials, refresh-token, JWT-bearer (RFC 7523, a Google service account)
and device-code (RFC 8628) grants, answers OAuth errors as RFC 6749 5.2 says
(``invalid_client``, ``invalid_grant`` ...), counts requests, and can be taken down and
brought back on the same port. :class:`OAuthSink` is a :class:`~sinks.Sink` whose AUTH
XOAUTH2 and OAUTHBEARER verify the bearer token's signature and expiry with the
server's key, and that it was issued for the mailbox named (an app-only token of the
client-credentials grant is good for the mailboxes the app was granted).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from tests.integration.sinks import Sink, free_port

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass
class TokenServer:
    """``client_id``/``client_secret``: the one confidential client; ``lifetime``: the
    seconds of each access token; ``app_mailboxes``: what an app-only token may use."""

    host: str = "127.0.0.1"
    client_id: str = "relay-app"
    client_secret: str = "first client secret"
    lifetime: int = 3600
    app_mailboxes: set[str] = field(default_factory=set)
    rotate_refresh_tokens: bool = False
    port: int = field(default_factory=lambda: free_port(["127.0.0.1"]))
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048))
    requests: list[str] = field(default_factory=list)  # grant types, in order
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> mailbox
    service_accounts: dict[str, RSAKey] = field(default_factory=dict)  # email -> key
    not_before: int = 0  # tokens issued earlier are refused (revoke_issued)
    device_mailbox: str = ""  # who approves the device code (oauth login)
    issued: int = 0  # access tokens issued
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/token"

    @property
    def device_url(self) -> str:
        return f"http://{self.host}:{self.port}/device"

    # --- control, from the test's thread ------------------------------------------------

    def start(self) -> TokenServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/token", self._token)
            app.router.add_post("/device", self._device)
            self._runner = web.AppRunner(app)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(self._listen())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "token server did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def down(self) -> None:
        """Stop listening: token requests find the port closed (connection refused)."""
        self._call(self._unlisten())

    def up(self) -> None:
        self._call(self._listen())

    def issue_refresh_token(self, mailbox: str) -> str:
        token = base64.urlsafe_b64encode(f"rt:{mailbox}:{time.monotonic_ns()}".encode()).decode()
        with self._lock:
            self.refresh_tokens[token] = mailbox
        return token

    def revoke(self, refresh_token: str) -> None:
        with self._lock:
            self.refresh_tokens.pop(refresh_token, None)

    def revoke_issued(self) -> None:
        """Every access token issued so far is refused from now on."""
        self.not_before = int(time.time()) + 1  # iat has one-second resolution

    def count(self, grant: str) -> int:
        with self._lock:
            return self.requests.count(grant)

    def validate(self, token: str, mailbox: str) -> bool:
        """Signed by us, not expired, not revoked, and good for ``mailbox``."""
        try:
            decoded = jwt.decode(token, self.key)
            jwt.JWTClaimsRegistry(exp={"essential": True}).validate(decoded.claims)
        except (JoseError, ValueError):
            return False
        claims = decoded.claims
        if float(claims.get("iat", 0)) < self.not_before:
            return False
        if claims.get("sub") == self.client_id:  # app-only (client credentials)
            return mailbox in self.app_mailboxes
        return bool(claims.get("sub") == mailbox)

    def _call(self, coro: Any) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()

    async def _unlisten(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    # --- the endpoints ------------------------------------------------------------------

    def _access_token(self, subject: str, scope: str) -> dict[str, Any]:
        now = int(time.time())
        with self._lock:
            self.issued += 1
            serial = self.issued
        claims = {
            "sub": subject,
            "scope": scope,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": f"t{serial}",
        }
        token = jwt.encode({"alg": "RS256"}, claims, self.key)
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = str(form.get("grant_type", ""))
        with self._lock:
            self.requests.append(grant)
        scope = str(form.get("scope", ""))
        if grant == "client_credentials":
            if (form.get("client_id"), form.get("client_secret")) != (
                self.client_id,
                self.client_secret,
            ):
                return _error(401, "invalid_client", "AADSTS7000215: Invalid client secret")
            return web.json_response(self._access_token(self.client_id, scope))
        if grant == "refresh_token":
            with self._lock:
                mailbox = self.refresh_tokens.get(str(form.get("refresh_token", "")))
            if form.get("client_id") != self.client_id or mailbox is None:
                return _error(400, "invalid_grant", "AADSTS70000: refresh token revoked")
            body = self._access_token(mailbox, scope)
            if self.rotate_refresh_tokens:
                body["refresh_token"] = self.issue_refresh_token(mailbox)
            return web.json_response(body)
        if grant == JWT_BEARER:
            return self._jwt_bearer(str(form.get("assertion", "")))
        if grant == DEVICE_CODE:
            if form.get("device_code") != "device-code-1" or not self.device_mailbox:
                return _error(400, "authorization_pending", "not approved yet")
            body = self._access_token(self.device_mailbox, scope)
            body["refresh_token"] = self.issue_refresh_token(self.device_mailbox)
            return web.json_response(body)
        return _error(400, "unsupported_grant_type", grant)

    def _jwt_bearer(self, assertion: str) -> web.Response:
        """RFC 7523 2.1: signed by a known service account, for us, not expired."""
        try:
            payload = assertion.split(".")[1]
            unverified = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (IndexError, ValueError):
            return _error(400, "invalid_grant", "malformed assertion")
        account = self.service_accounts.get(str(unverified.get("iss")))
        if account is None:
            return _error(400, "invalid_grant", "unknown service account")
        try:
            claims = jwt.decode(assertion, account).claims
            jwt.JWTClaimsRegistry(exp={"essential": True}).validate(claims)
        except (JoseError, ValueError) as e:
            return _error(400, "invalid_grant", f"bad assertion: {e}")
        if claims.get("aud") != self.url or not claims.get("sub"):
            return _error(400, "invalid_grant", "wrong audience or no subject")
        return web.json_response(self._access_token(str(claims["sub"]), str(claims["scope"])))

    async def _device(self, request: web.Request) -> web.Response:
        form = await request.post()
        with self._lock:
            self.requests.append("device_authorization")
        if form.get("client_id") != self.client_id:
            return _error(400, "invalid_client", "unknown client")
        return web.json_response(
            {
                "device_code": "device-code-1",
                "user_code": "ABCD-EFGH",
                "verification_uri": f"http://{self.host}:{self.port}/verify",
                "expires_in": 60,
                "interval": 1,
            }
        )


def _error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


class OAuthSink(Sink):
    """A Sink whose AUTH XOAUTH2 / OAUTHBEARER check tokens with ``server``;
    ``mechanisms`` limits what it offers (e.g. only OAUTHBEARER)."""

    def __init__(
        self,
        host: str,
        port: int,
        server: TokenServer,
        *,
        mechanisms: tuple[str, ...] = ("XOAUTH2", "OAUTHBEARER"),
        **kwargs: Any,
    ) -> None:
        # A password nobody has: AUTH is offered and required, PLAIN and LOGIN fail.
        super().__init__(host, port, auth=("-", "-"), auth_required=True, **kwargs)
        self.server = server
        self.mechanisms = mechanisms

    def _factory(self) -> Any:
        protocol = super()._factory()
        if isinstance(protocol, SMTP):
            # Access tokens are long (Microsoft's ~2 KB): RFC 4954 allows 12288 octets.
            # (aiosmtpd's per-command limits are a class attribute: this instance's own.)
            protocol.command_size_limit = 12288
            protocol.command_size_limits = collections.defaultdict(lambda: 12288)
            for name in ("XOAUTH2", "OAUTHBEARER", "PLAIN", "LOGIN"):
                if name not in self.mechanisms:
                    protocol._auth_methods.pop(name, None)
        return protocol

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        # base64("user=" USER ^A "auth=Bearer " TOKEN ^A ^A)
        fields = _decode(args).split("\x01")
        user = fields[0].removeprefix("user=")
        token = next((f.removeprefix("auth=Bearer ") for f in fields if f.startswith("auth=")), "")
        return self._check("XOAUTH2", user, token)

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        # base64("n,a=" USER "," ^A "auth=Bearer " TOKEN ^A ^A), RFC 7628 3.1
        gs2, *fields = _decode(args).split("\x01")
        user = next((p[2:] for p in gs2.split(",") if p.startswith("a=")), "")
        token = next((f.removeprefix("auth=Bearer ") for f in fields if f.startswith("auth=")), "")
        return self._check("OAUTHBEARER", user, token)

    def _check(self, mechanism: str, user: str, token: str) -> AuthResult:
        ok = bool(user) and self.server.validate(token, user)
        with self._lock:
            self.auth_attempts.append((mechanism, user, ok))
        if not ok:
            return AuthResult(success=False, message="535 5.7.3 Authentication unsuccessful")
        return AuthResult(success=True, auth_data=user)


def _decode(args: list[str]) -> str:
    try:
        return base64.b64decode(args[1]).decode()
    except (IndexError, ValueError):
        return ""
