"""Time slices for bulk queue work, so the event loop answers while a queue drains.

A queue that falls due at once (a restart with a million messages for a dead
smarthost) keeps hundreds of attempts ready to run; each step of each is a callback of
the event loop (log lines, statistics, an envelope rewrite handed to a thread), and
the loop runs every callback that is ready before it looks at sockets and timers
again. Five hundred attempts of half a millisecond each held ``/healthz``,
``/metrics`` and new SMTP sessions for a quarter of a second and more.

:meth:`Pacer.turn` is awaited by an attempt before each of its CPU-heavy steps. Within
a slice it returns at once; once ``SLICE`` of the current pass of the loop is used, it
and every other caller in the same pass yield (``sleep(0)``) until the loop has run
one more pass -- polled its sockets, fired its timers -- and a new slice begins. The
work is not reduced, only cut into slices of bounded length with I/O in between;
what a yield costs is one task wake-up per waiting attempt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# Queue work the loop does in one pass before it looks at sockets and timers again.
SLICE = 0.01


class Pacer:
    def __init__(self, slice_: float = SLICE, clock: Callable[[], float] = time.monotonic) -> None:
        self.slice = slice_
        self.clock = clock
        self._began: float | None = None  # this slice; None: the next caller begins one
        self._spent = False  # the slice is over: everyone yields until the next pass

    async def turn(self) -> None:
        """Return at once while the current slice lasts; otherwise yield to the loop
        until a new pass (and with it a new slice) has begun."""
        while True:
            if not self._spent:
                now = self.clock()
                if self._began is None:
                    self._began = now
                if now - self._began < self.slice:
                    return
                self._spent = True
                # Runs in the next pass, before the callers that yield below (they are
                # queued after it): the pass after this one starts a fresh slice.
                asyncio.get_running_loop().call_soon(self._renew)
            await asyncio.sleep(0)

    def _renew(self) -> None:
        self._began = None
        self._spent = False
