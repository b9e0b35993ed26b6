"""The in-memory queue ledger: its own rules, and the scheduler keeping it equal to a
full spool scan across every transition (attempts, deferral, delivery, bounce, hold
during an attempt, release, delete, failed actions rolled back, start-up, adoption)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from smtprelay import ids
from smtprelay.config import DeliverySettings
from smtprelay.delivery.notices import Result, Spooled
from smtprelay.delivery.outcome import Hop, Parcel, RecipientOutcome
from smtprelay.delivery.queuecounts import Ledger
from smtprelay.delivery.routes import Route, TLSPolicy
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.envelope import Envelope, QueueState, Recipient, RecipientState
from smtprelay.inbound.address import domain_of
from smtprelay.queueview import spool_state
from smtprelay.replies import Reply
from smtprelay.spool import Spool, SpoolError
from smtprelay.web.queue import queue_summary
from tests.unit.fakes import RecordingNotices
from tests.unit.helpers import make_envelope

DATA = b"Subject: t\r\n\r\nhello\r\n"


def envelope(
    qid: str | None = None,
    *rcpts: str,
    arrival: float = 1000.0,
    state: QueueState = QueueState.ACTIVE,
) -> Envelope:
    return make_envelope(
        qid or ids.new_id(),
        size=len(DATA),
        arrival=arrival,
        state=state,
        recipients=[Recipient(r) for r in rcpts or ("a@one.test",)],
    )


# --- the ledger alone ---------------------------------------------------------------------


def test_counts_follow_notes_attempts_and_removals() -> None:
    ledger = Ledger()
    first = envelope(None, "a@one.test", "b@one.test", "c@two.test", arrival=50.0)
    second = envelope(None, "d@two.test", arrival=60.0)
    ledger.note(first)
    ledger.note(second)
    assert ledger.counts() == {
        "active": 2,
        "deferred": 0,
        "hold": 0,
        "scheduled": 0,
        "rate-limited": 0,
    }
    assert ledger.destinations(10) == [
        {"domain": "one.test", "recipients": 2, "messages": 1},
        {"domain": "two.test", "recipients": 2, "messages": 2},
    ]
    assert ledger.oldest_arrival() == 50.0

    first.state = QueueState.DEFERRED
    first.recipients[0].state = RecipientState.DELIVERED  # after a partial attempt
    ledger.note(first)
    assert ledger.counts() == {
        "active": 1,
        "deferred": 1,
        "hold": 0,
        "scheduled": 0,
        "rate-limited": 0,
    }
    assert ledger.recipients == Counter({"two.test": 2, "one.test": 1})
    ledger.attempting(first.qid, True)  # under attempt: shown as active
    assert ledger.counts() == {
        "active": 2,
        "deferred": 0,
        "hold": 0,
        "scheduled": 0,
        "rate-limited": 0,
    }
    ledger.note(first)  # rewritten during the attempt: still shown active
    assert ledger.state(first.qid) == "active"
    ledger.attempting(first.qid, False)
    assert ledger.state(first.qid) == "deferred"

    second.state = QueueState.HOLD
    ledger.note(second)
    assert ledger.counts() == {
        "active": 0,
        "deferred": 1,
        "hold": 1,
        "scheduled": 0,
        "rate-limited": 0,
    }
    ledger.remove(first.qid)
    ledger.remove(first.qid)  # twice: no harm
    ledger.attempting(first.qid, True)  # unknown: ignored
    assert ledger.counts() == {
        "active": 0,
        "deferred": 0,
        "hold": 1,
        "scheduled": 0,
        "rate-limited": 0,
    }
    assert ledger.destinations(10) == [{"domain": "two.test", "recipients": 1, "messages": 1}]
    assert ledger.oldest_arrival() == 60.0
    ledger.remove(second.qid)
    assert len(ledger) == 0 and ledger.oldest_arrival() is None
    assert ledger.destinations(10) == [] and not ledger.messages
    assert ledger._profile_ids == {}  # no profile outlives its messages


def test_oldest_arrival_out_of_order_and_after_compaction() -> None:
    ledger = Ledger()
    arrivals = [100.0, 101.0, 99.5, 102.0, 20.0]  # a worker's race, a notice of an old one
    made = [envelope(None, arrival=a) for a in arrivals]
    for e in made:
        ledger.note(e)
    assert ledger.oldest_arrival() == 20.0
    ledger.remove(made[4].qid)
    assert ledger.oldest_arrival() == 99.5
    ledger.remove(made[2].qid)
    assert ledger.oldest_arrival() == 100.0
    # Thousands come and go: the order lists shrink back, the answers stay right.
    for n in range(5000):
        e = envelope(None, arrival=200.0 + n)
        ledger.note(e)
        ledger.remove(e.qid)
    order = ledger._order
    assert len(order.by_qid) < 2000 and len(order.by_arrival) - order.head < 2000
    assert ledger.oldest_arrival() == 100.0
    assert [q for q, _ in ledger.page(None, 10)] == sorted(
        e.qid for e in (made[0], made[1], made[3])
    )


def test_pages_in_qid_order_with_filters() -> None:
    ledger = Ledger()
    made = [envelope(None, "x@one.test" if n % 2 else "y@two.test") for n in range(7)]
    for e in reversed(made):  # noted out of order: listed in QID order all the same
        ledger.note(e)
    qids = [e.qid for e in made]
    assert [q for q, _ in ledger.page(None, 3)] == qids[:3]
    assert [q for q, _ in ledger.page(qids[2], 3)] == qids[3:6]
    assert [q for q, _ in ledger.page(qids[5], 3)] == qids[6:]
    assert ledger.page(qids[6], 3) == []
    assert [q for q, _ in ledger.page(None, 10, domain="one.test")] == qids[1::2]
    assert ledger.page(None, 10, domain="nowhere.test") == []
    made[3].state = QueueState.HOLD
    ledger.note(made[3])
    assert ledger.page(None, 10, state="hold") == [(qids[3], "hold")]
    assert ledger.matching("hold", None) == 1
    assert ledger.matching(None, "one.test") == 3
    assert ledger.matching("active", "one.test") == 2
    assert ledger.matching(None, None) == 7
    ledger.remove(qids[0])
    ledger.note(made[0])  # removed and noted again: listed once
    assert [q for q, _ in ledger.page(None, 10)] == qids


def test_memory_per_message_is_small() -> None:
    """A million messages must fit: count the bytes the ledger adds per message (the
    queue IDs themselves belong to the scheduler and the spool's names)."""
    import tracemalloc

    count = 20_000
    made = [envelope(None, f"u{n % 50}@unreachable.test") for n in range(count)]
    ledger = Ledger()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for e in made:
        ledger.note(e)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown / count < 100, grown / count


# --- the scheduler keeps it equal to a scan -------------------------------------------------

OK = Reply(250, "2.0.0", "ok")
BUSY = Reply(450, "4.2.1", "busy")
BAD = Reply(550, "5.1.1", "no such user")


class Router:
    def route(self, domain: str, envelope: Envelope | None = None) -> Route:
        return Route(domain, TLSPolicy("none"))

    async def hops(self, route: Route, domain: str) -> list[Hop]:
        return []


class Transport:
    """Answers by the local part: ok*, busy*, bad*; ``slow.test`` waits for the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def deliver(
        self, route: Route, hops: list[Hop], parcel: Parcel
    ) -> list[RecipientOutcome]:
        if route.key == "slow.test":
            self.started.set()
            await self.gate.wait()
        replies = {"ok": OK, "busy": BUSY, "bad": BAD}
        return [
            RecipientOutcome(a, replies[a.split("@")[0].rstrip("0123456789")], "sink[127.0.0.1]:25")
            for a in parcel.recipients
        ]

    async def close(self) -> None:
        pass


class CountingSpool(Spool):
    """Counts every read of the spool: status pages must make none."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: Counter[str] = Counter()

    def load(self, qid: str) -> Envelope:
        self.reads["load"] += 1
        return super().load(qid)

    def ids(self) -> list[str]:
        self.reads["ids"] += 1
        return super().ids()

    def read_message(self, qid: str) -> bytes:
        self.reads["read_message"] += 1
        return super().read_message(qid)

    def read_both(self, qid: str) -> tuple[Envelope, int]:
        self.reads["read_both"] += 1
        return super().read_both(qid)


def scan(scheduler: Scheduler, spool: Spool) -> dict[str, Any]:
    """What the status page showed before the ledger: every envelope read."""
    states: Counter[str] = Counter(
        {"active": 0, "deferred": 0, "hold": 0, "scheduled": 0, "rate-limited": 0}
    )
    recipients: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    oldest = None
    for qid in sorted(Spool.ids(spool)):
        e = Spool.load(spool, qid)
        states["active" if scheduler.is_attempting(qid) else spool_state(e, scheduler.clock())] += 1
        oldest = e.arrival if oldest is None else min(oldest, e.arrival)
        domains = [domain_of(r.address) for r in e.recipients if r.state is RecipientState.PENDING]
        recipients.update(domains)
        messages.update(set(domains))
    return {
        "states": dict(states),
        "total": sum(states.values()),
        "oldest": oldest,
        "destinations": {d: (recipients[d], messages[d]) for d in recipients},
    }


def ledger_view(scheduler: Scheduler) -> dict[str, Any]:
    ledger = scheduler.ledger
    return {
        "states": ledger.counts(),
        "total": len(ledger),
        "oldest": ledger.oldest_arrival(),
        "destinations": {
            d["domain"]: (d["recipients"], d["messages"]) for d in ledger.destinations(1000)
        },
    }


def check(scheduler: Scheduler, spool: Spool) -> dict[str, int]:
    expected = scan(scheduler, spool)
    assert ledger_view(scheduler) == expected
    return expected["states"]  # type: ignore[no-any-return]


class FailingNotices:
    async def after_attempt(
        self, envelope: Envelope, results: Sequence[Result], data: bytes | None, now: float
    ) -> list[Spooled]:
        if any(r.action == "failed" for r in results) and envelope.sender == "fail@notice.test":
            raise SpoolError("cannot queue the notice: No space left on device", no_space=True)
        return []


async def until(predicate: Any, what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


def test_every_transition_keeps_the_counts_equal_to_a_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = DeliverySettings(retry_schedule=(3600.0,), max_queue_lifetime=86400.0)
    transport = Transport()

    async def main() -> None:
        spool = CountingSpool(tmp_path / "spool")
        router: Any = Router()
        scheduler = Scheduler(
            spool,
            router,
            transport,  # type: ignore[arg-type]
            settings,
            notices=RecordingNotices(),
        )
        scheduler.notices = FailingNotices()  # type: ignore[assignment]
        # At start-up: one waiting, one held (counted, never attempted).
        held_before = envelope(None, "ok1@one.test", state=QueueState.HOLD, arrival=10.0)
        waiting = envelope(None, "busy1@one.test", arrival=time.time())
        for e in (held_before, waiting):
            spool.commit(e, DATA)
        scheduler.restore(held_before)
        scheduler.restore(waiting)
        check(scheduler, spool)
        running = asyncio.get_running_loop().create_task(scheduler.run())

        def submit(*rcpts: str, sender: str = "app@example.com") -> str:
            e = envelope(None, *rcpts, arrival=time.time())
            e.sender = sender
            spool.commit(e, DATA)
            scheduler.enqueue_new(e, DATA)
            return e.qid

        delivered = submit("ok1@one.test")
        bounced = submit("bad1@one.test")
        mixed = submit("ok2@one.test", "busy2@two.test", "bad2@three.test")
        await until(
            lambda: (
                delivered not in scheduler.ledger
                and bounced not in scheduler.ledger
                and scheduler.ledger.state(mixed) == "deferred"
                and scheduler.ledger.state(waiting.qid) == "deferred"
                and not scheduler.attempting
            ),
            "the first attempts to end",
        )
        assert check(scheduler, spool) == {
            "active": 0,
            "deferred": 2,
            "hold": 1,
            "scheduled": 0,
            "rate-limited": 0,
        }
        assert ledger_view(scheduler)["destinations"] == {"one.test": (2, 2), "two.test": (1, 1)}

        # An attempt under way (slow.test waits): shown active; a hold asked meanwhile
        # is applied when it ends.
        slow = submit("ok3@slow.test", "ok4@one.test")
        await asyncio.wait_for(transport.started.wait(), 5)
        await until(
            lambda: scheduler.ledger.recipients["one.test"] == 2, "one.test's part to be saved"
        )  # saved between the two destinations
        assert check(scheduler, spool) == {
            "active": 1,
            "deferred": 2,
            "hold": 1,
            "scheduled": 0,
            "rate-limited": 0,
        }
        assert await scheduler.hold([slow]) == {slow: "after-attempt"}
        check(scheduler, spool)
        transport.gate.set()
        await until(lambda: slow not in scheduler.ledger, "the slow message to be delivered")
        await scheduler.operator.settled()
        check(scheduler, spool)

        # The same, with a message that is deferred: the hold lands after the attempt.
        transport.gate.clear()
        transport.started.clear()
        slow = submit("busy3@slow.test")
        await asyncio.wait_for(transport.started.wait(), 5)
        assert await scheduler.hold([slow]) == {slow: "after-attempt"}
        transport.gate.set()
        await until(lambda: scheduler.ledger.state(slow) == "hold", "the hold to land")
        assert check(scheduler, spool) == {
            "active": 0,
            "deferred": 2,
            "hold": 2,
            "scheduled": 0,
            "rate-limited": 0,
        }

        # Operator actions.
        assert await scheduler.release([slow]) == {slow: "released"}
        check(scheduler, spool)
        await until(lambda: scheduler.ledger.state(slow) == "deferred", "a new attempt")
        assert await scheduler.hold([waiting.qid]) == {waiting.qid: "held"}
        assert check(scheduler, spool) == {
            "active": 0,
            "deferred": 2,
            "hold": 2,
            "scheduled": 0,
            "rate-limited": 0,
        }
        assert await scheduler.delete([waiting.qid]) == {waiting.qid: "deleted"}
        assert await scheduler.bounce([mixed]) == {mixed: "bounced"}
        assert check(scheduler, spool) == {
            "active": 0,
            "deferred": 1,
            "hold": 1,
            "scheduled": 0,
            "rate-limited": 0,
        }

        # Failed actions are rolled back: the spool is unchanged, and so are the counts.
        real_update = Spool.update

        def broken(self: Spool, *args: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(Spool, "update", broken)
        assert (await scheduler.hold([slow]))[slow].startswith("error")
        assert (await scheduler.release([held_before.qid]))[held_before.qid].startswith("error")
        monkeypatch.setattr(Spool, "update", real_update)
        assert check(scheduler, spool) == {
            "active": 0,
            "deferred": 1,
            "hold": 1,
            "scheduled": 0,
            "rate-limited": 0,
        }
        failing = submit("busy5@one.test", sender="fail@notice.test")
        await until(lambda: scheduler.ledger.state(failing) == "deferred", "its deferral")
        result = await scheduler.bounce([failing])
        assert result[failing].startswith("error")  # the notice could not be written
        assert check(scheduler, spool) == {
            "active": 0,
            "deferred": 2,
            "hold": 1,
            "scheduled": 0,
            "rate-limited": 0,
        }

        # A message made durable but never announced (its worker died): adopted.
        orphan = envelope(None, "busy6@four.test", arrival=5.0)
        spool.commit(orphan, DATA)
        await scheduler.adopt(spool.ids())
        check(scheduler, spool)
        assert scheduler.ledger.oldest_arrival() == 5.0

        # None of the status answers reads the spool.
        reads = Counter(spool.reads)
        for _ in range(3):
            summary = queue_summary(scheduler, top=10)
        assert spool.reads == reads
        assert summary["queue"]["total"] == len(spool.ids())
        assert summary["queue"]["hold"] == 1
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await scheduler.stop(1.0)
        spool.close()

    asyncio.run(main())
