"""smtprelay.maillog: Postfix-shaped mail log lines, as text or JSON."""

from __future__ import annotations

import inspect
import io
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest

from smtprelay import maillog, replies

PID = os.getpid()
HOST = socket.gethostname().split(".")[0]
RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


@pytest.fixture
def capture() -> Iterator[Callable[[logging.Formatter], io.StringIO]]:
    logger = logging.getLogger("smtprelay.mail")
    saved_level, saved_propagate = logger.level, logger.propagate
    handlers: list[logging.Handler] = []

    def attach(formatter: logging.Formatter) -> io.StringIO:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        handlers.append(handler)
        return stream

    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield attach
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(saved_level)
    logger.propagate = saved_propagate


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


# --- text -----------------------------------------------------------------------------


def test_text_line_outside_journald(capture: Callable[..., io.StringIO]) -> None:
    stream = capture(maillog.TextFormatter(under_journald=False))
    before = time.time()
    maillog.connect("127.0.0.1")
    after = time.time()
    [line] = _lines(stream)
    match = re.fullmatch(
        rf"({RFC3339}) (\S+) smtprelay/smtpd\[{PID}\]: connect from unknown\[127\.0\.0\.1\]",
        line,
    )
    assert match, line
    assert match.group(2) == HOST
    stamp = datetime.fromisoformat(match.group(1)).timestamp()
    assert before - 0.001 <= stamp <= after


def test_text_line_under_journald(capture: Callable[..., io.StringIO]) -> None:
    stream = capture(maillog.TextFormatter(under_journald=True))
    maillog.queued("0123456789ABC", "app@example.com", 1834, 2)
    assert _lines(stream) == [
        f"smtprelay/qmgr[{PID}]: 0123456789ABC: from=<app@example.com>, size=1834, nrcpt=2 "
        "(queue active)"
    ]


@pytest.mark.parametrize(
    ("tz", "offset"),
    [("UTC0", "+00:00"), ("EST5", "-05:00"), ("NST3:30", "-03:30"), ("IST-5:30", "+05:30")],
)
def test_timestamp_offset(
    capture: Callable[..., io.StringIO], monkeypatch: pytest.MonkeyPatch, tz: str, offset: str
) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        stream = capture(maillog.TextFormatter(under_journald=False))
        maillog.connect("192.0.2.1")
        stamp = _lines(stream)[0].split(" ", 1)[0]
    finally:
        monkeypatch.undo()
        time.tzset()
    assert re.fullmatch(RFC3339, stamp)
    assert stamp.endswith(offset)
    assert abs(datetime.fromisoformat(stamp).timestamp() - time.time()) < 5


def test_text_examples_from_design(capture: Callable[..., io.StringIO]) -> None:
    stream = capture(maillog.TextFormatter(under_journald=True))
    maillog.client("4XJ7Q2M9ZK1", "127.0.0.1", "PLAIN", "app1")
    maillog.client("4XJ7Q2M9ZK2", "127.0.0.1", None, None)
    maillog.auth_failed("192.0.2.9", "LOGIN", "app1")
    assert _lines(stream)[:2] == [
        f"smtprelay/smtpd[{PID}]: 4XJ7Q2M9ZK1: client=unknown[127.0.0.1], sasl_method=PLAIN, "
        "sasl_username=app1",
        f"smtprelay/smtpd[{PID}]: 4XJ7Q2M9ZK2: client=unknown[127.0.0.1]",
    ]
    auth_line = _lines(stream)[2]
    # Postfix's own line (smtpd_sasl_glue.c), to the letter.
    assert auth_line == (
        f"smtprelay/smtpd[{PID}]: warning: unknown[192.0.2.9]: SASL LOGIN authentication "
        "failed: authentication failure, sasl_username=app1"
    )
    # The shape fail2ban's postfix filter (mode auth, fail2ban 0.11 and later) looks for.
    match = re.search(
        r"^[^[]*\[(?P<host>[\d.]+)\](?::\d+)?: SASL ((?i:LOGIN|PLAIN|(?:CRAM|DIGEST)-MD5)) "
        r"authentication failed:(?! Connection lost to authentication server| Invalid "
        r"authentication mechanism)",
        auth_line.split(": ", 1)[1],
    )
    assert match, auth_line
    assert match.group("host") == "192.0.2.9"


