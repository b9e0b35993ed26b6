"""A backlog for one saturated destination: parked QIDs, each message read from the spool
a bounded number of times, the limits kept, and others not starved."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from smtprelay import ids
from smtprelay.config import DeliverySettings
from smtprelay.delivery.destinations import UNPARK_BURST, Destinations
from smtprelay.delivery.scheduler import PARK_AFTER, START_BATCH, Scheduler
from smtprelay.envelope import Envelope, Recipient
from smtprelay.spool import Spool
from tests.unit.fakes import FakeDeliverer, FakeRouter, NoDelivery, RecordingNotices
from tests.unit.helpers import make_envelope

DATA = b"Subject: t\r\n\r\nhello\r\n"


class CountingSpool(Spool):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.loads: Counter[str] = Counter()

    def load(self, qid: str) -> Envelope:
        self.loads[qid] += 1
        return super().load(qid)


def _queue_for_slow(spool: Spool, scheduler: Scheduler, count: int) -> list[str]:
    """``count`` messages to slow.test, in the spool and due now (as after a restart:
    every attempt reads its message from the spool)."""
    qids = []
    for n in range(count):
        envelope = make_envelope(
            ids.new_id(), size=len(DATA), recipients=[Recipient(f"r{n}@slow.test")]
        )
        spool.commit(envelope, DATA)
        scheduler.enqueue(envelope.qid, 0.0)
        qids.append(envelope.qid)
    return qids


async def _settle(scheduler: Scheduler, transport: FakeDeliverer, total: int) -> None:
    """Until every message is delivering, waiting for a slot, or parked."""
    for _ in range(500):
        waiting = sum(scheduler.destinations.waiting.values())
        parked = len(scheduler.destinations.parked_qids)
        if (
            parked + waiting + transport.running["slow.test"] == total
            and scheduler.attempting == total - parked
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the scheduler did not settle")


def test_backlog_for_a_busy_destination_is_parked_not_polled(tmp_path: Path) -> None:
    per_destination = 2
    settings = DeliverySettings(per_destination_concurrency=per_destination, concurrency=10)
    transport = FakeDeliverer(gated=("slow.test",))

    async def main() -> None:
        spool = CountingSpool(tmp_path / "spool")
        scheduler = Scheduler(spool, FakeRouter(), transport, settings, notices=RecordingNotices())
        _queue_for_slow(spool, scheduler, 60)
        running = asyncio.get_running_loop().create_task(scheduler.run())
        await _settle(scheduler, transport, 60)
        assert transport.running["slow.test"] == per_destination
        # The line waiting for slots stays short (messages that were already past the
        # check when it filled may join it); the rest is parked, out of the active set.
        assert sum(scheduler.destinations.waiting.values()) < 20
        assert len(scheduler.destinations.parked_qids) > 30
        # Another destination is not held up by the backlog.
        fast = make_envelope(ids.new_id(), size=len(DATA), recipients=[Recipient("x@fast.test")])
        spool.commit(fast, DATA)
        scheduler.enqueue_new(fast, DATA)
        await asyncio.sleep(0.1)
        assert "x@fast.test" in transport.delivered
        # Nothing is re-read while it waits: a second look only after being let go.
        await asyncio.sleep(1.5)
        assert max(spool.loads.values()) <= 2
        for _ in range(60):
            transport.gate.release()
            await asyncio.sleep(0.01)
        for _ in range(200):
            if not spool.ids():
                break
            await asyncio.sleep(0.02)
        assert spool.ids() == []
        assert sorted(transport.delivered) == sorted(
            ["x@fast.test", *(f"r{n}@slow.test" for n in range(60))]
        )
        assert transport.most["slow.test"] == per_destination
        assert max(spool.loads.values()) <= 2 and scheduler.queued == 0
        running.cancel()
        spool.close()

    asyncio.run(main())


def test_parked_messages_answer_operator_actions(tmp_path: Path) -> None:
    settings = DeliverySettings(per_destination_concurrency=1, concurrency=10)
    transport = FakeDeliverer(gated=("slow.test",))

    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        scheduler = Scheduler(spool, FakeRouter(), transport, settings, notices=RecordingNotices())
        qids = _queue_for_slow(spool, scheduler, PARK_AFTER + 20)
        running = asyncio.get_running_loop().create_task(scheduler.run())
        await _settle(scheduler, transport, len(qids))
        parked = [q for q in qids if q in scheduler.destinations.parked_qids]
        assert len(parked) >= 2
        held, deleted = parked[0], parked[1]
        assert await scheduler.hold([held]) == {held: "held"}
        assert await scheduler.delete([deleted]) == {deleted: "deleted"}
        for _ in range(len(qids)):
            transport.gate.release()
            await asyncio.sleep(0.02)
        for _ in range(200):
            if spool.ids() == [held]:
                break
            await asyncio.sleep(0.02)
        assert spool.ids() == [held]  # held stays, deleted is gone, the rest delivered
        assert f"r{qids.index(deleted)}@slow.test" not in transport.delivered
        assert len(transport.delivered) == len(qids) - 2
        running.cancel()
        spool.close()

    asyncio.run(main())


def test_a_message_due_behind_a_full_line_is_parked_without_a_read(tmp_path: Path) -> None:
    """Known to the ledger (as every message is in the daemon), a message that falls due
    while its destination's line is full is parked by the loop itself: it is read once,
    when its turn comes, never just to be parked."""
    settings = DeliverySettings(per_destination_concurrency=2, concurrency=10)
    transport = FakeDeliverer(gated=("slow.test",))

    async def main() -> None:
        spool = CountingSpool(tmp_path / "spool")
        scheduler = Scheduler(spool, FakeRouter(), transport, settings, notices=RecordingNotices())
        first = _queue_for_slow(spool, scheduler, 40)
        running = asyncio.get_running_loop().create_task(scheduler.run())
        await _settle(scheduler, transport, len(first))
        assert sum(scheduler.destinations.waiting.values()) >= PARK_AFTER * 2  # the line is full
        later = []
        for n in range(30):
            envelope = make_envelope(
                ids.new_id(), size=len(DATA), recipients=[Recipient(f"late{n}@slow.test")]
            )
            spool.commit(envelope, DATA)
            scheduler.restore(envelope)  # as recovery does: counted, due now
            later.append(envelope.qid)
        await asyncio.sleep(0.2)
        assert all(q in scheduler.destinations.parked_qids for q in later)
        assert all(spool.loads[q] == 0 for q in later)
        for _ in range(len(first) + len(later)):
            transport.gate.release()
            await asyncio.sleep(0.01)
        for _ in range(200):
            if not spool.ids():
                break
            await asyncio.sleep(0.02)
        assert spool.ids() == [] and len(scheduler.ledger) == 0
        assert all(spool.loads[q] == 1 for q in later)
        assert sorted(transport.delivered) == sorted(
            [*(f"r{n}@slow.test" for n in range(40)), *(f"late{n}@slow.test" for n in range(30))]
        )
        running.cancel()
        spool.close()

    asyncio.run(main())


def test_the_loop_starts_attempts_in_batches_letting_others_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole queue due at once (a restart) is started START_BATCH at a time, with the
    event loop free for other callbacks (HTTP, health) in between."""

    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        scheduler = Scheduler(
            spool,
            FakeRouter(),
            NoDelivery(),
            DeliverySettings(),
            notices=RecordingNotices(),
            active_limit=10_000,
        )
        hold = asyncio.Event()

        async def attempt(qid: str) -> None:
            await hold.wait()

        monkeypatch.setattr(scheduler.attempts, "attempt_safely", attempt)
        for _ in range(3 * START_BATCH + 5):
            scheduler.enqueue(ids.new_id(), 0.0)
        running = asyncio.get_running_loop().create_task(scheduler.run())
        seen = []
        for _ in range(5):
            await asyncio.sleep(0)
            seen.append(scheduler.attempting)
        assert seen[:4] == [START_BATCH, 2 * START_BATCH, 3 * START_BATCH, 3 * START_BATCH + 5]
        hold.set()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        spool.close()

    asyncio.run(main())


