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
from dataclasses import dataclass, field
from typing import TypeVar

from smtprelay.clientkey import client_key

BASE_DELAY = 0.5
MAX_DELAY = 8.0
FORGET = 600.0
MAX_ADDRESSES = 10_000  # remembered at once; the least recently failing are forgotten

LINE_BURST = 10
LINE_INTERVAL = 6.0
GLOBAL_BURST = 100
GLOBAL_INTERVAL = 0.1

_V = TypeVar("_V")


@dataclass
class _Failures:
    count: int
    last: float


@dataclass(kw_only=True, eq=False)
class Penalty:
    """Recent failures per client (address or /64) and the delay each one earns:
    ``base`` doubled for each recent failure but the first, at most ``cap``; a client
    without a failure for ``forget`` seconds starts afresh."""

    base: float = BASE_DELAY
    cap: float = MAX_DELAY
    forget: float = FORGET
    max_addresses: int = MAX_ADDRESSES
    clock: Callable[[], float] = time.monotonic
    waiting: int = field(default=0, init=False)  # requests the caller is delaying now
    _seen: OrderedDict[str, _Failures] = field(default_factory=OrderedDict, init=False)

    def failure(self, address: str) -> tuple[int, float]:
        """Count a failure from ``address``: (recent failures including this one, delay)."""
        key = client_key(address)
        now = self.clock()
        entry = self._seen.get(key)
        if entry is None or now - entry.last > self.forget:
            entry = _Failures(0, now)
        entry.count += 1
        entry.last = now
        _most_recent(self._seen, key, entry, self.max_addresses)
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


@dataclass(kw_only=True, eq=False)
class LogBudget:
    """Token buckets for log lines, per key (a client) and for all keys together: a key
    may write ``burst`` lines at once, then one per ``interval`` seconds; all keys
    together ``global_burst``, then one per ``global_interval``. At most ``max_keys``
    keys are remembered, the least recent forgotten first (like a :class:`Penalty`'s)."""

    burst: int = LINE_BURST
    interval: float = LINE_INTERVAL
    global_burst: int = GLOBAL_BURST
    global_interval: float = GLOBAL_INTERVAL
    max_keys: int = MAX_ADDRESSES
    clock: Callable[[], float] = time.monotonic
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict, init=False)
    _global: _Bucket = field(init=False)

    def __post_init__(self) -> None:
        self._global = _Bucket(float(self.global_burst), self.clock())

    def allow(self, key: str) -> int | None:
        """None: leave this line out. Else how many lines of ``key`` were left out
        since the last one written (for the line to say so)."""
        now = self.clock()
        bucket = self._buckets.get(key) or _Bucket(float(self.burst), now)
        _most_recent(self._buckets, key, bucket, self.max_keys)
        _refill(bucket, now, self.burst, self.interval)
        _refill(self._global, now, self.global_burst, self.global_interval)
        if bucket.tokens < 1.0 or self._global.tokens < 1.0:
            bucket.suppressed += 1
            return None
        bucket.tokens -= 1.0
        self._global.tokens -= 1.0
        left_out, bucket.suppressed = bucket.suppressed, 0
        return left_out


def _most_recent(seen: OrderedDict[str, _V], key: str, value: _V, limit: int) -> None:
    """``value`` for ``key``, now the most recent (last); the least recent beyond
    ``limit`` keys are forgotten, so that a flood of addresses cannot grow ``seen``."""
    seen.pop(key, None)
    seen[key] = value
    while len(seen) > limit:
        seen.popitem(last=False)


def _refill(bucket: _Bucket, now: float, burst: int, interval: float) -> None:
    bucket.tokens = min(float(burst), bucket.tokens + max(0.0, now - bucket.stamp) / interval)
    bucket.stamp = now
