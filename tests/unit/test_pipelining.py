"""Reading the replies to a pipelined batch: any split of the bytes gives the same
replies in the same order; malformed input is an error, not a guess."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiosmtplib import SMTPResponseException, SMTPServerDisconnected
from hypothesis import given
from hypothesis import strategies as st

from smtprelay.delivery.pipelining import BatchReplies, _take_reply

WIRE = (
    b"250 2.1.0 Ok\r\n"
    b"250-2.1.5 first line\r\n250-second line\r\n250 2.1.5 last line\r\n"
    b"550 5.1.1 <bad@example.net>: no such user\r\n"
    b"354 End data with <CR><LF>.<CR><LF>\r\n"
)
EXPECTED = [
    (250, "2.1.0 Ok"),
    (250, "2.1.5 first line\nsecond line\n2.1.5 last line"),
    (550, "5.1.1 <bad@example.net>: no such user"),
    (354, "End data with <CR><LF>.<CR><LF>"),
]


class FakeTransport:
    def __init__(self) -> None:
        self.protocol: Any = object()
        self.inner = self.protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=8))
def test_any_split_gives_the_same_replies(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [WIRE[a:b] for a, b in zip([0, *points], [*points, len(WIRE)], strict=True)]

    async def main() -> list[tuple[int, str]]:
        transport = FakeTransport()
        async with BatchReplies(transport, 5.0) as batch:
            assert transport.protocol is batch
            for piece in pieces:
                batch.data_received(piece)
            got = [await batch.next() for _ in EXPECTED]
        assert transport.protocol is transport.inner  # aiosmtplib's protocol is back
        return [(r.code, r.message) for r in got]

    assert asyncio.run(main()) == EXPECTED


def test_replies_arriving_later_wake_the_reader() -> None:
    async def main() -> tuple[int, str]:
        transport = FakeTransport()
        async with BatchReplies(transport, 5.0) as batch:
            loop = asyncio.get_running_loop()
            loop.call_later(0.01, batch.data_received, b"250 ")
            loop.call_later(0.02, batch.data_received, b"2.0.0 late\r\n")
            reply = await batch.next()
        return reply.code, reply.message

    assert asyncio.run(main()) == (250, "2.0.0 late")


@pytest.mark.parametrize("line", [b"25O nonsense\r\n", b"250_odd separator\r\n"])
def test_malformed_reply_lines_are_errors(line: bytes) -> None:
    with pytest.raises(SMTPResponseException):
        _take_reply(bytearray(line))


def test_silence_times_out_and_a_lost_connection_is_reported() -> None:
    class Inner:
        def __init__(self) -> None:
            self.lost: list[Exception | None] = []

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost.append(exc)

    async def main() -> None:
        transport = FakeTransport()
        async with BatchReplies(transport, 0.05) as batch:
            with pytest.raises(TimeoutError):
                await batch.next()
        inner = Inner()
        transport.protocol = transport.inner = inner
        async with BatchReplies(transport, 5.0) as batch:
            batch.connection_lost(None)
            with pytest.raises(SMTPServerDisconnected):
                await batch.next()
        assert inner.lost == [None]  # aiosmtplib's protocol learns of it too

    asyncio.run(main())
