"""Inbound SMTP against the real daemon: clients, TLS, spool bytes, replies, syntax.

The helpers (raw socket client, submit, log polling) are in inbound_support.py.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme

from smtprelay import config, replies
from smtprelay.envelope import Envelope
from smtprelay.inbound.server import InboundServer, build_intake
from smtprelay.replies import Reply
from smtprelay.spool import Spool
from smtprelay.spool.store import NewFile
from smtprelay.tls import server_context
from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.integration.inbound_support import (
    HELO,
    PASSWORD,
    QUEUED,
    RECIPIENT,
    SENDER,
    USER,
    RawClient,
    assert_crlf_only,
    assert_log,
    assert_reply,
    authenticated,
    client_context,
    line,
    log_mark,
    qid_of,
    smtp,
    split_received,
    start_relay,
    submit,
    wait_for_log,
)
from tests.polling import wait_until_async

SWAKS = shutil.which("swaks")


def _swaks_has_tls() -> bool:
    # Debian's swaks only recommends the Perl modules it needs for --tls / --tlsc.
    return (
        SWAKS is not None
        and subprocess.run(
            ["perl", "-MNet::SSLeay", "-MIO::Socket::SSL", "-e1"],
            capture_output=True,
        ).returncode
        == 0
    )


needs_swaks = pytest.mark.skipif(
    not _swaks_has_tls(),
    reason="swaks with TLS support is not installed "
    "(apt-get install swaks libnet-ssleay-perl libio-socket-ssl-perl; make deps does it)",
)
# A reply line with an RFC 3463 enhanced status code whose class matches the basic code.
ENHANCED = re.compile(r"^([245])\d\d[ -]([245])\.\d{1,3}\.\d{1,3} ")


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Daemon]:
    """One daemon with default settings shared by this module (no failed AUTH here)."""
    daemon = start_relay(tmp_path_factory, ca)
    yield daemon
    daemon.kill()


# --- submission with real clients -------------------------------------------------------


@pytest.mark.parametrize(
    ("mechanism", "initial_response"),
    [("PLAIN", True), ("PLAIN", False), ("LOGIN", True), ("LOGIN", False)],
)
def test_smtplib_starttls_auth_send(relay: Daemon, mechanism: str, initial_response: bool) -> None:
    message = b"Subject: auth " + mechanism.encode() + b"\r\n\r\nbody\r\n"
    with smtp(relay) as client:
        code, _ = client.starttls(context=client_context(relay))
        assert code == 220
        client.ehlo()
        client.user, client.password = USER, PASSWORD
        authobject = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        code, text = client.auth(mechanism, authobject, initial_response_ok=initial_response)
        assert_reply(line(code, text), replies.AUTH_OK)
        qid = submit(client, message)
    assert qid in relay.queued_ids()
    assert relay.message(qid).endswith(message)
    envelope = relay.envelope(qid)
    assert envelope["client"]["auth_user"] == USER
    assert envelope["client"]["auth_method"] == mechanism
    assert envelope["client"]["tls"]


def test_aiosmtplib_starttls_login_send(relay: Daemon) -> None:
    message = b"Subject: aiosmtplib\r\n\r\nasync body\r\n"

    async def scenario() -> tuple[str, dict[str, Any]]:
        client = aiosmtplib.SMTP(
            hostname=LOOPBACK, port=relay.port, start_tls=False, local_hostname=HELO, timeout=15
        )
        async with client:
            await client.ehlo()
            assert not client.supports_extension("auth")
            await client.starttls(tls_context=client_context(relay))
            await client.ehlo()
            assert client.supports_extension("auth")
            response = await client.login(USER, PASSWORD)
            assert_reply(f"{response.code} {response.message}", replies.AUTH_OK)
            refused, text = await client.sendmail(SENDER, [RECIPIENT, "carol@example.org"], message)
        return text, refused

    text, refused = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert refused == {}
    qid = qid_of(f"250 {text}")
    assert relay.message(qid).endswith(message)
    envelope = relay.envelope(qid)
    assert [r["address"] for r in envelope["recipients"]] == [RECIPIENT, "carol@example.org"]
    assert envelope["client"]["auth_user"] == USER


def run_swaks(*args: str) -> str:
    assert SWAKS is not None
    result = subprocess.run(
        [
            SWAKS,
            "--from",
            SENDER,
            "--to",
            RECIPIENT,
            "--helo",
            HELO,
            "--timeout",
            "15",
            "--header",
            "Subject: swaks test",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def swaks_qid(output: str) -> str:
    """The queue ID of the ``<~  250 ... queued as QID`` line of swaks's transcript."""
    queued = [
        text[4:]
        for text in output.splitlines()
        if text.startswith("<~  ") and QUEUED.match(text[4:])
    ]
    assert queued, output
    return qid_of(queued[0])


