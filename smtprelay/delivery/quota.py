"""A daily quota of transactions for one upstream, with an injected clock.

Two ways to count a day, chosen by ``quota_reset``:

* ``"HH:MM UTC"`` (default ``"00:00 UTC"``): the count starts again at that time every
  day, as Google's and Microsoft's per-mailbox limits are usually described;
* ``"rolling"``: at most ``limit`` in any 24 hours (the timestamps of the last
  ``limit`` transactions are kept, which is a few bytes each).

The count lives in memory: a restart of the daemon starts it again from zero (a
provider's own count does not reset, but its "quota exceeded" reply pauses the
upstream, delivery/slowdown.py).
"""

from __future__ import annotations

from collections import deque

from smtprelay.units import reset_minute

DAY = 86400.0


class DailyQuota:
    def __init__(self, limit: int, reset: str = "00:00 UTC") -> None:
        self.limit = limit
        self._start(reset)

    def _start(self, reset: str) -> None:
        self.reset = reset
        self._offset = reset_minute(reset)  # None: rolling
        self._window_start = float("-inf")
        self._count = 0
        self._times: deque[float] = deque()

    def _roll(self, now: float) -> None:
        if self._offset is None:
            while self._times and self._times[0] <= now - DAY:
                self._times.popleft()
            return
        start = self.window_start(now)
        if start != self._window_start:
            self._window_start, self._count = start, 0

    def window_start(self, now: float) -> float:
        """The last reset time at or before ``now`` (fixed resets only)."""
        assert self._offset is not None
        offset = self._offset * 60.0
        return (now - offset) // DAY * DAY + offset

    def used(self, now: float) -> int:
        self._roll(now)
        return len(self._times) if self._offset is None else self._count

    def remaining(self, now: float) -> int:
        return max(0, self.limit - self.used(now))

    def take(self, now: float) -> bool:
        """Count one transaction now, if the quota allows it."""
        if not self.remaining(now):
            return False
        if self._offset is None:
            self._times.append(now)
        else:
            self._count += 1
        return True

    def frees_at(self, now: float) -> float:
        """When the next transaction is allowed (``now``: at once)."""
        if self.remaining(now):
            return now
        if self._offset is None:
            return self._times[len(self._times) - self.limit] + DAY
        return self.window_start(now) + DAY

    def retune(self, limit: int, reset: str) -> None:
        """Reloaded settings; a changed reset time starts the count again."""
        self.limit = limit
        if reset != self.reset:
            self._start(reset)
