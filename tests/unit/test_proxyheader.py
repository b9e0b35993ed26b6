"""The PROXY header reader: what follows the header is kept, and every bad start is refused."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest

from smtprelay.inbound.proxyheader import Prelude, ProxyRefused, allowed, client_address

BALANCER = ("127.0.0.1", 40000)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(
    command: int,
    src: str = "192.0.2.7",
    dst: str = "198.51.100.1",
    ports: tuple[int, int] = (51234, 25),
) -> bytes:
    addresses = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", *ports)
    # version 2 + command; AF_INET + STREAM; length of the addresses
    return (
        V2_SIGNATURE + bytes([0x20 | command, 0x11]) + struct.pack("!H", len(addresses)) + addresses
    )


def read(
    chunks: list[bytes], eof: bool = False, time_limit: float = 5.0
) -> tuple[tuple[str, int], bytes]:
    async def run() -> tuple[tuple[str, int], bytes]:
        prelude = Prelude()

        async def feed() -> None:
            for chunk in chunks:  # one byte at a time would work too: see the v1 case
                prelude.feed(chunk)
                await asyncio.sleep(0)
            if eof:
                prelude.feed_eof()

        feeding = asyncio.create_task(feed())
        address = await client_address(prelude, BALANCER, time_limit)
        await feeding
        return address, prelude.rest

    return asyncio.run(run())


def test_v1_gives_the_client_address_and_keeps_what_follows() -> None:
    header = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\n"
    chunks = [bytes([b]) for b in header] + [b"\x16\x03\x01 hello"]
    assert read(chunks) == (("192.0.2.7", 51234), b"\x16\x03\x01 hello")


def test_v1_ipv6_and_unknown() -> None:
    assert read([b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 25\r\nEHLO"]) == (
        ("2001:db8::7", 4000),
        b"EHLO",
    )
    assert read([b"PROXY UNKNOWN\r\n"]) == (BALANCER, b"")


def test_v2_proxy_and_local() -> None:
    assert read([v2(0x1) + b"EHLO x\r\n"]) == (("192.0.2.7", 51234), b"EHLO x\r\n")
    assert read([v2(0x0)]) == (BALANCER, b"")  # LOCAL: the balancer's own health check


@pytest.mark.parametrize(
    "chunks",
    [
        [b"EHLO client.test\r\n"],
        [b"PROXY TCP4 not-an-address 198.51.100.1 1 25\r\n"],
        [V2_SIGNATURE + b"\x99\x11\x00\x00"],
    ],
)
def test_a_bad_header_is_refused(chunks: list[bytes]) -> None:
    with pytest.raises(ProxyRefused):
        read(chunks)


def test_closed_or_silent_before_a_header() -> None:
    with pytest.raises(ProxyRefused, match="closed before"):
        read([b"PROXY TCP4 192.0"], eof=True)
    with pytest.raises(ProxyRefused, match=r"no PROXY header within 0\.05s"):
        read([b"PROXY"], time_limit=0.05)


def test_allowed() -> None:
    balancers = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("2001:db8::/64")]
    assert allowed("10.0.0.9", balancers)
    assert allowed("::ffff:10.0.0.9", balancers)
    assert allowed("2001:db8::5", balancers)
    assert not allowed("10.0.1.9", balancers)
    assert not allowed("unknown", balancers)
