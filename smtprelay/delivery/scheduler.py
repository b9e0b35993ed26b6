"""The queue manager: decide when each queued message is attempted -- the facade of the
delivery stage that ``app.py``, ``web/`` and the CLI see (it implements
:class:`smtprelay.queueops.QueueOperations`).

Its parts, one job each:

* ``delivery/schedule.py`` :class:`Schedule`: the due-time heap (the only per-message
  memory while a message waits; the loop below sleeps until its head, so waiting
  messages -- scheduled sends included -- cost no CPU) and the fresh cache;
* ``delivery/destinations.py`` :class:`Destinations`: per-destination slots under a
  global limit, lines of waiting and parked messages, dead destinations;
* ``delivery/attempt.py`` :class:`Attempts`: one attempt of one message, from reading
  it to concluding it;
* ``delivery/operator.py`` :class:`Operator`: flush, hold, release, delete, bounce,
  listing; ``delivery/cancel.py``: cancel and reschedule;
* ``delivery/queuecounts.py`` :class:`Ledger`: what is queued, by state and
  destination, told after every spool write and removal, so status pages never scan;
* ``delivery/pacing.py`` :class:`Pacer`: attempts' CPU work cut into time slices with
  the loop's I/O between them, so a queue falling due at once never holds it for long.
* ``delivery/ratelimits.py`` :class:`RateLimits`: provider rate limits per upstream --
  lines of rate-limited messages let in as tokens come, pauses after "slow down".

Here: a bounded active set (``active_limit`` messages being attempted at once), and the
loop that starts attempts as they fall due. The loop starts at most ``START_BATCH``
attempts and looks at most ``POP_BATCH`` due entries before letting other callbacks run
(HTTP, health), so a queue falling due all at once never blocks the event loop for long.
A message that falls due while its destination's line is full is parked at once, its
destinations known from the ledger, without reading it or starting an attempt: a
million messages for one dead smarthost are not a million spool reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from smtprelay import background
from smtprelay.config import DeliverySettings, Settings
from smtprelay.delivery.attempt import Attempts, InFlight
from smtprelay.delivery.destinations import PARK_AFTER, Destinations
from smtprelay.delivery.interfaces import Deliverer, NextHops, NoticeSender
from smtprelay.delivery.notices import Result
from smtprelay.delivery.operator import OPERATOR_BOUNCE, Operator, forwarded
from smtprelay.delivery.pacing import Pacer
from smtprelay.delivery.queuecounts import Ledger
from smtprelay.delivery.ratelimits import RateLimits
from smtprelay.delivery.schedule import Schedule
from smtprelay.envelope import Envelope, QueueState
from smtprelay.queueops import QueueOperations
from smtprelay.queueview import due_time
from smtprelay.spool import Spool

__all__ = ["ACTIVE_LIMIT", "OPERATOR_BOUNCE", "PARK_AFTER", "Scheduler"]

# Messages under attempt at once (reading, waiting for a slot, delivering, saving). Each
# step of each is a callback of the event loop; with 2,000 a queue falling due at once
# (a restart with a big queue) kept ~2,000 callbacks ready at a time and delayed the
# loop by 0.5 s; 500 keeps it near 0.1 s. It stays well above `concurrency` (100) plus
# one destination's line ((1 + PARK_AFTER) x per_destination_concurrency = 100), so a
# backlog for one destination still cannot fill the active set.
ACTIVE_LIMIT = 500
# Per pass of the loop, before other callbacks get their turn: attempts started, and
# due entries looked at (parked, or skipped as superseded).
START_BATCH = 100
POP_BATCH = 2000
# Threads for the delivery stage's spool work: read an envelope, rewrite it after an
# attempt. Few on purpose: that work is Python (JSON parsed and dumped) as much as disk,
# and each thread doing it competes with the event loop for the GIL. With the 32 threads
# that acceptance uses for its fsyncs, a 1,000,000-message queue being deferred stalled
# the loop 80-130 ms at a time (worst /metrics 267 ms); with 4, 125 ms, at the same
# deferral rate. Rewrites still commit together: the directory fsync is shared
# (safeio.DirectorySync).
IO_THREADS = 4

log = logging.getLogger("smtprelay.delivery")
_T = TypeVar("_T")


class Scheduler:
    def __init__(
        self,
        spool: Spool,
        router: NextHops,
        transport: Deliverer,
        settings: DeliverySettings,
        *,
        notices: NoticeSender,
        active_limit: int = ACTIVE_LIMIT,
        clock: Callable[[], float] = time.time,
        on_notice: Callable[[Envelope], None] | None = None,
    ) -> None:
        """``on_notice``: told of each notice spooled, before it is scheduled (the HTTP
        endpoint's history remembers it as accepted)."""
        self.spool = spool
        self._io = ThreadPoolExecutor(
            IO_THREADS, thread_name_prefix="delivery-io", initializer=background.lower_priority
        )
        self.router = router
        self.transport = transport
        self.settings = settings
        self.active_limit = active_limit
        self.clock = clock
        self.notices = notices
        self.on_notice = on_notice
        self.schedule = Schedule(clock)
        self.destinations = Destinations(settings.concurrency, settings.per_destination_concurrency)
        self.active: dict[str, asyncio.Task[None]] = {}  # attempts under way
        self.in_flight: dict[str, InFlight] = {}
        self.ledger = Ledger(clock)  # what the spool holds, for status pages and listings
        self.pacer = Pacer()  # attempts' CPU work in slices, with I/O between them
        self.attempts = Attempts(self)
        self.operator = Operator(self)
        self.ratelimits = RateLimits(self, settings)
        # Messages found in the spool at start-up whose envelopes are not read yet
        # (delivery.loader reads them after READY=1); ``loaded`` is set once all are.
        self.loading = 0
        self.loaded = asyncio.Event()
        self.loaded.set()

    # --- reload -------------------------------------------------------------------

    def router_for(self, settings: Settings) -> NextHops:
        """The router of reloaded settings (same resolver), built before anything is
        applied: it reads the smarthost's password file."""
        return self.router.reloaded(settings.delivery)

    def apply(self, settings: Settings, router: NextHops) -> None:
        """Reloaded settings, for the next delivery attempts: routes and smarthosts
        (``router``, from :meth:`router_for`), line folding, bounce settings, and the
        upstreams' rate limits and slowdown_backoff (max_connections excepted). The
        other limits and the retry schedule keep their start-up values."""
        self.router = router
        self.ratelimits.apply(settings.delivery)
        self.ratelimits.reload(router)
        self.transport.apply(settings.delivery)
        self.notices.apply(settings.bounce)

    # --- queue --------------------------------------------------------------------

    def enqueue(self, qid: str, due: float) -> None:
        self.schedule.enqueue(qid, due)

    def enqueue_new(self, envelope: Envelope, data: bytes) -> None:
        """A message the intake has just made durable: attempt it now (at its send_at,
        if it has one), from memory."""
        self.ledger.note(envelope)
        if envelope.qid in self.schedule:
            return
        self.schedule.keep_fresh(envelope, data)
        self.enqueue(envelope.qid, due_time(envelope))

    def restore(self, envelope: Envelope, *, found_at_start: bool = False) -> None:
        """A message found in the spool (at start-up, one at a time as recovery reads
        them, so no list of a million envelopes is ever held): count it, and schedule
        it unless it is on hold.

        ``found_at_start``: read by the start-up loader, which runs while the daemon
        already serves. If the ledger or the schedule knows the QID by now, an operator
        action (or an adoption) got to the message while the loader read it: what they
        noted is newer than what was read, so the read is dropped."""
        if found_at_start and (envelope.qid in self.ledger or envelope.qid in self.schedule):
            return
        self.ledger.note(envelope, found=found_at_start)
        if envelope.state is not QueueState.HOLD:
            self.enqueue(envelope.qid, due_time(envelope))

    async def adopt(self, qids: Iterable[str]) -> None:
        """Messages in the spool that nobody announced (an inbound worker died between
        making one durable and telling us): read the envelopes of those the ledger does
        not know, count them, and schedule them unless held.

        Not before the start-up load is done: the messages it has yet to read are not
        in the ledger either, and reading them here, one call each, would read a large
        queue twice. What a worker left is in the spool all along; it waits."""
        await self.loaded.wait()
        for qid in qids:
            if qid in self.ledger or qid in self.schedule:
                continue
            try:
                envelope = await self.io(self.spool.load, qid)
            except FileNotFoundError:
                continue  # delivered and removed meanwhile
            except (OSError, ValueError) as e:
                log.error("%s: cannot read the envelope of an unannounced message: %s", qid, e)
                continue
            if qid in self.ledger:  # announced while we read it
                continue
            self.restore(envelope)

    @property
    def queued(self) -> int:
        return len(self.schedule)

    @property
    def attempting(self) -> int:
        """Messages under attempt right now."""
        return len(self.active)

    def is_attempting(self, qid: str) -> bool:
        return qid in self.active

    def wake(self) -> None:
        """Look at the schedule now (the clock was moved: tests, or a suspend)."""
        self.schedule.wakeup.set()

    async def run(self) -> None:
        """Start attempts as they fall due; runs until cancelled."""
        schedule = self.schedule
        while True:
            now = self.clock()
            started = looked = 0
            full = self.destinations.full()
            limited = self.ratelimits.enabled
            while (
                (head := schedule.next_due()) is not None
                and head <= now
                and len(self.active) < self.active_limit
                and started < START_BATCH
                and looked < POP_BATCH
            ):
                looked += 1
                popped = schedule.pop()
                if popped is None:
                    continue  # superseded by a flush, or held or deleted meanwhile
                _, qid = popped
                self.ledger.due(qid)  # its send_at, if it had one, has come
                if (full or limited) and self._park_unread(qid, full):
                    continue
                self.start(qid)
                started += 1
            if started >= START_BATCH or looked >= POP_BATCH:
                await asyncio.sleep(0)  # more is due: let others run first
                continue
            schedule.wakeup.clear()
            timeout = None
            head = schedule.next_due()
            if head is not None and len(self.active) < self.active_limit:
                timeout = max(0.0, head - now)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel
            # that arrives as the event is set, and stopping the daemon would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await schedule.wakeup.wait()

    def start(self, qid: str) -> asyncio.Task[None]:
        """Start an attempt of ``qid`` (taken off the schedule), owned by the scheduler,
        not by the loop: it outlives a stop of the loop by up to the grace of stop(),
        which awaits (or cancels) it. attempt_safely lets no exception out."""
        task = asyncio.get_running_loop().create_task(self.attempts.attempt_safely(qid))
        self.active[qid] = task
        self.in_flight[qid] = InFlight()
        self.ledger.attempting(qid, True)
        self.ledger.rate_limited(qid, False)
        task.add_done_callback(functools.partial(self._finished, qid))
        return task

    def _park_unread(self, qid: str, full: set[str]) -> bool:
        """Park ``qid`` if one of its destinations has a full line, or a rate limit
        keeps it waiting, as an attempt would after reading it -- here from the
        ledger, without reading it. Else it gets the passes of its rate limits."""
        domains = self.ledger.domains(qid)
        if not domains:
            return False  # unknown here: the attempt reads it and decides
        # By recipient domain alone (the ledger holds no sender): a message that a sender
        # route would send elsewhere may wait here for a turn it did not need; its attempt
        # then routes it by its envelope.
        routes = [(self.router.route(d), d) for d in domains]
        if qid not in self.destinations.let_go:  # its turn came: never parked twice
            busy = next((route.key for route, _ in routes if route.key in full), None)
            if busy is not None:
                self.ratelimits.forget(qid)
                self.destinations.park(busy, qid)
                return True
        limiter = self.ratelimits.admit(qid, routes)
        if limiter is None:
            return False
        self.ratelimits.park(qid, limiter)
        return True

    def _finished(self, qid: str, _: object) -> None:
        self.active.pop(qid, None)
        self.in_flight.pop(qid, None)
        self.ledger.attempting(qid, False)
        self.ratelimits.forget(qid)  # passes an attempt did not use (it ended early)
        self.schedule.wakeup.set()

    async def stop(self, grace: float) -> None:
        """Let attempts under way finish for ``grace`` seconds, then cancel them; operator
        actions waiting for those attempts get the same grace."""
        self.ratelimits.close()
        for tasks in (list(self.active.values()), list(self.operator.later)):
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=grace)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await self.transport.close()
        self._io.shutdown(wait=False)  # a read still running ends on its own; none is waited for

    # --- shared by the attempt and the operator actions ---------------------------------

    async def notify(
        self, envelope: Envelope, results: list[Result], data: bytes | None, now: float
    ) -> None:
        """The notices an attempt (or a bounce) calls for: spooled by Notices, scheduled
        here."""
        for notice, message in await self.notices.after_attempt(envelope, results, data, now):
            if self.on_notice is not None:
                self.on_notice(notice)
            self.enqueue_new(notice, message)

    async def io(self, func: Callable[..., _T], *args: object) -> _T:
        """``func(*args)`` in the delivery stage's spool threads (blocking file work)."""
        return await asyncio.get_running_loop().run_in_executor(self._io, func, *args)

    # --- operator actions (queueops.QueueOperations): the Operator's own --------------

    load = forwarded(Operator.load)
    flush = forwarded(Operator.flush)
    hold = forwarded(Operator.hold)
    release = forwarded(Operator.release)
    delete = forwarded(Operator.delete)
    bounce = forwarded(Operator.bounce)
    cancel = forwarded(Operator.cancel)
    reschedule = forwarded(Operator.reschedule)
    listing = forwarded(Operator.listing)


def _implements(scheduler: Scheduler) -> QueueOperations:
    return scheduler  # mypy --strict checks here that Scheduler implements QueueOperations
