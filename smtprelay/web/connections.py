"""A bound on open HTTP connections: per client address and in all.

aiohttp accepts every connection and keeps each open while it idles (up to its
keep-alive timeout) or while a wrong token's delay runs. Their sockets and memory are
the daemon's, which delivers mail with the same file descriptors and event loop: one
client must not hold them all. A connection over ``per_address`` for its address (IPv6:
its /64), or over ``total``, is answered at once with a bare ``503`` and
``Retry-After``, then closed, before anything is read from it; one warning line says
so (rate-limited, ``smtprelay.web.guard.LogBudget``).

aiohttp has no hook for this: :meth:`ConnectionCap.install` wraps the two callbacks
its ``web.Server`` gets from every connection (``connection_made``,
``connection_lost``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from smtprelay.clientkey import client_key
from smtprelay.web.guard import LogBudget

if TYPE_CHECKING:  # the HTTP front counts its connections without loading aiohttp
    from aiohttp import web

log = logging.getLogger("smtprelay.http")

PER_ADDRESS = 64
TOTAL = 1024
_BUSY_BODY = (
    b'{"error": {"code": "busy", "message": "too many HTTP connections open; try again shortly"}}'
)
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_BUSY_BODY)
) + _BUSY_BODY


class ConnectionCap:
    def __init__(
        self,
        *,
        per_address: int = PER_ADDRESS,
        total: int = TOTAL,
        budget: LogBudget | None = None,
    ) -> None:
        self.per_address = per_address
        self.total = total
        self.budget = budget or LogBudget()
        self.open: Counter[str] = Counter()  # per client key
        self.refused = 0
        self._keys: dict[object, str] = {}  # counted connection (handler) -> client key

    @property
    def count(self) -> int:
        return len(self._keys)

    def admit(self, handler: object, peer: str) -> bool:
        """Count a new connection from ``peer``; False if it is over a bound."""
        key = client_key(peer)
        if self.count >= self.total or self.open[key] >= self.per_address:
            self.refused += 1
            left_out = self.budget.allow(key)
            if left_out is not None:
                more = f"; {left_out} more from this address not logged" if left_out else ""
                log.warning(
                    "unknown[%s]: HTTP connection refused: %s%s",
                    peer,
                    f"{self.open[key]} open from this address (limit {self.per_address})"
                    if self.open[key] >= self.per_address
                    else f"{self.count} open (limit {self.total})",
                    more,
                    extra={"service": "http"},
                )
            return False
        self._keys[handler] = key
        self.open[key] += 1
        return True

    def release(self, handler: object) -> None:
        key = self._keys.pop(handler, None)
        if key is not None:
            self.open[key] -= 1
            if self.open[key] <= 0:
                del self.open[key]

    def install(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: Any) -> None:
            made(handler, transport)
            peer = transport.get_extra_info("peername")
            address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
            if not self.admit(handler, address):
                # Not closed here: aiohttp starts the connection's task only after this
                # returns, and that task must find the connection still open.
                transport.pause_reading()
                asyncio.get_running_loop().call_soon(_refuse, transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            self.release(handler)
            lost(handler, exc)

        # Instance attributes shadow the methods for this server only.
        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]


def _refuse(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.write(BUSY)
        transport.close()
