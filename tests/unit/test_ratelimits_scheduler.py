"""RateLimits in the scheduler, with fakes at the seams: a daily quota keeps a backlog
waiting (parked unread, shown as rate-limited, answering operator actions, let go by a
reload), a "slow down" reply pauses the upstream with growing steps and costs the
message no attempt, and recipients are split into transactions."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from smtprelay import ids
from smtprelay.config import DeliverySettings, Settings, UpstreamLimits
from smtprelay.delivery.outcome import Hop, Parcel, RecipientOutcome
from smtprelay.delivery.routes import Route, TLSPolicy
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.envelope import Envelope, Recipient, RecipientState
from smtprelay.replies import Reply
from smtprelay.spool import Spool
from tests.unit.fakes import OK, FakeDeliverer, RecordingNotices
from tests.unit.helpers import make_envelope

DATA = b"Subject: t\r\n\r\nhello\r\n"
SLOW_DOWN = Reply(450, "4.7.0", "slow down")


class LimitedRouter:
    """Every domain its own destination; ``limited.test`` with ``limits``."""

    def __init__(self, limits: UpstreamLimits) -> None:
        self.limits = limits

    def route(self, domain: str, envelope: Envelope | None = None) -> Route:
        limits = self.limits if domain == "limited.test" else None
        return Route(domain, TLSPolicy("none"), limits=limits)

    async def hops(self, route: Route, domain: str) -> list[Hop]:
        return []

    def reloaded(self, settings: DeliverySettings) -> LimitedRouter:
        return LimitedRouter(settings.domain_limits["limited.test"])


class ScriptedDeliverer(FakeDeliverer):
    """Answers each transaction with the next reply of ``script`` (then OK), and
    records each transaction's recipients in ``transactions``."""

    def __init__(self, script: list[Reply]) -> None:
        super().__init__()
        self.script = script
        self.transactions: list[list[str]] = []

    async def deliver(
        self, route: Route, hops: list[Hop], parcel: Parcel
    ) -> list[RecipientOutcome]:
        self.transactions.append(list(parcel.recipients))
        reply = self.script.pop(0) if self.script else OK
        if reply.code < 300:
            self.delivered += parcel.recipients
        return [RecipientOutcome(a, reply, "sink[127.0.0.1]:25") for a in parcel.recipients]


class CountingSpool(Spool):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.loads: Counter[str] = Counter()

    def load(self, qid: str) -> Envelope:
        self.loads[qid] += 1
        return super().load(qid)


def queue(spool: Spool, scheduler: Scheduler, *rcpts: str) -> str:
    """A message in the spool, known to the ledger (as after start-up), due now."""
    envelope = make_envelope(ids.new_id(), size=len(DATA), recipients=[Recipient(r) for r in rcpts])
    spool.commit(envelope, DATA)
    scheduler.restore(envelope)
    return envelope.qid


async def until(predicate: object, what: str) -> None:
    """Poll ``predicate`` for up to 10 s."""
    assert callable(predicate)
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_quota_backlog_waits_unread_answers_operators_and_goes_on_reload(
    tmp_path: Path,
) -> None:
    limits = UpstreamLimits(daily_quota=3, quota_reset="rolling")
    settings = DeliverySettings(domain_limits={"limited.test": limits})
    transport = FakeDeliverer()

    async def main() -> None:
        spool = CountingSpool(tmp_path / "spool")
        scheduler = Scheduler(
            spool, LimitedRouter(limits), transport, settings, notices=RecordingNotices()
        )
        qids = [queue(spool, scheduler, f"r{n}@limited.test") for n in range(10)]
        free = queue(spool, scheduler, "x@free.test")
        running = asyncio.get_running_loop().create_task(scheduler.run())
        counts = scheduler.ledger.counts
        await until(lambda: counts()["rate-limited"] == 7 and len(spool.ids()) == 7, "quota")
        assert "x@free.test" in transport.delivered and free not in spool.ids()
        waiting = [q for q in qids if q in spool.ids()]
        assert all(scheduler.ledger.state(q) == "rate-limited" for q in waiting)
        assert all(spool.loads[q] == 0 for q in waiting), "parked without being read"
        (upstream,) = scheduler.ratelimits.states()
        assert upstream == {
            "upstream": "limited.test",
            "rate_limited": 7,
            "daily_quota": 3,
            "quota_used": 3,
        }
        entries, _ = await scheduler.listing(None, 100, state="rate-limited")
        assert sorted(e.envelope.qid for e in entries) == sorted(waiting)
        assert {e.state for e in entries} == {"rate-limited"}
        # A flush does not bypass the quota; a hold takes it out of the line, a release
        # puts it back; a delete removes it.
        flushed, held, deleted = waiting[:3]
        assert await scheduler.flush([flushed]) == {flushed: "flushed"}
        await until(lambda: scheduler.ledger.state(flushed) == "rate-limited", "re-parked")
        assert await scheduler.hold([held]) == {held: "held"}
        assert scheduler.ledger.state(held) == "hold" and counts()["rate-limited"] == 6
        assert await scheduler.release([held]) == {held: "released"}
        await until(lambda: scheduler.ledger.state(held) == "rate-limited", "back in line")
        assert await scheduler.delete([deleted]) == {deleted: "deleted"}
        assert counts()["rate-limited"] == 6
        assert len(transport.delivered) == 4  # three to limited.test, one to free.test
        # A reload with a bigger quota lets the line go, without waiting for the day.
        bigger = UpstreamLimits(daily_quota=20, quota_reset="rolling")
        reloaded = Settings(delivery=DeliverySettings(domain_limits={"limited.test": bigger}))
        scheduler.apply(reloaded, scheduler.router_for(reloaded))
        await until(lambda: not spool.ids(), "the rest delivered")
        assert len(transport.delivered) == 10
        assert counts()["rate-limited"] == 0 and not scheduler.ratelimits.passes
        # Each waiting message read twice: by the listing above, and once its turn came.
        others = [q for q in waiting if q not in (flushed, held, deleted)]
        assert [spool.loads[q] for q in others] == [2] * len(others)
        running.cancel()
        spool.close()

    asyncio.run(main())