def test_auth_failure_names_the_user_printably(capture: Callable[..., io.StringIO]) -> None:
    stream = capture(maillog.TextFormatter(under_journald=True))
    maillog.auth_failed("192.0.2.9", "PLAIN", "x\r\nwarning: unknown[10.0.0.1]: SASL \x1b\udcff")
    maillog.auth_failed("192.0.2.9", "LOGIN", "u" * 300)
    maillog.auth_failed("192.0.2.9", "LOGIN", None)
    forged, long, absent = _lines(stream)
    assert forged.endswith(", sasl_username=x??warning: unknown[10.0.0.1]: SASL ??")
    assert long.endswith(", sasl_username=" + "u" * 100)  # Postfix's %.100s
    assert absent.endswith(", sasl_username=(unavailable)")


def test_plain_warning_gets_prefix(capture: Callable[..., io.StringIO]) -> None:
    stream = capture(maillog.TextFormatter(under_journald=True))
    logging.getLogger("smtprelay.mail").warning("disk is %s", "slow")
    logging.getLogger("smtprelay.mail").info("just info")
    assert _lines(stream) == [
        f"smtprelay/main[{PID}]: warning: disk is slow",
        f"smtprelay/main[{PID}]: just info",
    ]


# --- reject: the Postfix NOQUEUE shape --------------------------------------------------


def test_reject_rcpt_exact_postfix_shape(capture: Callable[..., io.StringIO]) -> None:
    stream = capture(maillog.TextFormatter(under_journald=True))
    # The session names the refused address in the reply text, as Postfix does.
    reply = replies.RELAY_DENIED.with_text(f"<x@example.org>: {replies.RELAY_DENIED.text}")
    maillog.reject(
        "RCPT", "192.0.2.9", reply, sender="a@b.example", recipient="x@example.org", helo="pc"
    )
    assert _lines(stream) == [
        f"smtprelay/smtpd[{PID}]: NOQUEUE: reject: RCPT from unknown[192.0.2.9]: 554 5.7.1 "
        "<x@example.org>: Relay access denied; from=<a@b.example> to=<x@example.org> "
        "proto=ESMTP helo=<pc>"
    ]


def test_reject_variants(capture: Callable[..., io.StringIO]) -> None:
    stream = capture(maillog.TextFormatter(under_journald=True))
    maillog.reject(
        "MAIL", "192.0.2.9", replies.SENDER_DOMAIN_DENIED, sender="a@evil.test", helo="pc"
    )
    denied = replies.RELAY_DENIED.with_text(f"<x@y.test>: {replies.RELAY_DENIED.text}")
    maillog.reject("RCPT", "192.0.2.9", denied, sender="", recipient="x@y.test", proto="SMTP")
    maillog.reject(
        "RCPT",
        "192.0.2.9",
        replies.TOO_MANY_RECIPIENTS,
        sender="a@b.test",
        recipient="x@y.test",
        helo="pc",
        qid="0123456789ABC",
    )
    prefix = f"smtprelay/smtpd[{PID}]: "
    assert _lines(stream) == [
        prefix + "NOQUEUE: reject: MAIL from unknown[192.0.2.9]: 553 5.7.1 Sender address "
        "rejected: domain not allowed; from=<a@evil.test> proto=ESMTP helo=<pc>",
        prefix + "NOQUEUE: reject: RCPT from unknown[192.0.2.9]: 554 5.7.1 <x@y.test>: Relay "
        "access denied; from=<> to=<x@y.test> proto=SMTP",
        prefix + "0123456789ABC: reject: RCPT from unknown[192.0.2.9]: 452 4.5.3 "
        "Too many recipients; from=<a@b.test> to=<x@y.test> proto=ESMTP helo=<pc>",
    ]


