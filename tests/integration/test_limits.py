"""Limits and allow-lists: sender/recipient domains, size, recipients, connections, timeout."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiosmtplib
import pytest
import trustme

from smtprelay import config, replies
from smtprelay.inbound.datareader import DataBudget
from smtprelay.inbound.server import InboundServer, build_intake
from smtprelay.spool import Spool
from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.integration.inbound_support import (
    HELO,
    RECIPIENT,
    SENDER,
    RawClient,
    assert_log,
    assert_reply,
    client_context,
    line,
    log_mark,
    qid_of,
    smtp,
    start_relay,
    submit,
    wait_for_log,
)
from tests.polling import wait_until

# --- allow-lists ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def allow_listed(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Daemon]:
    daemon = start_relay(
        tmp_path_factory,
        ca,
        overrides={
            "relay": {
                "allowed_sender_domains": ["example.com"],
                "allowed_recipient_domains": ["example.net", ".example.org"],
            }
        },
    )
    yield daemon
    daemon.kill()


def test_allowed_sender_domains(allow_listed: Daemon) -> None:
    with RawClient(allow_listed.port) as raw:
        raw.ehlo()
        assert_reply(raw.cmd("MAIL FROM:<app@evil.test>"), replies.SENDER_DOMAIN_DENIED)
        assert_reply(raw.cmd("MAIL FROM:<app@example.com.evil.test>"), replies.SENDER_DOMAIN_DENIED)
        assert_reply(raw.cmd("MAIL FROM:<app@notexample.com>"), replies.SENDER_DOMAIN_DENIED)
        assert_reply(raw.cmd("MAIL FROM:<app@EXAMPLE.Com>"), replies.SENDER_OK)
        assert_reply(raw.cmd("RSET"), replies.OK)
        # the null sender (bounces) carries no domain and always passes this check
        assert_reply(raw.cmd("MAIL FROM:<>"), replies.SENDER_OK)
        assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}>"), replies.RECIPIENT_OK)
        assert raw.cmd("DATA").startswith("354 ")
        qid = qid_of(raw.cmd("Subject: bounce\r\n\r\nnull sender\r\n."))
    assert allow_listed.envelope(qid)["sender"] == ""


def test_allowed_recipient_domains(allow_listed: Daemon) -> None:
    with smtp(allow_listed) as client:
        client.mail(SENDER)
        for refused in (
            "x@other.test",
            "x@example.net.other.test",
            "x@sub.example.net",
            "x@badexample.org",
        ):
            code, text = client.rcpt(refused)
            assert_reply(line(code, text), replies.RECIPIENT_DOMAIN_DENIED)
        for accepted in (RECIPIENT, "y@Example.NET", "z@deep.sub.example.org"):
            code, text = client.rcpt(accepted)
            assert_reply(line(code, text), replies.RECIPIENT_OK)
        qid = qid_of(line(*client.data(b"Subject: allowed\r\n\r\nbody\r\n")))
    assert [r["address"] for r in allow_listed.envelope(qid)["recipients"]] == [
        RECIPIENT,
        "y@Example.NET",
        "z@deep.sub.example.org",
    ]


# --- message size -----------------------------------------------------------------------

LIMIT = 10_000


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Daemon]:
    daemon = start_relay(tmp_path_factory, ca, overrides={"server": {"max_message_size": LIMIT}})
    yield daemon
    daemon.kill()


def message_of(size: int, dots: bool = False) -> bytes:
    """A message of exactly ``size`` bytes; with ``dots`` every body line starts with '.'."""
    head = b"Subject: size test\r\n\r\n"
    body_line = (
        b".123456789012345678901234567890123456789012345678\r\n"
        if dots
        else b"0123456789012345678901234567890123456789012345678\r\n"
    )
    body = body_line * ((size - len(head)) // len(body_line) + 1)
    message = (head + body)[: size - 2] + b"\r\n"
    assert len(message) == size
    return message


def test_size_is_advertised(small: Daemon) -> None:
    with smtp(small) as client:
        assert client.esmtp_features["size"] == str(LIMIT)


def test_declared_size_over_limit(small: Daemon) -> None:
    with smtp(small) as client:
        code, text = client.mail(SENDER, [f"SIZE={LIMIT + 1}"])
        assert_reply(line(code, text), replies.SIZE_EXCEEDED)
        code, text = client.mail(SENDER, [f"SIZE={LIMIT}"])
        assert_reply(line(code, text), replies.SENDER_OK)


@pytest.mark.parametrize("size", [LIMIT + 1, 20_000, 3_000_000])
def test_data_over_limit_is_refused_and_session_survives(small: Daemon, size: int) -> None:
    before = set(small.queued_ids())
    mark = log_mark(small)
    with smtp(small) as client:
        client.mail(SENDER)  # no SIZE= declared
        client.rcpt(RECIPIENT)
        code, text = client.data(message_of(size))
        assert_reply(line(code, text), replies.SIZE_EXCEEDED)
        assert set(small.queued_ids()) == before
        qid = submit(client, b"Subject: small\r\n\r\nfits\r\n")
    assert set(small.queued_ids()) == before | {qid}
    assert_log(
        small, r"reject: END-OF-MESSAGE from unknown\[127\.0\.0\.1\]: 552 5\.3\.4 ", start=mark
    )


@pytest.mark.parametrize(
    ("size", "dots"), [(LIMIT, False), (LIMIT - 50, True)], ids=["exact", "dot-stuffed"]
)
def test_message_within_the_limit_is_accepted(small: Daemon, size: int, dots: bool) -> None:
    # "SIZE 10000" promises that a 10000-byte message is accepted (RFC 1870: the size
    # counts CRLFs but neither the terminating dot nor the dots added by stuffing; the
    # dot-stuffed message is 9950 bytes but about 10150 on the wire).
    # aiosmtplib declares SIZE=len(message), so MAIL is accepted first.
    message = message_of(size, dots=dots)

    async def scenario() -> str:
        client = aiosmtplib.SMTP(
            hostname=LOOPBACK, port=small.port, start_tls=False, local_hostname=HELO, timeout=15
        )
        async with client:
            try:
                _, text = await client.sendmail(SENDER, [RECIPIENT], message)
            except aiosmtplib.SMTPResponseException as e:
                return f"{e.code} {e.message}"
            return f"250 {text}"

    reply = asyncio.run(asyncio.wait_for(scenario(), 30))
    qid = qid_of(reply)
    assert small.message(qid).endswith(message)


def test_message_just_under_the_limit_is_accepted(small: Daemon) -> None:
    message = message_of(LIMIT - 100)
    with smtp(small) as client:
        qid = submit(client, message)
    assert small.message(qid).endswith(message)


# --- recipients -------------------------------------------------------------------------


def test_recipient_limit(make_daemon: Callable[..., Daemon]) -> None:
    relay = make_daemon(overrides={"server": {"max_recipients": 3}})
    recipients = [f"r{i}@example.net" for i in range(1, 6)]
    with smtp(relay) as client:
        refused = client.sendmail(SENDER, recipients, b"Subject: many\r\n\r\nbody\r\n")
        assert set(refused) == {"r4@example.net", "r5@example.net"}
        for code, text in refused.values():
            assert_reply(line(code, text), replies.TOO_MANY_RECIPIENTS)
    (qid,) = relay.queued_ids()
    assert [r["address"] for r in relay.envelope(qid)["recipients"]] == recipients[:3]
    # the limit is per transaction
    with smtp(relay) as client:
        qid2 = submit(client, b"Subject: next\r\n\r\nbody\r\n", recipients=tuple(recipients[2:5]))
    assert len(relay.envelope(qid2)["recipients"]) == 3


# --- connections ------------------------------------------------------------------------


def test_connection_limit(make_daemon: Callable[..., Daemon]) -> None:
    relay = make_daemon(overrides={"server": {"max_connections": 2}})
    first, second = RawClient(relay.port), RawClient(relay.port)
    try:
        for raw in (first, second):
            assert raw.greeting[-1].startswith("220 ")
            raw.ehlo()
        with RawClient(relay.port) as third:
            assert_reply(third.greeting[-1], replies.TOO_MANY_CONNECTIONS)
            assert third.wait_closed() == b""
        # the implicit-TLS listener shares the limit
        assert relay.tls_port
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP_SSL(LOOPBACK, relay.tls_port, context=client_context(relay), timeout=10)
        assert refused.value.smtp_code == replies.TOO_MANY_CONNECTIONS.code
        # the sessions that got in are not disturbed
        assert_reply(first.cmd("NOOP"), replies.OK)
        assert_reply(second.cmd("NOOP"), replies.OK)
        assert first.cmd("QUIT").startswith("221 ")
    finally:
        first.close()
        second.close()

    def greeted() -> bool:
        with RawClient(relay.port) as again:
            return again.greeting[-1].startswith("220 ")

    wait_until(greeted, timeout=5, what="a free connection slot")
    wait_for_log(relay, r"warning: connection limit 2 reached: refusing unknown\[127\.0\.0\.1\]")


# --- timeout ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Daemon]:
    daemon = start_relay(tmp_path_factory, ca, overrides={"server": {"timeout": 1}})
    yield daemon
    daemon.kill()


def test_idle_connection_times_out(impatient: Daemon) -> None:
    with RawClient(impatient.port) as raw:
        started = time.monotonic()
        received = raw.wait_closed(timeout=6)
        elapsed = time.monotonic() - started
    assert received.startswith(f"{replies.TIMEOUT}\r\n".encode()), received
    assert 0.5 < elapsed < 5
    wait_for_log(impatient, r"timeout after CONNECT from unknown\[127\.0\.0\.1\]")


def test_timeout_during_data_queues_nothing(impatient: Daemon) -> None:
    before = impatient.queued_ids()
    mark = log_mark(impatient)
    with RawClient(impatient.port) as raw:
        raw.ehlo()
        raw.cmd(f"MAIL FROM:<{SENDER}>")
        raw.cmd(f"RCPT TO:<{RECIPIENT}>")
        assert raw.cmd("DATA").startswith("354 ")
        raw.send(b"Subject: half\r\n\r\nthe rest never comes")
        received = raw.wait_closed(timeout=6)
    assert_reply(received.decode(), replies.TIMEOUT)
    assert impatient.queued_ids() == before
    wait_for_log(impatient, r"timeout after DATA from unknown\[127\.0\.0\.1\]", start=mark)


def test_active_client_is_not_timed_out(impatient: Daemon) -> None:
    with RawClient(impatient.port) as raw:
        raw.ehlo()
        for _ in range(4):  # 1.6 s in all, longer than the 1 s timeout
            time.sleep(0.4)
            assert_reply(raw.cmd("NOOP"), replies.OK)
        assert raw.cmd("QUIT").startswith("221 ")


# --- junk, unknown and non-SMTP commands ------------------------------------------------


def test_junk_commands_close_the_session_after_100(small: Daemon) -> None:
    """A NOOP now and then no longer keeps a slot forever (Postfix's junk limit)."""
    mark = log_mark(small)
    with RawClient(small.port) as raw:
        raw.ehlo()
        raw.send(b"NOOP\r\n" * 50 + b"RSET\r\n" * 30 + b"VRFY bob\r\n" * 20)
        for _ in range(100):
            assert raw.reply()[-1][:1] in ("2", "5")  # answered, the session still open
        raw.send(b"NOOP\r\nMAIL FROM:<app@example.com>\r\n")
        assert raw.wait_closed() == f"{replies.TOO_MANY_JUNK_COMMANDS}\r\n".encode()
    wait_for_log(
        small, r"too many junk commands after NOOP from unknown\[127\.0\.0\.1\]$", start=mark
    )
    wait_for_log(
        small,
        r"disconnect from unknown\[127\.0\.0\.1\] "
        r"ehlo=1 noop=51 rset=30 vrfy=20 ",
        start=mark,
    )


def test_accepted_message_starts_the_junk_count_again(small: Daemon) -> None:
    with RawClient(small.port) as raw:
        raw.ehlo()
        for _ in range(3):  # 3 x 60 junk commands, a message after each 60
            raw.send(b"RSET\r\nNOOP\r\n" * 30)
            for _ in range(60):
                assert_reply(raw.reply()[-1], replies.OK)
            assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
            assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}>"), replies.RECIPIENT_OK)
            assert raw.cmd("DATA").startswith("354 ")
            qid_of(raw.cmd(b"Subject: between the junk\r\n\r\nbody\r\n."))
        assert raw.cmd("QUIT").startswith("221 ")


