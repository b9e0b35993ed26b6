"""The event-loop monitor /healthz and /status read: how late the loop runs a callback."""

from __future__ import annotations

import asyncio
import time

from smtprelay.web.health import LoopMonitor


def _hold_the_loop(seconds: float) -> None:
    """Work that does not yield (start-up, or a stall): the loop runs nothing meanwhile."""
    time.sleep(seconds)


def test_the_start_up_before_the_monitor_runs_is_no_lag() -> None:
    async def main() -> tuple[float, float]:
        monitor = LoopMonitor(interval=0.05)
        _hold_the_loop(0.3)  # the daemon's start-up after the monitor was made
        task = asyncio.create_task(monitor.run())
        await asyncio.sleep(0)  # the monitor starts
        at_start = monitor.current
        _hold_the_loop(0.25)  # the loop held: the next wake-up is late by about this
        await asyncio.sleep(0.01)  # the monitor wakes first (it was due), and measures
        task.cancel()
        return at_start, monitor.current

    at_start, after_a_stall = asyncio.run(main())
    assert at_start < 0.1
    assert after_a_stall >= 0.15
