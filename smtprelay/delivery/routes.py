"""Which next hop a recipient domain goes to, and how to talk to it.

Order of precedence, like Postfix's transport maps before relayhost:
``[delivery.routes]`` (a fixed "host:port" per recipient domain) in any mode, then
``[delivery] mode = "smarthost"`` (every other message through the smarthosts, in order),
else the domain's MX records.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from smtprelay.config import DeliverySettings, UpstreamLimits
from smtprelay.delivery.outcome import DeliveryError, Hop
from smtprelay.delivery.resolver import Resolver
from smtprelay.units import Endpoint


class TLSPolicy(enum.Enum):
    NONE = "none"
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, no certificate check
    REQUIRED = "required"  # STARTTLS or defer, no certificate check
    VERIFY = "verify"  # STARTTLS or defer, certificate verified for the host name
    IMPLICIT = "implicit"  # TLS from the first byte (port 465), certificate verified


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class Route:
    # Destination key: recipients with the same key share connections and limits.
    key: str
    tls: TLSPolicy
    fixed: tuple[Endpoint, ...] = ()  # empty: look up the MX of the domain
    credentials: Credentials | None = None
    # max_rate, daily_quota, max_connections, max_recipients_per_message (ratelimits.py).
    limits: UpstreamLimits | None = None


class Router:
    def __init__(self, settings: DeliverySettings, resolver: Resolver) -> None:
        self.resolver = resolver
        self.routes = dict(settings.routes)
        self.domain_limits = dict(settings.domain_limits)
        self.default_tls = TLSPolicy(settings.tls)
        self.smarthost: Route | None = None
        if settings.mode == "smarthost":
            smarthost = settings.smarthost
            credentials = None
            if smarthost.username:
                credentials = Credentials(smarthost.username, read_secret(smarthost.password_file))
            tls = {
                "starttls": TLSPolicy.VERIFY,
                "implicit": TLSPolicy.IMPLICIT,
                "none": TLSPolicy.NONE,
            }[smarthost.tls]
            self.smarthost = Route(
                "smarthost:" + ",".join(str(h) for h in smarthost.hosts),
                tls,
                smarthost.hosts,
                credentials,
                smarthost,
            )

    def reloaded(self, settings: DeliverySettings) -> Router:
        """A router for reloaded settings with the same resolver (and DNS cache)."""
        return Router(settings, self.resolver)

    def route(self, domain: str) -> Route:
        fixed = self.routes.get(domain)
        if fixed is not None:
            return Route(f"[{fixed}]", self.default_tls, (fixed,))
        if self.smarthost is not None:
            return self.smarthost
        return Route(domain, self.default_tls, limits=self.domain_limits.get(domain))

    async def hops(self, route: Route, domain: str) -> list[Hop]:
        """Addresses to try in order; raises DeliveryError (DNS failures, null MX ...)."""
        if not route.fixed:
            return await self.resolver.mail_exchangers(domain)
        hops: list[Hop] = []
        error: DeliveryError | None = None
        for endpoint in route.fixed:
            try:
                hops += await self.resolver.host_hops(endpoint)
            except DeliveryError as e:  # one smarthost's name failing must not stop failover
                error = e
        if not hops and error is not None:
            raise error
        return hops


def read_secret(path: str) -> str:
    """One line from a file; the trailing newline is not part of the secret."""
    try:
        with open(Path(path), encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as e:
        raise OSError(e.errno, f"[delivery.smarthost] password_file {path}: {e.strerror}") from None
