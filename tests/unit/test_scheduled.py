"""Scheduled sends (``send_at``), cancel and reschedule in the scheduler, on a real spool
with the fakes of the delivery Protocols."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from smtprelay import ids
from smtprelay.config import DeliverySettings
from smtprelay.delivery.notices import Result
from smtprelay.delivery.outcome import Hop, Parcel, RecipientOutcome
from smtprelay.delivery.routes import Route
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.envelope import Envelope, QueueState, Recipient, RecipientState
from smtprelay.queueops import CancelResult, QueueOperations, RecipientCancel
from smtprelay.replies import Reply
from smtprelay.spool import Spool
from tests.unit.fakes import OK, FakeDeliverer, FakeRouter, NoDelivery, RecordingNotices
from tests.unit.helpers import make_envelope

DATA = b"Subject: t\r\n\r\nhello\r\n"
NOW = 1_700_000_000.0
BY = "api token app"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class HalfDeferred:
    """Delivers to example.net at once; example.org waits for ``gate`` and is deferred."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.delivered: list[str] = []

    async def deliver(
        self, route: Route, hops: list[Hop], parcel: Parcel
    ) -> list[RecipientOutcome]:
        if route.key == "example.org":
            await self.gate.wait()
            return [
                RecipientOutcome(a, Reply(451, "4.3.0", "later"), "mx[127.0.0.1]:25")
                for a in parcel.recipients
            ]
        self.delivered += parcel.recipients
        return [RecipientOutcome(a, OK, "mx[127.0.0.1]:25") for a in parcel.recipients]

    def apply(self, settings: DeliverySettings) -> None:
        pass

    async def close(self) -> None:
        pass


def make(
    tmp_path: Path, clock: Clock, transport: object = None
) -> tuple[Scheduler, Spool, RecordingNotices]:
    spool = Spool(tmp_path / "spool")
    notices = RecordingNotices()
    scheduler = Scheduler(
        spool,
        FakeRouter(),
        transport or FakeDeliverer(),  # type: ignore[arg-type]
        DeliverySettings(),
        clock=clock,
        notices=notices,
    )
    return scheduler, spool, notices


def submit(scheduler: Scheduler, spool: Spool, **overrides: object) -> Envelope:
    fields: dict[str, object] = {"next_attempt": NOW}
    fields.update(overrides)
    envelope = make_envelope(ids.new_id(), size=len(DATA), **fields)
    spool.commit(envelope, DATA)
    scheduler.enqueue_new(envelope, DATA)
    return envelope


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):  # a safety net only: each turn is one pass of the loop
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never true: {what}")


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_the_scheduler_implements_queue_operations() -> None:
    """Statically checked by mypy (scheduler.py); here every member and parameter name
    of the Protocol exists on the Scheduler with the same kind (coroutine or not)."""
    members = [
        name
        for name in dir(QueueOperations)
        if not name.startswith("_") and callable(getattr(QueueOperations, name))
    ]
    assert {"cancel", "reschedule", "load", "listing", "enqueue_new"} <= set(members)
    for name in members:
        wanted = getattr(QueueOperations, name)
        if name == "clock":  # an injected callable on each Scheduler
            assert callable(make_scheduler_clock()) and make_scheduler_clock()() == NOW
            continue
        have = getattr(Scheduler, name)
        assert inspect.iscoroutinefunction(wanted) == inspect.iscoroutinefunction(have), name
        assert list(inspect.signature(wanted).parameters) == list(
            inspect.signature(have).parameters
        ), name


def make_scheduler_clock() -> Callable[[], float]:
    scheduler = Scheduler(
        Spool.__new__(Spool),
        FakeRouter(),
        FakeDeliverer(),
        DeliverySettings(),
        notices=RecordingNotices(),
        clock=Clock(),
    )
    return scheduler.clock


