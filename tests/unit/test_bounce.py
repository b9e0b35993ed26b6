"""smtprelay.bounce: RFC 3464 DSNs that mail software and people can both read.

The DSN is checked three ways: with Python's ``email`` parser (structure and fields),
with a small independent reader of the raw bytes (byte-exact returned content, 8-bit
parts the ``email`` package would decode), and with flufl.bounce, the bounce detector
of GNU Mailman, which must find exactly the permanently failed recipients.
"""

from __future__ import annotations

import email
import re
from collections.abc import Sequence
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from flufl.bounce import all_failures, scan_message
from hypothesis import given
from hypothesis import strategies as st

from smtprelay.bounce import (
    SUBJECT_DELAYED,
    SUBJECT_FAILED,
    SUBJECT_SUCCESS,
    DSNRecipient,
    build_dsn,
)

NOW = 1_800_000_000.0
ARRIVAL = NOW - 3600
LAST_ATTEMPT = NOW - 60
RETRY_UNTIL = ARRIVAL + 5 * 86400
MTA = "relay.example"
QID = "4XJ7Q2M9ZK1AB"
SENDER = "app@example.com"
FROM = "Mail Delivery System <MAILER-DAEMON@relay.example>"

ORIGINAL = (
    b"From: App <app@example.com>\r\n"
    b"To: bob@example.net, carol@example.org\r\n"
    b"Subject: Invoice 42\r\n"
    b"Message-ID: <invoice-42@example.com>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"your invoice is attached.\r\n"
)
ORIGINAL_HEADERS = ORIGINAL[: ORIGINAL.index(b"\r\n\r\n") + 2]

REPLY_BOB = "550 5.1.1 <bob@example.net>: Recipient address rejected: no such user"
REPLY_DAVE = "554 5.7.1 <dave@example.net>: Relay access denied"
REPLY_CAROL = "451 4.7.1 <carol@example.org>: Greylisted, try again in 5 minutes"


def failed(address: str, reply: str | None = REPLY_BOB, **kw: Any) -> DSNRecipient:
    fields: dict[str, Any] = {
        "address": address,
        "original": None,
        "action": "failed",
        "status": "5.1.1",
        "diagnostic": reply,
        "remote_mta": "mx1.example.net",
        "last_attempt": LAST_ATTEMPT,
        "will_retry_until": None,
    }
    return DSNRecipient(**(fields | kw))


def delayed(address: str, reply: str = REPLY_CAROL, **kw: Any) -> DSNRecipient:
    fields: dict[str, Any] = {
        "address": address,
        "original": None,
        "action": "delayed",
        "status": "4.7.1",
        "diagnostic": reply,
        "remote_mta": "mx.example.org",
        "last_attempt": LAST_ATTEMPT,
        "will_retry_until": RETRY_UNTIL,
    }
    return DSNRecipient(**(fields | kw))


def delivered(address: str, action: str = "delivered") -> DSNRecipient:
    return DSNRecipient(
        address,
        None,
        action,  # type: ignore[arg-type]
        "2.0.0",
        "250 2.0.0 Ok: queued as 12345",
        "mx.example.org",
        LAST_ATTEMPT,
        None,
    )


def dsn(recipients: Sequence[DSNRecipient], **kw: Any) -> bytes:
    args: dict[str, Any] = {
        "original": ORIGINAL,
        "envelope_sender": SENDER,
        "reporting_mta": MTA,
        "arrival": ARRIVAL,
        "recipients": recipients,
        "from_address": FROM,
        "now": NOW,
        "qid": QID,
    }
    return build_dsn(**(args | kw))