@needs_swaks
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_starttls_auth(relay: Daemon, mechanism: str) -> None:
    output = run_swaks(
        "--server",
        f"{LOOPBACK}:{relay.port}",
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        str(relay.ca_file),
        "--auth",
        mechanism,
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
    )
    qid = swaks_qid(output)
    assert qid in relay.queued_ids()
    assert re.search(r"^<~  235 2\.7\.0 ", output, re.MULTILINE), output
    assert b"Subject: swaks test\r\n" in relay.message(qid)
    assert relay.envelope(qid)["client"]["auth_method"] == mechanism


@needs_swaks
def test_swaks_implicit_tls(relay: Daemon) -> None:
    assert relay.tls_port
    output = run_swaks(
        "--server",
        f"{LOOPBACK}:{relay.tls_port}",
        "--tls-on-connect",
        "--tls-verify",
        "--tls-ca-path",
        str(relay.ca_file),
        "--auth",
        "PLAIN",
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
    )
    assert swaks_qid(output) in relay.queued_ids()


def test_implicit_tls_port(relay: Daemon) -> None:
    assert relay.tls_port
    message = b"Subject: implicit\r\n\r\nover TLS from the start\r\n"
    with smtplib.SMTP_SSL(
        LOOPBACK, relay.tls_port, local_hostname=HELO, context=client_context(relay), timeout=15
    ) as client:
        client.ehlo()
        assert client.has_extn("auth")
        assert "PLAIN" in client.esmtp_features["auth"].split()
        assert not client.has_extn("starttls")
        client.login(USER, PASSWORD)
        qid = submit(client, message)
    eml = relay.message(qid)
    received, rest = split_received(eml)
    assert rest.endswith(message)
    assert b" with ESMTPSA id " + qid.encode() in received
    assert re.search(rb"\(using TLSv1\.[23] with cipher \S+", received), received
    # The login name stays out of the message ([auth] authenticated_header = false).
    assert b"Authenticated sender" not in received and b"app1" not in received
    assert relay.envelope(qid)["client"]["tls"].startswith("TLSv1.")


def test_trusted_loopback_relays_without_auth(relay: Daemon) -> None:
    with smtp(relay) as client:
        assert not client.has_extn("auth")  # no TLS yet: AUTH is not offered
        qid = submit(client, b"Subject: trusted\r\n\r\nno auth\r\n")
    envelope = relay.envelope(qid)
    assert envelope["client"]["auth_user"] is None
    assert envelope["client"]["tls"] is None
    assert b"with ESMTP id " + qid.encode() in split_received(relay.message(qid))[0]


# --- what the spool keeps ---------------------------------------------------------------


