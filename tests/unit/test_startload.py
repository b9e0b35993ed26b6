"""The start-up load (smtprelay.delivery.loader): the queue is read after the daemon is
ready, in chunks, while new mail and operator actions already reach the scheduler --
every message found is delivered exactly once, held and deleted ones never."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

import pytest

from smtprelay import ids
from smtprelay.config import DeliverySettings
from smtprelay.delivery import loader
from smtprelay.delivery import scheduler as scheduler_module
from smtprelay.delivery.queuecounts import Ledger
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.envelope import QueueState, Recipient
from smtprelay.spool import Spool
from smtprelay.spool.recovery import Recovered, scan
from tests.unit.fakes import FakeDeliverer, FakeRouter, RecordingNotices
from tests.unit.helpers import make_envelope

DATA = b"Subject: t\r\n\r\nhello\r\n"


def _fill(spool: Spool, count: int) -> list[str]:
    qids = []
    for n in range(count):
        envelope = make_envelope(
            ids.new_id(),
            size=len(DATA),
            arrival=1000.0 + n,
            recipients=[Recipient(f"r{n}@dest{n % 3}.test")],
        )
        spool.commit(envelope, DATA)
        qids.append(envelope.qid)
    return qids


async def _until(condition: object, what: str) -> None:
    for _ in range(1000):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


def test_found_messages_are_delivered_once_beside_new_mail_and_operator_actions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "CHUNK", 40)
    count = 3 * loader.CHUNK + 17  # several chunks, the last one short

    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        found = _fill(spool, count)
        (spool.queue_dir / "not-a-qid.msg").write_bytes(b"junk")
        transport = FakeDeliverer()
        scheduler = Scheduler(
            spool, FakeRouter(), transport, DeliverySettings(), notices=RecordingNotices()
        )
        result = Recovered()
        names = scan(spool, result)
        assert len(names) == count and result.quarantined == ["not-a-qid"]
        scheduler.loading = len(names)
        scheduler.loaded.clear()
        # Before the loader reads them (the daemon serves already): an operator holds
        # the last message found and deletes the one before; new mail arrives.
        assert await scheduler.hold([found[-1]]) == {found[-1]: "held"}
        assert await scheduler.delete([found[-2]]) == {found[-2]: "deleted"}
        new = make_envelope(
            ids.new_id(), size=len(DATA), arrival=5000.0, recipients=[Recipient("new@dest0.test")]
        )
        spool.commit(new, DATA)
        scheduler.enqueue_new(new, DATA)
        adopted = asyncio.get_running_loop().create_task(scheduler.adopt(spool.ids()))
        running = asyncio.get_running_loop().create_task(scheduler.run())
        await loader.load(spool, names, scheduler, result)
        assert scheduler.loading == 0 and scheduler.loaded.is_set()
        # Start-up's results keep ``names`` to the end: its string of IDs is given back.
        assert list(names.chunks(1)) == [] and len(names) == count
        await adopted  # waited for the load, then found nothing unknown
        await _until(
            lambda: len(transport.delivered) >= count - 1 and not scheduler.attempting,
            "every message delivered",
        )
        delivered = Counter(transport.delivered)
        assert max(delivered.values()) == 1, "a message went out twice"
        assert set(delivered) == {
            *(f"r{n}@dest{n % 3}.test" for n in range(count - 2)),
            "new@dest0.test",
        }
        # The held one waits, counted as held; nothing else is left.
        assert spool.ids() == [found[-1]] and spool.load(found[-1]).state is QueueState.HOLD
        assert scheduler.ledger.counts() == {
            "active": 0,
            "deferred": 0,
            "hold": 1,
            "scheduled": 0,
            "rate-limited": 0,
        }
        assert result.count == count - 1  # the deleted one was gone when its turn came
        assert [q for q, _ in scheduler.ledger.page(None, 10)] == [found[-1]]
        running.cancel()
        spool.close()

    asyncio.run(main())


def test_a_read_older_than_an_operator_action_is_dropped(tmp_path: Path) -> None:
    """The loader read a message, then an operator held it before the chunk was
    applied: the loader's copy (not held) must not schedule it."""

    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        (qid,) = _fill(spool, 1)
        stale = spool.load(qid)
        scheduler = Scheduler(
            spool, FakeRouter(), FakeDeliverer(), DeliverySettings(), notices=RecordingNotices()
        )
        assert await scheduler.hold([qid]) == {qid: "held"}
        scheduler.restore(stale, found_at_start=True)
        assert scheduler.queued == 0 and scheduler.ledger.state(qid) == "hold"
        spool.close()

    asyncio.run(main())


