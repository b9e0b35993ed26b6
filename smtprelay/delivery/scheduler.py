"""The queue manager: decide when each queued message is attempted, and record results.

* A due-time heap of ``(time, QID)`` -- the only per-message memory while a message
  waits, so a large queue stays small in RAM; envelopes are read from the spool when an
  attempt starts, message data only once a connection slot is held.
* A bounded active set (``active_limit`` messages being attempted at once).
* Per-destination concurrency (``per_destination_concurrency``) under a global limit
  (``concurrency``). A destination slot is taken before a global one, so messages
  waiting for a busy destination never hold slots that others could use; and a
  destination with a long line of waiters gets new messages put back for a moment
  rather than letting them fill the active set (fairness).
* Dead destinations: after ``DEAD_AFTER`` consecutive attempts in which no host of a
  destination could be reached, it is skipped for ``COOL_OFF`` seconds and its mail
  deferred without a wasted connection attempt each.
* Per-recipient state is written to the spool after every attempt; a message with
  several destinations is saved after each one finishes, so after a crash only
  recipients whose delivery was in flight can be tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from smtprelay import maillog
from smtprelay.config import DeliverySettings
from smtprelay.delivery import backoff
from smtprelay.delivery.notices import Notices, Result
from smtprelay.delivery.outcome import DeliveryError, RecipientOutcome
from smtprelay.delivery.routes import Route, Router
from smtprelay.delivery.transport import Transport
from smtprelay.envelope import Envelope, QueueState, Recipient, RecipientState
from smtprelay.inbound.address import domain_of
from smtprelay.replies import Reply
from smtprelay.spool import Spool

DEAD_AFTER = 3
COOL_OFF = 60.0
REQUEUE_BUSY = 1.0  # seconds before a message for a saturated destination is looked at again
# Messages just received are kept in memory for their first attempt (no re-reading of
# what was written a moment ago), up to this many bytes of message data in all.
FRESH_BYTES = 64 * 1024 * 1024
EXPIRED = Reply(554, "5.4.7", "Delivery time expired")
# In the DSN an expiry is reported as the temporary condition it was (RFC 3463 X.4.7).
EXPIRED_STATUS = "4.4.7"
FAULT_RETRY = 60.0
UNREACHABLE = Reply(451, "4.4.1", "Destination unreachable")

log = logging.getLogger("smtprelay.delivery")


@dataclass
class _Dead:
    until: float
    reply: Reply


class Scheduler:
    def __init__(
        self,
        spool: Spool,
        router: Router,
        transport: Transport,
        settings: DeliverySettings,
        *,
        active_limit: int = 2000,
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
        self._known: set[str] = set()  # QIDs in the heap or active: never scheduled twice
        self._active: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()
        self._global = asyncio.Semaphore(settings.concurrency)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._waiting: defaultdict[str, int] = defaultdict(int)
        self._failures: defaultdict[str, int] = defaultdict(int)
        self._dead: dict[str, _Dead] = {}
        self._fresh: dict[str, tuple[Envelope, bytes]] = {}
        self._fresh_bytes = 0

    # --- queue --------------------------------------------------------------------

    def enqueue(self, qid: str, due: float) -> None:
        if qid in self._known:
            return
        self._known.add(qid)
        heapq.heappush(self._heap, (due, qid))
        self._wakeup.set()

    def enqueue_new(self, envelope: Envelope, data: bytes) -> None:
        """A message the intake has just made durable: attempt it now, from memory."""
        if envelope.qid in self._known:
            return
        if self._fresh_bytes + len(data) <= FRESH_BYTES:
            self._fresh[envelope.qid] = (envelope, data)
            self._fresh_bytes += len(data)
        self.enqueue(envelope.qid, envelope.next_attempt)

    @property
    def queued(self) -> int:
        return len(self._known)

    async def run(self) -> None:
        """Start attempts as they fall due; runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            now = self.clock()
            while self._heap and self._heap[0][0] <= now and len(self._active) < self.active_limit:
                _, qid = heapq.heappop(self._heap)
                task = loop.create_task(self._attempt_safely(qid))
                self._active[qid] = task
                task.add_done_callback(functools.partial(self._finished, qid))
            self._wakeup.clear()
            timeout = None
            if self._heap and len(self._active) < self.active_limit:
                timeout = max(0.0, self._heap[0][0] - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _finished(self, qid: str, _: object) -> None:
        self._active.pop(qid, None)
        self._wakeup.set()

    def _reschedule(self, qid: str, due: float) -> None:
        heapq.heappush(self._heap, (due, qid))
        self._wakeup.set()

    async def stop(self, grace: float) -> None:
        """Let attempts under way finish for ``grace`` seconds, then cancel them."""
        tasks = list(self._active.values())
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
                return
        if envelope.state is QueueState.HOLD:
            self._known.discard(qid)  # released by an operator action, not by time
            return
        activated = self.clock()
        groups: dict[str, tuple[Route, str, list[Recipient]]] = {}
        for recipient in envelope.recipients:
            if recipient.state is RecipientState.PENDING:
                domain = domain_of(recipient.address)
                route = self.router.route(domain)
                groups.setdefault(route.key, (route, domain, []))[2].append(recipient)
        if any(self._waiting[key] >= 4 * self.settings.per_destination_concurrency
               for key in groups):
            self._reschedule(qid, activated + REQUEUE_BUSY)
            return
        tasks = [
            loop.create_task(
                self._deliver_group(envelope, data, route, domain, rcpts, activated))
            for route, domain, rcpts in groups.values()
        ]
        remaining = len(tasks)
        results: list[Result] = []
        for next_done in asyncio.as_completed(tasks):
            outcomes = await next_done
            remaining -= 1
            results += self._record(envelope, outcomes, activated)
            if remaining:
                await loop.run_in_executor(None, self.spool.update, envelope, data)
        await self._conclude(envelope, data, results)

    async def _deliver_group(
        self, envelope: Envelope, data: bytes | None, route: Route, domain: str,
        recipients: list[Recipient], activated: float,
    ) -> tuple[list[RecipientOutcome], float]:
        """Outcomes for one destination and when the connection attempt started."""
        addresses = [r.address for r in recipients]
        dead = self._dead.get(route.key)
        if dead is not None and dead.until > self.clock():
            # Always temporary: no server said anything about this message.
            reply = UNREACHABLE.with_text(
                f"{dead.reply.text} (destination marked unreachable)")
            return [RecipientOutcome(a, reply, "none") for a in addresses], self.clock()
        slot = self._slots.setdefault(route.key, asyncio.Semaphore(
            self.settings.per_destination_concurrency))
        self._waiting[route.key] += 1
        waiting = True
        try:
            async with slot, self._global:
                self._waiting[route.key] -= 1
                waiting = False
                started = self.clock()
                outcomes = await self._deliver_now(envelope, data, route, domain, addresses)
                return outcomes, started
        finally:
            if waiting:
                self._waiting[route.key] -= 1

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
                route, hops, envelope.sender, addresses, data, envelope.mail_params, params
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
                self._reschedule(envelope.qid, envelope.next_attempt)
                return
        if self.notices is not None:
            await self.notices.after_attempt(envelope, results, data, now)
        await loop.run_in_executor(None, self.spool.remove, envelope.qid)
        self._known.discard(envelope.qid)
        maillog.removed(envelope.qid)
