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
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Collection

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

    @contextlib.asynccontextmanager
    async def slot(self, heavy: bool) -> AsyncIterator[None]:
        """Hold a slot (and a heavy one) for the body; raises Busy if none comes."""
        async with contextlib.AsyncExitStack() as stack:
            if self.waiting >= self.max_waiting:  # they would take a free slot first
                raise Busy
            self.waiting += 1
            try:
                async with asyncio.timeout(self.wait):
                    await stack.enter_async_context(self._all)
                    if heavy:
                        await stack.enter_async_context(self._heavy)
            except TimeoutError:
                raise Busy from None
            finally:
                self.waiting -= 1
            self.active += 1
            try:
                yield
            finally:
                self.active -= 1

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            async with self.slot(request.path in self.heavy_paths):
                return await handler(request)
        except Busy:
            self.refused += 1
            response = error(
                503,
                "busy",
                f"too many HTTP requests at once (limit {self.limit}); try again shortly",
            )
            response.headers["Retry-After"] = str(max(1, math.ceil(self.wait)))
            return response