def test_a_scheduled_message_waits_for_its_send_at(tmp_path: Path) -> None:
    clock = Clock()
    transport = FakeDeliverer()

    async def main() -> None:
        scheduler, spool, _ = make(tmp_path, clock, transport)
        ops: QueueOperations = scheduler
        later = submit(scheduler, spool, send_at=NOW + 3600)
        now = submit(scheduler, spool, send_at=NOW - 60)  # in the past: at once
        running = asyncio.get_running_loop().create_task(scheduler.run())
        await until(lambda: spool.ids() == [later.qid], "the unscheduled one sent")
        assert ops.is_attempting(later.qid) is False
        assert len(transport.delivered) == 2 and await ops.load(now.qid) is None
        assert scheduler.ledger.counts()["scheduled"] == 1
        entries, _ = await ops.listing(None, 10, state="scheduled")
        assert [(e.envelope.qid, e.state) for e in entries] == [(later.qid, "scheduled")]
        assert await ops.flush() == {}  # a flush never sends a scheduled message early
        assert await ops.flush([later.qid]) == {later.qid: "scheduled"}
        await settle()
        assert len(transport.delivered) == 2
        clock.now = NOW + 3599
        scheduler.wake()
        await settle()
        assert len(transport.delivered) == 2
        clock.now = NOW + 3600
        scheduler.wake()
        await until(lambda: spool.ids() == [], "the scheduled one sent")
        assert len(transport.delivered) == 4
        assert scheduler.ledger.counts()["scheduled"] == 0
        running.cancel()
        spool.close()

    asyncio.run(main())


def test_restore_honours_send_at_and_hold_keeps_it(tmp_path: Path) -> None:
    clock = Clock()

    async def main() -> None:
        scheduler, spool, _ = make(tmp_path, clock, NoDelivery())
        envelope = make_envelope(ids.new_id(), size=len(DATA), next_attempt=NOW, send_at=NOW + 600)
        spool.commit(envelope, DATA)
        scheduler.restore(spool.load(envelope.qid))
        assert scheduler.ledger.state(envelope.qid) == "scheduled"
        assert await scheduler.hold([envelope.qid]) == {envelope.qid: "held"}
        assert scheduler.ledger.counts()["scheduled"] == 0
        assert await scheduler.release([envelope.qid]) == {envelope.qid: "released"}
        # Released, but still before its send time: scheduled again, nothing attempted
        # (NoDelivery fails the test on any attempt).
        assert scheduler.ledger.state(envelope.qid) == "scheduled"
        running = asyncio.get_running_loop().create_task(scheduler.run())
        await settle()
        assert spool.ids() == [envelope.qid]
        running.cancel()
        spool.close()

    asyncio.run(main())


def test_cancel_before_the_attempt_removes_it_without_a_notice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    transport = FakeDeliverer()

    async def main() -> None:
        scheduler, spool, notices = make(tmp_path, clock, transport)
        envelope = submit(scheduler, spool, send_at=NOW + 60)
        with caplog.at_level(logging.INFO, logger="smtprelay.mail"):
            answer = await scheduler.cancel(envelope.qid, BY)
        assert answer == [
            RecipientCancel("bob@example.net", CancelResult.CANCELED),
            RecipientCancel("carol@example.org", CancelResult.CANCELED),
        ]
        assert spool.ids() == [] and len(scheduler.ledger) == 0 and scheduler.queued == 0
        assert f"{envelope.qid}: canceled by {BY}" in caplog.text
        assert await scheduler.cancel(envelope.qid, BY) is None  # no longer queued
        assert await scheduler.cancel("not-a-qid", BY) is None
        running = asyncio.get_running_loop().create_task(scheduler.run())
        clock.now += 3600
        scheduler.wake()
        await settle()
        assert transport.delivered == [] and notices.results == []
        running.cancel()
        spool.close()

    asyncio.run(main())