def test_http_reject_shape_and_fields(capture: Callable[..., io.StringIO]) -> None:
    """An HTTP submission refused by policy: the reject shape with HTTP as the command,
    and the problem answered in the JSON fields (for the message.rejected event)."""
    text = capture(maillog.TextFormatter(under_journald=True))
    as_json = capture(maillog.JsonFormatter())
    problem = {"status": 403, "title": "Forbidden", "detail": "token app may not send from x.test"}
    maillog.http_reject("192.0.2.9", "app", problem, sender="a@x.test", recipients=["r@y.test"])
    assert _lines(text) == [
        f"smtprelay/http[{PID}]: NOQUEUE: reject: HTTP from unknown[192.0.2.9]: 403 token app "
        "may not send from x.test; from=<a@x.test> to=<r@y.test> proto=HTTP api_token=app"
    ]
    [line] = _lines(as_json)
    fields = json.loads(line)
    assert fields["event"] == "reject" and fields["command"] == "HTTP" and fields["code"] == 403
    assert fields["problem"] == problem and fields["api_token"] == "app"
    assert fields["recipients"] == ["r@y.test"]


# --- JSON -----------------------------------------------------------------------------


def test_json_one_object_per_event(capture: Callable[..., io.StringIO]) -> None:
    stream = capture(maillog.JsonFormatter())
    before = time.time()
    maillog.queued("0123456789ABC", "j\u00f6rg@example.com", 1834, 2)
    maillog.connect("192.0.2.1")
    lines = _lines(stream)
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["qid"] == "0123456789ABC"
    assert first["sender"] == "j\u00f6rg@example.com"
    assert first["size"] == 1834 and first["nrcpt"] == 2
    assert first["event"] == "queued"
    assert first["program"] == "smtprelay/qmgr"
    assert first["pid"] == PID
    assert first["host"] == HOST
    assert first["level"] == "info"
    assert first["message"] == (
        "0123456789ABC: from=<j\u00f6rg@example.com>, size=1834, nrcpt=2 (queue active)"
    )
    assert re.fullmatch(RFC3339, first["time"])
    assert datetime.fromisoformat(first["time"]).timestamp() >= before - 0.001
    assert "qid" not in second  # connect has no queue ID
    assert second["client_ip"] == "192.0.2.1"


def test_json_drops_none_fields(capture: Callable[..., io.StringIO]) -> None:
    stream = capture(maillog.JsonFormatter())
    maillog.client("0123456789ABC", "127.0.0.1", None, None)
    obj = json.loads(_lines(stream)[0])
    assert "sasl_method" not in obj and "sasl_username" not in obj
    assert obj["client_ip"] == "127.0.0.1"


def test_json_reject_fields(capture: Callable[..., io.StringIO]) -> None:
    stream = capture(maillog.JsonFormatter())
    # The session names the refused address in the reply text, as Postfix does.
    reply = replies.RELAY_DENIED.with_text(f"<x@example.org>: {replies.RELAY_DENIED.text}")
    maillog.reject(
        "RCPT", "192.0.2.9", reply, sender="a@b.example", recipient="x@example.org", helo="pc"
    )
    obj = json.loads(_lines(stream)[0])
    assert obj["code"] == 554 and obj["dsn"] == "5.7.1"
    assert obj["recipient"] == "x@example.org" and obj["sender"] == "a@b.example"
    assert obj["command"] == "RCPT" and obj["event"] == "reject"
    assert obj["message"].startswith("NOQUEUE: reject: RCPT from unknown[192.0.2.9]: 554 5.7.1")


# --- setup ----------------------------------------------------------------------------


