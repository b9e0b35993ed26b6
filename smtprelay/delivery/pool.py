"""Idle SMTP connections per next hop: reuse, a cap per hop, and closing them later.

A connection is kept open after a transaction and reused for the next message to the
same hop with the same TLS policy and credentials (RSET only after an aborted
transaction); it is closed after ``idle_timeout`` seconds unused, or at once (QUIT in
the background) when ``max_idle`` connections to that hop are idle already.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiosmtplib

from smtprelay.delivery.outcome import Hop
from smtprelay.delivery.routes import Route

Key = tuple[object, ...]


@dataclass(eq=False)
class Connection:
    client: aiosmtplib.SMTP
    hop: Hop
    key: Key
    idle_close: asyncio.TimerHandle | None = None
    transactions: int = 0  # completed on this connection: a failure at MAIL means stale


def key(route: Route, hop: Hop) -> Key:
    """Connections are shared only between messages that would open the same one."""
    user = route.credentials.username if route.credentials else None
    oauth = route.credentials is not None and route.credentials.oauth is not None
    return (hop.address, hop.port, route.tls, user, oauth)


@dataclass
class Pool:
    idle_timeout: float = 10.0
    max_idle: int = 20
    _idle: dict[Key, list[Connection]] = field(default_factory=dict)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)

    def has_idle(self, route: Route, hop: Hop) -> bool:
        return bool(self._idle.get(key(route, hop)))

    async def checkout(
        self, route: Route, hop: Hop, open_new: Callable[[Key], Awaitable[Connection]]
    ) -> Connection:
        """An idle connection still connected, else ``open_new(key)``."""
        k = key(route, hop)
        idle = self._idle.get(k)
        while idle:
            conn = idle.pop()
            if conn.idle_close is not None:
                conn.idle_close.cancel()
            if conn.client.is_connected:
                return conn
        return await open_new(k)

    def checkin(self, conn: Connection) -> None:
        if not conn.client.is_connected:
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            self._quit_later(conn)
            return
        idle.append(conn)
        conn.idle_close = asyncio.get_running_loop().call_later(
            self.idle_timeout, self._expire, conn
        )

    def _expire(self, conn: Connection) -> None:
        idle = self._idle.get(conn.key, [])
        if conn in idle:
            idle.remove(conn)
            self._quit_later(conn)

    def _quit_later(self, conn: Connection) -> None:
        task = asyncio.get_running_loop().create_task(_quit(conn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        for conn in conns:
            if conn.idle_close is not None:
                conn.idle_close.cancel()
        await asyncio.gather(*(_quit(c) for c in conns))


async def _quit(conn: Connection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.client.quit(), 5)
    conn.client.close()
