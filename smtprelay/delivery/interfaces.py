"""What the scheduler needs from the rest of the delivery stage, as Protocols.

The scheduler decides *when* and *how often*; these two decide *where* and *how*:

* :class:`NextHops` (``routes.Router``): which route a recipient domain takes (its
  destination key, TLS policy, credentials), and the addresses to try for it.
* :class:`Deliverer` (``transport.Transport``): one message to one next hop, with a
  result per recipient.

Unit tests give the scheduler typed fakes of these (tests/unit/fakes.py); integration
tests use the real ones against SMTP sinks on loopback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from smtprelay.config import BounceSettings, DeliverySettings
from smtprelay.delivery.notices import Result, Spooled
from smtprelay.delivery.outcome import Hop, Parcel, RecipientOutcome
from smtprelay.delivery.routes import Route
from smtprelay.envelope import Envelope


class NextHops(Protocol):
    def route(self, domain: str, envelope: Envelope | None = None) -> Route:
        """The route for recipients in ``domain`` (of ``envelope``: its sender, SMTP user
        or HTTP token may choose a sender route); the same ``Route.key`` shares limits."""
        ...

    async def hops(self, route: Route, domain: str) -> list[Hop]:
        """Addresses to try in order; raises DeliveryError (DNS failure, null MX ...)."""
        ...

    def reloaded(self, settings: DeliverySettings) -> NextHops:
        """A router for reloaded settings, sharing this one's resolver (and its cache);
        raises OSError if a file it names cannot be read."""
        ...


class Deliverer(Protocol):
    async def deliver(
        self, route: Route, hops: list[Hop], parcel: Parcel
    ) -> list[RecipientOutcome]:
        """One outcome per recipient (a Reply each: 2xx delivered, 4xx later, 5xx
        failed); raises DeliveryError when no hop would take the message at all."""
        ...

    def apply(self, settings: DeliverySettings) -> None:
        """Reloaded settings, for the next delivery."""
        ...

    async def close(self) -> None:
        """Close idle connections (at shutdown)."""
        ...


class NoticeSender(Protocol):
    """``notices.Notices``: the DSNs an attempt calls for, spooled and handed back for
    the scheduler to schedule (it never calls back into the scheduler)."""

    async def after_attempt(
        self, envelope: Envelope, results: Sequence[Result], data: bytes | None, now: float
    ) -> list[Spooled]: ...

    def apply(self, settings: BounceSettings) -> None: ...