def test_setup_chooses_formatter(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
        maillog.setup("text", "warning")
        [handler] = root.handlers
        assert isinstance(handler.formatter, maillog.TextFormatter)
        assert handler.formatter.under_journald is True
        assert root.level == logging.WARNING
        monkeypatch.delenv("JOURNAL_STREAM")
        maillog.setup("json", "debug")
        [handler] = root.handlers
        assert isinstance(handler.formatter, maillog.JsonFormatter)
        maillog.setup("text", "info")
        assert root.handlers[0].formatter.under_journald is False  # type: ignore[union-attr]
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


def test_folded_lines_text_and_json(capture: Callable[..., io.StringIO]) -> None:
    text = capture(maillog.TextFormatter(under_journald=True))
    as_json = capture(maillog.JsonFormatter())
    maillog.folded_lines("0123456789ABC", 3, 52311, 998)
    [line] = _lines(text)
    assert line.endswith(
        f"smtprelay/smtp[{PID}]: 0123456789ABC: warning: folded 3 line(s) longer than 998 "
        "octets (longest 52311) for delivery"
    )
    obj = json.loads(_lines(as_json)[0])
    assert (obj["event"], obj["level"], obj["count"], obj["longest"], obj["limit"]) == (
        "folded",
        "warning",
        3,
        52311,
        998,
    )


# --- client bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain text, é and 中文 stay", "plain text, é and 中文 stay"),
        ("a\x1b[31mb", r"a\033[31mb"),
        ("cr\rlf\nnul\x00tab\tdel\x7f", r"cr\015lf\012nul\000tab\011del\177"),
        ("c1\x9b and \u2028", r"c1\233 and \u2028"),
        ("not utf-8: \udcff", r"not utf-8: \377"),  # a byte kept by surrogateescape
        (r"a backslash \ stays", r"a backslash \ stays"),
    ],
)
def test_escape(text: str, escaped: str) -> None:
    assert maillog.escape(text) == escaped
    assert maillog.escape(escaped) == escaped  # escaping twice changes nothing


def test_text_and_json_lines_escape_client_data(capture: Callable[..., io.StringIO]) -> None:
    text = capture(maillog.TextFormatter(under_journald=True))
    as_json = capture(maillog.JsonFormatter())
    helo = "x\r2026-01-01T00:00:00.000+00:00 vm smtprelay/smtpd[1]: forged\x1b[0m"
    maillog.reject(
        "RCPT", "192.0.2.1", replies.RELAY_DENIED, sender="a\x00@b", recipient="r\x07@c", helo=helo
    )
    (line,) = text.getvalue().splitlines()
    assert line.endswith(
        r"helo=<x\0152026-01-01T00:00:00.000+00:00 vm smtprelay/smtpd[1]: "
        r"forged\033[0m>"
    )
    assert r"from=<a\000@b> to=<r\007@c>" in line
    record = json.loads(as_json.getvalue())
    assert record["sender"] == r"a\000@b" and record["recipient"] == r"r\007@c"
    assert record["message"] == line.split(": ", 1)[1]


def test_aiosmtpd_lines_name_the_client_as_ours(capture: Callable[..., io.StringIO]) -> None:
    maillog.setup("text", "info")
    aiosmtpd = logging.getLogger("mail.log")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(maillog.TextFormatter(under_journald=True))
    aiosmtpd.addHandler(handler)
    try:
        aiosmtpd.warning("%r unrecognised: %s", ("192.0.2.1", 4000), "X\x1bY")  # below ERROR
        aiosmtpd.error("%r SMTP session exception: %s", ("192.0.2.1", 4000), "X\x1bY")
    finally:
        aiosmtpd.removeHandler(handler)
        logging.getLogger().handlers.clear()
    assert stream.getvalue() == (
        f"smtprelay/main[{PID}]: error: unknown[192.0.2.1] SMTP session exception: X\\033Y\n"
    )


def test_every_event_emitted_is_in_the_vocabulary() -> None:
    """Each ``event=`` in maillog names a member of Event, so stats.py and the JSON log
    read the same words (a free string here would silently zero a metric)."""
    source = inspect.getsource(maillog)
    assert not re.search(r'event="', source)
    used = set(re.findall(r"event=Event\.([A-Z_]+)", source))
    assert used == {member.name for member in maillog.Event}
