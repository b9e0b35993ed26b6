"""The worker -> main process channel: framing, batching, and log events that reach the
main process's statistics as if they had been logged there."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

import pytest

from smtprelay import channel, maillog, replies
from smtprelay.stats import Stats
from tests.unit.helpers import make_envelope

_KEEP: list[object] = []  # a dropped StreamWriter closes its socket


async def _pair() -> tuple[channel.Sender, asyncio.StreamReader]:
    ours, theirs = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=ours)
    reader, unused = await asyncio.open_connection(sock=theirs, limit=channel.LINE_LIMIT)
    _KEEP.append(unused)
    return channel.Sender(writer), reader


async def _frames(reader: asyncio.StreamReader, n: int) -> list[tuple[dict[str, Any], bytes]]:
    got = []
    for _ in range(n):
        frame = channel.decode(await reader.readline())
        payload = await reader.readexactly(frame["length"]) if "queued" in frame else b""
        got.append((frame, payload))
    return got


def test_frames_of_one_loop_iteration_go_out_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        sender, reader = await _pair()
        writes: list[bytes] = []
        real = sender._writer.write

        def write(data: bytes) -> None:
            writes.append(data)
            real(data)

        monkeypatch.setattr(sender._writer, "write", write)
        envelope = make_envelope(size=11)
        sender.send({"ready": True})
        sender.queued(envelope, b"hello\nworld")
        sender.send({"sessions": 3})
        got = await _frames(reader, 3)
        assert len(writes) == 1
        assert got[0] == ({"ready": True}, b"")
        assert got[2] == ({"sessions": 3}, b"")
        frame, payload = got[1]
        assert frame["queued"] == envelope.qid
        back, data = channel.split_record(payload)
        assert back == envelope and data == b"hello\nworld"  # newlines in data survive
        await sender.close()

    asyncio.run(main())


def test_send_from_another_thread_arrives() -> None:
    async def main() -> None:
        sender, reader = await _pair()
        thread = threading.Thread(target=sender.send, args=({"sessions": 7},))
        thread.start()
        thread.join()
        assert await _frames(reader, 1) == [({"sessions": 7}, b"")]
        await sender.close()

    asyncio.run(main())


def test_decode_refuses_what_is_not_a_frame() -> None:
    with pytest.raises(ValueError):
        channel.decode(b"[1, 2]\n")


def test_forwarded_mail_log_events_count_in_the_main_process() -> None:
    """A worker's mail-log events, through the channel, give the main process's Stats
    the same counters and history as events logged in the main process itself."""

    async def main() -> tuple[Stats, Stats]:
        sender, reader = await _pair()
        forwarder = channel.LogForwarder(sender)
        direct = Stats()
        mail_log = logging.getLogger(maillog.log.name)
        old_level = mail_log.level
        mail_log.setLevel(logging.DEBUG)
        mail_log.addHandler(forwarder)
        mail_log.addHandler(direct)
        try:
            maillog.connect("192.0.2.7")
            maillog.client("1K2000000000Q", "192.0.2.7", "PLAIN", "alice")
            maillog.queued("1K2000000000Q", "app@example.com", 1234, 2)
            maillog.reject("RCPT", "192.0.2.7", replies.RELAY_DENIED, sender="x@example.com")
        finally:
            mail_log.removeHandler(forwarder)
            mail_log.removeHandler(direct)
            mail_log.setLevel(old_level)
        remote = Stats()
        for frame, _ in await _frames(reader, 4):
            remote.handle(channel.log_record(frame["log"]))
        await sender.close()
        return direct, remote

    direct, remote = asyncio.run(main())
    assert remote.counters() == direct.counters()
    assert remote.counters()["received"] == 1 and remote.counters()["rejected"] == 1
    here, there = direct.history("1K2000000000Q"), remote.history("1K2000000000Q")
    assert here is not None and there is not None
    assert there.events == here.events
