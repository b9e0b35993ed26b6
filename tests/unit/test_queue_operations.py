"""Scheduler operator actions (flush, hold, release, delete, bounce) on a real spool."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from smtprelay import ids
from smtprelay.config import DeliverySettings
from smtprelay.delivery.notices import Result, Spooled
from smtprelay.delivery.scheduler import OPERATOR_BOUNCE, Scheduler
from smtprelay.envelope import Envelope, QueueState, RecipientState
from smtprelay.spool import Spool, SpoolError
from tests.unit.fakes import NoDelivery, RecordingNotices
from tests.unit.helpers import make_envelope

DATA = b"Subject: t\r\n\r\nhello\r\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make_scheduler(tmp_path: Path, clock: Clock) -> tuple[Scheduler, Spool]:
    spool = Spool(tmp_path / "spool")
    unused = NoDelivery()  # router and transport: no delivery happens in these tests
    scheduler = Scheduler(
        spool, unused, unused, DeliverySettings(), notices=RecordingNotices(), clock=clock
    )
    return scheduler, spool


def queue(scheduler: Scheduler, spool: Spool, due: float) -> str:
    envelope = make_envelope(ids.new_id(), size=len(DATA), next_attempt=due)
    spool.commit(envelope, DATA)
    scheduler.restore(envelope)
    return envelope.qid


def test_hold_release_delete(tmp_path: Path) -> None:
    clock = Clock()

    async def main() -> None:
        scheduler, spool = make_scheduler(tmp_path, clock)
        qid = queue(scheduler, spool, clock.now + 300)
        assert await scheduler.hold([qid]) == {qid: "held"}
        assert spool.load(qid).state is QueueState.HOLD
        assert scheduler.queued == 0
        assert await scheduler.hold([qid]) == {qid: "held"}  # idempotent
        assert await scheduler.flush([qid]) == {qid: "on-hold"}
        assert await scheduler.release([qid]) == {qid: "released"}
        envelope = spool.load(qid)
        assert envelope.state is QueueState.ACTIVE and envelope.next_attempt == clock.now
        assert scheduler.queued == 1
        assert await scheduler.release([qid]) == {qid: "not-held"}
        assert await scheduler.delete([qid]) == {qid: "deleted"}
        assert spool.ids() == [] and scheduler.queued == 0
        missing = ids.new_id()
        for action in (
            scheduler.hold,
            scheduler.release,
            scheduler.delete,
            scheduler.bounce,
            scheduler.flush,
        ):
            assert await action([missing]) == {missing: "not-found"}
        spool.close()

    asyncio.run(main())


def test_flush_attempts_now_and_only_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flushed message's old heap entry is superseded: it never starts a second attempt."""
    clock = Clock()
    attempted: list[str] = []

    async def main() -> None:
        scheduler, spool = make_scheduler(tmp_path, clock)

        async def attempt(qid: str) -> None:
            attempted.append(qid)
            scheduler.schedule.forget(qid)

        monkeypatch.setattr(scheduler.attempts, "attempt_safely", attempt)
        first = queue(scheduler, spool, clock.now + 300)
        second = queue(scheduler, spool, clock.now + 300)
        running = asyncio.get_running_loop().create_task(scheduler.run())
        await asyncio.sleep(0.05)
        assert attempted == []
        assert await scheduler.flush([first]) == {first: "flushed"}
        await asyncio.sleep(0.05)
        assert attempted == [first]
        clock.now += 301  # the superseded entry of `first` falls due: skipped
        scheduler.wake()
        await asyncio.sleep(0.05)
        assert attempted == [first, second]
        held = queue(scheduler, spool, clock.now + 300)
        await scheduler.hold([held])
        assert await scheduler.flush() == {}  # all: nothing waiting (held stays held)
        await asyncio.sleep(0.05)
        assert attempted == [first, second]
        running.cancel()
        spool.close()

    asyncio.run(main())