def test_cancel_during_an_attempt_cancels_what_it_leaves_pending(tmp_path: Path) -> None:
    clock = Clock()
    transport = HalfDeferred()

    async def main() -> None:
        scheduler, spool, notices = make(tmp_path, clock, transport)
        envelope = submit(scheduler, spool)
        running = asyncio.get_running_loop().create_task(scheduler.run())
        await until(lambda: transport.delivered == ["bob@example.net"], "half delivered")
        assert scheduler.is_attempting(envelope.qid)
        answer = await scheduler.cancel(envelope.qid, BY)
        assert answer == [
            RecipientCancel("bob@example.net", CancelResult.TOO_LATE, "delivered"),
            RecipientCancel("carol@example.org", CancelResult.PENDING),
        ]
        # Durable before the answer: a crash now still ends in the cancel.
        assert spool.load(envelope.qid).cancel_requested_by == BY
        transport.gate.set()  # carol is deferred by the attempt: canceled instead
        await until(lambda: spool.ids() == [], "the message removed")
        assert len(scheduler.ledger) == 0 and scheduler.queued == 0
        assert [(r.recipient.address, r.action) for r in notices.results] == [
            ("bob@example.net", "relayed")
        ]  # and nothing about carol
        running.cancel()
        spool.close()

    asyncio.run(main())


def test_a_cancel_requested_before_a_crash_is_applied_on_restart(tmp_path: Path) -> None:
    clock = Clock()

    async def main() -> None:
        scheduler, spool, notices = make(tmp_path, clock, NoDelivery())
        envelope = make_envelope(
            ids.new_id(), size=len(DATA), next_attempt=NOW, cancel_requested_by=BY
        )
        envelope.recipients[0].state = RecipientState.DELIVERED
        spool.commit(envelope, DATA)
        scheduler.restore(spool.load(envelope.qid))
        running = asyncio.get_running_loop().create_task(scheduler.run())
        await until(lambda: spool.ids() == [], "canceled on its first look")
        assert notices.results == []
        running.cancel()
        spool.close()

    asyncio.run(main())


def test_reschedule_moves_only_a_message_not_attempted_yet(tmp_path: Path) -> None:
    clock = Clock()
    transport = FakeDeliverer()

    async def main() -> None:
        scheduler, spool, _ = make(tmp_path, clock, transport)
        envelope = submit(scheduler, spool, send_at=NOW + 3600)
        assert await scheduler.reschedule(envelope.qid, NOW + 60) == "rescheduled"
        assert spool.load(envelope.qid).send_at == NOW + 60
        held = submit(scheduler, spool, send_at=NOW + 3600)
        await scheduler.hold([held.qid])
        assert await scheduler.reschedule(held.qid, NOW) == "on-hold"
        tried = make_envelope(
            ids.new_id(),
            size=len(DATA),
            attempts=1,
            state=QueueState.DEFERRED,
            next_attempt=NOW + 900,
        )
        spool.commit(tried, DATA)
        scheduler.restore(tried)
        assert await scheduler.reschedule(tried.qid, NOW) == "attempted"
        assert await scheduler.reschedule(ids.new_id(), NOW) == "not-found"
        running = asyncio.get_running_loop().create_task(scheduler.run())
        await settle()
        assert transport.delivered == []
        clock.now = NOW + 60
        scheduler.wake()
        await until(lambda: envelope.qid not in spool.ids(), "sent at its new time")
        assert sorted(spool.ids()) == sorted([held.qid, tried.qid])
        running.cancel()
        spool.close()

    asyncio.run(main())


def test_notices_never_report_a_canceled_recipient(tmp_path: Path) -> None:
    from smtprelay.config import BounceSettings
    from smtprelay.delivery.notices import Notices

    spool = Spool(tmp_path / "spool")
    notices = Notices(spool, BounceSettings(), "relay.test", 86400.0)
    envelope = make_envelope(ids.new_id(), size=len(DATA))
    spool.commit(envelope, DATA)
    canceled = Recipient("bob@example.net", state=RecipientState.CANCELED)
    result = Result(canceled, "failed", "5.0.0", "550 5.0.0 x")
    assert asyncio.run(notices.after_attempt(envelope, [result], DATA, NOW)) == []
    assert spool.ids() == [envelope.qid]  # no notice spooled beside it
    spool.close()