def test_spool_adds_received_date_and_message_id_when_missing(relay: Daemon) -> None:
    message = b"From: App <app@example.com>\r\nSubject: bare\r\n\r\nHello\r\n"
    with authenticated(relay) as client:
        qid = submit(client, message, recipients=(RECIPIENT, "carol@example.org"))
    eml = relay.message(qid)
    received, rest = split_received(eml)
    date_line, rest = rest.split(b"\r\n", 1)
    id_line, rest = rest.split(b"\r\n", 1)
    assert re.fullmatch(rb"Date: \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", date_line)
    assert id_line == f"Message-ID: <{qid}@relay.test>".encode()
    assert rest == message
    assert received.startswith(b"Received: from client.test (unknown [127.0.0.1])\r\n")
    assert f"\tby relay.test (smtprelay) with ESMTPSA id {qid}".encode() in received
    assert_crlf_only(eml)

    envelope = relay.envelope(qid)
    assert envelope["qid"] == qid
    assert envelope["sender"] == SENDER
    assert [(r["address"], r["state"]) for r in envelope["recipients"]] == [
        (RECIPIENT, "pending"),
        ("carol@example.org", "pending"),
    ]
    client_info = envelope["client"]
    assert client_info["ip"] == LOOPBACK
    assert client_info["helo"] == HELO
    assert client_info["auth_user"] == USER
    assert client_info["tls"] and "TLSv1." in client_info["tls"]
    assert client_info["protocol"] == "ESMTPSA"
    assert abs(envelope["arrival"] - time.time()) < 60
    assert envelope["size"] == len(eml)
    assert envelope["message_id"] == f"<{qid}@relay.test>"
    # The record is what the delivery stage will read back.
    header = relay.message_file(qid).read_bytes().split(b"\n", 1)[0]
    assert Envelope.from_json(header).qid == qid


def test_spool_adds_only_received_when_date_and_message_id_present(relay: Daemon) -> None:
    message = (
        b"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n"
        b"Message-ID: <abc.123@app.example.com>\r\n"
        b"Subject: complete\r\n\r\nbody line 1\r\nbody line 2\r\n"
    )
    with smtp(relay) as client:
        qid = submit(client, message)
    eml = relay.message(qid)
    received, rest = split_received(eml)
    assert rest == message
    assert received.count(b"Received:") == 1
    assert f"for <{RECIPIENT}>;".encode() in received
    envelope = relay.envelope(qid)
    assert envelope["size"] == len(eml)
    assert envelope["message_id"] == "<abc.123@app.example.com>"


def test_dot_stuffing_is_undone_exactly_once(relay: Daemon) -> None:
    message = b"Subject: dots\r\n\r\n.hidden\r\n..two\r\n.\r\n...\r\nmid.dle\r\n. space\r\nend\r\n"
    with smtp(relay) as client:
        qid = submit(client, message)  # smtplib stuffs every leading dot
    assert split_received(relay.message(qid))[1].endswith(b"@relay.test>\r\n" + message)


def test_dot_first_line_of_data(relay: Daemon) -> None:
    with smtp(relay) as client:
        qid = submit(client, b".Subject-ish first line\r\n\r\nbody\r\n")
    assert relay.message(qid).endswith(b"\r\n.Subject-ish first line\r\n\r\nbody\r\n")


def test_empty_message(relay: Daemon) -> None:
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}>"), replies.RECIPIENT_OK)
        assert raw.cmd("DATA").startswith("354 ")
        qid = qid_of(raw.cmd("."))
    # smtplib's idea of an empty message: one empty line
    with smtp(relay) as client:
        qid2 = submit(client, b"")
    _, rest = split_received(relay.message(qid))
    assert re.fullmatch(
        rb"Date: [^\r\n]+\r\nMessage-ID: <" + qid.encode() + rb"@relay.test>\r\n", rest
    ), rest
    _, rest2 = split_received(relay.message(qid2))
    assert rest2.endswith(b"@relay.test>\r\n\r\n")
    for q in (qid, qid2):
        assert relay.envelope(q)["size"] == len(relay.message(q))


def test_single_line_message(relay: Daemon) -> None:
    with smtp(relay) as client:
        qid = submit(client, b"Subject: only one line\r\n")
    assert relay.message(qid).endswith(b"@relay.test>\r\nSubject: only one line\r\n")


