"""The queue manager: decide when each queued message is attempted, and record results.

* A due-time heap of ``(time, QID)`` -- the only per-message memory while a message
  waits, so a large queue stays small in RAM; envelopes are read from the spool when an
  attempt starts, message data only once a connection slot is held.
* A bounded active set (``active_limit`` messages being attempted at once).
* Per-destination concurrency (``per_destination_concurrency``) under a global limit
  (``concurrency``). A destination slot is taken before a global one, so messages
  waiting for a busy destination never hold slots that others could use; and a
  destination with a long line of waiters gets further messages parked in a line of
  its own (QIDs only, out of the active set), each let go when one of its deliveries
  ends (fairness without re-reading a message every second while a backlog drains).
  A message that falls due while its destination's line is full is parked at once,
  its destinations known from the ledger, without reading it or starting an attempt:
  a million messages for one dead smarthost are not a million spool reads.
* The loop starts at most ``START_BATCH`` attempts and looks at most ``POP_BATCH``
  due entries before letting other callbacks run (HTTP, health), so a queue falling
  due all at once never blocks the event loop for long.
* Dead destinations: after ``DEAD_AFTER`` consecutive attempts in which no host of a
  destination could be reached, it is skipped for ``COOL_OFF`` seconds and its mail
  deferred without a wasted connection attempt each.
* Per-recipient state is written to the spool after every attempt; a message with
  several destinations is saved after each one finishes, so after a crash only
  recipients whose delivery was in flight can be tried again.
* Operator actions (flush, hold, release, delete, bounce; see "operator actions" below)
  are serialized among themselves. A message under attempt is never touched: hold,
  delete and bounce of such a message are applied when its attempt ends (the answer
  says ``after-attempt``), so a delivery under way is never torn in half.
* What is queued -- counts by state and destination, oldest arrival, listing order --
  is kept in a :class:`~smtprelay.delivery.queuecounts.Ledger`, told after every spool
  write and removal, so status pages never scan the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from smtprelay import ids, maillog
from smtprelay.addresses import domain_of
from smtprelay.config import DeliverySettings, Settings
from smtprelay.delivery import backoff
from smtprelay.delivery.interfaces import Deliverer, NextHops
from smtprelay.delivery.notices import Notices, Result
from smtprelay.delivery.outcome import DeliveryError, RecipientOutcome
from smtprelay.delivery.queuecounts import Ledger
from smtprelay.delivery.routes import Route
from smtprelay.envelope import Envelope, QueueState, Recipient, RecipientState
from smtprelay.replies import Reply
from smtprelay.spool import Spool, SpoolError
from smtprelay.tasks import detach

DEAD_AFTER = 3
COOL_OFF = 60.0
# Waiters per destination slot before further messages for it are parked.
PARK_AFTER = 4
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
# Messages just received are kept in memory for their first attempt (no re-reading of
# what was written a moment ago), up to this many bytes of message data in all.
FRESH_BYTES = 64 * 1024 * 1024
EXPIRED = Reply(554, "5.4.7", "Delivery time expired")
# In the DSN an expiry is reported as the temporary condition it was (RFC 3463 X.4.7).
EXPIRED_STATUS = "4.4.7"
FAULT_RETRY = 60.0
UNREACHABLE = Reply(451, "4.4.1", "Destination unreachable")
OPERATOR_BOUNCE = Reply(550, "5.0.0", "Returned to sender by the operator")

log = logging.getLogger("smtprelay.delivery")
_T = TypeVar("_T")


@dataclass
class _Dead:
    until: float
    reply: Reply


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One queued message as a queue listing shows it."""

    envelope: Envelope
    attempting: bool  # an attempt is under way right now

    @property
    def state(self) -> str:
        """``active`` (new, or being attempted now), ``deferred`` or ``hold``."""
        return QueueState.ACTIVE.value if self.attempting else self.envelope.state.value


