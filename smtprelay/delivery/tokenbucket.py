"""A token bucket for upstream rate limits, as the generic cell rate algorithm (GCRA):
one number per bucket (the theoretical arrival time of the next token), no refill
timer, and the clock passed in, so that tests run time forward by hand.

A bucket of ``burst`` tokens refilled at ``rate``: in any window of ``T`` seconds at
most ``burst + T / interval`` transactions go out (``interval = 1 / rate``). The relay
uses ``burst = 1`` -- transactions spaced evenly, never two within one interval --
because providers count in short windows (SES per second) and the first second after
an idle minute must not exceed the limit either.

:meth:`TokenBucket.take` takes a token at the time it is used, never ahead: a caller
that finds none sleeps until :meth:`TokenBucket.available_at` and asks again. (Handing
out future times instead lets callers woken late by a busy event loop go out
together: the reserved times were spaced, the sends would not be.)
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

    def take(self, now: float) -> bool:
        """Take a token now if there is one."""
        # A hair of slack: tat - (burst - 1) * interval rounds a little above now.
        if self.available_at(now) > now + 1e-9 * self.interval:
            return False
        self.tat = max(self.tat, now) + self.interval
        return True

    def retune(self, rate: Rate) -> None:
        """A reloaded rate; the time of the last token taken is kept."""
        self.rate = rate
