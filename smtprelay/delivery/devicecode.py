"""``smtprelay oauth login ROUTE``: the device authorization grant (RFC 8628).

A relay runs headless; the operator signs in as the mailbox on any other device: the
command shows a URL and a code, polls the token endpoint until the sign-in is done, and
stores the refresh token in ``refresh_token_file`` (mode 0600) for the refresh-token
grant to use from then on. Microsoft's identity platform supports this for SMTP.Send;
Google does not allow its mail scope with this flow (use a refresh token obtained
elsewhere, or a service account).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

from smtprelay.config import OAuth2Settings
from smtprelay.errors import RelayError
from smtprelay.secretfiles import write_secret

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class LoginFailed(RelayError):
    """The device flow did not end with a refresh token; the message says why."""


async def login(
    settings: OAuth2Settings, show: Callable[[str], None], *, http_timeout: float = 30.0
) -> str:
    """Run the flow; store and return the refresh token. ``show`` tells the operator.
    Raises LoginFailed (also for an endpoint that cannot be reached)."""
    try:
        return await _login(settings, show, http_timeout)
    except httpx2.HTTPError as e:
        raise LoginFailed(f"{type(e).__name__}: {e or 'no response'}") from None


async def _login(settings: OAuth2Settings, show: Callable[[str], None], http_timeout: float) -> str:
    url = settings.effective_device_url
    if not url:
        raise LoginFailed("device_authorization_url: not set (the provider has no default)")
    async with AsyncOAuth2Client(
        client_id=settings.client_id, scope=settings.effective_scope or None, timeout=http_timeout
    ) as client:
        response = await client.request(
            "POST",
            url,
            data={"client_id": settings.client_id, "scope": settings.effective_scope},
            withhold_token=True,  # no token yet: that is what this asks for
        )
        grant = _json(response)
        if "error" in grant or "device_code" not in grant:
            raise LoginFailed(f"device authorization refused: {_describe(grant)}")
        show(
            grant.get("message")
            or f"To sign in as the mailbox, open {grant.get('verification_uri')} "
            f"and enter the code {grant.get('user_code')}"
        )
        interval = float(grant.get("interval", 5))
        deadline = time.monotonic() + float(grant.get("expires_in", 900))
        while time.monotonic() < deadline:
            await asyncio.sleep(interval)
            try:
                token = await client.fetch_token(
                    settings.effective_token_url,
                    grant_type=DEVICE_CODE_GRANT,
                    device_code=grant["device_code"],
                    client_id=settings.client_id,
                )
            except OAuthError as e:
                if e.error == "authorization_pending":
                    continue
                if e.error == "slow_down":
                    interval += 5  # RFC 8628 3.5
                    continue
                raise LoginFailed(f"{e.error}: {e.description or 'sign-in failed'}") from None
            refresh = token.get("refresh_token")
            if not refresh:
                raise LoginFailed("the token endpoint issued no refresh token (offline_access?)")
            write_secret(settings.refresh_token_file, str(refresh))
            return str(refresh)
    raise LoginFailed("the code expired before the sign-in was done")


def _json(response: Any) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {"error": f"HTTP {response.status_code}, not JSON"}
    return data if isinstance(data, dict) else {"error": "not a JSON object"}


def _describe(body: dict[str, Any]) -> str:
    return f"{body.get('error')}: {body.get('error_description', '')}".rstrip(": ")
