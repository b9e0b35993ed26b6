"""The PROXY protocol header (v1 and v2) that a load balancer sends before SMTP or TLS.

Behind HAProxy every connection comes from the balancer; the header tells the real
client's address, which relay policy, the AUTH slow-down, the log and ``Received:`` must
use. Only the balancers listed in ``[server] proxy_protocol`` may send it, and on a
relay that expects it every connection must start with one: a connection from anyone
else, or without a valid header, is closed before the greeting (a forged header from a
client must never choose its own address).

aiosmtpd's parser does the decoding; this module feeds it the first bytes of the
connection (before any TLS layer, which on the implicit-TLS port starts after the
header) and hands back whatever followed the header.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable

from aiosmtpd.proxy_protocol import V2_CMD, get_proxy

from smtprelay.errors import RelayError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyRefused(RelayError):
    """The connection may not go on; the message says why, for the log."""


def allowed(ip: str, balancers: Iterable[Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in balancers)


class Prelude:
    """The bytes received before the header is parsed, read as aiosmtpd's parser wants
    (``read``, ``readexactly``, ``readuntil``); :attr:`rest` is what followed it."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._more = asyncio.Event()
        self._eof = False
        self.received = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        self.received += len(data)
        self._more.set()

    def feed_eof(self) -> None:
        self._eof = True
        self._more.set()

    @property
    def closed(self) -> bool:
        return self._eof

    async def _wait(self, enough: int) -> None:
        while len(self._buffer) < enough:
            if self._eof:
                raise asyncio.IncompleteReadError(bytes(self._buffer), enough)
            self._more.clear()
            await self._more.wait()

    async def read(self, n: int = -1) -> bytes:
        await self._wait(1)
        n = len(self._buffer) if n < 0 else n
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        await self._wait(n)
        return self._take(n)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        while (end := self._buffer.find(separator)) < 0:
            await self._wait(len(self._buffer) + 1)
        return self._take(end + len(separator))

    def _take(self, n: int) -> bytes:
        taken = bytes(self._buffer[:n])
        del self._buffer[:n]
        return taken

    @property
    def rest(self) -> bytes:
        return bytes(self._buffer)


async def client_address(
    prelude: Prelude, balancer: tuple[str, int], time_limit: float
) -> tuple[str, int]:
    """The real client's address from the header (the balancer's own for a LOCAL
    header, which balancers send for their health checks), or ProxyRefused."""
    try:
        async with asyncio.timeout(time_limit):
            data = await get_proxy(prelude)
    except TimeoutError:
        raise ProxyRefused(f"no PROXY header within {time_limit:g}s") from None
    except asyncio.IncompleteReadError:
        raise ProxyRefused("closed before a complete PROXY header") from None
    if not data.valid:
        if prelude.closed:  # aiosmtpd's parser reports it as a failed read
            raise ProxyRefused("closed before a complete PROXY header")
        raise ProxyRefused(data.error or "not a PROXY header")
    local = data.version == 2 and data.command == V2_CMD.LOCAL
    if local or data.src_addr is None or data.src_port is None:  # v1 UNKNOWN too
        return balancer
    return str(data.src_addr), int(data.src_port)
