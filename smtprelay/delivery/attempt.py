"""One attempt of one message: read it (or take it fresh), group its pending recipients
by destination, deliver each group under that destination's slot, record the outcomes
and conclude (retry later, expire, cancel, or remove), then the notices it calls for.

Per-recipient state is written to the spool after every attempt; a message with
several destinations is saved after each one finishes, so after a crash only
recipients whose delivery was in flight can be tried again. A cancel that arrives
while an attempt is in flight is applied when it concludes (:class:`InFlight`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from smtprelay import maillog
from smtprelay.addresses import domain_of
from smtprelay.delivery import backoff
from smtprelay.delivery.destinations import UNREACHABLE
from smtprelay.delivery.notices import Result
from smtprelay.delivery.outcome import DeliveryError, Parcel, RecipientOutcome
from smtprelay.delivery.ratelimits import NOT_SENT
from smtprelay.delivery.recording import cancel_pending, expire, record
from smtprelay.delivery.routes import Route
from smtprelay.envelope import Envelope, QueueState, Recipient, RecipientState

if TYPE_CHECKING:
    from smtprelay.delivery.scheduler import Scheduler

FAULT_RETRY = 60.0

log = logging.getLogger("smtprelay.delivery")


@dataclass
class InFlight:
    """A message under attempt, as a cancel sees it: the attempt's envelope once read,
    and a lock that keeps the attempt's spool writes and the cancel's apart (both
    rewrite the same file through the same temp name)."""

    envelope: Envelope | None = None
    cancel_by: str | None = None  # asked before the attempt had read the envelope
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)


class Attempts:
    """The attempts of one :class:`Scheduler` (its state: schedule, destinations, ledger)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler

    async def attempt_safely(self, qid: str) -> None:
        """An unexpected fault (a full disk while saving state, a bug) must not strand the
        message in memory: log it and look at the message again later."""
        try:
            await self._attempt(qid)
        except Exception:
            log.exception("%s: delivery attempt failed; retrying in %.0f s", qid, FAULT_RETRY)
            self.s.schedule.push(qid, self.s.clock() + FAULT_RETRY)

    async def _attempt(self, qid: str) -> None:
        let_go = qid in self.s.destinations.let_go  # unparked: its turn came, it never parks twice
        self.s.destinations.let_go.discard(qid)
        fresh = self.s.schedule.take_fresh(qid)
        data: bytes | None = None
        if fresh is not None:
            envelope, data = fresh
        else:
            try:
                envelope = await self.s.io(self.s.spool.load, qid)
            except FileNotFoundError:  # deleted by the operator meanwhile
                self.s.schedule.forget(qid)
                self.s.ledger.remove(qid)
                return
            # The string the ledger and the schedule hold, not the one just parsed: a
            # deferral schedules envelope.qid again, and a million deferred messages
            # would each keep a second copy of their QID (64 bytes).
            envelope.qid = qid
        await self.s.pacer.turn()  # what follows is CPU: logs, statistics, events
        if envelope.state is QueueState.HOLD:
            self.s.schedule.forget(qid)  # released by an operator action, not by time
            self.s.ledger.note(envelope)
            return
        flight = self.s.in_flight.get(qid)
        if flight is not None:
            flight.envelope = envelope
            if flight.cancel_by is not None:
                envelope.cancel_requested_by = flight.cancel_by
        if envelope.cancel_requested_by is not None:
            # Canceled while its attempt was being started, or before a crash that cut
            # the attempt short: what is pending is canceled, nothing is sent.
            await self._conclude(envelope, data, [])
            return
        activated = self.s.clock()
        groups: dict[str, tuple[Route, str, list[Recipient]]] = {}
        for recipient in envelope.recipients:
            if recipient.state is RecipientState.PENDING:
                domain = domain_of(recipient.address)
                route = self.s.router.route(domain, envelope)
                groups.setdefault(route.key, (route, domain, []))[2].append(recipient)
        limit = self.s.destinations.line_limit
        busy = next((key for key in groups if self.s.destinations.waiting[key] >= limit), None)
        if busy is not None and not let_go:
            self.s.ratelimits.forget(qid)
            self.s.destinations.park(busy, qid)
            if data is not None:  # still fresh: its turn comes without a read
                self.s.schedule.keep_fresh(envelope, data)
            return
        limiter = self.s.ratelimits.admit(qid, ((r, d) for r, d, _ in groups.values()))
        if limiter is not None:  # a rate limit: it waits in that upstream's line
            self.s.ratelimits.park(qid, limiter)
            if data is not None:
                self.s.schedule.keep_fresh(envelope, data)
            return
        for route, _, _ in groups.values():
            if route.by_sender:  # the per-sender choice, logged once per attempt
                rewritten = route.rewrite.mailbox if route.rewrite and envelope.sender else None
                maillog.routed(envelope.qid, route.name, route.key, envelope.sender, rewritten)
        # Counted as waiting now, not when the tasks first run: messages read from the
        # spool at the same moment must see each other in the line.
        for key in groups:
            self.s.destinations.waiting[key] += 1
        # One group per attempt: if a destination's delivery fails unexpectedly, or the
        # attempt is cancelled (a stop after its grace), the others are cancelled with it
        # instead of running on unowned; the attempt is retried (attempt_safely).
        results: list[Result] = []
        # Recipients held back by a rate limit, not attempted -> a reply was recorded.
        shaped: dict[str, bool] = {}
        if len(groups) == 1:  # the common case, one destination: no task of its own
            ((route, domain, rcpts),) = groups.values()
            outcomes = await self._deliver_group(envelope, data, route, domain, rcpts, activated)
            await self.s.pacer.turn()
            results += record(envelope, outcomes, activated, shaped, self.s.clock())
            await self._conclude(envelope, data, results, shaped, groups)
            return
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(
                    self._deliver_group(envelope, data, route, domain, rcpts, activated)
                )
                for route, domain, rcpts in groups.values()
            ]
            remaining = len(tasks)
            for next_done in asyncio.as_completed(tasks):
                outcomes = await next_done
                await self.s.pacer.turn()
                remaining -= 1
                results += record(envelope, outcomes, activated, shaped, self.s.clock())
                if remaining:
                    await self._save(envelope, data)
                    self.s.ledger.note(envelope)
        await self._conclude(envelope, data, results, shaped, groups)

    async def _deliver_group(
        self,
        envelope: Envelope,
        data: bytes | None,
        route: Route,
        domain: str,
        recipients: list[Recipient],
        activated: float,
    ) -> tuple[list[RecipientOutcome], float]:
        """Outcomes for one destination and when the connection attempt started."""
        addresses = [r.address for r in recipients]
        waiting = True  # counted in _waiting by _attempt, when it decided not to park
        try:
            dead = self.s.destinations.dead.get(route.key)
            if dead is not None and dead.until > self.s.clock():
                # Always temporary: no server said anything about this message.
                reply = UNREACHABLE.with_text(f"{dead.reply.text} (destination marked unreachable)")
                return [RecipientOutcome(a, reply, "none") for a in addresses], self.s.clock()
            connections = route.limits.max_connections if route.limits else 0
            slot = self.s.destinations.slot(route.key, connections)
            async with slot, self.s.destinations.global_slots:
                self.s.destinations.waiting[route.key] -= 1
                waiting = False
                started = self.s.clock()
                outcomes = await self._deliver_now(envelope, data, route, domain, addresses)
                return outcomes, started
        finally:
            if waiting:
                self.s.destinations.waiting[route.key] -= 1
            self.s.ratelimits.done(envelope.qid, route.key)  # a pass it did not use
            self._unpark(route.key)

    def _unpark(self, key: str) -> None:
        push = self.s.schedule.push
        if self.s.destinations.unpark(key, lambda qid: push(qid, self.s.clock())):
            asyncio.get_running_loop().call_soon(self._unpark, key)  # the rest, in turns

    async def _deliver_now(
        self,
        envelope: Envelope,
        data: bytes | None,
        route: Route,
        domain: str,
        addresses: list[str],
    ) -> list[RecipientOutcome]:
        try:
            hops = await self.s.router.hops(route, domain)
        except DeliveryError as e:
            return [RecipientOutcome(a, e.reply, e.relay) for a in addresses]
        if data is None:  # read only now that a connection slot is held: bounded memory
            try:
                data = await self.s.io(self.s.spool.read_message, envelope.qid)
            except FileNotFoundError:
                return []
        params = {r.address: r.params for r in envelope.recipients if r.params}
        # max_recipients_per_message: several transactions, each paced on its own.
        size = route.limits.max_recipients_per_message if route.limits else 0
        size = size or len(addresses)
        outcomes: list[RecipientOutcome] = []
        for start in range(0, len(addresses), size):
            batch, rest = addresses[start : start + size], addresses[start + size :]
            held = await self.s.ratelimits.take(route, envelope.qid)
            if held is not None:
                return outcomes + [RecipientOutcome(a, held, "none") for a in batch + rest]
            try:
                parcel = Parcel(
                    envelope.sender, batch, data, envelope.mail_params, params, envelope.qid
                )
                sent = await self.s.transport.deliver(route, hops, parcel)
            except DeliveryError as e:
                if e.unreachable:
                    self.s.destinations.unreachable(route.key, e.reply, self.s.clock())
                if e.relay != "none":  # a server said it; the relay's own replies never pause
                    self.s.ratelimits.slowed(route, domain, e.reply)
                return outcomes + [RecipientOutcome(a, e.reply, e.relay) for a in batch + rest]
            self.s.destinations.reached(route.key)
            outcomes += sent
            if self.s.ratelimits.observe(route, domain, sent) and rest:  # paused: the rest waits
                return outcomes + [RecipientOutcome(a, NOT_SENT, "none") for a in rest]
        return outcomes

    async def _rate_limited(
        self,
        envelope: Envelope,
        data: bytes | None,
        results: list[Result],
        pending: list[Recipient],
        groups: dict[str, tuple[Route, str, list[Recipient]]],
        replied: bool,
    ) -> None:
        """Every pending recipient met a pause or a used-up quota: no attempt is
        counted and no retry is scheduled; the message waits in the line of its
        upstream (ratelimits.py). Saved only if something was recorded: a final outcome
        of other recipients, or the "slow down" reply (shown as the last error)."""
        now = self.s.clock()
        await self.s.notify(envelope, results, data, now)
        if results or replied:
            await self._save(envelope, data)
            self.s.ledger.note(envelope)
        waiting = {r.address for r in pending}
        stopped = [
            (route, domain)
            for route, domain, rcpts in groups.values()
            if any(r.address in waiting for r in rcpts)
        ]
        self.s.ratelimits.requeue(envelope.qid, stopped)
        if data is not None:
            self.s.schedule.keep_fresh(envelope, data)

    def _writing(self, qid: str) -> asyncio.Lock:
        flight = self.s.in_flight.get(qid)
        return flight.writing if flight is not None else asyncio.Lock()

    async def _save(self, envelope: Envelope, data: bytes | None) -> None:
        """Rewrite the envelope of a message under attempt (never at once with a cancel)."""
        async with self._writing(envelope.qid):
            await self.s.io(self.s.spool.update, envelope, data)

    async def _conclude(
        self,
        envelope: Envelope,
        data: bytes | None,
        results: list[Result],
        shaped: dict[str, bool] | None = None,
        groups: dict[str, tuple[Route, str, list[Recipient]]] | None = None,
    ) -> None:
        now = self.s.clock()
        pending = [r for r in envelope.recipients if r.state is RecipientState.PENDING]
        if pending and envelope.cancel_requested_by is not None:
            cancel_pending(envelope, envelope.cancel_requested_by)
            pending = []
        if pending and shaped and groups and all(r.address in shaped for r in pending):
            replied = any(shaped.values())
            await self._rate_limited(envelope, data, results, pending, groups, replied)
            return
        envelope.attempts += 1
        if pending:
            # A scheduled send's lifetime starts at its send time, not when it came in.
            start = max(envelope.arrival, envelope.send_at or envelope.arrival)
            delay = backoff.next_delay(
                envelope.attempts,
                now - start,
                self.s.settings.retry_schedule,
                self.s.settings.max_queue_lifetime,
            )
            if delay is None:
                results += expire(envelope, pending, now)
                pending = []
            else:
                envelope.state = QueueState.DEFERRED
                envelope.next_attempt = backoff.retry_at(now, delay)
                await self.s.notify(envelope, results, data, now)
                await self._save(envelope, data)
                self.s.ledger.note(envelope)
                # Canceled while it was being saved: the next look cancels it, at once.
                canceled = envelope.cancel_requested_by is not None
                self.s.schedule.push(envelope.qid, now if canceled else envelope.next_attempt)
                return
        await self.s.notify(envelope, results, data, now)
        # An unlink, synced by the next commit's directory fsync: after a power loss in
        # between, a delivered message may come back and go out twice, never be lost.
        # In a thread: freeing an inode is kernel work that took 100-400 us on the
        # benchmark machine's ext4, a fifth of the event loop's time at HTTP load.
        async with self._writing(envelope.qid):  # not under a cancel's rewrite
            await self.s.io(self.s.spool.discard, envelope.qid)
        self.s.ledger.remove(envelope.qid)
        self.s.schedule.forget(envelope.qid)
        maillog.removed(envelope.qid)
