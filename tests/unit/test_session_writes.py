"""The inbound session's writes, counted on a transport that records each write() call.

A socket recv() on the client side can merge or split segments, so the number of
writes is observed where it happens: one write per reply, one per pipelined batch, and
the final reply of a closed session after the replies it follows.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtprelay import config, replies
from smtprelay.inbound.protocol import Session
from smtprelay.inbound.server import build_intake
from smtprelay.spool import Spool


class RecordingTransport(asyncio.Transport):
    """Enough of a TCP transport for a StreamReaderProtocol; keeps every write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.protocol: Session | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 2525)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    @property
    def text(self) -> str:
        return b"".join(self.writes).decode()


Run = Callable[..., tuple[RecordingTransport, Session]]


@pytest.fixture
def session_run(tmp_path: Path) -> Iterator[Run]:
    """``run(*client_writes)``: a session fed each bytes object in turn (waiting for the
    replies to settle in between); returns the transport and the session."""
    settings = config.parse(
        {
            "server": {"hostname": "relay.test", "max_message_size": 100_000},
            "spool": {"dir": str(tmp_path / "spool")},
        }
    )
    spools: list[Spool] = []

    def run(
        *feeds: bytes, setup: Callable[[Session], None] | None = None
    ) -> tuple[RecordingTransport, Session]:
        async def scenario() -> tuple[RecordingTransport, Session]:
            spool = Spool(Path(settings.spool.dir))
            spools.append(spool)
            intake = build_intake(settings, spool, None, None)
            session = Session(
                intake,
                hostname="relay.test",
                max_message_size=100_000,
                timeout=30,
                tls_context=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
                implicit_tls=False,
                handshake_timeout=10,
                min_tls_version="TLSv1.2",
                proxy_from=(),
                allow_plaintext_auth=False,
                on_close=lambda s: None,
            )
            if setup is not None:
                setup(session)
            transport = RecordingTransport()
            transport.protocol = session
            session.connection_made(transport)
            await settle(transport)
            for data in feeds:
                session.data_received(data)
                await settle(transport)
            if not transport.closed:
                transport.close()
                await asyncio.sleep(0)
            return transport, session

        return asyncio.run(asyncio.wait_for(scenario(), 20))

    yield run
    for spool in spools:
        spool.close()


async def settle(transport: RecordingTransport) -> None:
    """Let the session run until its writes stop changing (fsync runs in a thread)."""
    seen, quiet = -1, 0
    for _ in range(2000):
        await asyncio.sleep(0.001 if quiet < 5 else 0.005)
        if len(transport.writes) == seen:
            quiet += 1
            if quiet >= 20:
                return
        else:
            seen, quiet = len(transport.writes), 0


def test_greeting_and_ehlo_reply_are_one_write_each(session_run: Run) -> None:
    transport, _ = session_run(b"EHLO client.test\r\n")
    assert len(transport.writes) == 2
    greeting, ehlo = transport.writes
    assert greeting.startswith(b"220 relay.test ") and greeting.count(b"\r\n") == 1
    lines = ehlo.decode().split("\r\n")[:-1]
    assert len(lines) >= 7 and lines[0] == "250-relay.test" and lines[-1].startswith("250 ")
    assert all(line.startswith("250-") for line in lines[:-1])


def test_pipelined_batch_is_answered_in_one_write(session_run: Run) -> None:
    transport, _ = session_run(
        b"EHLO client.test\r\n",
        b"MAIL FROM:<app@example.com>\r\nRCPT TO:<bob@example.net>\r\n"
        b"RCPT TO:<carol@example.org>\r\nDATA\r\n",
        b"Subject: one\r\n\r\nbody\r\n.\r\n",
        b"QUIT\r\n",
    )
    assert len(transport.writes) == 5, transport.writes
    batch = transport.writes[2].decode()
    assert batch.count("\r\n") == 4
    assert batch.startswith(
        f"{replies.SENDER_OK}\r\n{replies.RECIPIENT_OK}\r\n{replies.RECIPIENT_OK}\r\n354 "
    )
    assert transport.writes[3].startswith(b"250 2.0.0 Ok: queued as ")
    assert transport.writes[4].startswith(b"221 ")


def test_everything_in_one_segment_still_answers_every_command_in_order(
    session_run: Run,
) -> None:
    """A client that sends the message before the 354 (not allowed, but seen): the
    replies come in order and the 354 is not held back behind the data."""
    transport, _ = session_run(
        b"EHLO client.test\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<bob@example.net>\r\n"
        b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n"
    )
    codes = [line[:3] for line in transport.text.split("\r\n")[:-1] if line[3:4] == " "]
    assert codes == ["220", "250", "250", "250", "354", "250", "250", "221"]
    # greeting; EHLO..DATA up to the 354, written before the data is read; the rest
    assert len(transport.writes) == 3, transport.writes
    assert transport.writes[1].endswith(b"\r\n354 End data with <CR><LF>.<CR><LF>\r\n")


