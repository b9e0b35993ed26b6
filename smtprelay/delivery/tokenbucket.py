"""A token bucket for upstream rate limits, as the generic cell rate algorithm (GCRA):
one number per bucket (the theoretical arrival time of the next token), no refill
timer, and the clock passed in, so that tests run time forward by hand.

A bucket of ``burst`` tokens refilled at ``rate``: in any window of ``T`` seconds at
most ``burst + T / interval`` transactions go out (``interval = 1 / rate``). The relay
uses ``burst = 1`` -- transactions spaced evenly, never two within one interval --
because providers count in short windows (SES per second) and the first second after
an idle minute must not exceed the limit either.

:meth:`TokenBucket.reserve` hands out tokens in order, also ahead of time: the caller
sleeps until the time it is given. Reservations made and not used are simply lost
(the rate stays below the limit, never above).
"""

from __future__ import annotations

from smtprelay.units import Rate


class TokenBucket:
    def __init__(self, rate: Rate, burst: int = 1) -> None:
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        self.rate = rate
        self.burst = burst
        # When the bucket would be full again if no token were taken from now on,
        # minus one interval: the GCRA's "theoretical arrival time".
        self.tat = float("-inf")

    @property
    def interval(self) -> float:
        return self.rate.interval

    def available_at(self, now: float) -> float:
        """When the next token may be used (``now`` or earlier: at once)."""
        return max(now, self.tat - (self.burst - 1) * self.interval)

    def reserve(self, now: float) -> float:
        """Take the next token; the time it may be used (``>= now``)."""
        at = self.available_at(now)
        self.tat = max(self.tat, now) + self.interval
        return at

    def retune(self, rate: Rate) -> None:
        """A reloaded rate: tokens reserved already keep their times."""
        self.rate = rate
