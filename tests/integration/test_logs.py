"""The mail log: Postfix-shaped text lines keyed by QID, and the JSON variant."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from smtprelay import replies
from tests.integration.daemon import Daemon
from tests.integration.inbound_support import (
    PASSWORD,
    RECIPIENT,
    SENDER,
    USER,
    RawClient,
    assert_log,
    assert_reply,
    authenticated,
    line,
    log_mark,
    qid_of,
    smtp,
    start_relay,
    submit,
    wait_for_log,
)
from tests.polling import wait_until

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Daemon]:
    """Text log, started outside journald (lines begin with a timestamp and the host)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("JOURNAL_STREAM", raising=False)
        daemon = start_relay(
            tmp_path_factory,
            ca,
            overrides={
                "relay": {"allowed_sender_domains": ["example.com"]},
                "server": {"max_recipients": 2},
            },
        )
    yield daemon
    daemon.kill()


def prefix(daemon: Daemon, service: str) -> str:
    """The line start of ``service``, written by the daemon or one of its inbound
    worker processes (SMTP sessions are served there: their lines carry its pid)."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        pids = "|".join([str(pid), *f.read().split()])
    return rf"^{STAMP} \S+ smtprelay/{service}\[(?:{pids})\]: "


def test_text_log_lines_for_one_message(relay: Daemon) -> None:
    mark = log_mark(relay)
    message = b"From: app@example.com\r\nSubject: logged\r\n\r\nbody\r\n"
    with authenticated(relay) as client:
        qid = submit(client, message, recipients=(RECIPIENT, "carol@example.org"))
    size = relay.envelope(qid)["size"]
    smtpd, cleanup, qmgr = (prefix(relay, s) for s in ("smtpd", "cleanup", "qmgr"))
    expected = [
        smtpd + r"connect from unknown\[127\.0\.0\.1\]$",
        smtpd + rf"{qid}: client=unknown\[127\.0\.0\.1\], sasl_method=PLAIN, "
        rf"sasl_username={USER}$",
        cleanup + rf"{qid}: message-id=<{qid}@relay\.test>$",
        qmgr + rf"{qid}: from=<{re.escape(SENDER)}>, size={size}, nrcpt=2 \(queue active\)$",
        smtpd + r"disconnect from unknown\[127\.0\.0\.1\] ehlo=2 starttls=1 auth=1 mail=1 "
        r"rcpt=2 data=1 quit=1 commands=9$",
    ]
    wait_for_log(relay, expected[-1], start=mark)
    log = relay.log()[mark:]
    positions = []
    for pattern in expected:
        matches = list(re.finditer(pattern, log, re.MULTILINE))
        assert len(matches) == 1, f"{pattern!r} matched {len(matches)} times in:\n{log}"
        positions.append(matches[0].start())
    assert positions == sorted(positions), log


def test_client_line_without_auth_and_message_id_from_header(relay: Daemon) -> None:
    with smtp(relay) as client:
        qid = submit(client, b"Message-ID: <given.1@app.example.com>\r\n\r\nx\r\n")
    assert_log(relay, prefix(relay, "qmgr") + rf"{qid}: from=<")
    assert_log(relay, prefix(relay, "smtpd") + rf"{qid}: client=unknown\[127\.0\.0\.1\]$")
    assert_log(
        relay, prefix(relay, "cleanup") + rf"{qid}: message-id=<given\.1@app\.example\.com>$"
    )


def test_mail_reject_names_the_refused_sender(relay: Daemon) -> None:
    mark = log_mark(relay)
    with RawClient(relay.port) as raw:
        raw.ehlo("pc")
        assert_reply(raw.cmd("MAIL FROM:<app@evil.test>"), replies.SENDER_DOMAIN_DENIED)
    # Postfix: "NOQUEUE: reject: MAIL from host[ip]: 553 5.7.1 ...; from=<app@evil.test> ..."
    assert_log(
        relay,
        r"NOQUEUE: reject: MAIL from unknown\[127\.0\.0\.1\]: 553 5\.7\.1 .*; "
        r"from=<app@evil\.test> proto=ESMTP helo=<pc>$",
        start=mark,
    )


def test_rcpt_reject_inside_a_transaction_is_keyed_by_its_qid(relay: Daemon) -> None:
    # Once a recipient was accepted the transaction has a queue ID ("QID: client=..." is
    # logged); Postfix logs later refusals of the same transaction under that ID.
    with smtp(relay) as client:
        client.mail(SENDER)
        client.rcpt(RECIPIENT)
        client.rcpt("dave@example.net")
        code, text = client.rcpt("carol@example.org")
        assert_reply(line(code, text), replies.TOO_MANY_RECIPIENTS)
        qid = qid_of(line(*client.data(b"Subject: one recipient\r\n\r\nbody\r\n")))
    assert_log(relay, rf"{qid}: client=")
    assert_log(
        relay,
        rf"{qid}: reject: RCPT from unknown\[127\.0\.0\.1\]: 452 4\.5\.3 "
        r"Too many recipients; from=<app@example\.com> "
        r"to=<carol@example\.org> proto=ESMTP helo=<client\.test>$",
    )


def json_lines(daemon: Daemon) -> list[dict[str, Any]]:
    records = []
    for number, text in enumerate(daemon.log().splitlines(), 1):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            raise AssertionError(f"log line {number} is not JSON: {text!r}") from None
        assert isinstance(record, dict), text
        records.append(record)
    return records


@pytest.mark.slow
def test_json_log(make_daemon: Callable[..., Daemon]) -> None:
    relay = make_daemon(
        users={USER: PASSWORD},
        overrides={"log": {"format": "json"}, "relay": {"trusted_networks": ["10.0.0.0/8"]}},
    )
    with authenticated(relay) as client:
        qid = submit(client, b"Subject: json\r\n\r\nbody\r\n")
    with smtp(relay) as client:  # not authenticated, not trusted: refused
        client.mail(SENDER)
        code, text = client.rcpt("x@example.org")
        assert_reply(line(code, text), replies.RELAY_DENIED)

    def events() -> list[dict[str, Any]]:
        records = json_lines(relay)
        return records if sum(r.get("event") == "disconnect" for r in records) >= 2 else []

    records = wait_until(events, timeout=5, what="two disconnect events")
    assert all(
        {"time", "host", "program", "pid", "level", "message"} <= r.keys() for r in records
    ), records
    by_event: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_event.setdefault(str(record.get("event")), []).append(record)

    (queued,) = by_event["queued"]
    assert queued["qid"] == qid
    assert queued["program"] == "smtprelay/qmgr"
    assert queued["sender"] == SENDER
    assert queued["nrcpt"] == 1
    assert queued["size"] == relay.envelope(qid)["size"]
    assert re.fullmatch(
        rf"{qid}: from=<{re.escape(SENDER)}>, size=\d+, nrcpt=1 \(queue active\)", queued["message"]
    )
    (client_event,) = by_event["client"]
    assert client_event["qid"] == qid
    assert client_event["sasl_username"] == USER
    assert client_event["sasl_method"] == "PLAIN"
    assert by_event["message-id"][0]["qid"] == qid
    assert len(by_event["connect"]) == 2
    assert all(r["client_ip"] == "127.0.0.1" for r in by_event["connect"])
    (reject,) = by_event["reject"]
    assert reject["code"] == replies.RELAY_DENIED.code
    assert reject["dsn"] == replies.RELAY_DENIED.enhanced
    assert reject["recipient"] == "x@example.org"
    assert reject["sender"] == SENDER
    assert reject["command"] == "RCPT"
    assert PASSWORD not in relay.log()


# --- client bytes in the log --------------------------------------------------------------

FORGED = "2026-12-04T12:00:00.000+00:00 vm smtprelay/smtpd[1]: connect from unknown[6.6.6.6]"
# A terminal escape, a CR and a whole forged log line, then a NUL: a line not starting with
# a letter is a non-SMTP command, which the log quotes.
HOSTILE_LINE = b"\x1b[2J\x1b[1;31m\r" + FORGED.encode() + b"\x00"
ESCAPED_LINE = r"\033[2J\033[1;31m\015" + FORGED + r"\000"
HOSTILE_HELO = b"evil\x1b[31m.test"


def send_hostile_input(daemon: Daemon) -> None:
    with RawClient(daemon.port) as raw:
        raw.cmd(b"EHLO " + HOSTILE_HELO)
        # refused for its domain: the reject line names the HELO
        assert_reply(raw.cmd(b"MAIL FROM:<app@evil.test>"), replies.SENDER_DOMAIN_DENIED)
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        # refused for its syntax: the reject line quotes the address
        assert_reply(raw.cmd(b"RCPT TO:<bob\x1b[8m\x07@example.net>"), replies.BAD_RECIPIENT_SYNTAX)
        raw.send(HOSTILE_LINE + b"\r\n")
        assert raw.wait_closed() == f"{replies.NON_SMTP_COMMAND}\r\n".encode()


def assert_no_raw_controls(text: str) -> None:
    for char in text:
        assert char in "\n" or (" " <= char != "\x7f" and not "\x80" <= char <= "\x9f"), (
            f"raw control character {char!r} in the log:\n{text[-3000:]}"
        )


def test_client_bytes_are_escaped_in_the_text_log(relay: Daemon) -> None:
    mark = log_mark(relay)
    send_hostile_input(relay)
    line = wait_for_log(
        relay, r"warning: non-SMTP command from unknown\[127\.0\.0\.1\]: (.*)$", start=mark
    )
    # (aiosmtpd hands over the first word in upper case)
    assert line.group(1).upper() == ESCAPED_LINE.upper()
    wait_for_log(relay, r"disconnect from unknown\[127\.0\.0\.1\]", start=mark)
    text = relay.log()[mark:]
    assert_no_raw_controls(text)
    # the forged line is inside the warning, never a line of its own
    assert not re.search(r"^\S+ vm smtprelay/smtpd\[1\]:", text, re.MULTILINE)
    assert_log(
        relay,
        r"reject: MAIL from unknown\[127\.0\.0\.1\]: 553 5\.7\.1 .* "
        r"helo=<evil\\033\[31m\.test>$",
        start=mark,
    )
    assert_log(
        relay,
        r"reject: RCPT from unknown\[127\.0\.0\.1\]: 501 5\.1\.3 .* "
        r"to=<bob\\033\[8m\\007@example\.net>",
        start=mark,
    )
    # aiosmtpd's own lines (a Python tuple for the client) are gone
    assert "('127.0.0.1'" not in text and "unrecognised" not in text


def test_client_bytes_are_escaped_in_the_json_log(make_daemon: Callable[..., Daemon]) -> None:
    relay = make_daemon(
        overrides={"log": {"format": "json"}, "relay": {"allowed_sender_domains": ["example.com"]}}
    )
    send_hostile_input(relay)

    def events() -> list[dict[str, Any]]:
        records = json_lines(relay)
        return records if any(r.get("event") == "disconnect" for r in records) else []

    records = wait_until(events, timeout=5, what="the disconnect event")
    for record in records:
        for value in record.values():
            if isinstance(value, str):
                assert_no_raw_controls(value)
    (non_smtp,) = [r for r in records if r.get("event") == "non-smtp-command"]
    assert non_smtp["level"] == "warning"
    assert non_smtp["command"].upper() == ESCAPED_LINE.upper()
    assert non_smtp["message"].endswith(non_smtp["command"])
    (reject,) = [r for r in records if r.get("event") == "reject" and r["command"] == "MAIL"]
    assert reject["message"].endswith(r"helo=<evil\033[31m.test>")
    (reject,) = [r for r in records if r.get("event") == "reject" and r["command"] == "RCPT"]
    assert reject["recipient"] == r"bob\033[8m\007@example.net"
