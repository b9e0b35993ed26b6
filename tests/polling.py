"""The one way the tests wait for something that happens elsewhere.

A daemon, a sink thread or a task signals nothing the test could await, so the test
polls: a predicate is called until it returns something truthy, which is returned. The
timeout is a safety net against a hang, never a measurement: a test that fails only
because the machine was slow is a broken test, so pick it generously.

``what`` names the wait in the failure message; a callable is called only then (to show
a log as it is at the time of the failure). The last try starts after the deadline, so
a wait that ends during the last interval does not fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _timed_out(
    predicate: Callable[[], object], timeout: float, what: str | Callable[[], str]
) -> AssertionError:
    text = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout:g}s waiting for {text or predicate}")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 20.0,
    what: str | Callable[[], str] = "",
    *,
    interval: float = 0.02,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy;
    return that. Raises AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() > deadline
        result = predicate()
        if result:
            return result
        if expired:
            raise _timed_out(predicate, timeout, what)
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T | None],
    timeout: float = 20.0,  # noqa: ASYNC109 - a safety net, like wait_until's
    what: str | Callable[[], str] = "",
    *,
    interval: float = 0.01,
) -> T:
    """``wait_until`` for code running on an event loop: it sleeps with asyncio, so the
    tasks it waits for run meanwhile. The deadline is on the loop's clock."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        expired = loop.time() > deadline
        result = predicate()
        if result:
            return result
        if expired:
            raise _timed_out(predicate, timeout, what)
        await asyncio.sleep(interval)