def test_the_load_ends_while_every_spool_thread_of_the_attempts_is_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million deferrals keep the scheduler's spool threads busy for hours; the load
    reads in a thread of its own, so it is not queued behind them."""
    monkeypatch.setattr(loader, "CHUNK", 10)

    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        _fill(spool, 35)
        scheduler = Scheduler(
            spool, FakeRouter(), FakeDeliverer(), DeliverySettings(), notices=RecordingNotices()
        )
        result = Recovered()
        names = scan(spool, result)
        release = threading.Event()
        busy = [
            asyncio.ensure_future(scheduler.io(release.wait))
            for _ in range(scheduler_module.IO_THREADS + 1)
        ]
        try:
            # The guard turns a load stuck behind the busy threads into a failure.
            async with asyncio.timeout(60):
                await loader.load(spool, names, scheduler, result)
            assert scheduler.loading == 0 and result.count == 35 and scheduler.queued == 35
            assert not any(task.done() for task in busy)  # they were busy all along
        finally:
            release.set()
            await asyncio.gather(*busy)
            spool.close()

    asyncio.run(main())


def test_ledger_orders_merge_found_and_new_messages() -> None:
    """Found messages (older QIDs, in order) and new mail noted in between: listings
    and the oldest arrival are right before and after the merge."""
    ledger = Ledger()
    old = [make_envelope(ids.new_id(), arrival=100.0 + n) for n in range(5)]
    new = [make_envelope(ids.new_id(), arrival=200.0 + n) for n in range(3)]
    ledger.note(new[0])
    for e in old[:3]:
        ledger.note(e, found=True)
    ledger.note(new[1])
    for e in old[3:]:
        ledger.note(e, found=True)
    ledger.remove(old[1].qid)
    expected = [e.qid for e in (*old[:1], *old[2:], *new[:2])]
    assert [q for q, _ in ledger.page(None, 100)] == expected
    assert [q for q, _ in ledger.page(old[3].qid, 2)] == expected[3:5]
    assert ledger.oldest_arrival() == 100.0
    ledger.loaded()
    ledger.note(new[2])
    assert [q for q, _ in ledger.page(None, 100)] == [*expected, new[2].qid]
    ledger.remove(old[0].qid)
    assert ledger.oldest_arrival() == 102.0


def test_merge_of_interleaved_arrivals_keeps_arrival_order() -> None:
    ledger = Ledger()
    found = [make_envelope(ids.new_id(), arrival=a) for a in (10.0, 30.0)]
    late = make_envelope(ids.new_id(), arrival=20.0)  # a notice of an old message
    ledger.note(late)
    for e in found:
        ledger.note(e, found=True)
    ledger.loaded()
    assert ledger.oldest_arrival() == 10.0
    ledger.remove(found[0].qid)
    assert ledger.oldest_arrival() == 20.0
    ledger.remove(late.qid)
    assert ledger.oldest_arrival() == 30.0


def test_merge_after_the_oldest_entries_were_skipped_keeps_both_orders() -> None:
    """The merge extends the found order in place: what either order had skipped
    already (removed messages passed by the oldest-arrival look-up) is dropped, the rest
    kept in arrival and QID order."""
    ledger = Ledger()
    found = [make_envelope(ids.new_id(), arrival=100.0 + n) for n in range(4)]
    new = [make_envelope(ids.new_id(), arrival=200.0 + n) for n in range(3)]
    for e in found:
        ledger.note(e, found=True)
    for e in new:
        ledger.note(e)
    for e in (found[0], found[1], new[0]):
        ledger.remove(e.qid)
    assert ledger.oldest_arrival() == 102.0  # the found order's head moves past two
    ledger.loaded()
    assert [q for q, _ in ledger.page(None, 100)] == [e.qid for e in (*found[2:], *new[1:])]
    for e in (*found[2:], new[1]):
        assert ledger.oldest_arrival() == e.arrival
        ledger.remove(e.qid)
    assert ledger.oldest_arrival() == new[2].arrival