def test_slow_down_pauses_with_growing_steps_and_costs_no_attempt(tmp_path: Path) -> None:
    settings = DeliverySettings(slowdown_backoff=(0.3, 0.6))
    transport = ScriptedDeliverer([SLOW_DOWN, SLOW_DOWN])

    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        scheduler = Scheduler(
            spool, LimitedRouter(UpstreamLimits()), transport, settings, notices=RecordingNotices()
        )
        qid = queue(spool, scheduler, "a@paused.test")
        running = asyncio.get_running_loop().create_task(scheduler.run())
        await until(lambda: scheduler.ledger.state(qid) == "rate-limited", "a pause")
        envelope = spool.load(qid)
        assert envelope.attempts == 0 and envelope.recipients[0].attempts == 0
        assert envelope.recipients[0].last_reply == str(SLOW_DOWN)
        limiter = scheduler.ratelimits.limiters["paused.test"]
        assert limiter.pause is not None
        first = limiter.pause.until - scheduler.clock()
        assert 0 < first <= 0.3
        # Another message for the same upstream waits, untried.
        other = queue(spool, scheduler, "b@paused.test")
        await until(lambda: scheduler.ledger.state(other) == "rate-limited", "a second")
        assert transport.transactions == [["a@paused.test"]]
        await until(lambda: len(transport.transactions) == 2, "the second try")
        await until(lambda: limiter.slowdowns == 2, "a second pause")
        assert limiter.pause is not None
        assert 0.3 < limiter.pause.until - scheduler.clock() <= 0.6  # the next step
        await until(lambda: not spool.ids(), "delivery after the pauses")
        assert sorted(transport.delivered) == ["a@paused.test", "b@paused.test"]
        # Made for the pause only: forgotten once mail flows again.
        assert "paused.test" not in scheduler.ratelimits.limiters
        running.cancel()
        spool.close()

    asyncio.run(main())


def test_recipients_split_and_a_pause_between_transactions(tmp_path: Path) -> None:
    limits = UpstreamLimits(max_recipients_per_message=2)
    settings = DeliverySettings(domain_limits={"limited.test": limits}, slowdown_backoff=(0.2,))
    transport = ScriptedDeliverer([OK, SLOW_DOWN])

    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        notices = RecordingNotices()
        scheduler = Scheduler(spool, LimitedRouter(limits), transport, settings, notices=notices)
        rcpts = [f"r{n}@limited.test" for n in range(5)]
        qid = queue(spool, scheduler, *rcpts)
        running = asyncio.get_running_loop().create_task(scheduler.run())
        await until(lambda: scheduler.ledger.state(qid) == "rate-limited", "the pause")
        envelope = spool.load(qid)
        states = {r.address: (r.state, r.attempts) for r in envelope.recipients}
        delivered, pending = (RecipientState.DELIVERED, 1), (RecipientState.PENDING, 0)
        assert states == {
            "r0@limited.test": delivered,
            "r1@limited.test": delivered,
            "r2@limited.test": pending,  # answered "slow down"
            "r3@limited.test": pending,
            "r4@limited.test": pending,  # not sent: the upstream was paused
        }
        assert envelope.attempts == 0
        await until(lambda: not spool.ids(), "the rest after the pause")
        assert transport.transactions == [rcpts[0:2], rcpts[2:4], rcpts[2:4], rcpts[4:]]
        assert sorted(transport.delivered) == rcpts
        running.cancel()
        spool.close()

    asyncio.run(main())