def test_bounce_fails_pending_recipients_and_notifies(tmp_path: Path) -> None:
    clock = Clock()

    async def main() -> None:
        scheduler, spool = make_scheduler(tmp_path, clock)
        notices = RecordingNotices()
        scheduler.notices = notices
        qid = queue(scheduler, spool, clock.now + 300)
        assert await scheduler.bounce([qid]) == {qid: "bounced"}
        assert spool.ids() == []
        [(noticed, results)] = notices.calls
        assert noticed == qid
        assert [r.recipient.address for r in results] == ["bob@example.net", "carol@example.org"]
        for result in results:
            assert result.action == "failed" and result.status == "5.0.0"
            assert result.recipient.state is RecipientState.FAILED
            assert result.diagnostic == str(OPERATOR_BOUNCE)
        spool.close()

    asyncio.run(main())


def test_a_message_under_attempt_is_acted_on_when_the_attempt_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()

    async def main() -> None:
        scheduler, spool = make_scheduler(tmp_path, clock)
        qid = queue(scheduler, spool, clock.now)
        # Pretend run() started an attempt that defers the message when it ends.
        scheduler.schedule.due.pop(qid)
        release = asyncio.Event()

        async def attempt(qid: str) -> None:
            await release.wait()
            scheduler.schedule.push(qid, clock.now + 600)

        monkeypatch.setattr(scheduler.attempts, "attempt_safely", attempt)
        scheduler.start(qid)

        assert await scheduler.hold([qid]) == {qid: "after-attempt"}
        assert await scheduler.flush([qid]) == {qid: "attempting"}
        assert spool.load(qid).state is QueueState.ACTIVE  # untouched during the attempt
        release.set()
        await asyncio.wait_for(scheduler.operator.settled(), 5)
        assert not scheduler.operator.later
        assert spool.load(qid).state is QueueState.HOLD
        assert qid not in scheduler.schedule.due and scheduler.queued == 0
        spool.close()

    asyncio.run(main())


def test_listing_pages_through_every_message_with_its_state(tmp_path: Path) -> None:
    clock = Clock()

    async def main() -> None:
        scheduler, spool = make_scheduler(tmp_path, clock)
        waiting = queue(scheduler, spool, clock.now + 300)
        held = queue(scheduler, spool, clock.now + 300)
        await scheduler.hold([held])
        (spool.queue_dir / "stray.tmp").write_bytes(b"x")
        entries, following = await scheduler.listing(None, 10)
        assert [(e.envelope.qid, e.state) for e in entries] == [(waiting, "active"), (held, "hold")]
        assert following is None
        entries, following = await scheduler.listing(None, 1)
        assert [e.envelope.qid for e in entries] == [waiting] and following == waiting
        entries, following = await scheduler.listing(waiting, 1)
        assert [e.envelope.qid for e in entries] == [held] and following is None
        entries, _ = await scheduler.listing(None, 10, state="hold")
        assert [e.envelope.qid for e in entries] == [held]
        spool.close()

    asyncio.run(main())


class FullDiskNotices:
    async def after_attempt(
        self, envelope: Envelope, results: Sequence[Result], data: bytes | None, now: float
    ) -> list[Spooled]:
        raise SpoolError("cannot queue the notice: No space left on device", no_space=True)


def test_a_bounce_that_fails_part_way_leaves_the_message_queued(tmp_path: Path) -> None:
    """The notice cannot be written: the message must stay in the spool and in the
    schedule (not be forgotten until the next restart), and the operator sees why."""
    clock = Clock()

    async def main() -> None:
        scheduler, spool = make_scheduler(tmp_path, clock)
        scheduler.notices = FullDiskNotices()  # type: ignore[assignment]
        qid = queue(scheduler, spool, clock.now + 300)
        outcome = await scheduler.bounce([qid])
        assert outcome[qid].startswith("error: ") and "No space" in outcome[qid]
        assert spool.ids() == [qid]
        assert scheduler.queued == 1
        assert await scheduler.flush([qid]) == {qid: "flushed"}
        spool.close()

    asyncio.run(main())