class Scheduler:
    def __init__(
        self,
        spool: Spool,
        router: NextHops,
        transport: Deliverer,
        settings: DeliverySettings,
        *,
        active_limit: int = ACTIVE_LIMIT,
        clock: Callable[[], float] = time.time,
        notices: Notices | None = None,
    ) -> None:
        self.spool = spool
        self.router = router
        self.transport = transport
        self.settings = settings
        self.active_limit = active_limit
        self.clock = clock
        self.notices = notices
        self._heap: list[tuple[float, str]] = []
        # The due time of each QID's one valid heap entry. An entry whose time differs
        # (superseded by a flush, or the message held or deleted) is skipped when popped.
        self._due: dict[str, float] = {}
        self._known: set[str] = set()  # QIDs in the heap or active: never scheduled twice
        self._active: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()
        self._global = asyncio.Semaphore(settings.concurrency)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._waiting: defaultdict[str, int] = defaultdict(int)
        # Messages parked behind a saturated destination, by route key. A QID counts as
        # parked while in _parked_qids; deque entries of QIDs taken out since are skipped.
        self._parked: defaultdict[str, deque[str]] = defaultdict(deque)
        self._parked_qids: set[str] = set()
        self._let_go: set[str] = set()  # unparked, not attempted yet
        self._failures: defaultdict[str, int] = defaultdict(int)
        self._dead: dict[str, _Dead] = {}
        self._fresh: dict[str, tuple[Envelope, bytes]] = {}
        self._fresh_bytes = 0
        self._operator = asyncio.Lock()
        self._later: set[asyncio.Task[None]] = set()  # actions waiting for an attempt
        self.ledger = Ledger()  # what the spool holds, for status pages and listings
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
        (``router``, from :meth:`router_for`), line folding and bounce settings. Limits
        and the retry schedule keep their start-up values."""
        self.router = router
        self.transport.apply(settings.delivery)
        if self.notices is not None:
            self.notices.settings = settings.bounce

    # --- queue --------------------------------------------------------------------

    def enqueue(self, qid: str, due: float) -> None:
        if qid in self._known:
            return
        self._known.add(qid)
        self._push(qid, due)

    def _push(self, qid: str, due: float) -> None:
        self._due[qid] = due
        heapq.heappush(self._heap, (due, qid))
        self._wakeup.set()

    def enqueue_new(self, envelope: Envelope, data: bytes) -> None:
        """A message the intake has just made durable: attempt it now, from memory."""
        self.ledger.note(envelope)
        if envelope.qid in self._known:
            return
        self._keep_fresh(envelope, data)
        self.enqueue(envelope.qid, envelope.next_attempt)

    def restore(self, envelope: Envelope, *, found_at_start: bool = False) -> None:
        """A message found in the spool (at start-up, one at a time as recovery reads
        them, so no list of a million envelopes is ever held): count it, and schedule
        it unless it is on hold.

        ``found_at_start``: read by the start-up loader, which runs while the daemon
        already serves. If the ledger or the schedule knows the QID by now, an operator
        action (or an adoption) got to the message while the loader read it: what they
        noted is newer than what was read, so the read is dropped."""
        if found_at_start and (envelope.qid in self.ledger or envelope.qid in self._known):
            return
        self.ledger.note(envelope, found=found_at_start)
        if envelope.state is not QueueState.HOLD:
            self.enqueue(envelope.qid, envelope.next_attempt)

    async def adopt(self, qids: Iterable[str]) -> None:
        """Messages in the spool that nobody announced (an inbound worker died between
        making one durable and telling us): read the envelopes of those the ledger does
        not know, count them, and schedule them unless held.

        Not before the start-up load is done: the messages it has yet to read are not
        in the ledger either, and reading them here, one call each, would read a large
        queue twice. What a worker left is in the spool all along; it waits."""
        await self.loaded.wait()
        loop = asyncio.get_running_loop()
        for qid in qids:
            if qid in self.ledger or qid in self._known:
                continue
            try:
                envelope = await loop.run_in_executor(None, self.spool.load, qid)
            except FileNotFoundError:
                continue  # delivered and removed meanwhile
            except (OSError, ValueError) as e:
                log.error("%s: cannot read the envelope of an unannounced message: %s",
                          qid, e)
                continue
            if qid in self.ledger:  # announced while we read it
                continue
            self.restore(envelope)

    def _keep_fresh(self, envelope: Envelope, data: bytes) -> None:
        if self._fresh_bytes + len(data) <= FRESH_BYTES:
            self._fresh[envelope.qid] = (envelope, data)
            self._fresh_bytes += len(data)

    @property
    def queued(self) -> int:
        return len(self._known)

    @property
    def attempting(self) -> int:
        """Messages under attempt right now."""
        return len(self._active)

    def is_attempting(self, qid: str) -> bool:
        return qid in self._active

    async def run(self) -> None:
        """Start attempts as they fall due; runs until cancelled."""
        loop = asyncio.get_running_loop()
        limit = PARK_AFTER * self.settings.per_destination_concurrency
        while True:
            now = self.clock()
            started = looked = 0
            full = {key for key, count in self._waiting.items() if count >= limit}
            while (self._heap and self._heap[0][0] <= now
                   and len(self._active) < self.active_limit
                   and started < START_BATCH and looked < POP_BATCH):
                due, qid = heapq.heappop(self._heap)
                looked += 1
                if self._due.get(qid) != due:
                    continue  # superseded by a flush, or held or deleted meanwhile
                del self._due[qid]
                if full and self._park_unread(qid, full):
                    continue
                # Owned by the scheduler, not by this loop: an attempt outlives a stop of
                # the loop by up to the grace of stop(), which awaits (or cancels) it.
                # _attempt_safely lets no exception out.
                task = loop.create_task(self._attempt_safely(qid))
                self._active[qid] = task
                self.ledger.attempting(qid, True)
                task.add_done_callback(functools.partial(self._finished, qid))
                started += 1
            if started >= START_BATCH or looked >= POP_BATCH:
                await asyncio.sleep(0)  # more is due: let others run first
                continue
            self._wakeup.clear()
            timeout = None
            if self._heap and len(self._active) < self.active_limit:
                timeout = max(0.0, self._heap[0][0] - now)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel
            # that arrives as the event is set, and stopping the daemon would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    def _park_unread(self, qid: str, full: set[str]) -> bool:
        """Park ``qid`` if one of its destinations has a full line, as ``_attempt`` would
        after reading it -- here from the ledger, without reading it."""
        if qid in self._let_go:
            return False  # its turn came: never parked twice
        domains = self.ledger.domains(qid)
        if not domains:
            return False  # unknown here: the attempt reads it and decides
        busy = next((key for key in (self.router.route(d).key for d in domains)
                     if key in full), None)
        if busy is None:
            return False
        self._parked[busy].append(qid)
        self._parked_qids.add(qid)
        return True

    def _finished(self, qid: str, _: object) -> None:
        self._active.pop(qid, None)
        self.ledger.attempting(qid, False)
        self._wakeup.set()

    def _reschedule(self, qid: str, due: float) -> None:
        self._push(qid, due)

    async def stop(self, grace: float) -> None:
        """Let attempts under way finish for ``grace`` seconds, then cancel them; operator
        actions waiting for those attempts get the same grace."""
        for tasks in (list(self._active.values()), list(self._later)):
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=grace)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await self.transport.close()

    # --- one attempt of one message ---------------------------------------------------

    async def _attempt_safely(self, qid: str) -> None:
        """An unexpected fault (a full disk while saving state, a bug) must not strand the
        message in memory: log it and look at the message again later."""
        try:
            await self._attempt(qid)
        except Exception:
            log.exception("%s: delivery attempt failed; retrying in %.0f s", qid, FAULT_RETRY)
            self._reschedule(qid, self.clock() + FAULT_RETRY)

    async def _attempt(self, qid: str) -> None:
        loop = asyncio.get_running_loop()
        let_go = qid in self._let_go  # unparked: its turn came, it never parks twice
        self._let_go.discard(qid)
        fresh = self._fresh.pop(qid, None)
        data: bytes | None = None
        if fresh is not None:
            envelope, data = fresh
            self._fresh_bytes -= len(data)
        else:
            try:
                envelope = await loop.run_in_executor(None, self.spool.load, qid)
            except FileNotFoundError:  # deleted by the operator meanwhile
                self._known.discard(qid)
                self.ledger.remove(qid)
                return
        if envelope.state is QueueState.HOLD:
            self._known.discard(qid)  # released by an operator action, not by time
            self.ledger.note(envelope)
            return
        activated = self.clock()
        groups: dict[str, tuple[Route, str, list[Recipient]]] = {}
        for recipient in envelope.recipients:
            if recipient.state is RecipientState.PENDING:
                domain = domain_of(recipient.address)
                route = self.router.route(domain)
                groups.setdefault(route.key, (route, domain, []))[2].append(recipient)
        limit = PARK_AFTER * self.settings.per_destination_concurrency
        busy = next((key for key in groups if self._waiting[key] >= limit), None)
        if busy is not None and not let_go:
            self._parked[busy].append(qid)
            self._parked_qids.add(qid)
            if data is not None:  # still fresh: its turn comes without a read
                self._keep_fresh(envelope, data)
            return
        # Counted as waiting now, not when the tasks first run: messages read from the
        # spool at the same moment must see each other in the line.
        for key in groups:
            self._waiting[key] += 1
        # One group per attempt: if a destination's delivery fails unexpectedly, or the
        # attempt is cancelled (a stop after its grace), the others are cancelled with it
        # instead of running on unowned; the attempt is retried (_attempt_safely).
        results: list[Result] = []
        if len(groups) == 1:  # the common case, one destination: no task of its own
            ((route, domain, rcpts),) = groups.values()
            outcomes = await self._deliver_group(envelope, data, route, domain, rcpts, activated)
            results += self._record(envelope, outcomes, activated)
            await self._conclude(envelope, data, results)
            return
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(
                    self._deliver_group(envelope, data, route, domain, rcpts, activated))
                for route, domain, rcpts in groups.values()
            ]
            remaining = len(tasks)
            for next_done in asyncio.as_completed(tasks):
                outcomes = await next_done
                remaining -= 1
                results += self._record(envelope, outcomes, activated)
                if remaining:
                    await loop.run_in_executor(None, self.spool.update, envelope, data)
                    self.ledger.note(envelope)
        await self._conclude(envelope, data, results)

    async def _deliver_group(
        self, envelope: Envelope, data: bytes | None, route: Route, domain: str,
        recipients: list[Recipient], activated: float,
    ) -> tuple[list[RecipientOutcome], float]:
        """Outcomes for one destination and when the connection attempt started."""
        addresses = [r.address for r in recipients]
        waiting = True  # counted in _waiting by _attempt, when it decided not to park
        try:
            dead = self._dead.get(route.key)
            if dead is not None and dead.until > self.clock():
                # Always temporary: no server said anything about this message.
                reply = UNREACHABLE.with_text(
                    f"{dead.reply.text} (destination marked unreachable)")
                return [RecipientOutcome(a, reply, "none") for a in addresses], self.clock()
            slot = self._slots.setdefault(route.key, asyncio.Semaphore(
                self.settings.per_destination_concurrency))
            async with slot, self._global:
                self._waiting[route.key] -= 1
                waiting = False
                started = self.clock()
                outcomes = await self._deliver_now(envelope, data, route, domain, addresses)
                return outcomes, started
        finally:
            if waiting:
                self._waiting[route.key] -= 1
            self._unpark(route.key)

    def _unpark(self, key: str) -> None:
        """One delivery to ``key`` ended: let one parked message go; all of them once
        nothing waits for ``key`` (its route may have changed on reload)."""
        line = self._parked.get(key)
        while line:
            qid = line.popleft()
            if qid in self._parked_qids:
                self._parked_qids.discard(qid)
                self._let_go.add(qid)
                self._push(qid, self.clock())
                if self._waiting[key]:
                    break
        if line is not None and not line:
            del self._parked[key]

    async def _deliver_now(
        self, envelope: Envelope, data: bytes | None, route: Route, domain: str,
        addresses: list[str],
    ) -> list[RecipientOutcome]:
        try:
            hops = await self.router.hops(route, domain)
        except DeliveryError as e:
            return [RecipientOutcome(a, e.reply, e.relay) for a in addresses]
        if data is None:  # read only now that a connection slot is held: bounded memory
            try:
                data = await asyncio.get_running_loop().run_in_executor(
                    None, self.spool.read_message, envelope.qid)
            except FileNotFoundError:
                return []
        try:
            params = {r.address: r.params for r in envelope.recipients if r.params}
            outcomes = await self.transport.deliver(
                route, hops, envelope.sender, addresses, data, envelope.mail_params, params,
                qid=envelope.qid,
            )
        except DeliveryError as e:
            if e.unreachable:
                self._failures[route.key] += 1
                if self._failures[route.key] >= DEAD_AFTER:
                    self._dead[route.key] = _Dead(self.clock() + COOL_OFF, e.reply)
            return [RecipientOutcome(a, e.reply, e.relay) for a in addresses]
        self._failures.pop(route.key, None)
        self._dead.pop(route.key, None)
        return outcomes

    def _record(
        self, envelope: Envelope, result: tuple[list[RecipientOutcome], float], activated: float
    ) -> list[Result]:
        """Apply and log one destination's outcomes; the final ones, for notices."""
        outcomes, started = result
        by_address = {r.address: r for r in envelope.recipients}
        now = self.clock()
        final: list[Result] = []
        for outcome in outcomes:
            recipient = by_address[outcome.address]
            recipient.attempts += 1
            reply = outcome.reply
            recipient.last_reply = str(reply)
            recipient.last_relay = outcome.relay if outcome.relay != "none" else None
            if reply.code < 400:
                recipient.state, status = RecipientState.DELIVERED, "sent"
                final.append(Result(recipient, "relayed", reply.enhanced, str(reply),
                                    outcome.relay, outcome.dsn_passed))
            elif reply.code >= 500:
                recipient.state, status = RecipientState.FAILED, "bounced"
                final.append(Result(recipient, "failed", reply.enhanced, str(reply),
                                    outcome.relay))
            else:
                status = "deferred"
            delays = (
                max(0.0, activated - envelope.next_attempt),  # arrival, for a first attempt
                max(0.0, started - activated),
                outcome.connect_time,
                outcome.transmit_time,
            )
            maillog.delivery(envelope.qid, outcome.address, outcome.relay,
                             now - envelope.arrival, delays, reply, status)
        return final

    async def _conclude(
        self, envelope: Envelope, data: bytes | None, results: list[Result]
    ) -> None:
        loop = asyncio.get_running_loop()
        envelope.attempts += 1
        now = self.clock()
        pending = [r for r in envelope.recipients if r.state is RecipientState.PENDING]
        if pending:
            delay = backoff.next_delay(
                envelope.attempts, now - envelope.arrival,
                self.settings.retry_schedule, self.settings.max_queue_lifetime,
            )
            if delay is None:
                for recipient in pending:
                    last = recipient.last_reply
                    reply = EXPIRED.with_text(f"{EXPIRED.text}; last error: {last or 'none'}")
                    recipient.state = RecipientState.FAILED
                    recipient.last_reply = str(reply)
                    results.append(Result(recipient, "failed", EXPIRED_STATUS, last,
                                          recipient.last_relay or "none"))
                    maillog.delivery(envelope.qid, recipient.address, "none",
                                     now - envelope.arrival, (0.0, 0.0, 0.0, 0.0), reply,
                                     "bounced")
                pending = []
            else:
                envelope.state = QueueState.DEFERRED
                envelope.next_attempt = now + delay
                if self.notices is not None:
                    await self.notices.after_attempt(envelope, results, data, now)
                await loop.run_in_executor(None, self.spool.update, envelope, data)
                self.ledger.note(envelope)
                self._reschedule(envelope.qid, envelope.next_attempt)
                return
        if self.notices is not None:
            await self.notices.after_attempt(envelope, results, data, now)
        # An unlink, synced by the next commit's directory fsync: after a power loss in
        # between, a delivered message may come back and go out twice, never be lost.
        self.spool.discard(envelope.qid)
        self.ledger.remove(envelope.qid)
        self._known.discard(envelope.qid)
        maillog.removed(envelope.qid)

    # --- operator actions (the HTTP queue API) ---------------------------------------------
    #
    # Each returns {qid: outcome}. Outcomes: "flushed", "held", "released", "deleted",
    # "bounced"; "after-attempt" (under attempt now: applied when the attempt ends, unless
    # the message is gone by then); "attempting" (flush of a message under attempt: it
    # is being tried already); "on-hold" (flush of a held message: release it first);
    # "not-held" (release of a message that is not on hold); "not-found"; or
    # "error: ..." when the spool could not be read or written.

    async def flush(self, qids: Iterable[str] | None = None) -> dict[str, str]:
        """Attempt now. ``None``: every waiting message (held ones stay held). Marks of
        unreachable destinations are forgotten: the operator asks for a real try."""
        async with self._operator:
            self._dead.clear()
            self._failures.clear()
            now = self.clock()
            if qids is None:
                self._due.update(dict.fromkeys(self._parked_qids, now))
                self._parked_qids.clear()
                self._parked.clear()
                results = dict.fromkeys(self._due, "flushed")
                self._due = dict.fromkeys(self._due, now)
                self._heap = [(now, qid) for qid in self._due]
                heapq.heapify(self._heap)
                self._wakeup.set()
                return results
            results = {}
            for qid in qids:
                if qid in self._due or qid in self._parked_qids:
                    self._parked_qids.discard(qid)
                    self._push(qid, now)
                    results[qid] = "flushed"
                elif qid in self._active:
                    results[qid] = "attempting"
                else:
                    results[qid] = await self._unscheduled_state(qid)
            if len(self._heap) > 2 * len(self._due) + 1024:  # drop superseded entries
                self._heap = [(due, qid) for qid, due in self._due.items()]
                heapq.heapify(self._heap)
            return results

    async def hold(self, qids: Iterable[str]) -> dict[str, str]:
        """Put on hold: kept in the spool (state ``hold``, durably), never attempted until
        released, also after a restart."""
        return await self._each(qids, self._hold)

    async def release(self, qids: Iterable[str]) -> dict[str, str]:
        """Take off hold and attempt now."""
        return await self._each(qids, self._release)

    async def delete(self, qids: Iterable[str]) -> dict[str, str]:
        """Remove from the spool without a notice; logged ``QID: removed (deleted by
        operator)``."""
        return await self._each(qids, self._delete)

    async def bounce(self, qids: Iterable[str]) -> dict[str, str]:
        """Fail every pending recipient (550 5.0.0) and send the sender a failure notice."""
        return await self._each(qids, self._bounce)

    async def listing(
        self, after: str | None, limit: int, state: str | None = None,
        domain: str | None = None,
    ) -> tuple[list[QueueEntry], str | None]:
        """Up to ``limit`` queued messages after QID ``after``, oldest first, filtered
        by state and by a pending recipient's domain, and the ``after`` of the next page
        (None on the last). Reads only the envelopes of the messages listed."""
        chosen = [qid for qid, _ in self.ledger.page(after, limit + 1, state, domain)]
        following = chosen[limit - 1] if len(chosen) > limit else None
        envelopes = await asyncio.get_running_loop().run_in_executor(
            None, self._read_envelopes, chosen[:limit])
        return [QueueEntry(e, e.qid in self._active) for e in envelopes], following

    def _read_envelopes(self, qids: list[str]) -> list[Envelope]:
        envelopes = []
        for qid in qids:
            try:
                envelopes.append(self.spool.load(qid))
            except (OSError, ValueError):  # gone meanwhile, or being rewritten
                continue
        return envelopes

    async def _each(
        self, qids: Iterable[str], action: Callable[[str], Awaitable[str]]
    ) -> dict[str, str]:
        results: dict[str, str] = {}
        async with self._operator:
            for qid in qids:
                if not ids.is_valid(qid):
                    results[qid] = "not-found"
                elif qid in self._active:
                    detach(self._after_attempt(qid, action), self._later,
                           f"{qid}: operator action after the attempt")
                    results[qid] = "after-attempt"
                else:
                    results[qid] = await self._guarded(qid, action)
        return results

    async def _after_attempt(self, qid: str, action: Callable[[str], Awaitable[str]]) -> None:
        while (attempt := self._active.get(qid)) is not None:
            await asyncio.wait([attempt])
            await asyncio.sleep(0)  # let the attempt's done callbacks run first
        async with self._operator:
            if qid in self._active:  # started again in between: wait once more
                detach(self._after_attempt(qid, action), self._later,
                       f"{qid}: operator action after the attempt")
                return
            outcome = await self._guarded(qid, action)
        log.info("%s: operator action after the attempt under way: %s", qid, outcome)

    async def _guarded(self, qid: str, action: Callable[[str], Awaitable[str]]) -> str:
        try:
            return await action(qid)
        except (OSError, ValueError, SpoolError) as e:
            log.error("%s: operator action failed: %s", qid, e)
            return f"error: {getattr(e, 'strerror', None) or e}"

    def _unschedule(self, qid: str) -> float | None:
        """Take a waiting message out of the schedule; its due time, to put it back."""
        due = self._due.pop(qid, None)
        if qid in self._parked_qids:
            self._parked_qids.discard(qid)
            due = self.clock()
        self._known.discard(qid)
        fresh = self._fresh.pop(qid, None)
        if fresh is not None:
            self._fresh_bytes -= len(fresh[1])
        return due

    async def _io(self, func: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    async def _unscheduled_state(self, qid: str) -> str:
        try:
            envelope = await self._io(self.spool.load, qid)
        except FileNotFoundError:
            self.ledger.remove(qid)
            return "not-found"
        except (OSError, ValueError) as e:
            return f"error: {e}"
        return "on-hold" if envelope.state is QueueState.HOLD else "not-found"

    @contextlib.contextmanager
    def _out_of_schedule(self, qid: str) -> Iterator[None]:
        """Take a message out of the schedule while an operator action works on it, and
        put it back if the action fails part-way: a failure must not strand it."""
        due = self._unschedule(qid)
        try:
            yield
        except BaseException:
            if due is not None:
                self.enqueue(qid, due)
            raise

    async def _hold(self, qid: str) -> str:
        with self._out_of_schedule(qid):
            try:
                envelope = await self._io(self.spool.load, qid)
            except FileNotFoundError:
                self.ledger.remove(qid)
                return "not-found"
            if envelope.state is not QueueState.HOLD:
                envelope.state = QueueState.HOLD
                await self._io(self.spool.update, envelope)
                maillog.held(qid)
            self.ledger.note(envelope)
        return "held"

    async def _release(self, qid: str) -> str:
        if qid in self._known:
            return "not-held"
        try:
            envelope = await self._io(self.spool.load, qid)
        except FileNotFoundError:
            self.ledger.remove(qid)
            return "not-found"
        if envelope.state is not QueueState.HOLD:
            self.restore(envelope)  # on disk but unknown: count and schedule it
            return "not-held"
        envelope.state = QueueState.ACTIVE
        envelope.next_attempt = self.clock()
        await self._io(self.spool.update, envelope)
        self.ledger.note(envelope)
        maillog.released(qid)
        self.enqueue(qid, envelope.next_attempt)
        return "released"

    async def _delete(self, qid: str) -> str:
        with self._out_of_schedule(qid):
            if not await self._io(os.path.exists, self.spool.path(qid)):
                self.ledger.remove(qid)
                return "not-found"
            await self._io(self.spool.remove, qid)
            self.ledger.remove(qid)
        maillog.deleted(qid)
        return "deleted"

    async def _bounce(self, qid: str) -> str:
        with self._out_of_schedule(qid):
            try:
                envelope = await self._io(self.spool.load, qid)
            except FileNotFoundError:
                self.ledger.remove(qid)
                return "not-found"
            await self._bounce_now(envelope)
        return "bounced"

    async def _bounce_now(self, envelope: Envelope) -> None:
        qid = envelope.qid
        now = self.clock()
        reply = OPERATOR_BOUNCE
        results: list[Result] = []
        for recipient in envelope.recipients:
            if recipient.state is RecipientState.PENDING:
                recipient.state = RecipientState.FAILED
                recipient.last_reply = str(reply)
                results.append(Result(recipient, "failed", reply.enhanced, str(reply)))
                maillog.delivery(qid, recipient.address, "none", now - envelope.arrival,
                                 (0.0, 0.0, 0.0, 0.0), reply, "bounced")
        if self.notices is not None:
            await self.notices.after_attempt(envelope, results, None, now)
        await self._io(self.spool.remove, qid)
        self.ledger.remove(qid)
        maillog.removed(qid)
