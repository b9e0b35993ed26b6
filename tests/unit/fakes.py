"""Typed fakes of the delivery stage's Protocols (smtprelay/delivery/interfaces.py).

For unit tests of the scheduler; integration tests use the real router and transport
against SMTP sinks on loopback.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from smtprelay.config import BounceSettings, DeliverySettings
from smtprelay.delivery.interfaces import Deliverer, NextHops, NoticeSender
from smtprelay.delivery.notices import Result, Spooled
from smtprelay.delivery.outcome import Hop, Parcel, RecipientOutcome
from smtprelay.delivery.routes import Route, TLSPolicy
from smtprelay.envelope import Envelope
from smtprelay.replies import Reply

OK = Reply(250, "2.0.0", "ok")


class FakeRouter:
    """Every domain is its own destination, with no addresses to look up."""

    def route(self, domain: str, envelope: Envelope | None = None) -> Route:
        return Route(domain, TLSPolicy("none"))

    async def hops(self, route: Route, domain: str) -> list[Hop]:
        return []

    def reloaded(self, settings: DeliverySettings) -> FakeRouter:
        return self


class FakeDeliverer:
    """Accepts every recipient (``reply``); records them in ``delivered``. Deliveries to
    the destination keys in ``gated`` wait until the test releases ``gate`` once each;
    ``running`` and ``most`` count concurrent deliveries per destination key."""

    def __init__(self, reply: Reply = OK, gated: tuple[str, ...] = ()) -> None:
        self.reply = reply
        self.gated = gated
        self.gate = asyncio.Semaphore(0)
        self.running: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.delivered: list[str] = []

    async def deliver(
        self, route: Route, hops: list[Hop], parcel: Parcel
    ) -> list[RecipientOutcome]:
        self.running[route.key] += 1
        self.most[route.key] = max(self.most[route.key], self.running[route.key])
        if route.key in self.gated:
            await self.gate.acquire()
        self.running[route.key] -= 1
        self.delivered += parcel.recipients
        return [RecipientOutcome(a, self.reply, "sink[127.0.0.1]:25") for a in parcel.recipients]

    def apply(self, settings: DeliverySettings) -> None:
        pass

    async def close(self) -> None:
        pass


class NoDelivery:
    """For tests in which nothing is delivered: any attempt fails the test."""

    def route(self, domain: str, envelope: Envelope | None = None) -> Route:
        raise AssertionError(f"unexpected routing of {domain}")

    async def hops(self, route: Route, domain: str) -> list[Hop]:
        raise AssertionError(f"unexpected look-up of {domain}")

    def reloaded(self, settings: DeliverySettings) -> NoDelivery:
        return self

    async def deliver(
        self, route: Route, hops: list[Hop], parcel: Parcel
    ) -> list[RecipientOutcome]:
        raise AssertionError(f"unexpected delivery to {parcel.recipients}")

    def apply(self, settings: DeliverySettings) -> None:
        pass

    async def close(self) -> None:
        pass


class RecordingNotices:
    """Spools no notice; records the results each attempt reported, by QID."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Result]]] = []

    @property
    def results(self) -> list[Result]:
        return [r for _, results in self.calls for r in results]

    async def after_attempt(
        self, envelope: Envelope, results: Sequence[Result], data: bytes | None, now: float
    ) -> list[Spooled]:
        self.calls.append((envelope.qid, list(results)))
        return []

    def apply(self, settings: BounceSettings) -> None:
        pass


# mypy checks here that the fakes implement the Protocols.
_router: NextHops = FakeRouter()
_deliverer: Deliverer = FakeDeliverer()
_none: tuple[NextHops, Deliverer] = (NoDelivery(), NoDelivery())
_notices: NoticeSender = RecordingNotices()