def test_reply_after_which_the_connection_closes_follows_the_held_ones(
    session_run: Run,
) -> None:
    transport, _ = session_run(b"EHLO client.test\r\nNOOP\r\nQUIT\r\nNOOP\r\n")
    assert transport.closed
    assert transport.text.split("\r\n")[-2].startswith("221 ")
    assert transport.text.count("\r\n250 2.0.0 OK\r\n") == 1  # the NOOP after QUIT: no reply


# --- junk and unknown commands -------------------------------------------------------------


def test_junk_commands_close_the_session_after_the_limit(session_run: Run) -> None:
    def small(session: Session) -> None:
        session.junk_command_limit = 5

    transport, _ = session_run(
        b"EHLO client.test\r\n",
        b"NOOP\r\nRSET\r\nVRFY x\r\nHELP\r\n",
        b"NOOP\r\n",
        b"NOOP\r\nMAIL FROM:<a@example.com>\r\n",
        setup=small,
    )
    lines = transport.text.split("\r\n")[:-1]
    assert lines[-1] == str(replies.TOO_MANY_JUNK_COMMANDS)
    assert transport.closed
    # 5 junk commands answered, the 6th closed the session, the MAIL after it was not read
    finals = [line for line in lines if line[3:4] == " "]
    assert len(finals) == 2 + 5 + 1


def test_an_accepted_message_starts_the_junk_count_again(session_run: Run) -> None:
    def small(session: Session) -> None:
        session.junk_command_limit = 3

    transport, _ = session_run(
        b"EHLO client.test\r\nNOOP\r\nNOOP\r\nNOOP\r\n",
        b"MAIL FROM:<app@example.com>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n",
        b"Subject: x\r\n\r\nbody\r\n.\r\n",
        b"RSET\r\nNOOP\r\nNOOP\r\nQUIT\r\n",
        setup=small,
    )
    assert "Error: too many junk commands" not in transport.text
    assert transport.text.endswith("221 2.0.0 Bye\r\n")


def test_unknown_commands_get_502_then_421(session_run: Run) -> None:
    transport, _ = session_run(b"EHLO client.test\r\n" + b"XYZZY\r\n" * 7)
    lines = transport.text.split("\r\n")[:-1]
    unknown = [line for line in lines if line.startswith("502 ")]
    assert unknown == [str(replies.UNKNOWN_COMMAND)] * Session.unknown_command_limit
    assert lines[-1] == str(replies.TOO_MANY_UNKNOWN_COMMANDS)
    assert transport.closed


@pytest.mark.parametrize(
    "line",
    [b"GET / HTTP/1.1", b"POST /x HTTP/1.0", b"\x1b[2J hello", b"CONNECT example.net:25 HTTP/1.1"],
)
def test_non_smtp_command_closes_at_once(session_run: Run, line: bytes) -> None:
    transport, _ = session_run(line + b"\r\nEHLO client.test\r\n")
    assert transport.closed
    lines = transport.text.split("\r\n")[:-1]
    assert lines[-1] == str(replies.NON_SMTP_COMMAND)
    assert not any(line.startswith("250") for line in lines)


def test_replies_held_before_starttls_go_out_before_its_220(session_run: Run) -> None:
    """EHLO and STARTTLS in one segment: the EHLO reply is written before the 220 that
    the STARTTLS code writes itself (the handshake then fails on this fake transport)."""
    transport, _ = session_run(b"EHLO client.test\r\nSTARTTLS\r\n")
    assert transport.writes[1].startswith(b"250-relay.test\r\n")
    assert transport.writes[2] == f"{replies.STARTTLS_READY}\r\n".encode()


def test_held_replies_are_written_once_they_fill_a_tls_record(session_run: Run) -> None:
    """500 pipelined EHLOs (about 100 kB of replies): written in pieces of at most 16 KiB
    and one reply, so a client that sends without reading meets flow control."""
    transport, _ = session_run(b"EHLO client.test\r\n" * 500)
    writes = transport.writes[1:]
    text = b"".join(writes)
    assert text.count(b"250-relay.test\r\n") == 500
    one = len(text) // 500  # every EHLO reply has the same length
    assert all(len(w) < 16 * 1024 + one for w in writes)
    # pieces of ~16 KiB: neither one write per reply nor one write for all of them
    assert len(text) // (16 * 1024 + one) <= len(writes) <= len(text) // (16 * 1024) + 1
