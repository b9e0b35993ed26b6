"""Limits on password guessing: a slow-down shared by all sessions of one client, and a
bounded pool for the bcrypt work itself.

A penalty per session is no penalty: a client opens 40 sessions and guesses in all of
them at once. So the state belongs to the client *address* (an IPv4 address, an IPv6 /64:
one host usually holds a whole /64), and the checks of one address take turns: one at a
time, each after the delay its failures have earned. Parallel sessions from one address
therefore guess no faster than one session.

bcrypt is CPU work (about 0.25 s at cost 12), so the checks of all addresses together run
on at most one thread per CPU. Waiting checks are admitted by priority: an address that
logged in recently first, then addresses without failures, then those with failures, so
a guessing client does not delay the others' logins behind its own queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from smtprelay.clientkey import client_key

T = TypeVar("T")

# Admission order for the bcrypt pool (lower first).
KNOWN = 0  # this address logged in successfully within the memory period
NEUTRAL = 1  # nothing known about this address
SUSPECT = 2  # this address has failed attempts


@dataclass
class _Client:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    failures: int = 0
    last_failure: float = -math.inf
    last_success: float = -math.inf
    ready_at: float = -math.inf  # no check of this client starts before this time
    sessions: int = 0  # sessions waiting for or holding a turn


@dataclass
class Turn:
    """One credential check of a client; the caller sets ``ok`` to its outcome. A turn
    left without an outcome (the client hung up during the check) counts as a failure:
    otherwise hanging up would be a free way to make the server run bcrypt."""

    priority: int
    ok: bool | None = None


class Throttle:
    """Per-address turns and failure delays: ``step`` seconds per remembered failure, at
    most ``max_delay``; failures are forgotten after ``memory`` quiet seconds. A success
    halves the count rather than clearing it, so a client holding one valid login cannot
    wipe the record of its guesses at another. ``clock`` and ``sleep`` are injectable."""

    def __init__(
        self,
        *,
        step: float = 0.5,
        max_delay: float = 10.0,
        memory: float = 900.0,
        max_clients: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.step, self.max_delay, self.memory = step, max_delay, memory
        self.max_clients = max_clients
        self.clock, self.sleep = clock, sleep
        self._clients: dict[str, _Client] = {}

    def delay(self, failures: int) -> float:
        return min(self.step * failures, self.max_delay)

    def failures(self, ip: str) -> int:
        client = self._clients.get(client_key(ip))
        if client is None:
            return 0
        self._forget_old(client, self.clock())
        return client.failures

    def priority(self, ip: str) -> int:
        client = self._clients.get(client_key(ip))
        if client is None:
            return NEUTRAL
        return self._priority(client, self.clock())

    @contextlib.asynccontextmanager
    async def turn(self, ip: str) -> AsyncIterator[Turn]:
        """Wait for this address's earlier checks and its penalty, then check."""
        key = client_key(ip)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = _Client()
        client.sessions += 1  # before a prune, which keeps clients in use
        if len(self._clients) > self.max_clients:
            self._prune()
        try:
            async with client.lock:
                wait = client.ready_at - self.clock()
                if wait > 0:
                    await self.sleep(wait)
                now = self.clock()
                self._forget_old(client, now)
                turn = Turn(self._priority(client, now))
                try:
                    yield turn
                finally:
                    self._record(client, turn.ok is True, self.clock())
        finally:
            client.sessions -= 1

    def _record(self, client: _Client, ok: bool, now: float) -> None:
        if ok:
            client.failures //= 2
            client.last_success = now
        else:
            client.failures += 1
            client.last_failure = now
        client.ready_at = now + self.delay(client.failures)

    def _forget_old(self, client: _Client, now: float) -> None:
        if client.failures and now - client.last_failure > self.memory:
            client.failures = 0
            client.ready_at = -math.inf

    def _priority(self, client: _Client, now: float) -> int:
        if client.failures and now - client.last_failure <= self.memory:
            return SUSPECT
        if now - client.last_success <= self.memory:
            return KNOWN
        return NEUTRAL

    def _idle(self, client: _Client, now: float) -> bool:
        """Nothing worth keeping: no session uses it and it remembers nothing current."""
        self._forget_old(client, now)
        return (
            client.sessions == 0 and not client.failures and now - client.last_success > self.memory
        )

    def _prune(self) -> None:
        # Bounded memory against clients that rotate addresses: forget what is idle, then,
        # if still too many, the earliest-created entries no session is using.
        now = self.clock()
        for key in [k for k, c in self._clients.items() if self._idle(c, now)]:
            del self._clients[key]
        if len(self._clients) > self.max_clients:
            # Down to 90 %, so that the next new addresses do not each pay for a sweep.
            excess = len(self._clients) - self.max_clients * 9 // 10
            unused = [k for k, c in self._clients.items() if c.sessions == 0]
            for key in unused[:excess]:
                del self._clients[key]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class BcryptPool:
    """Runs blocking checks on at most ``size`` threads of its own (not the default
    executor, whose threads wait for spool fsyncs), admitting waiters by priority, first
    come first served within one priority."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size or cpu_count()
        self._free = self.size
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def busy(self) -> int:
        return self.size - self._free

    async def run(self, priority: int, fn: Callable[..., T], *args: object) -> T:
        await self._acquire(priority)
        try:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.size, thread_name_prefix="bcrypt")
            work = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                # The thread runs on regardless: it keeps its slot until it is done.
                await asyncio.wait([work])
                raise
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # granted just as we were cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiters:
            _, _, granted = heapq.heappop(self._waiters)
            if not granted.done():
                granted.set_result(None)  # the slot moves to this waiter
                return
        self._free += 1