@pytest.mark.parametrize("length", [20_000, 600_000])
def test_very_long_line_is_accepted(relay: Daemon, length: int) -> None:
    # Legacy applications send base64 or HTML without line breaks; 600 KB is more than
    # the server reads in one chunk.
    long_line = (b"0123456789abcdef." * (length // 17 + 1))[:length]
    message = b"Subject: long\r\n\r\n" + long_line + b"\r\nlast\r\n"
    with smtp(relay) as client:
        qid = submit(client, message)
    assert split_received(relay.message(qid))[1].endswith(message)


def test_eight_bit_body(relay: Daemon) -> None:
    message = "Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße, 日本\r\n"
    with smtp(relay) as client:
        qid = submit(client, message.encode(), options=("BODY=8BITMIME",))
    assert relay.message(qid).endswith(message.encode())
    assert relay.envelope(qid)["mail_params"].get("BODY") == "8BITMIME"


# --- replies ----------------------------------------------------------------------------


def assert_enhanced(reply_line: str) -> None:
    match = ENHANCED.match(reply_line)
    assert match, f"no enhanced status code in {reply_line!r}"
    assert match.group(1) == match.group(2), f"class mismatch in {reply_line!r}"


def test_every_reply_carries_an_enhanced_status_code(relay: Daemon) -> None:
    with RawClient(relay.port) as raw:
        assert raw.greeting[-1].startswith("220 relay.test ")
        ehlo = raw.ehlo()
        assert "250-ENHANCEDSTATUSCODES" in ehlo or "250 ENHANCEDSTATUSCODES" in ehlo
        seen = {}
        for command in [
            "NOOP",
            "RSET",
            "DATA",
            "RCPT TO:<bob@example.net>",
            f"MAIL FROM:<{SENDER}>",
            "DATA",
            f"MAIL FROM:<{SENDER}>",
            "RCPT TO:<bob@example.net>",
            "RSET",
            "HELP",
            "VRFY bob",
            "EXPN staff",
            "XYZZY",
            "",
            "MAIL FROM:",
            "RCPT TO:",
            "NOOP",
            "STARTTLS now",
            "AUTH PLAIN",
            "DATA x",
        ]:
            seen[command] = reply = raw.cmd(command)
            assert_enhanced(reply)
        assert_reply(raw.cmd("QUIT"), Reply(221, "2.0.0", ""))
    assert_reply(seen["NOOP"], replies.OK)
    assert_reply(seen["RSET"], replies.OK)
    assert_reply(seen["XYZZY"], replies.UNKNOWN_COMMAND)
    assert_reply(seen["AUTH PLAIN"], replies.AUTH_NEEDS_TLS)
    assert_reply(seen["RCPT TO:<bob@example.net>"], replies.RECIPIENT_OK)


def test_sequence_errors_are_503_5_5_1(relay: Daemon) -> None:
    with RawClient(relay.port) as raw:
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.NEED_HELO)
        raw.ehlo()
        assert_reply(raw.cmd("DATA"), replies.NEED_MAIL)
        assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}>"), replies.NEED_MAIL)
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        assert_reply(raw.cmd("DATA"), replies.NEED_RCPT)
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.NESTED_MAIL)
        assert_reply(raw.cmd("RSET"), replies.OK)
        assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}>"), replies.NEED_MAIL)
        assert_reply(raw.cmd("QUIT"), Reply(221, "2.0.0", ""))


def test_starttls_ready_reply_carries_enhanced_code(relay: Daemon) -> None:
    # RFC 2034: once ENHANCEDSTATUSCODES is advertised, every reply but the greeting and
    # the EHLO reply carries one (Postfix: "220 2.0.0 Ready to start TLS").
    with RawClient(relay.port) as raw:
        raw.ehlo()
        ready = raw.starttls(client_context(relay))
        assert ready.startswith("220 ")
        assert_enhanced(ready)


def test_replies_after_starttls_and_auth_carry_enhanced_codes(relay: Daemon) -> None:
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert raw.starttls(client_context(relay)).startswith("220 ")
        ehlo = raw.ehlo()
        assert any(item[4:].startswith("AUTH") and "PLAIN" in item for item in ehlo), ehlo
        assert not any("STARTTLS" in item for item in ehlo)
        blob = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        assert_reply(raw.cmd(f"AUTH PLAIN {blob}"), replies.AUTH_OK)
        for command in ["AUTH PLAIN", "NOOP", "RSET", "XYZZY"]:
            assert_enhanced(raw.cmd(command))
        assert_reply(raw.cmd("QUIT"), Reply(221, "2.0.0", ""))