def test_a_free_destination_lets_its_parked_line_go_in_bounded_bursts() -> None:
    destinations = Destinations(concurrency=10, per_destination=1)
    line = [f"Q{n}" for n in range(2 * UNPARK_BURST + 5)]
    for qid in line:
        destinations.park("slow.test", qid)
    destinations.parked_qids.discard("Q1")  # taken out (held) while parked: skipped
    pushed: list[str] = []
    # Nothing waits for the destination: a burst at a time, the caller told to go on.
    assert destinations.unpark("slow.test", pushed.append) is True
    assert pushed == [q for q in line[: UNPARK_BURST + 1] if q != "Q1"]
    assert destinations.unpark("slow.test", pushed.append) is True
    assert len(pushed) == 2 * UNPARK_BURST
    assert destinations.unpark("slow.test", pushed.append) is False
    assert pushed == [q for q in line if q != "Q1"]
    assert "slow.test" not in destinations.parked and not destinations.parked_qids
    assert destinations.let_go == set(pushed)


def test_a_busy_destination_lets_one_parked_message_go_per_delivery() -> None:
    destinations = Destinations(concurrency=10, per_destination=1)
    for n in range(3):
        destinations.park("slow.test", f"Q{n}")
    destinations.waiting["slow.test"] = 1
    pushed: list[str] = []
    assert destinations.unpark("slow.test", pushed.append) is False
    assert pushed == ["Q0"] and list(destinations.parked["slow.test"]) == ["Q1", "Q2"]
    assert destinations.unpark("slow.test", pushed.append) is False
    assert destinations.unpark("slow.test", pushed.append) is False
    assert pushed == ["Q0", "Q1", "Q2"] and "slow.test" not in destinations.parked
    assert destinations.unpark("slow.test", pushed.append) is False  # nothing parked