def test_unknown_commands_get_502_and_then_421(small: Daemon) -> None:
    mark = log_mark(small)
    with RawClient(small.port) as raw:
        raw.ehlo()
        for _ in range(5):
            assert raw.cmd("XYZZY") == str(replies.UNKNOWN_COMMAND)
        raw.send(b"ETRN example.net\r\n")
        assert raw.wait_closed() == f"{replies.TOO_MANY_UNKNOWN_COMMANDS}\r\n".encode()
    wait_for_log(
        small,
        r"too many unrecognized commands after UNKNOWN from "
        r"unknown\[127\.0\.0\.1\]$",
        start=mark,
    )
    assert "unrecognised" not in small.log()[mark:]  # aiosmtpd's own line is gone


def test_http_request_is_answered_and_closed_at_once(small: Daemon) -> None:
    mark = log_mark(small)
    with RawClient(small.port) as raw:
        raw.send(b"GET / HTTP/1.1\r\nHost: relay.test\r\n\r\n")
        assert raw.wait_closed() == f"{replies.NON_SMTP_COMMAND}\r\n".encode()
    wait_for_log(
        small,
        r"warning: non-SMTP command from unknown\[127\.0\.0\.1\]: "
        r"GET / HTTP/1\.1$",
        start=mark,
    )