def test_second_starttls_is_refused(relay: Daemon) -> None:
    # RFC 3207 4.2: no STARTTLS once TLS is active; Postfix answers
    # "554 5.5.1 Error: TLS already active" and the session goes on.
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert raw.starttls(client_context(relay)).startswith("220 ")
        raw.ehlo()
        again = raw.cmd("STARTTLS")
        assert re.match(r"5\d\d 5\.5\.1 ", again), again
        assert_reply(raw.cmd("NOOP"), replies.OK)


def test_starttls_on_implicit_tls_port_is_refused(relay: Daemon) -> None:
    assert relay.tls_port
    with smtplib.SMTP_SSL(
        LOOPBACK, relay.tls_port, local_hostname=HELO, context=client_context(relay), timeout=15
    ) as client:
        code, text = client.docmd("STARTTLS")
        assert code // 100 in (4, 5), (code, text)
        assert_enhanced(line(code, text))
        assert client.noop()[0] == 250


def test_helo_session_works_and_refuses_esmtp_parameters(relay: Daemon) -> None:
    with RawClient(relay.port) as raw:
        assert raw.cmd(f"HELO {HELO}") == "250 relay.test"
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}> SIZE=10"), replies.BAD_PARAMETER)
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}>"), replies.RECIPIENT_OK)
        assert raw.cmd("DATA").startswith("354 ")
        qid = qid_of(raw.cmd("Subject: helo\r\n\r\nbody\r\n."))
    assert relay.envelope(qid)["client"]["protocol"] == "SMTP"
    assert b" with SMTP id " in split_received(relay.message(qid))[0]


# --- address and parameter syntax -------------------------------------------------------


@pytest.mark.parametrize(
    "argument",
    [
        "<a b@example.com>",
        "<@example.com>",
        "<user@>",
        "<user@example.com>x",
        "<user@example.com",
        "<user@@example.com>",
        "<user@exa mple.com>",
        "<user@[300.1.1.1]>",
        "<user@-example.com>",
        "<" + "a" * 400 + "@example.com>",
    ],
)
def test_malformed_sender(relay: Daemon, argument: str) -> None:
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert_reply(raw.cmd(f"MAIL FROM:{argument}"), replies.BAD_SENDER_SYNTAX)
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)


@pytest.mark.parametrize(
    "argument",
    [
        "<>",
        "<bob>",
        "<bob@example.net>junk",
        "<bob@exa_mple.net>",
        "<bob@example..net>",
        '<b"ob@example.net>',
        "<@relay.example:>",
    ],
)
def test_malformed_recipient(relay: Daemon, argument: str) -> None:
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        assert_reply(raw.cmd(f"RCPT TO:{argument}"), replies.BAD_RECIPIENT_SYNTAX)
        assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}>"), replies.RECIPIENT_OK)


def test_lenient_path_forms_are_accepted(relay: Daemon) -> None:
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert_reply(raw.cmd(f"MAIL FROM: <{SENDER}>"), replies.SENDER_OK)
        assert_reply(raw.cmd("RCPT TO:bob@example.net"), replies.RECIPIENT_OK)
        assert_reply(raw.cmd("RCPT TO:<@hop.example:carol@example.org>"), replies.RECIPIENT_OK)
        assert_reply(raw.cmd('RCPT TO:<"odd name"@example.org>'), replies.RECIPIENT_OK)
        assert_reply(raw.cmd("RCPT TO:<dave@[192.0.2.1]>"), replies.RECIPIENT_OK)
        assert raw.cmd("DATA").startswith("354 ")
        qid = qid_of(raw.cmd("Subject: lenient\r\n\r\nx\r\n."))
    envelope = relay.envelope(qid)
    assert envelope["sender"] == SENDER
    assert [r["address"] for r in envelope["recipients"]] == [
        RECIPIENT,
        "carol@example.org",
        '"odd name"@example.org',
        "dave@[192.0.2.1]",
    ]


