"""The pacing state of one upstream (delivery/ratelimits.py): its token bucket, daily quota,
"slow down" pause and line of waiting QIDs, and the gate that says when the next
message may be let in (:meth:`Limiter.opens_at`). No I/O and no clock of its own: the
times are passed in, so it is tested by hand."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass

from smtprelay.config import UpstreamLimits
from smtprelay.delivery.quota import DailyQuota
from smtprelay.delivery.tokenbucket import TokenBucket
from smtprelay.replies import Reply

# Messages let in ahead of their token: as many as tokens come in this many seconds
# (at least one), so an upstream at 10/s holds ~10 messages in the active set, not
# its whole backlog, and each is ready when its token comes.
LEAD = 1.0
MAX_AHEAD = 100


@dataclass
class Pause:
    until: float
    reply: Reply


class Limiter:
    """The pacing state of one upstream: bucket, quota, pause, and its line."""

    def __init__(self, key: str, domain: str, limits: UpstreamLimits | None) -> None:
        self.key = key
        self.domain = domain  # a recipient domain routed to it, to look it up on reload
        self.bucket: TokenBucket | None = None
        self.quota: DailyQuota | None = None
        self.limits: UpstreamLimits | None = None
        self.retune(limits)
        self.pause: Pause | None = None
        self.slowdowns = 0  # pauses in a row
        self.line: deque[str] = deque()
        self.admitted = 0  # messages let in that have not taken their token yet
        self.timer: asyncio.TimerHandle | None = None

    def retune(self, limits: UpstreamLimits | None) -> None:
        """(Re)loaded limits; the last token's time and the quota's count are kept."""
        self.limits = limits
        rate = limits.max_rate if limits is not None else None
        if rate is None:
            self.bucket = None
        elif self.bucket is None:
            self.bucket = TokenBucket(rate)
        else:
            self.bucket.retune(rate)
        if limits is None or not limits.daily_quota:
            self.quota = None
        elif self.quota is None:
            self.quota = DailyQuota(limits.daily_quota, limits.quota_reset)
        else:
            self.quota.retune(limits.daily_quota, limits.quota_reset)

    @property
    def shapes(self) -> bool:
        """Does the gate matter: a rate, a quota, or a pause (even without limits)."""
        return self.bucket is not None or self.quota is not None or self.pause is not None

    def ahead(self) -> int:
        if self.bucket is None:
            return MAX_AHEAD
        return min(MAX_AHEAD, max(1, math.ceil(LEAD / self.bucket.interval)))

    def paused(self, now: float) -> bool:
        if self.pause is not None and self.pause.until <= now:
            self.pause = None
        return self.pause is not None

    def opens_at(self, now: float) -> float | None:
        """When the gate may let the next message in (``<= now``: now); None: when a
        message let in takes its token (the line moves then, no timer needed)."""
        at = now
        if self.paused(now):
            assert self.pause is not None
            at = self.pause.until
        if self.quota is not None:
            remaining = self.quota.remaining(now)
            if remaining <= self.admitted:
                if remaining:
                    return None
                at = max(at, self.quota.frees_at(now))
        if self.bucket is not None:
            at = max(at, self.bucket.available_at(now) - LEAD)
        if self.admitted >= self.ahead() and at <= now:
            return None
        return at

    def open(self, now: float) -> bool:
        at = self.opens_at(now)
        return at is not None and at <= now

    def state(self, now: float, waiting: int) -> dict[str, object]:
        """What ``/status`` shows of this upstream."""
        shown: dict[str, object] = {"upstream": self.key, "rate_limited": waiting}
        if self.limits is not None and self.limits.max_rate is not None:
            shown["max_rate"] = str(self.limits.max_rate)
        if self.quota is not None:
            shown["daily_quota"] = self.quota.limit
            shown["quota_used"] = self.quota.used(now)
        if self.paused(now):
            assert self.pause is not None
            shown["paused_s"] = round(self.pause.until - now, 3)
            shown["paused_by"] = str(self.pause.reply)
        return shown
