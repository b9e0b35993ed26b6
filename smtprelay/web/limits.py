"""A bound on the HTTP requests being served at once, so no request rate can take the
event loop (and with it delivery) away from the rest of the daemon.

At most ``limit`` requests are handled at once, and of those at most ``heavy_limit``
on the paths that scan the queue (``/status``, ``/metrics``, ``/queue``). A request
over the bound waits up to ``wait`` seconds for a slot, in arrival order; after that,
or at once when ``max_waiting`` requests are already waiting, it is answered ``503``
with ``Retry-After`` and the JSON error shape.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web

from smtprelay.errors import RelayError
from smtprelay.web.context import error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

WAIT = 2.0
HEAVY_LIMIT = 2


class Busy(RelayError):
    """No slot within the wait (or too many waiting already)."""


class InFlight:
    def __init__(
        self,
        limit: int,
        *,
        heavy_paths: Collection[str] = (),
        heavy_limit: int = HEAVY_LIMIT,
        wait: float = WAIT,
        max_waiting: int | None = None,
    ) -> None:
        self.limit = limit
        self.heavy_paths = frozenset(heavy_paths)
        self.wait = wait
        self.max_waiting = 4 * limit if max_waiting is None else max_waiting
        self.active = 0
        self.waiting = 0
        self.refused = 0
        self._all = asyncio.Semaphore(limit)
        self._heavy = asyncio.Semaphore(max(1, min(heavy_limit, limit)))

    async def _take(self, heavy: bool) -> None:
        """A slot (and a heavy one): at once when one is free and nobody waits (the
        common case, with no timer), else in arrival order within ``wait``; raises
        Busy if none comes."""
        if not self.waiting and not self._all.locked() and not (heavy and self._heavy.locked()):
            await self._all.acquire()  # free: returns without suspending
            if heavy:
                await self._heavy.acquire()
            return
        if self.waiting >= self.max_waiting:  # they would take a free slot first
            raise Busy
        self.waiting += 1
        taken: list[asyncio.Semaphore] = []
        try:
            async with asyncio.timeout(self.wait):
                for semaphore in (self._all, self._heavy) if heavy else (self._all,):
                    await semaphore.acquire()
                    taken.append(semaphore)
        except BaseException as e:
            for semaphore in taken:
                semaphore.release()
            if isinstance(e, TimeoutError):
                raise Busy from None
            raise
        finally:
            self.waiting -= 1

    def _give_back(self, heavy: bool) -> None:
        if heavy:
            self._heavy.release()
        self._all.release()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        heavy = request.path in self.heavy_paths
        try:
            await self._take(heavy)
        except Busy:
            self.refused += 1
            response = error(
                503,
                "busy",
                f"too many HTTP requests at once (limit {self.limit}); try again shortly",
            )
            response.headers["Retry-After"] = str(max(1, math.ceil(self.wait)))
            return response
        self.active += 1
        try:
            return await handler(request)
        finally:
            self.active -= 1
            self._give_back(heavy)
