"""What a webhook request is: Standard Webhooks signatures, secrets, and the SSRF rule.

Signatures are made by the ``standardwebhooks`` package (the reference implementation
receivers verify with): ``webhook-signature: v1,BASE64`` of HMAC-SHA256 over
``id.timestamp.body``, one ``v1,...`` per secret while a secret is being rotated.

SSRF: a webhook URL whose host resolves to a loopback, link-local, private, shared,
multicast or reserved address is refused unless the webhook says ``allow_private``.
The check runs when a webhook is added through the API and again for every connection
(:class:`GuardedResolver`), so a name that later resolves elsewhere is caught too.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import secrets
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from standardwebhooks.webhooks import Webhook

from smtprelay.config import WebhookSettings
from smtprelay.errors import RelayError
from smtprelay.events.outbox import Endpoint

SECRET_PREFIX = "whsec_"
# The ids of [[webhooks]] entries (API-made ones are "wh_" and random).
CONFIG_ID_PREFIX = "wh_cfg_"


class UnsafeUrl(RelayError):
    """The URL points where webhooks may not go (or cannot be resolved)."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def valid_secret(text: str) -> bool:
    if not text.startswith(SECRET_PREFIX):
        return False
    try:
        return len(base64.b64decode(text[len(SECRET_PREFIX) :] + "==", validate=False)) >= 16
    except ValueError:
        return False


def read_secrets(path: str) -> tuple[str, ...]:
    """The ``whsec_`` secrets of a ``secret_file`` (one per line; blank lines and
    ``#`` comments ignored). Raises ValueError naming what is wrong."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from None
    found = tuple(
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    )
    if not found:
        raise ValueError(f"{path}: no whsec_ secret in it")
    for secret in found:
        if not valid_secret(secret):
            raise ValueError(f"{path}: not a whsec_ secret (whsec_ and base64 of 16+ bytes)")
    return found


def configured(settings: WebhookSettings, now: float) -> Endpoint:
    """A [[webhooks]] table as an endpoint; its id stays the same while its URL and
    secret file do."""
    digest = hashlib.sha256(f"{settings.url}\n{settings.secret_file}".encode()).hexdigest()
    return Endpoint(
        id=CONFIG_ID_PREFIX + digest[:16],
        source="config",
        url=settings.url,
        events=settings.events,
        secrets=read_secrets(settings.secret_file),
        allow_private=settings.allow_private,
        created=now,
    )


def sign(secrets_: tuple[str, ...], msg_id: str, timestamp: int, body: bytes) -> str:
    when = datetime.fromtimestamp(timestamp, UTC)
    return " ".join(Webhook(s).sign(msg_id, when, body) for s in secrets_)


def headers(secrets_: tuple[str, ...], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets_, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": "smtprelay-webhooks",
    }


def forbidden_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or ip in ipaddress.ip_network("100.64.0.0/10")
    )


async def check_url(url: str, allow_private: bool) -> None:
    """Raise :class:`UnsafeUrl` unless ``url``'s host resolves only to public addresses
    (or ``allow_private``)."""
    host = urlsplit(url).hostname
    if host is None:
        raise UnsafeUrl(f"{url} has no host")
    if allow_private:
        return
    port = urlsplit(url).port or 443
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise UnsafeUrl(f"{host} does not resolve: {e.strerror or e}") from None
    for info in infos:
        address = str(info[4][0])
        if forbidden_address(address):
            raise UnsafeUrl(
                f"{host} resolves to {address}, a loopback, link-local or private "
                "address (set allow_private to allow it)"
            )


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing forbidden addresses (DNS rebinding after the check)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if forbidden_address(result["host"]):
                raise OSError(f"{host} resolves to {result['host']}, a private address")
        return results

    async def close(self) -> None:
        await self._inner.close()


def endpoint_json(e: Endpoint, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    shown = e.public()
    shown.update(extra or {})
    return shown
