"""Failed bearer tokens: a delay per client address, and a log that stays readable.

A wrong token is answered ``401`` only after a delay that doubles with each recent
failure from the same address (``BASE_DELAY``, 2x, 4x ... up to ``MAX_DELAY``), counted
across all of that address's requests at once, so parallel guesses slow each other
down. An IPv6 client counts per /64 (one host usually owns the whole prefix). Failures
are forgotten after ``FORGET`` seconds without one. Valid tokens are never delayed, from
any address: the check is made first.

Each failure is one warning line naming the client (fail2ban matches it); an address
that floods gets ``LINE_BURST`` lines, then one line per ``LINE_INTERVAL`` that says how
many were left out, and all addresses together at most ``GLOBAL_BURST`` lines then one
per ``GLOBAL_INTERVAL``.

Every failure is delayed, however many are waiting: a request sleeping out its delay
holds nothing but its own connection (no slot of ``web.limits``), and answering any
of them early would tell a guesser at once that its token is wrong. So a client gets
at most as many answers per ``MAX_DELAY`` as it holds connections open.

Neither class awaits anything: the caller sleeps. Both take a ``clock`` for tests.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from smtprelay.clientkey import client_key

BASE_DELAY = 0.5
MAX_DELAY = 8.0
FORGET = 600.0
MAX_ADDRESSES = 10_000  # remembered at once; the least recently failing are forgotten

LINE_BURST = 10
LINE_INTERVAL = 6.0
GLOBAL_BURST = 100
GLOBAL_INTERVAL = 0.1


@dataclass
class _Failures:
    count: int
    last: float


class Penalty:
    """Recent failures per client (address or /64) and the delay each one earns."""

    def __init__(
        self,
        *,
        base: float = BASE_DELAY,
        cap: float = MAX_DELAY,
        forget: float = FORGET,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.cap = cap
        self.forget = forget
        self.max_addresses = max_addresses
        self.clock = clock
        self.waiting = 0  # requests the caller is delaying now
        self._seen: OrderedDict[str, _Failures] = OrderedDict()

    def failure(self, address: str) -> tuple[int, float]:
        """Count a failure from ``address``: (recent failures including this one, delay)."""
        key = client_key(address)
        now = self.clock()
        entry = self._seen.pop(key, None)
        if entry is None or now - entry.last > self.forget:
            entry = _Failures(0, now)
        entry.count += 1
        entry.last = now
        self._seen[key] = entry  # most recent last: the oldest go first
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)
        exponent = min(entry.count - 1, 32)  # 2**32 * base is far over any cap
        return entry.count, min(self.cap, self.base * 2.0**exponent)

    def recent(self, address: str) -> int:
        entry = self._seen.get(client_key(address))
        if entry is None or self.clock() - entry.last > self.forget:
            return 0
        return entry.count


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    suppressed: int = 0


class LogBudget:
    """Token buckets for log lines, per key (a client) and for all keys together."""

    def __init__(
        self,
        *,
        burst: int = LINE_BURST,
        interval: float = LINE_INTERVAL,
        global_burst: int = GLOBAL_BURST,
        global_interval: float = GLOBAL_INTERVAL,
        max_keys: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.interval = interval
        self.global_burst = global_burst
        self.global_interval = global_interval
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._global = _Bucket(float(global_burst), clock())

    def allow(self, key: str) -> int | None:
        """None: leave this line out. Else how many lines of ``key`` were left out
        since the last one written (for the line to say so)."""
        now = self.clock()
        bucket = self._buckets.pop(key, None) or _Bucket(float(self.burst), now)
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        _refill(bucket, now, self.burst, self.interval)
        _refill(self._global, now, self.global_burst, self.global_interval)
        if bucket.tokens < 1.0 or self._global.tokens < 1.0:
            bucket.suppressed += 1
            return None
        bucket.tokens -= 1.0
        self._global.tokens -= 1.0
        left_out, bucket.suppressed = bucket.suppressed, 0
        return left_out


def _refill(bucket: _Bucket, now: float, burst: int, interval: float) -> None:
    bucket.tokens = min(float(burst), bucket.tokens + max(0.0, now - bucket.stamp) / interval)
    bucket.stamp = now
