"""A clock for asyncio tests that moves only when every task is waiting on it."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from typing import Any


class VirtualTime:
    """``clock()`` and ``sleep()`` to inject; ``run()`` drives tasks: it lets them run
    until all of them wait, then moves the time to the earliest sleeper's deadline and
    wakes it. Time never moves while a task can still run, so the order and spacing the
    code under test produces are exact (no wall clock involved)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(delay, 0.0), next(self._order), woken))
        await woken

    async def run(self, *work: Awaitable[Any]) -> list[Any]:
        tasks = [asyncio.ensure_future(w) for w in work]
        while True:
            for _ in range(100):  # let everything that can run, run
                await asyncio.sleep(0)
            if all(t.done() for t in tasks):
                return [t.result() for t in tasks]
            while self._timers and self._timers[0][2].cancelled():
                heapq.heappop(self._timers)
            if not self._timers:
                raise AssertionError("tasks wait for something other than the clock")
            when, _, woken = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            woken.set_result(None)
