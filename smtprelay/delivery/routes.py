"""Which next hop a message's recipients go to, and how to talk to it.

Order of precedence, like Postfix's transport maps before its sender-dependent relay
hosts before relayhost: ``[delivery.routes]`` (per recipient domain: a fixed
"host:port", or a table with a whole upstream) in any mode; then the first
``[[delivery.sender_routes]]`` entry that matches the message's SMTP user, HTTP token,
envelope sender or sender domain; then ``[delivery] mode = "smarthost"`` (every other
message through the smarthosts, in order); else the recipient domain's MX records.

Every upstream (smarthost, route table, sender route) is built from the same settings
(``config.SmarthostSettings``) by :func:`_upstream`; its destination key names the
hosts and the mailbox, so that two sender routes to the same provider with different
mailboxes are two destinations (their own connections and limits), and the same
mailbox reached from two tables is one.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smtprelay.addresses import domain_of
from smtprelay.config import (
    DeliverySettings,
    SenderRouteSettings,
    SmarthostSettings,
    UpstreamLimits,
)
from smtprelay.delivery.outcome import DeliveryError, Hop
from smtprelay.delivery.resolver import Resolver
from smtprelay.envelope import Envelope, SubmittedVia
from smtprelay.secretfiles import read_secret
from smtprelay.units import Endpoint

if TYPE_CHECKING:
    # Imported where an upstream uses XOAUTH2: authlib and httpx are ~15 MB of a
    # process that never needs them otherwise (bench/README.md, "memory of a million
    # queued").
    from smtprelay.delivery.oauth import TokenSource


class TLSPolicy(enum.Enum):
    NONE = "none"
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, no certificate check
    REQUIRED = "required"  # STARTTLS or defer, no certificate check
    VERIFY = "verify"  # STARTTLS or defer, certificate verified for the host name
    IMPLICIT = "implicit"  # TLS from the first byte (port 465), certificate verified


_UPSTREAM_TLS = {
    "starttls": TLSPolicy.VERIFY,
    "implicit": TLSPolicy.IMPLICIT,
    "none": TLSPolicy.NONE,
}


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = ""
    # auth = "xoauth2": the access token comes from here (the password is unused).
    oauth: TokenSource | None = None


@dataclass(frozen=True, slots=True)
class FromRewrite:
    """A sender route's ``rewrite_from``: the envelope sender and the From: header
    become ``mailbox``; ``keep_reply_to`` puts the original From: in a Reply-To:."""

    mailbox: str
    keep_reply_to: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    # Destination key: recipients with the same key share connections and limits.
    key: str
    tls: TLSPolicy
    fixed: tuple[Endpoint, ...] = ()  # empty: look up the MX of the domain
    credentials: Credentials | None = None
    # Which table chose it, for the log and `smtprelay route`: "smarthost",
    # 'route "example.com"', "sender route auth_user=scanner"; "" for MX delivery.
    name: str = ""
    rewrite: FromRewrite | None = None
    # Chosen by who sent the message (a sender route): logged per message.
    by_sender: bool = False
    # max_rate, daily_quota, max_connections, max_recipients_per_message (ratelimits.py).
    limits: UpstreamLimits | None = None


class Router:
    def __init__(
        self, settings: DeliverySettings, resolver: Resolver, previous: Router | None = None
    ) -> None:
        """Reads every password and OAuth secret file now (OSError names the key);
        ``previous``: the router this one replaces, whose cached tokens stay valid
        where neither the settings nor the secret files changed."""
        self.resolver = resolver
        self.domain_limits = dict(settings.domain_limits)
        self.default_tls = TLSPolicy(settings.tls)
        self.timeout = settings.connect_timeout
        self.routes: dict[str, Route] = {}
        for domain, entry in settings.routes.items():
            if isinstance(entry, Endpoint):
                self.routes[domain] = Route(
                    f"[{entry}]", self.default_tls, (entry,), name=f'route "{domain}"'
                )
            else:
                where = f'[delivery.routes."{domain}"]'
                self.routes[domain] = upstream_route(
                    entry, f'route "{domain}"', where, timeout=self.timeout
                )
        self.sender_routes: list[tuple[SenderRouteSettings, Route]] = []
        for number, sender_route in enumerate(settings.sender_routes, 1):
            rewrite = None
            if sender_route.rewrite_from:
                rewrite = FromRewrite(sender_route.rewrite_from, sender_route.keep_reply_to)
            route = upstream_route(
                sender_route,
                f"sender route {sender_route.label}",
                f"[[delivery.sender_routes]] #{number}",
                rewrite,
                timeout=self.timeout,
            )
            route = dataclasses.replace(route, by_sender=True)
            self.sender_routes.append((sender_route, route))
        self.smarthost: Route | None = None
        if settings.mode == "smarthost":
            self.smarthost = upstream_route(
                settings.smarthost,
                "smarthost",
                "[delivery.smarthost]",
                key_prefix="smarthost:",
                timeout=self.timeout,
            )
        if previous is not None:
            self._keep_tokens(previous)

    def _keep_tokens(self, previous: Router) -> None:
        old = {s.route: s for s in previous.token_sources()}
        for source in self.token_sources():
            before = old.get(source.route)
            if before is not None and source.same_as(before):
                source.adopt(before)

    def token_sources(self) -> Iterator[TokenSource]:
        for route in self.upstreams():
            if route.credentials is not None and route.credentials.oauth is not None:
                yield route.credentials.oauth

    def upstreams(self) -> Iterator[Route]:
        """Every configured upstream: routes, sender routes, the smarthost."""
        yield from self.routes.values()
        yield from (route for _, route in self.sender_routes)
        if self.smarthost is not None:
            yield self.smarthost

    def reloaded(self, settings: DeliverySettings) -> Router:
        """A router for reloaded settings with the same resolver (and DNS cache), and
        the cached OAuth tokens of upstreams that did not change."""
        return Router(settings, self.resolver, self)

    def route(self, domain: str, envelope: Envelope | None = None) -> Route:
        """The route for recipients in ``domain`` of ``envelope`` (None: of a message
        that no sender route matches)."""
        fixed = self.routes.get(domain)
        if fixed is not None:
            return fixed
        if envelope is not None:
            chosen = first_match([s for s, _ in self.sender_routes], envelope)
            if chosen is not None:
                return self.sender_routes[chosen][1]
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


def upstream_route(
    settings: SmarthostSettings,
    name: str,
    where: str,
    rewrite: FromRewrite | None = None,
    *,
    key_prefix: str = "",
    timeout: float = 30.0,
) -> Route:
    """The route to one configured upstream (smarthost, route table, sender route);
    reads its password or OAuth secret files (OSError names the key, ``where``)."""
    credentials = None
    hosts = ",".join(str(h) for h in settings.hosts)
    key = key_prefix + hosts if key_prefix else f"[{hosts}]"
    if settings.auth == "xoauth2" and settings.oauth2 is not None:
        from smtprelay.delivery.oauth import TokenSource

        source = TokenSource(name, where, settings.oauth2, settings.username, timeout=timeout)
        credentials = Credentials(settings.username, oauth=source)
    elif settings.username:
        password = read_secret(settings.password_file, f"{where} password_file")
        credentials = Credentials(settings.username, password)
    if credentials is not None and not key_prefix:
        key += f" as {credentials.username}"
    return Route(
        key,
        _UPSTREAM_TLS[settings.tls],
        settings.hosts,
        credentials,
        name,
        rewrite,
        limits=settings,
    )


def first_match(sender_routes: Sequence[SenderRouteSettings], envelope: Envelope) -> int | None:
    """The index of the first sender route that matches ``envelope``, if any."""
    return next((i for i, s in enumerate(sender_routes) if matches(s, envelope)), None)


def matches(sender_route: SenderRouteSettings, envelope: Envelope) -> bool:
    """Whether the one matcher of ``sender_route`` matches the message."""
    key, value = sender_route.matcher
    if key == "auth_user":
        return envelope.client.auth_user == value
    if key == "http_token":
        submission = envelope.submission
        return submission.via is SubmittedVia.HTTP and submission.token == value
    if not envelope.sender:  # notices (<>) go the default way
        return False
    if key == "sender":
        return envelope.sender.lower() == value.lower()
    return domain_of(envelope.sender).lower() == value