@pytest.mark.parametrize(
    "command",
    [
        f"MAIL FROM:<{SENDER}> FOO=BAR",
        f"MAIL FROM:<{SENDER}> XFORWARD",
    ],
)
def test_unknown_mail_parameter(relay: Daemon, command: str) -> None:
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert_reply(raw.cmd(command), replies.UNKNOWN_PARAMETER)


@pytest.mark.parametrize("params", ["RET=HDRS", "RET=full ENVID=abc+2Bdef", "ENVID=x"])
def test_dsn_mail_parameters_are_accepted(relay: Daemon, params: str) -> None:
    with RawClient(relay.port) as raw:
        assert "250-DSN" in raw.ehlo()
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}> {params}"), replies.SENDER_OK)


@pytest.mark.parametrize("params", ["RET=ALL", "ENVID=a=b", "ENVID=a+zz", "RET=HDRS RET=FULL"])
def test_malformed_dsn_mail_parameters_get_501(relay: Daemon, params: str) -> None:
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}> {params}"), replies.BAD_PARAMETER)


@pytest.mark.parametrize(
    "params",
    [
        "NOTIFY=NEVER",
        "NOTIFY=SUCCESS,FAILURE,DELAY",
        "ORCPT=rfc822;bob+2Btag@example.net",
        "notify=failure",
    ],
)
def test_dsn_rcpt_parameters_are_accepted(relay: Daemon, params: str) -> None:
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}> {params}"), replies.RECIPIENT_OK)


@pytest.mark.parametrize(
    "params",
    [
        "NOTIFY=NEVER,FAILURE",
        "NOTIFY=SOMETIMES",
        "NOTIFY=FAILURE,FAILURE",
        "ORCPT=bob@example.net",
        "ORCPT=rfc822;",
        "ORCPT=rfc822;a=b",
    ],
)
def test_malformed_dsn_rcpt_parameters_get_501(relay: Daemon, params: str) -> None:
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}> {params}"), replies.BAD_PARAMETER)


def test_unknown_rcpt_parameter(relay: Daemon) -> None:
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}> FOO=1"), replies.UNKNOWN_PARAMETER)


@pytest.mark.parametrize(
    "command",
    [
        f"MAIL FROM:<{SENDER}> SIZE=abc",
        f"MAIL FROM:<{SENDER}> BODY=BINARYMIME",
        f"MAIL FROM:<{SENDER}> SMTPUTF8=yes",
    ],
)
def test_bad_mail_parameter_value(relay: Daemon, command: str) -> None:
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert_reply(raw.cmd(command), replies.BAD_PARAMETER)


def test_non_ascii_address_needs_smtputf8(relay: Daemon) -> None:
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert_reply(
            raw.cmd("MAIL FROM:<jörg@example.com>".encode()), replies.SMTPUTF8_NOT_ADVERTISED
        )
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        assert_reply(
            raw.cmd("RCPT TO:<андрей@example.net>".encode()), replies.SMTPUTF8_NOT_ADVERTISED
        )
        assert_reply(
            raw.cmd("RCPT TO:<bob@bücher.example>".encode()), replies.SMTPUTF8_NOT_ADVERTISED
        )


def test_non_ascii_address_with_smtputf8(relay: Daemon) -> None:
    message = "Subject: ünïcödé\r\nFrom: jörg@example.com\r\n\r\nhallo\r\n".encode()
    with smtp(relay) as client:
        assert client.has_extn("smtputf8")
        code, text = client.mail("jörg@example.com", ["SMTPUTF8"])
        assert_reply(line(code, text), replies.SENDER_OK)
        code, text = client.rcpt("андрей@example.net")
        assert_reply(line(code, text), replies.RECIPIENT_OK)
        code, text = client.rcpt("bob@bücher.example")
        assert_reply(line(code, text), replies.RECIPIENT_OK)
        qid = qid_of(line(*client.data(message)))
    envelope = relay.envelope(qid)
    assert envelope["sender"] == "jörg@example.com"
    assert [r["address"] for r in envelope["recipients"]] == [
        "андрей@example.net",
        "bob@bücher.example",
    ]
    assert "SMTPUTF8" in envelope["mail_params"]
    received, rest = split_received(relay.message(qid))
    assert b" with UTF8SMTP id " in received
    assert rest.endswith(message)


