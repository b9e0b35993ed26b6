"""Delivering one webhook endpoint's outbox: signed POSTs, retries, Retry-After, 410.

One :class:`Sender` task per enabled endpoint reads its due outbox rows a page at a
time (``[events] webhook_concurrency`` requests in flight at most, each bounded by
``webhook_timeout``), and writes the results back in one transaction per page. A
failure reschedules that event on the retry schedule (with +-10 % jitter) and, when a
whole page failed, pauses the endpoint until the earliest retry, so a dead receiver
costs one page of attempts per retry time, not one attempt per event of its backlog.
``429``/``503`` with ``Retry-After`` pause it until then (the requests of the page not
sent yet wait too, without counting an attempt); ``410 Gone`` disables it.
A reload replaces ``endpoint`` (new secrets, patterns) and ``policy`` in place: the
next request uses them, and nothing in flight or in the outbox is dropped.
Redirects are not followed (a redirect could lead past the SSRF check).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from smtprelay.events.db import Database
from smtprelay.events.metrics import EventMetrics
from smtprelay.events.outbox import Due, Endpoint, Outbox, Settled
from smtprelay.events.webhooks import GuardedResolver, UnsafeUrl, check_url, headers

log = logging.getLogger("smtprelay.events")

IDLE = 30.0  # at most this long between looks at the outbox
MAX_RETRY_AFTER = 86400.0


@dataclass(frozen=True, slots=True)
class Policy:
    schedule: tuple[float, ...]
    timeout: float
    concurrency: int


@dataclass(slots=True)
class _Result:
    due: Due
    ok: bool = False
    gone: bool = False
    retry_after: float | None = None
    error: str = ""
    held: bool = False  # not sent: a Retry-After earlier in its page said to wait


@dataclass(slots=True)
class Sender:
    endpoint: Endpoint
    db: Database
    outbox: Outbox
    policy: Policy
    metrics: EventMetrics
    clock: Callable[[], float] = time.time
    # (webhook, outbox rows gone): delivered or given up, for the backlog gauge.
    settled: Callable[[str, int], None] = lambda webhook, rows: None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    paused_until: float = 0.0
    disabled: bool = False

    async def run(self) -> None:
        resolver = None if self.endpoint.allow_private else GuardedResolver()
        # No connector limit: each page's semaphore bounds the requests in flight, and
        # reads the policy anew, so a reload's concurrency and timeout apply at once.
        connector = aiohttp.TCPConnector(limit=0, resolver=resolver)
        async with aiohttp.ClientSession(connector=connector) as session:
            while not self.disabled:
                now = self.clock()
                if self.paused_until > now:
                    await asyncio.sleep(self.paused_until - now)
                    continue
                page = await self.db.run(
                    self.outbox.due, self.endpoint.id, now, 4 * self.policy.concurrency
                )
                if not page:
                    await self._idle(now)
                    continue
                await self._deliver(session, page)

    async def _idle(self, now: float) -> None:
        next_at = await self.db.run(self.outbox.next_due, self.endpoint.id)
        delay = IDLE if next_at is None else min(IDLE, max(0.0, next_at - now))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), delay)
        self.wake.clear()

    async def _deliver(self, session: aiohttp.ClientSession, page: Sequence[Due]) -> None:
        try:
            if not self.endpoint.allow_private:
                await check_url(self.endpoint.url, False)
        except UnsafeUrl as e:
            results = [_Result(due, error=str(e)) for due in page]
        else:
            limit = asyncio.Semaphore(self.policy.concurrency)
            results = await asyncio.gather(*(self._post(session, limit, due) for due in page))
        if any(r.gone for r in results):
            await self._disable(next(r.error for r in results if r.gone))
            return
        await self._settle(results)

    async def _post(
        self, session: aiohttp.ClientSession, limit: asyncio.Semaphore, due: Due
    ) -> _Result:
        body = due.body.encode()
        result = _Result(due)
        async with limit:
            if self.paused_until > self.clock():
                result.held = True
                return result
            sent = headers(self.endpoint.secrets, due.event_id, int(self.clock()), body)
            try:
                async with session.post(
                    self.endpoint.url,
                    data=body,
                    headers=sent,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.policy.timeout),
                ) as response:
                    await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                self.metrics.requests.labels(self.endpoint.id, "error").inc()
                result.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                return result
        self.metrics.requests.labels(self.endpoint.id, f"{status // 100}xx").inc()
        if 200 <= status < 300:
            result.ok = True
        elif status == 410:
            result.gone = True
            result.error = "410 Gone"
        else:
            result.error = f"HTTP {status}"
            if status in (429, 503) and retry_after is not None:
                result.retry_after = _retry_after(retry_after, self.clock())
                result.error += f" (Retry-After: {retry_after})"
                # The rest of this page waits too (see held).
                self.paused_until = max(self.paused_until, self.clock() + result.retry_after)
        return result

    async def _settle(self, results: Sequence[_Result]) -> None:
        now = self.clock()
        delivered, retry, given_up, errors = [], [], [], []
        earliest: float | None = None
        for r in results:
            if r.ok:
                delivered.append(r.due.seq)
                continue
            if r.held:  # not an attempt: due again when the pause ends
                retry.append((r.due.seq, r.due.attempts, self.paused_until))
                continue
            errors.append((now, r.due.event_id, r.error))
            attempts = r.due.attempts + 1
            if r.retry_after is not None:
                next_at = now + r.retry_after
                self.paused_until = max(self.paused_until, next_at)
            elif attempts >= len(self.policy.schedule):
                given_up.append(r.due.seq)
                log.warning(
                    "webhook %s: event %s given up after %d attempts: %s",
                    self.endpoint.id,
                    r.due.event_id,
                    attempts,
                    r.error,
                )
                continue
            else:
                next_at = now + self.policy.schedule[attempts] * random.uniform(0.9, 1.1)
            retry.append((r.due.seq, attempts, next_at))
            earliest = next_at if earliest is None else min(earliest, next_at)
        if not delivered and earliest is not None:
            self.paused_until = max(self.paused_until, earliest)  # the receiver is down
        await self.db.run(
            self.outbox.settle, self.endpoint.id, Settled(delivered, retry, given_up, errors)
        )
        self.settled(self.endpoint.id, len(delivered) + len(given_up))
        if delivered:
            self.metrics.delivered.labels(self.endpoint.id).inc(len(delivered))
        if given_up:
            self.metrics.given_up.labels(self.endpoint.id).inc(len(given_up))

    async def _disable(self, reason: str) -> None:
        self.disabled = True
        await self.db.run(self.outbox.disable, self.endpoint.id, reason, self.clock())
        self.metrics.disabled.inc()
        log.warning(
            "webhook %s (%s) disabled: the receiver answered %s",
            self.endpoint.id,
            self.endpoint.url,
            reason,
        )


def _retry_after(value: str, now: float) -> float:
    """Seconds from a ``Retry-After`` (delay-seconds or an HTTP date), within a day."""
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            seconds = 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