def parse(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(raw: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The body parts of the top-level multipart, read from the raw bytes: (header
    fields with lower-case names, content exactly as it stands between the delimiters)."""
    boundary = parse(raw).get_boundary()
    assert boundary is not None
    _, _, body = raw.partition(b"\r\n\r\n")
    segments = body.split(b"\r\n--" + boundary.encode())
    assert segments[-1] == b"--\r\n", "the close delimiter ends the message"
    out = []
    for segment in segments[1:-1]:
        assert segment.startswith(b"\r\n")
        head, sep, content = segment[2:].partition(b"\r\n\r\n")
        assert sep, "every part has a header"
        out.append((fields(head), content))
    return out


def fields(block: bytes) -> dict[str, str]:
    """A header block -> {lower-case name: unfolded value}; names must not repeat."""
    text = re.sub(r"\r\n(?=[ \t])", "", block.decode("utf-8"))
    result: dict[str, str] = {}
    for line in text.split("\r\n"):
        if not line:
            continue
        name, colon, value = line.partition(":")
        assert colon, f"not a header field: {line!r}"
        assert name.lower() not in result, f"{name} repeated"
        result[name.lower()] = value.strip()
    return result


def status_blocks(raw: bytes) -> list[dict[str, str]]:
    """The per-message block, then one block per recipient, from the status part."""
    content = parts(raw)[1][1]
    assert content.endswith(b"\r\n")
    return [fields(b) for b in content.removesuffix(b"\r\n").split(b"\r\n\r\n")]


def text_part(raw: bytes) -> str:
    first = parse(raw).get_payload(0)
    assert isinstance(first, EmailMessage)
    assert first.get_content_type() == "text/plain"
    assert first.get_content_charset() == "utf-8"
    content = first.get_content()
    assert isinstance(content, str)
    return content


def for_flufl(raw: bytes) -> Message:
    # Mailman hands flufl.bounce messages parsed with the compat32 default.
    return email.message_from_bytes(raw)


# -- structure ------------------------------------------------------------------------


def test_failure_dsn_structure() -> None:
    raw = dsn([failed("bob@example.net")])
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    assert msg["From"] == FROM
    assert msg["To"] == SENDER
    assert msg["Subject"] == SUBJECT_FAILED
    assert msg["MIME-Version"] == "1.0"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert parsedate_to_datetime(msg["Date"]).timestamp() == NOW
    message_id = msg["Message-ID"]
    assert re.fullmatch(rf"<{QID}\.[^@<>\s]+@{re.escape(MTA)}>", message_id)


def test_delivery_status_fields_per_recipient() -> None:
    raw = dsn([failed("bob@example.net"), delayed("carol@example.org")])
    per_message, bob, carol = status_blocks(raw)
    assert per_message["reporting-mta"] == f"dns; {MTA}"
    assert parsedate_to_datetime(per_message["arrival-date"]).timestamp() == ARRIVAL
    assert "original-envelope-id" not in per_message

    assert bob == {
        "final-recipient": "rfc822; bob@example.net",
        "action": "failed",
        "status": "5.1.1",
        "remote-mta": "dns; mx1.example.net",
        "diagnostic-code": f"smtp; {REPLY_BOB}",
        "last-attempt-date": bob["last-attempt-date"],
    }
    assert parsedate_to_datetime(bob["last-attempt-date"]).timestamp() == LAST_ATTEMPT
    assert carol["action"] == "delayed"
    assert carol["status"] == "4.7.1"
    assert carol["diagnostic-code"] == f"smtp; {REPLY_CAROL}"
    assert parsedate_to_datetime(carol["will-retry-until"]).timestamp() == RETRY_UNTIL


def test_email_package_reads_the_same_blocks() -> None:
    raw = dsn([failed("bob@example.net"), delayed("carol@example.org")])
    status = parse(raw).get_payload(1)
    assert isinstance(status, Message)
    payload = status.get_payload()
    assert isinstance(payload, list)
    blocks: list[Message] = [b for b in payload if isinstance(b, Message)]
    assert len(blocks) == len(payload) == 3
    assert blocks[0]["Reporting-MTA"] == f"dns; {MTA}"
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822; bob@example.net",
        "rfc822; carol@example.org",
    ]
    assert blocks[1]["Diagnostic-Code"] == f"smtp; {REPLY_BOB}"


def test_will_retry_until_only_for_delayed() -> None:
    # A caller passing a retry deadline for a failure must not make it look retried.
    raw = dsn(
        [failed("bob@example.net", will_retry_until=RETRY_UNTIL), delayed("carol@example.org")]
    )
    _, bob, carol = status_blocks(raw)
    assert "will-retry-until" not in bob
    assert "will-retry-until" in carol


def test_original_recipient_only_when_orcpt_given() -> None:
    raw = dsn(
        [
            failed("bob@example.net", original="rfc822;bob@example.net"),
            failed("dave@example.net", REPLY_DAVE),
        ]
    )
    _, bob, dave = status_blocks(raw)
    assert bob["original-recipient"] == "rfc822;bob@example.net"
    assert "original-recipient" not in dave
    assert next(iter(bob)) == "original-recipient", "RFC 3464 puts it first"


def test_orcpt_and_envid_are_xtext_decoded() -> None:
    raw = dsn(
        [failed("bob@example.net", original="rfc822;bob+2Btag@example.net")], envid="QQ+2B314159"
    )
    per_message, bob = status_blocks(raw)
    assert bob["original-recipient"] == "rfc822;bob+tag@example.net"
    assert per_message["original-envelope-id"] == "QQ+314159"
    assert next(iter(per_message)) == "original-envelope-id", "RFC 3464 puts it first"


def test_missing_remote_details_are_left_out() -> None:
    raw = dsn(
        [
            failed(
                "bob@example.net",
                diagnostic=None,
                remote_mta=None,
                last_attempt=None,
                status="5.4.7",
            )
        ]
    )
    _, bob = status_blocks(raw)
    assert set(bob) == {"final-recipient", "action", "status"}
    assert "5.4.7" in text_part(raw)


def test_non_smtp_diagnostic_is_not_labelled_smtp() -> None:
    raw = dsn([failed("bob@example.net", diagnostic="connect to mx1: Connection refused")])
    assert status_blocks(raw)[1]["diagnostic-code"] == (
        "X-smtprelay; connect to mx1: Connection refused"
    )


@pytest.mark.parametrize(
    ("recipients", "subject"),
    [
        ([failed("bob@example.net")], SUBJECT_FAILED),
        ([failed("bob@example.net"), delayed("carol@example.org")], SUBJECT_FAILED),
        ([delayed("carol@example.org")], SUBJECT_DELAYED),
        ([delivered("carol@example.org")], SUBJECT_SUCCESS),
        ([delivered("carol@example.org", "relayed")], SUBJECT_SUCCESS),
    ],
)
def test_subject(recipients: list[DSNRecipient], subject: str) -> None:
    assert parse(dsn(recipients))["Subject"] == subject


def test_one_dsn_covers_every_recipient() -> None:
    recipients = [failed(f"user{i}@example.net") for i in range(5)]
    blocks = status_blocks(dsn(recipients))
    assert [b["final-recipient"] for b in blocks[1:]] == [
        f"rfc822; user{i}@example.net" for i in range(5)
    ]


# -- the human part -------------------------------------------------------------------


def test_text_explains_failure_with_each_remote_reply() -> None:
    text = text_part(dsn([failed("bob@example.net"), failed("dave@example.net", REPLY_DAVE)]))
    assert "could not be delivered" in text
    assert "<bob@example.net>" in text
    assert "<dave@example.net>" in text
    assert REPLY_BOB in text
    assert REPLY_DAVE in text
    assert "mx1.example.net" in text
    assert QID in text
    assert "original message is attached" in text


def test_text_says_how_long_a_delay_will_be_retried() -> None:
    text = " ".join(text_part(dsn([delayed("carol@example.org")])).split())
    assert "still trying" in text
    assert "do not need to send the message again" in text
    assert "Wed, 20 Jan 2027 07:00:00 +0000" in text  # RETRY_UNTIL
    assert "about 5 days from now" in text
    assert REPLY_CAROL in text


def test_text_lines_stay_short() -> None:
    long_reply = "550 5.7.1 " + " ".join(["policy"] * 60) + " " + "x" * 300
    raw = dsn([failed("bob@example.net", long_reply)])
    assert all(len(line) <= 76 for line in text_part(raw).splitlines())


# -- returned content -----------------------------------------------------------------


def test_failure_returns_the_whole_message_byte_exact() -> None:
    (_, _, (head, content)) = parts(dsn([failed("bob@example.net")]))
    assert head["content-type"] == "message/rfc822"
    assert content == ORIGINAL


def test_ret_hdrs_returns_the_header_section() -> None:
    raw = dsn([failed("bob@example.net")], ret="HDRS")
    assert [p.get_content_type() for p in parse(raw).iter_parts()][2] == "text/rfc822-headers"
    (_, _, (head, content)) = parts(raw)
    assert head["content-type"] == "text/rfc822-headers"
    assert content == ORIGINAL_HEADERS
    assert b"your invoice" not in raw
    assert "header of the original message is attached" in text_part(raw)


@pytest.mark.parametrize("ret", [None, "FULL", "HDRS"])
@pytest.mark.parametrize("make", [delayed, delivered])
def test_reports_without_failure_return_headers_only(ret: Any, make: Any) -> None:
    # RFC 3461 section 4.3: RET concerns failures; Postfix returns headers otherwise.
    (_, _, (head, content)) = parts(dsn([make("carol@example.org")], ret=ret))
    assert head["content-type"] == "text/rfc822-headers"
    assert content == ORIGINAL_HEADERS


def test_oversized_original_falls_back_to_headers_and_says_so() -> None:
    raw = dsn([failed("bob@example.net")], ret="FULL", max_original_bytes=len(ORIGINAL) - 1)
    (_, _, (head, content)) = parts(raw)
    assert head["content-type"] == "text/rfc822-headers"
    assert content == ORIGINAL_HEADERS
    text = " ".join(text_part(raw).split())
    assert f"was {len(ORIGINAL)} bytes" in text
    assert f"more than the {len(ORIGINAL) - 1} bytes" in text


def test_original_at_the_limit_is_returned_whole() -> None:
    (_, _, (head, content)) = parts(
        dsn([failed("bob@example.net")], max_original_bytes=len(ORIGINAL))
    )
    assert head["content-type"] == "message/rfc822"
    assert content == ORIGINAL


def test_header_only_original() -> None:
    original = b"Subject: no body\r\nFrom: a@example.com\r\n"
    raw = dsn([delayed("carol@example.org")], original=original)
    assert parts(raw)[2][1] == original


def test_boundary_never_occurs_in_the_content() -> None:
    probe = parse(dsn([failed("bob@example.net")])).get_boundary()
    assert probe is not None
    original = ORIGINAL + b"--" + probe.encode() + b"\r\n--" + probe.encode() + b"--\r\n"
    raw = dsn([failed("bob@example.net")], original=original)
    assert parse(raw).get_boundary() != probe
    assert len(parse(raw).get_payload()) == 3
    assert parts(raw)[2][1] == original


# -- 8-bit and SMTPUTF8 ---------------------------------------------------------------

EIGHT_BIT_BODY = (
    b"From: app@example.com\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: Rechnung\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xfc\xdfe, \xff\x80 bytes that are not UTF-8\r\n"
)
SMTPUTF8_ORIGINAL = (
    "From: Jörg <jörg@bücher.example>\r\n"
    "To: 用户@例子.广告\r\n"
    "Subject: Grüße\r\n"
    "\r\n"
    "Grüße aus Köln\r\n"
).encode()


def test_8bit_original_is_carried_byte_exact_as_message_global() -> None:
    raw = dsn([failed("bob@example.net")], original=EIGHT_BIT_BODY)
    msg = parse(raw)
    assert msg["Content-Transfer-Encoding"] == "8bit"
    (_, (status_head, _), (head, content)) = parts(raw)
    assert head["content-type"] == "message/global"
    assert head["content-transfer-encoding"] == "8bit"
    assert content == EIGHT_BIT_BODY
    # The status fields are plain ASCII, so they stay readable by RFC 3464 parsers.
    assert status_head["content-type"] == "message/delivery-status"
    assert scan_message(for_flufl(raw)) == {b"bob@example.net"}


def test_smtputf8_dsn_uses_the_global_types() -> None:
    rcpt = "用户@例子.广告"
    raw = dsn(
        [failed(rcpt, f"550 5.1.1 <{rcpt}>: no such user", original=f"utf-8;{rcpt}")],
        original=SMTPUTF8_ORIGINAL,
        envelope_sender="jörg@bücher.example",
    )
    msg = parse(raw)
    assert msg.get_param("report-type") == "global-delivery-status"
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "text/plain",
        "message/global-delivery-status",
        "message/global",
    ]
    assert msg["To"] == "jörg@bücher.example"
    (_, (status_head, _), (_, content)) = parts(raw)
    assert status_head["content-transfer-encoding"] == "8bit"
    assert content == SMTPUTF8_ORIGINAL
    _, block = status_blocks(raw)
    assert block["final-recipient"] == f"utf-8; {rcpt}"
    assert block["original-recipient"] == f"utf-8;{rcpt}"
    assert block["diagnostic-code"] == f"smtp; 550 5.1.1 <{rcpt}>: no such user"
    assert f"<{rcpt}>" in text_part(raw)


def test_utf8_orcpt_escapes_are_decoded() -> None:
    raw = dsn([failed("user@example.net", original="utf-8;\\x{7528}\\x{6237}@example.net")])
    _, block = status_blocks(raw)
    assert block["original-recipient"] == "utf-8;用户@example.net"
    assert parts(raw)[1][0]["content-type"] == "message/global-delivery-status"


def test_8bit_header_section_is_returned_as_message_global_headers() -> None:
    raw = dsn([delayed("carol@example.org")], original=SMTPUTF8_ORIGINAL)
    (_, (status_head, _), (head, content)) = parts(raw)
    assert head["content-type"] == "message/global-headers"
    assert content == SMTPUTF8_ORIGINAL[: SMTPUTF8_ORIGINAL.index(b"\r\n\r\n") + 2]
    assert status_head["content-type"] == "message/delivery-status"


def test_non_ascii_reply_stays_ascii_in_a_plain_status_part() -> None:
    raw = dsn([failed("bob@example.net", "550 5.1.1 Empfänger unbekannt")])
    _, block = status_blocks(raw)
    assert block["diagnostic-code"] == "smtp; 550 5.1.1 Empf?nger unbekannt"
    assert "Empfänger unbekannt" in text_part(raw)  # quoted-printable, decoded back
    assert raw.isascii()


# -- flufl.bounce ---------------------------------------------------------------------


def test_flufl_finds_exactly_the_failed_recipients() -> None:
    raw = dsn(
        [
            failed("bob@example.net"),
            delayed("carol@example.org"),
            failed("dave@example.net", REPLY_DAVE, status="5.7.1"),
            delivered("erin@example.org"),
        ]
    )
    for msg in (for_flufl(raw), parse(raw)):
        assert scan_message(msg) == {b"bob@example.net", b"dave@example.net"}
        temporary, permanent = all_failures(msg)
        assert permanent == {b"bob@example.net", b"dave@example.net"}
        assert temporary == {b"carol@example.org"}


def test_flufl_reports_the_original_recipient_when_given() -> None:
    raw = dsn([failed("bob@example.net", original="rfc822;Bob@Example.NET")])
    assert scan_message(for_flufl(raw)) == {b"Bob@Example.NET"}


def test_flufl_does_not_take_a_delay_for_a_permanent_failure() -> None:
    raw = dsn([delayed("carol@example.org"), delayed("frank@example.org")])
    assert scan_message(for_flufl(raw)) == frozenset()
    temporary, permanent = all_failures(for_flufl(raw))
    assert permanent == frozenset()
    assert temporary == {b"carol@example.org", b"frank@example.org"}


def test_flufl_ignores_success_reports() -> None:
    raw = dsn([delivered("carol@example.org"), delivered("erin@example.org", "relayed")])
    assert all_failures(for_flufl(raw)) == (frozenset(), frozenset())


# -- line endings and injection -------------------------------------------------------

BARE_LF = re.compile(rb"(?<!\r)\n|\r(?!\n)")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(dsn([failed("bob@example.net"), delayed("carol@example.org")]), id="mixed"),
        pytest.param(dsn([delayed("carol@example.org")]), id="delay"),
        pytest.param(dsn([failed("bob@example.net")], original=EIGHT_BIT_BODY), id="8bit"),
        pytest.param(dsn([failed("用户@例子.广告")], original=SMTPUTF8_ORIGINAL), id="utf8"),
        pytest.param(dsn([failed("bob@example.net", "550 5.1.1 Empfänger")]), id="qp"),
    ],
)
def test_crlf_everywhere(raw: bytes) -> None:
    assert BARE_LF.search(raw) is None
    assert raw.endswith(b"\r\n")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_bare_lf_in_the_original_becomes_crlf() -> None:
    raw = dsn([failed("bob@example.net")], original=ORIGINAL.replace(b"\r\n", b"\n"))
    assert BARE_LF.search(raw) is None
    assert parts(raw)[2][1] == ORIGINAL


def test_crlf_in_values_cannot_inject_header_lines() -> None:
    evil = "\r\nX-Injected: yes\r\nBcc: victim@example.org\r\n\r\nbody"
    raw = dsn(
        [
            failed(
                "bob@example.net" + evil,
                "550 5.1.1 no such user" + evil,
                remote_mta="mx1.example.net" + evil,
                original="rfc822;bob@example.net" + evil,
            )
        ],
        envelope_sender=SENDER + evil,
        envid="ENV" + evil,
        qid=QID,
        from_address=FROM + evil,
    )
    lines = raw.split(b"\r\n")
    assert not any(line.startswith((b"X-Injected", b"Bcc")) for line in lines)
    msg = parse(raw)
    assert "Bcc" not in msg
    top = fields(raw.partition(b"\r\n\r\n")[0])
    assert top["to"] == SENDER + " X-Injected: yes Bcc: victim@example.org body"
    assert len(msg.get_payload()) == 3
    per_message, bob = status_blocks(raw)
    assert set(bob) == {
        "original-recipient",
        "final-recipient",
        "action",
        "status",
        "remote-mta",
        "diagnostic-code",
        "last-attempt-date",
    }
    assert bob["diagnostic-code"] == (
        "smtp; 550 5.1.1 no such user X-Injected: yes Bcc: victim@example.org body"
    )
    assert set(per_message) == {
        "original-envelope-id",
        "reporting-mta",
        "x-smtprelay-queue-id",
        "arrival-date",
    }


def test_long_diagnostic_is_folded_and_unfolds_to_the_reply() -> None:
    reply = "550-5.7.1 " + " ".join(f"word{i}" for i in range(80))
    raw = dsn([failed("bob@example.net", reply)])
    status = parts(raw)[1][1]
    assert all(len(line) <= 78 for line in status.split(b"\r\n"))
    assert status_blocks(raw)[1]["diagnostic-code"] == f"smtp; {reply}"


def test_multiline_reply_becomes_one_field() -> None:
    reply = (
        "550-5.1.1 The email account that you tried to reach does not exist.\r\n"
        "550 5.1.1 Please try double-checking the recipient's email address."
    )
    raw = dsn([failed("bob@example.net", reply)])
    assert status_blocks(raw)[1]["diagnostic-code"] == "smtp; " + reply.replace("\r\n", " ")


@given(
    address=st.text(min_size=1, max_size=300),
    diagnostic=st.none() | st.text(max_size=1200),
    remote=st.none() | st.text(max_size=80),
)
def test_any_values_give_a_well_formed_dsn(
    address: str, diagnostic: str | None, remote: str | None
) -> None:
    raw = dsn([failed(address, diagnostic, remote_mta=remote), delayed("carol@example.org")])
    assert BARE_LF.search(raw) is None
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    _, first, second = status_blocks(raw)
    assert set(first) <= {
        "final-recipient",
        "action",
        "status",
        "remote-mta",
        "diagnostic-code",
        "last-attempt-date",
    }
    assert first["action"] == "failed"
    assert second["final-recipient"] == "rfc822; carol@example.org"
    assert parts(raw)[2][1] == ORIGINAL


# -- contract -------------------------------------------------------------------------


def test_same_input_same_bytes_and_distinct_message_ids() -> None:
    a = dsn([delayed("carol@example.org")])
    assert a == dsn([delayed("carol@example.org")])
    later = dsn([failed("carol@example.org")], now=NOW + 86400)
    assert parse(a)["Message-ID"] != parse(later)["Message-ID"]


def test_message_id_without_qid() -> None:
    msg = parse(dsn([failed("bob@example.net")], qid=None))
    assert re.fullmatch(rf"<[^@<>\s]+@{re.escape(MTA)}>", msg["Message-ID"])
    assert "x-smtprelay-queue-id" not in status_blocks(dsn([failed("b@x")], qid=None))[0]


def test_non_ascii_display_name_in_from_is_encoded() -> None:
    raw = dsn([failed("bob@example.net")], from_address="Système de courrier <md@relay.example>")
    assert raw.split(b"\r\n\r\n")[0].isascii()
    assert parse(raw)["From"].addresses[0].display_name == "Système de courrier"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"recipients": []}, "at least one recipient"),
        ({"envelope_sender": ""}, "null sender"),
        ({"recipients": [failed("bob@example.net", status="550")]}, "enhanced status"),
        ({"recipients": [failed("bob@example.net", action="bounced")]}, "unknown DSN action"),
    ],
)
def test_refuses_what_must_not_become_a_dsn(kw: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"recipients": [failed("bob@example.net")]} | kw
    with pytest.raises(ValueError, match=message):
        dsn(**args)


def test_longest_smtp_address_is_never_cut() -> None:
    # RFC 5321 allows a 256-octet path; a field value must carry it whole.
    address = "a" * 64 + "@" + ".".join(["b" * 62] * 3) + ".example"
    raw = dsn([failed(address, original=f"rfc822;{address}")])
    _, block = status_blocks(raw)
    assert block["final-recipient"] == f"rfc822; {address}"
    assert block["original-recipient"] == f"rfc822;{address}"


def test_overlong_word_is_cut_below_998_bytes() -> None:
    raw = dsn([failed("bob@example.net", "550 5.7.1 " + "ü" * 2000)])
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    value = status_blocks(raw)[1]["diagnostic-code"]
    assert value.replace(" ", "") == "smtp;5505.7.1" + "?" * 2000  # ASCII status part


def test_overlong_utf8_word_is_cut_between_characters() -> None:
    raw = dsn([failed("用户@例子.广告", "550 5.7.1 " + "ü€" * 700)])
    assert parts(raw)[1][0]["content-type"] == "message/global-delivery-status"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    value = status_blocks(raw)[1]["diagnostic-code"]  # decodes as UTF-8, or fails
    assert value.replace(" ", "") == "smtp;5505.7.1" + "ü€" * 700


def test_orcpt_without_address_type_is_reported_as_unknown() -> None:
    # RFC 3464 section 2.3.1 names "unknown" for a type the MTA cannot determine.
    raw = dsn([failed("bob@example.net", original="bob@example.net")])
    assert status_blocks(raw)[1]["original-recipient"] == "unknown;bob@example.net"