def finish_transaction(raw: RawClient) -> str:
    """RCPT (if needed), DATA and a small message; the final reply line."""
    assert raw.cmd("DATA").startswith("354 ")
    return raw.cmd(b"Subject: bytes\r\n\r\nbody\r\n.")


def test_non_utf8_helo_is_refused_or_queued(relay: Daemon) -> None:
    # Clients send what they have (Latin-1 host names exist). Refusing the EHLO is fine;
    # taking the message and then failing with 451 for ever is not.
    before = set(relay.queued_ids())
    with RawClient(relay.port) as raw:
        raw.send(b"EHLO caf\xe9.example\r\n")
        ehlo = raw.reply()
        if not ehlo[-1].startswith("250"):
            assert_reply(ehlo[-1], replies.BAD_HELO)
            return
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        assert_reply(raw.cmd(f"RCPT TO:<{RECIPIENT}>"), replies.RECIPIENT_OK)
        qid = qid_of(finish_transaction(raw))
    assert set(relay.queued_ids()) - before == {qid}


@pytest.mark.parametrize(
    "command",
    [
        b"MAIL FROM:<caf\xe9@example.com> SMTPUTF8",
        b"RCPT TO:<b\xffb@example.net>",
    ],
    ids=["sender", "recipient"],
)
def test_non_utf8_address_is_refused_not_451(relay: Daemon, command: bytes) -> None:
    # RFC 6531 addresses are UTF-8; bytes that are not UTF-8 are a syntax error (5xx at
    # MAIL/RCPT), never a message that is taken and then fails with 451 on every retry.
    before = set(relay.queued_ids())
    with RawClient(relay.port) as raw:
        raw.ehlo()
        if command.startswith(b"RCPT"):
            assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}> SMTPUTF8"), replies.SENDER_OK)
            reply = raw.cmd(command)
        else:
            reply = raw.cmd(command)
            if not reply.startswith("250"):
                assert_enhanced(reply)
                assert reply.startswith("5"), reply
                return
            reply = raw.cmd(f"RCPT TO:<{RECIPIENT}>")
        if reply.startswith("5"):
            assert_enhanced(reply)
            # and nothing of it is left to send: DATA is out of sequence
            assert_reply(raw.cmd("DATA"), replies.NEED_RCPT)
        else:
            assert_reply(reply, replies.RECIPIENT_OK)
            qid_of(finish_transaction(raw))
    queued = set(relay.queued_ids()) - before
    assert len(queued) <= 1
    for qid in queued:
        assert relay.envelope(qid)


def test_connection_lost_during_data_queues_nothing(relay: Daemon) -> None:
    before = set(relay.queued_ids())
    mark = log_mark(relay)
    with RawClient(relay.port) as raw:
        raw.ehlo()
        raw.cmd(f"MAIL FROM:<{SENDER}>")
        raw.cmd(f"RCPT TO:<{RECIPIENT}>")
        assert raw.cmd("DATA").startswith("354 ")
        raw.send(b"Subject: cut\r\n\r\nhalf a message\r\n")
    wait_for_log(relay, r"disconnect from unknown\[127\.0\.0\.1\] ", start=mark)
    assert set(relay.queued_ids()) == before
    assert not [p for p in (relay.spool / "queue").iterdir() if p.stem not in before]
    # Postfix: "lost connection after DATA from host[ip]" (before the disconnect line)
    assert_log(relay, r"lost connection after DATA from unknown\[127\.0\.0\.1\]$", start=mark)


# --- internal fault (in-process server) -------------------------------------------------

SECRET = "disk-controller-7 exploded at /secret/path"


class BrokenSpool(Spool):
    def create(self, envelope: Envelope, data: bytes) -> NewFile:
        raise RuntimeError(SECRET)