# --- memory held by over-limit DATA -----------------------------------------------------


def test_over_limit_data_memory_stays_bounded(tmp_path: Path) -> None:
    """Eight sessions each send 40 times the size limit at once. The bytes the DATA
    readers hold (counted by the process's budget) stay within one message and one read
    per session -- never the whole DATA -- and every session is answered 552."""
    limit = 100_000
    sessions = 8
    port = free_port()
    settings = config.parse(
        {
            "server": {
                "hostname": "relay.test",
                "listen": [f"{LOOPBACK}:{port}"],
                "max_message_size": limit,
            },
            "spool": {"dir": str(tmp_path / "spool")},
        }
    )
    # lines ending in a dot: the reader gets one line per read, and keeps each line
    line_bytes = b"x" * 997 + b".\r\n"
    data = line_bytes * (40 * limit // len(line_bytes)) + b".\r\n"

    async def one() -> str:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        await reader.readline()
        writer.write(
            f"EHLO {HELO}\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
        )
        while not (await reader.readline()).startswith(b"354"):
            pass
        for i in range(0, len(data), 65536):
            writer.write(data[i : i + 65536])
            await writer.drain()
        reply = (await reader.readline()).decode().rstrip()
        writer.write(b"QUIT\r\n")
        await writer.drain()
        writer.close()
        return reply

    async def scenario() -> tuple[list[str], DataBudget]:
        spool = Spool(Path(settings.spool.dir))
        intake = build_intake(settings, spool, None, None)
        budget = intake.data_budget
        # no STARTTLS in this test: a context without a certificate will do
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        inbound = InboundServer(settings, intake, context)
        await inbound.start()
        try:
            results = await asyncio.gather(*(one() for _ in range(sessions)))
        finally:
            inbound.close()
            await inbound.drain(2.0)
            spool.close()
        return results, budget

    results, budget = asyncio.run(asyncio.wait_for(scenario(), 60))
    for reply in results:
        assert_reply(reply, replies.SIZE_EXCEEDED)
    # each read is one line here: a session holds at most the limit and one line (before
    # this budget, a reader kept up to twice the limit before dropping anything)
    assert 0 < budget.peak <= sessions * (limit + len(line_bytes))
    assert budget.peak < len(data)  # less than ONE session's DATA, for all eight together
    assert budget.held == 0
