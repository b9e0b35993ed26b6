"""OAuth 2.0 access tokens for upstreams with ``auth = "xoauth2"`` (Microsoft 365, Gmail).

One :class:`TokenSource` per upstream keeps its access token in memory and asks the
token endpoint again only when less than a fifth of the token's life (at most
``REFRESH_MARGIN``) is left: the messages of a busy hour share one token request, and
deliveries that need a token at the same moment wait for the one request under way.
Secrets are read from their files when the source is made (at start and on SIGHUP);
a reload that changes neither the settings nor the files keeps the cached token.

Why authlib (one library, not msal + google-auth): the relay needs three grants --
client credentials and refresh token (RFC 6749) for Microsoft's identity platform and
any generic server, and the JWT bearer assertion (RFC 7523) of Google service accounts
with domain-wide delegation. authlib implements all three against any token endpoint,
parses the server's OAuth error (``invalid_grant: ...``) into one exception, and is
actively maintained; msal knows only Microsoft and google-auth only Google, so either
would leave the other provider (and a test's own server) to a second library.

A token request that fails -- endpoint unreachable, an HTTP error, or an OAuth error such
as a revoked refresh token -- raises DeliveryError with a 4xx reply (the message is
deferred and tried again, never bounced) and logs one line naming the route.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from authlib.oauth2.rfc7523 import JWTBearerGrant
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from smtprelay.config import OAuth2Settings
from smtprelay.delivery.errors import DeliveryError
from smtprelay.replies import Reply
from smtprelay.secretfiles import read_secret, write_secret

# A token is renewed when less than this (or a fifth of its life) is left.
REFRESH_MARGIN = 300.0
# Assumed life of a token whose response has no expires_in (RFC 6749 makes it optional).
DEFAULT_LIFETIME = 300.0
TOKEN_FAILED = Reply(451, "4.7.0", "OAuth2 token request failed")

log = logging.getLogger("smtprelay.delivery")
# httpx2 logs every request at INFO: the mail log says what matters (failures) itself.
logging.getLogger("httpx2").setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class Secrets:
    """What the files named by ``[...oauth2]`` held when the source was made."""

    client_secret: str = ""
    refresh_token: str = ""
    service_account: tuple[tuple[str, str], ...] = ()  # the JSON key's string fields


def read_secrets(settings: OAuth2Settings, where: str) -> Secrets:
    """The secret files' contents; OSError (or ValueError for a bad JSON key) names
    the key, e.g. ``[delivery.smarthost] oauth2.client_secret_file /etc/...: ...``
    (``where``: the table, as config errors name it)."""
    client_secret = refresh_token = ""
    account: tuple[tuple[str, str], ...] = ()
    if settings.client_secret_file:
        client_secret = read_secret(
            settings.client_secret_file, f"{where} oauth2.client_secret_file"
        )
    if settings.grant == "refresh_token":
        refresh_token = read_secret(
            settings.refresh_token_file, f"{where} oauth2.refresh_token_file"
        )
    if settings.grant == "service_account":
        account = _read_service_account(settings.service_account_file, where)
    return Secrets(client_secret, refresh_token, account)


def _read_service_account(path: str, where: str) -> tuple[tuple[str, str], ...]:
    key = f"{where} oauth2.service_account_file {path}"
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as e:
        raise OSError(e.errno, f"{key}: {e.strerror}") from None
    except ValueError:
        raise OSError(f"{key}: not a JSON key file") from None
    if not isinstance(raw, dict) or not all(
        isinstance(raw.get(k), str) for k in ("client_email", "private_key")
    ):
        raise OSError(f"{key}: a service account key needs client_email and private_key")
    return tuple((k, v) for k, v in raw.items() if isinstance(v, str))


class TokenSource:
    """Access tokens for one upstream mailbox; ``requests`` counts token requests."""

    def __init__(
        self,
        route: str,
        where: str,
        settings: OAuth2Settings,
        mailbox: str,
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.route = route  # for the log: "smarthost", "sender route auth_user=scanner"
        self.settings = settings
        self.mailbox = mailbox
        self.timeout = timeout
        self.clock = clock
        self.secrets = read_secrets(settings, where)
        self.requests = 0
        self._token = ""
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    def same_as(self, other: TokenSource) -> bool:
        """Same settings and same secrets: ``other``'s cached token is good for us."""
        return (self.settings, self.mailbox, self.secrets) == (
            other.settings,
            other.mailbox,
            other.secrets,
        )

    def adopt(self, other: TokenSource) -> None:
        """Take over the cached token of the source this one replaces (a reload)."""
        self._token, self._renew_at, self.requests = other._token, other._renew_at, other.requests

    def invalidate(self) -> None:
        """The upstream refused the token: the next delivery asks for a new one."""
        self._token, self._renew_at = "", 0.0

    async def token(self) -> str:
        """A valid access token, from the cache or a new request; raises DeliveryError."""
        if self._token and self.clock() < self._renew_at:
            return self._token
        async with self._lock:
            if self._token and self.clock() < self._renew_at:
                return self._token  # fetched by the delivery we waited for
            return await self._fetch()

    async def _fetch(self) -> str:
        self.requests += 1
        started = self.clock()
        try:
            response = await self.request()
        except OAuthError as e:
            detail = f"{e.error}: {e.description}" if e.description else str(e.error)
            raise self._failed(detail) from None
        except httpx2.HTTPStatusError as e:
            raise self._failed(f"HTTP {e.response.status_code} from the token endpoint") from None
        except httpx2.HTTPError as e:
            raise self._failed(f"{type(e).__name__}: {e or 'no response'}") from None
        except ValueError as e:  # a malformed response or key
            raise self._failed(f"unusable response or key: {e}") from None
        token = response.get("access_token")
        if not isinstance(token, str) or not token:
            raise self._failed("no access_token in the response")
        lifetime = response.get("expires_in")
        life = float(lifetime) if isinstance(lifetime, int | float | str) else DEFAULT_LIFETIME
        self._token = token
        self._renew_at = started + life - min(REFRESH_MARGIN, life / 5)
        rotated = response.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != self.secrets.refresh_token:
            self._keep_rotated(rotated)
        return token

    def _failed(self, detail: str) -> DeliveryError:
        log.warning(
            "oauth2: %s: token request to %s failed: %s",
            self.route,
            self.settings.effective_token_url,
            detail,
        )
        return DeliveryError(
            TOKEN_FAILED.with_text(f"{TOKEN_FAILED.text} ({self.route}: {detail})")
        )

    def _keep_rotated(self, refresh_token: str) -> None:
        """The endpoint issued a new refresh token (Microsoft rotates them): keep it,
        in memory and in refresh_token_file, so that a restart does not use the old."""
        self.secrets = Secrets(self.secrets.client_secret, refresh_token, ())
        try:
            write_secret(self.settings.refresh_token_file, refresh_token)
        except OSError as e:
            log.warning(
                "oauth2: %s: cannot save the new refresh token to %s: %s",
                self.route,
                self.settings.refresh_token_file,
                e.strerror or e,
            )

    async def request(self) -> Mapping[str, Any]:
        """One token request for the configured grant (no cache); authlib's errors."""
        settings, secrets = self.settings, self.secrets
        url = settings.effective_token_url
        async with AsyncOAuth2Client(
            client_id=settings.client_id or None,
            client_secret=secrets.client_secret or None,
            scope=settings.effective_scope or None,
            token_endpoint_auth_method="client_secret_post" if secrets.client_secret else "none",
            timeout=self.timeout,
        ) as client:
            if settings.grant == "client_credentials":
                token = await client.fetch_token(url, grant_type="client_credentials")
            elif settings.grant == "refresh_token":
                token = await client.refresh_token(url, refresh_token=secrets.refresh_token)
            else:
                token = await client.fetch_token(
                    url, grant_type=JWTBearerGrant.GRANT_TYPE, assertion=self._assertion(url)
                )
        return dict(token)

    def _assertion(self, url: str) -> str:
        """The signed JWT of a Google service account acting for ``mailbox``
        (domain-wide delegation: ``sub``), RFC 7523 section 2.1."""
        account = dict(self.secrets.service_account)
        header = {"alg": "RS256"}
        if account.get("private_key_id"):
            header["kid"] = account["private_key_id"]
        try:
            key = RSAKey.import_key(account["private_key"])
        except (JoseError, ValueError) as e:
            raise ValueError(f"the service account's private_key: {e}") from None
        assertion = JWTBearerGrant.sign(
            key,
            issuer=account["client_email"],
            audience=account.get("token_uri") or url,
            subject=self.mailbox,
            claims={"scope": self.settings.effective_scope},
            header=header,
            expires_in=3600,
        )
        return assertion.decode() if isinstance(assertion, bytes) else str(assertion)