def test_internal_fault_is_451_without_details(
    tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    cert = ca.issue_cert("localhost", LOOPBACK)
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    settings = config.parse(
        {
            "server": {"hostname": "relay.test", "listen": [f"{LOOPBACK}:{port}"]},
            "tls": {"cert_file": str(cert_file), "key_file": str(key_file)},
            "spool": {"dir": str(tmp_path / "spool")},
        }
    )

    async def scenario() -> tuple[aiosmtplib.SMTPResponseException, str, str]:
        spool = BrokenSpool(Path(settings.spool.dir))
        intake = build_intake(settings, spool, None, None)
        inbound = InboundServer(settings, intake, server_context(settings))
        await inbound.start()
        try:
            client = aiosmtplib.SMTP(
                hostname=LOOPBACK, port=port, start_tls=False, local_hostname=HELO, timeout=10
            )
            async with client:
                await client.mail(SENDER)
                await client.rcpt(RECIPIENT)
                with pytest.raises(aiosmtplib.SMTPDataError) as info:
                    await client.data(b"Subject: fault\r\n\r\nbody\r\n")
                # the session survives the fault and takes the next transaction
                after = await client.noop()
                await client.mail(SENDER)
                rcpt = await client.rcpt(RECIPIENT)
            return info.value, f"{after.code} {after.message}", f"{rcpt.code} {rcpt.message}"
        finally:
            inbound.close()
            await inbound.drain(2.0)
            for server in inbound.servers:
                await server.wait_closed()
            spool.close()

    with caplog.at_level(logging.INFO):
        error, noop, rcpt = asyncio.run(asyncio.wait_for(scenario(), 30))
    reply = f"{error.code} {error.message}"
    assert_reply(reply, replies.LOCAL_ERROR)
    assert SECRET not in reply and "RuntimeError" not in reply and "exploded" not in reply
    assert_reply(noop, replies.OK)
    assert_reply(rcpt, replies.RECIPIENT_OK)
    assert not list((tmp_path / "spool" / "queue").iterdir())

    def event(record: logging.LogRecord) -> object:
        return getattr(record, "fields", {}).get("event")

    errors = [r for r in caplog.records if event(r) == "internal-error"]
    assert errors, caplog.text
    assert "RuntimeError" in errors[0].getMessage()
    assert not any(event(r) == "queued" for r in caplog.records)


class SlowFile:
    def __init__(self, new_file: NewFile) -> None:
        self.new_file = new_file

    def sync(self) -> None:
        time.sleep(0.5)
        self.new_file.sync()


class SlowSpool(Spool):
    """Commits that take a while, so the client can hang up in the middle of one."""

    def create(self, envelope: Envelope, data: bytes) -> NewFile:
        return SlowFile(super().create(envelope, data))  # type: ignore[return-value]


def test_message_committed_after_the_client_left_still_reaches_delivery(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """A client that hangs up while its message is being written gets no 250, but if
    the write completes the message exists and must be handed to delivery at once --
    not wait in the spool until the next restart."""
    port = free_port()
    settings = config.parse(
        {
            "server": {"hostname": "relay.test", "listen": [f"{LOOPBACK}:{port}"]},
            "spool": {"dir": str(tmp_path / "spool")},
        }
    )
    handed_over: list[str] = []

    async def scenario() -> None:
        spool = SlowSpool(Path(settings.spool.dir))
        intake = build_intake(
            settings, spool, None, lambda envelope, data: handed_over.append(envelope.qid)
        )
        inbound = InboundServer(settings, intake, server_context(settings))
        await inbound.start()
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            await reader.readline()
            writer.write(
                f"EHLO {HELO}\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
            )
            await writer.drain()
            while not (await reader.readline()).startswith(b"354"):
                pass
            writer.write(b"Subject: gone\r\n\r\nbody\r\n.\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)  # the commit is under way
            writer.transport.abort()  # hang up without waiting for the reply
            await wait_until_async(lambda: handed_over, 2.5, "the message handed to delivery")
        finally:
            inbound.close()
            await inbound.drain(2.0)
            spool.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    queued = [p.stem for p in (tmp_path / "spool" / "queue").glob("*.msg")]
    assert len(queued) == 1
    assert handed_over == queued
