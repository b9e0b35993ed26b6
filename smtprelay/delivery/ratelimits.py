"""Provider rate limits: pace each upstream, and pause one that says "slow down".

An upstream here is a route key (delivery/routes.py): the smarthost, or one recipient
domain in MX delivery (``[delivery.domain_limits."gmail.com"]``). Its limits
(config.UpstreamLimits) are *shaped*, never failed: mail over them waits in the
queue, shown as ``rate-limited``, its attempts and retry schedule untouched.
Each upstream's state -- bucket, quota, pause, line -- is a :class:`Limiter`
(delivery/limiter.py); here is the scheduler's side of it.

How, building on the parking of delivery/destinations.py:

* A message that falls due passes a *gate* per limited upstream of its recipients
  (:meth:`RateLimits.admit`, asked by the scheduler from the ledger, without reading the
  message, or by the attempt): it gets a *pass*, or is parked in that upstream's line
  (QIDs only, out of the active set, in ``Destinations.parked_qids`` like a destination's
  line, so the operator's flush, hold and delete find it). The gate lets in no more
  messages than tokens come within ``LEAD`` seconds, and none while the upstream is
  paused or its daily quota is used up.
* Right before each transaction the delivery takes a token (:meth:`RateLimits.take`),
  sleeping until the token bucket (tokenbucket.py, burst 1) has one; the daily quota
  (quota.py) counts it. Taking the token ends the pass and lets the next
  message of the line in -- so a line moves as tokens are taken, and a timer (one per
  upstream, never one per message) wakes it when a pause or a quota day ends.
* A reply matched by slowdown.py pauses the upstream for the next step of
  ``[delivery] slowdown_backoff`` (steps grow with each pause in a row; a delivered
  message starts them again); replies during a pause belong to the same episode.
  Transactions not yet sent are not sent (:data:`NOT_SENT`), and the attempt parks the
  message again instead of counting an attempt.

A message with recipients at several upstreams waits in one line at a time, whole.
Time spent rate-limited counts towards ``max_queue_lifetime`` (checked at a real
deferral, never while it waits).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING

from smtprelay import maillog
from smtprelay.config import DeliverySettings
from smtprelay.delivery.limiter import Limiter, Pause
from smtprelay.delivery.outcome import RecipientOutcome
from smtprelay.delivery.routes import Route
from smtprelay.delivery.slowdown import slow_down
from smtprelay.replies import Reply

if TYPE_CHECKING:
    from smtprelay.delivery.interfaces import NextHops
    from smtprelay.delivery.scheduler import Scheduler

# The outcome of a recipient whose transaction was not sent: the upstream was paused,
# or its quota used up, while the message waited for its token. Never recorded.
NOT_SENT = Reply(451, "4.7.0", "Not sent: upstream rate-limited, waiting in the queue")


class RateLimits:
    """The limiters of one :class:`Scheduler`, and the passes its messages hold."""

    def __init__(self, scheduler: Scheduler, settings: DeliverySettings) -> None:
        self.s = scheduler
        self.limiters: dict[str, Limiter] = {}
        self.passes: dict[str, set[str]] = {}  # QID -> upstream keys it may go to
        self.apply(settings)

    def apply(self, settings: DeliverySettings) -> None:
        """(Re)loaded settings: pause steps, and whether any upstream has limits."""
        self.backoff = settings.slowdown_backoff
        self.configured = settings.smarthost.limited or any(
            limits.limited for limits in settings.domain_limits.values()
        )

    @property
    def enabled(self) -> bool:
        """Is there anything to pace (else the scheduler skips the gate)."""
        return self.configured or bool(self.limiters)

    def limiter(self, route: Route, domain: str, *, create: bool = False) -> Limiter | None:
        """The limiter of ``route`` (reached for ``domain``); made if it has limits,
        or if ``create`` (a pause needs one, limits or not)."""
        limiter = self.limiters.get(route.key)
        if limiter is not None:
            if limiter.limits is not route.limits:  # reloaded settings
                limiter.retune(route.limits)
            return limiter
        if create or (route.limits is not None and route.limits.limited):
            limiter = self.limiters[route.key] = Limiter(route.key, domain, route.limits)
        return limiter

    def reload(self, router: NextHops) -> None:
        """Reloaded routes: each limiter takes its upstream's new limits (none if its
        domain goes elsewhere now) and lets in what they allow."""
        for limiter in list(self.limiters.values()):
            route = router.route(limiter.domain)
            limiter.retune(route.limits if route.key == limiter.key else None)
            if limiter.timer is not None:
                limiter.timer.cancel()
                limiter.timer = None
            self.kick(limiter)

    # --- the gate ---------------------------------------------------------------------

    def admit(self, qid: str, destinations: Iterable[tuple[Route, str]]) -> Limiter | None:
        """Let ``qid`` go to each of its ``destinations`` (route, domain): a pass for
        each limited upstream; or the limiter in whose line it must wait (then it
        holds no pass at all: a message waits for one upstream at a time)."""
        now = self.s.clock()
        held = self.passes.get(qid, set())
        needed: list[Limiter] = []
        for route, domain in destinations:
            limiter = self.limiter(route, domain)
            if limiter is None or not limiter.shapes or route.key in held:
                continue
            # Newcomers queue behind the line: a token freed is the line's first.
            if limiter.line or not limiter.open(now):
                self.forget(qid)
                return limiter
            needed.append(limiter)
        for limiter in needed:
            limiter.admitted += 1
            self.passes.setdefault(qid, set()).add(limiter.key)
        return None

    def park(self, qid: str, limiter: Limiter) -> None:
        """Wait in ``limiter``'s line (shown as rate-limited), out of the active set."""
        limiter.line.append(qid)
        self.s.destinations.parked_qids.add(qid)
        self.s.ledger.rate_limited(qid, True)
        self.kick(limiter)

    def requeue(self, qid: str, destinations: Iterable[tuple[Route, str]]) -> None:
        """A message whose pending recipients all met a pause or a used-up quota:
        back in the line of the upstream that stopped it (its attempt ends)."""
        self.forget(qid)
        stopped = [
            limiter
            for route, domain in destinations
            if (limiter := self.limiter(route, domain, create=True)) is not None
        ]
        now = self.s.clock()
        closed = [limiter for limiter in stopped if not limiter.open(now)]
        self.park(qid, (closed or stopped)[0])

    def kick(self, limiter: Limiter) -> None:
        """Let in as many of the line as the gate allows now; if some are left, a
        timer for when it opens (unless a message let in will move the line)."""
        now = self.s.clock()
        parked = self.s.destinations.parked_qids
        while limiter.line and limiter.open(now):
            qid = limiter.line.popleft()
            if qid not in parked:
                continue  # flushed, held or deleted meanwhile
            parked.discard(qid)
            limiter.admitted += 1
            self.passes.setdefault(qid, set()).add(limiter.key)
            self.s.schedule.push(qid, now)
        while limiter.line and limiter.line[0] not in parked:
            limiter.line.popleft()
        if not limiter.line or limiter.timer is not None:
            return
        at = limiter.opens_at(now)
        if at is not None:
            loop = asyncio.get_running_loop()
            limiter.timer = loop.call_later(max(0.0, at - now), self._wake, limiter)

    def _wake(self, limiter: Limiter) -> None:
        limiter.timer = None
        self.kick(limiter)

    def forget(self, qid: str) -> None:
        """``qid`` gives back every pass it holds (its attempt ended, or it is parked)."""
        for key in self.passes.pop(qid, ()):
            self._end_pass(key)

    def done(self, qid: str, key: str) -> None:
        """The delivery of ``qid`` to ``key`` ended; a pass not used goes back."""
        keys = self.passes.get(qid)
        if keys is not None and key in keys:
            keys.discard(key)
            if not keys:
                del self.passes[qid]
            self._end_pass(key)

    def _end_pass(self, key: str) -> None:
        limiter = self.limiters.get(key)
        if limiter is not None:
            limiter.admitted = max(0, limiter.admitted - 1)
            self.kick(limiter)

    # --- the transaction ----------------------------------------------------------------

    async def take(self, route: Route, qid: str) -> Reply | None:
        """Wait for the token of one transaction to ``route``; None: send it now,
        NOT_SENT: not now (paused or quota used up meanwhile)."""
        limiter = self.limiters.get(route.key)
        if limiter is None:
            return None
        now = self.s.clock()
        if limiter.paused(now) or (limiter.quota is not None and not limiter.quota.remaining(now)):
            return NOT_SENT
        if limiter.bucket is not None:
            # Woken together, the first takes the token, the others sleep again.
            while (at := limiter.bucket.available_at(now)) > now:
                await asyncio.sleep(at - now)
                now = self.s.clock()
                if limiter.paused(now):
                    return NOT_SENT
        if limiter.quota is not None and not limiter.quota.take(now):
            return NOT_SENT
        if limiter.bucket is not None:
            limiter.bucket.take(now)
        # The pass ends with the token and the quota taken (not before: the gate would
        # count neither): the next of the line may come.
        self.done(qid, route.key)
        return None

    def observe(self, route: Route, domain: str, outcomes: Iterable[RecipientOutcome]) -> bool:
        """The outcomes of one transaction: True if one says "slow down" (the
        upstream is paused now); a delivery starts the pause steps again."""
        delivered = False
        for outcome in outcomes:
            if outcome.relay != "none" and self.slowed(route, domain, outcome.reply):
                return True
            delivered = delivered or outcome.reply.code < 300
        limiter = self.limiters.get(route.key)
        if delivered and limiter is not None:
            limiter.slowdowns = 0
            idle = not (limiter.line or limiter.admitted or limiter.timer)
            if idle and not limiter.shapes:  # made for a pause that is over: forget it
                del self.limiters[route.key]
        return False

    def slowed(self, route: Route, domain: str, reply: Reply) -> bool:
        """Pause ``route``'s upstream if ``reply`` says "slow down" (slowdown.py)."""
        rule = slow_down(reply)
        if rule is None:
            return False
        limiter = self.limiter(route, domain, create=True)
        assert limiter is not None
        now = self.s.clock()
        if limiter.paused(now):
            return True  # the same episode: in-flight replies do not grow the pause
        step = self.backoff[min(limiter.slowdowns, len(self.backoff) - 1)]
        limiter.slowdowns += 1
        limiter.pause = Pause(now + step, reply)
        maillog.upstream_paused(route.key, step, reply, rule.number, rule.source)
        self.kick(limiter)
        return True

    def close(self) -> None:
        """Stop the limiters' timers (the daemon stops)."""
        for limiter in self.limiters.values():
            if limiter.timer is not None:
                limiter.timer.cancel()
                limiter.timer = None

    # --- what status pages show -----------------------------------------------------------

    def states(self) -> list[dict[str, object]]:
        now = self.s.clock()
        parked = self.s.destinations.parked_qids
        return [
            limiter.state(now, sum(1 for qid in limiter.line if qid in parked))
            for limiter in self.limiters.values()
        ]
