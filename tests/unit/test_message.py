"""smtprelay.inbound.message: dot-unstuffing, line endings, trace and origin headers."""

from __future__ import annotations

import re
from email import policy
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smtprelay.inbound.message import (
    HeaderFacts,
    header_facts,
    normalize,
    origin_headers,
    received_header,
)

# Message text built mostly from the bytes that matter here, so that interesting
# combinations (".\r", "\n.", "\r\r\n", ...) come up often.
interesting = st.binary().map(bytes) | st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b"\x00", b" ", b"\xff", b"X:"]),
    max_size=40,
).map(b"".join)


def _reference_unstuff(crlf_only: bytes) -> bytes:
    """RFC 5321 4.5.2: remove the first '.' of every line that starts with '.'."""
    lines = crlf_only.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def _bare_count(raw: bytes) -> int:
    count = 0
    for i, byte in enumerate(raw):
        bare_cr = byte == 0x0D and raw[i + 1 : i + 2] != b"\n"
        bare_lf = byte == 0x0A and (i == 0 or raw[i - 1] != 0x0D)
        count += bare_cr or bare_lf
    return count


def _has_bare_newline(data: bytes) -> bool:
    return _bare_count(data) > 0


def _stuff(message: bytes) -> bytes:
    """What a sender puts on the wire for ``message`` (RFC 5321 4.5.2), with the end."""
    if not message:
        return b".\r\n"
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    lines = message.split(b"\r\n")
    body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return body + b".\r\n"


# --- normalize ----------------------------------------------------------------------------


@given(interesting)
@example(b"a\rb\nc\r\n")
@example(b"\r\r\n\n\r")
def test_normalize_leaves_no_bare_cr_or_lf(raw: bytes) -> None:
    out, _ = normalize(raw)
    assert not _has_bare_newline(out)


@given(interesting)
def test_normalize_counts_bare_line_endings(raw: bytes) -> None:
    _, bare = normalize(raw)
    assert bare == _bare_count(raw)


@given(
    st.lists(
        st.binary().map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
        | st.sampled_from([b".", b"..", b"...", b".x", b"x.", b""]),
        max_size=12,
    )
)
@example([b".", b""])
@example([b"..", b".", b""])
def test_normalize_crlf_input_is_rfc5321_unstuffing(lines: list[bytes]) -> None:
    raw = b"\r\n".join(lines)
    out, bare = normalize(raw)
    assert bare == 0
    assert out == _reference_unstuff(raw)


@given(interesting)
def test_normalize_output_survives_retransmission(raw: bytes) -> None:
    """The SMTP-smuggling property.

    A line that is only "." is legitimate content (it arrives stuffed as ".."), so the
    property is not "no line is '.'". It is: after normalize, the message has only CRLF
    line endings, so when it is relayed (dot-stuffed, then CRLF.CRLF appended) no
    receiver -- strict or one that also honours bare CR or LF -- can find an end of data
    before the real one, and the next hop unstuffs exactly the message we stored.
    """
    out, _ = normalize(raw)
    assert not _has_bare_newline(out)
    wire = _stuff(out)
    # A "." alone between line endings of any kind (CR, LF or CRLF, or the start of the
    # data) is an end of data to some receiver: only the real terminator may be one.
    lone_dots = [m.start() for m in re.finditer(rb"(?<![^\r\n])\.(?=[\r\n])", wire)]
    assert lone_dots == [len(wire) - 3], (out, wire)
    # A strict receiver unstuffs exactly what we stored (a final CRLF added if missing).
    expected = out if out == b"" or out.endswith(b"\r\n") else out + b"\r\n"
    assert normalize(wire[: -len(b".\r\n")]) == (expected, 0)


@pytest.mark.parametrize(
    "raw",
    [
        b"a\r\n\n.\nMAIL FROM:<x@evil>\r\n",
        b"a\r\n\r.\rMAIL FROM:<x@evil>\r\n",
        b"a\r\n\n.\r\nMAIL FROM:<x@evil>\r\n",
        b"a\r\n\r\n.\nMAIL FROM:<x@evil>\r\n",
        b"a\r\n\r.\r\nMAIL FROM:<x@evil>\r\n",
        b"a\n.\nb\r\n",
    ],
)
def test_smuggling_sequences(raw: bytes) -> None:
    out, bare = normalize(raw)
    assert bare > 0
    assert not _has_bare_newline(out)
    # The lone dot was a dot-stuffing dot by RFC 5321 rules: it is gone, and no line
    # of the stored message is a lone "." that was not sent as "..".
    assert b"\r\n.\r\n" not in out
    assert not out.startswith(b".\r\n")
    assert b"MAIL FROM:<x@evil>" in out or b"b\r\n" in out


def test_normalize_examples() -> None:
    assert normalize(b"") == (b"", 0)
    assert normalize(b"Subject: x\r\n\r\nbody\r\n") == (b"Subject: x\r\n\r\nbody\r\n", 0)
    assert normalize(b"..leading\r\n") == (b".leading\r\n", 0)
    assert normalize(b"a\r\n..\r\n") == (b"a\r\n.\r\n", 0)
    assert normalize(b"a\nb\n") == (b"a\r\nb\r\n", 2)
    assert normalize(b"a\rb\r") == (b"a\r\nb\r\n", 2)
    assert normalize(b"a\r\r\nb") == (b"a\r\n\r\nb", 1)
    assert normalize(b"a\n\rb") == (b"a\r\n\r\nb", 2)
    assert normalize(b"x\r\n.y.\r\n") == (b"x\r\ny.\r\n", 0)


# --- header_facts -------------------------------------------------------------------------


@pytest.mark.parametrize("name", [b"Message-ID", b"message-id", b"MESSAGE-ID", b"Message-Id"])
def test_header_facts_finds_message_id_any_case(name: bytes) -> None:
    msg = b"From: a@example.com\r\n" + name + b": <abc@example.com>\r\n\r\nbody\r\n"
    assert header_facts(msg).message_id == "<abc@example.com>"


@pytest.mark.parametrize("name", [b"Date", b"date", b"DATE"])
def test_header_facts_finds_date_any_case(name: bytes) -> None:
    msg = b"From: a@example.com\r\n" + name + b": Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb\r\n"
    assert header_facts(msg).has_date


def test_header_facts_ignores_body() -> None:
    msg = (
        b"From: a@example.com\r\nSubject: s\r\n\r\n"
        b"Message-ID: <body@example.com>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    )
    assert header_facts(msg) == HeaderFacts(None, False)


def test_header_facts_ignores_similar_names() -> None:
    msg = b"X-Message-ID: <x@y>\r\nResent-Date: now\r\nDated: no\r\n\r\n"
    assert header_facts(msg) == HeaderFacts(None, False)


def test_header_facts_no_body() -> None:
    assert header_facts(b"Message-ID: <a@b>\r\nDate: x\r\n") == HeaderFacts("<a@b>", True)
    assert header_facts(b"") == HeaderFacts(None, False)


def test_header_facts_message_without_headers() -> None:
    """RFC 5322: the header block may be empty; the message then starts with the blank
    line, and everything after it is body."""
    msg = b"\r\nMessage-ID: <body@example.com>\r\nDate: Mon, 1 Jan 2024\r\n\r\nmore\r\n"
    assert header_facts(msg) == HeaderFacts(None, False)


def test_header_facts_folded_message_id() -> None:
    """RFC 5322 allows folding white space after the colon; the field is present."""
    msg = b"Subject: s\r\nMessage-ID:\r\n <long-id@example.com>\r\n\r\nbody\r\n"
    assert header_facts(msg).message_id == "<long-id@example.com>"


header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,12}", fullmatch=True).filter(
    lambda n: n.lower() not in ("message-id", "date")
)
header_lines = st.builds(
    lambda n, v: f"{n}: {v}\r\n".encode(),
    header_names,
    st.text(alphabet="abcdefgh <>@.:", max_size=20),
)


@given(
    st.lists(header_lines, min_size=1, max_size=6),
    st.booleans(),
    st.booleans(),
    st.lists(
        st.sampled_from([b"Message-ID: <b@x>\r\n", b"Date: today\r\n", b"text\r\n", b"\r\n"]),
        max_size=6,
    ),
)
def test_header_facts_property(
    headers: list[bytes], with_id: bool, with_date: bool, body: list[bytes]
) -> None:
    """Message-ID and Date are found, in any case, exactly when they are in the header
    block, whatever the body holds. (An empty header block has its own test above.)"""
    block = list(headers)
    if with_id:
        block.insert(len(block) // 2, b"Message-Id: <h@example.com>\r\n")
    if with_date:
        block.append(b"DATE: Tue, 2 Jan 2024 10:00:00 +0000\r\n")
    msg = b"".join(block) + b"\r\n" + b"".join(body)
    facts = header_facts(msg)
    assert facts.message_id == ("<h@example.com>" if with_id else None)
    assert facts.has_date == with_date


# --- received_header ------------------------------------------------------------------------

_NOW = 1_700_000_000.0


def _received(**overrides: object) -> bytes:
    args: dict[str, object] = dict(
        helo="client.example",
        ip="192.0.2.5",
        hostname="relay.example.net",
        protocol="ESMTP",
        qid="0123456789ABC",
        tls=None,
        auth_user=None,
        recipients=["bob@example.org"],
        now=_NOW,
    )
    args.update(overrides)
    return received_header(**args)  # type: ignore[arg-type]


def _parse_header(header: bytes) -> str:
    msg = BytesParser(policy=policy.compat32).parsebytes(header + b"Subject: s\r\n\r\nbody\r\n")
    assert msg["Subject"] == "s", "the Received header swallowed the next header"
    assert not msg.defects, msg.defects
    value = msg["Received"]
    assert value is not None
    return re.sub(r"\r?\n[ \t]", " ", str(value))


def test_received_single_recipient() -> None:
    header = _received()
    assert header.startswith(b"Received: from client.example (unknown [192.0.2.5])\r\n")
    assert header.endswith(b"\r\n")
    value = _parse_header(header)
    assert "by relay.example.net (smtprelay) with ESMTP id 0123456789ABC" in value
    assert "for <bob@example.org>;" in value
    assert parsedate_to_datetime(value.rpartition(";")[2].strip()).timestamp() == _NOW


def test_received_several_recipients_no_for() -> None:
    value = _parse_header(_received(recipients=["a@example.org", "b@example.org"]))
    assert "for <" not in value
    assert "a@example.org" not in value
    assert parsedate_to_datetime(value.rpartition(";")[2].strip()).timestamp() == _NOW


def test_received_tls_and_auth() -> None:
    value = _parse_header(
        _received(
            tls="TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)",
            auth_user="app1",
            protocol="ESMTPSA",
        )
    )
    assert "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))" in value
    assert "(Authenticated sender: app1)" in value
    assert "with ESMTPSA id" in value


def test_received_no_tls_no_auth_lines_when_absent() -> None:
    value = _parse_header(_received())
    assert "using" not in value and "Authenticated" not in value


@pytest.mark.parametrize("helo", ["evil) (by trusted.example", "a(b", "x\\", "((()))\\)"])
def test_received_helo_parentheses_neutralised(helo: str) -> None:
    header = _received(helo=helo, auth_user="u(s)er\\")
    value = _parse_header(header)
    first_line = header.split(b"\r\n")[0].decode()
    comment = first_line.removeprefix("Received: from ")
    helo_part, _, rest = comment.partition(" (unknown [")
    assert "(" not in helo_part and ")" not in helo_part and "\\" not in helo_part
    assert rest == "192.0.2.5])"
    assert "(Authenticated sender: u?s?er?)" in value


def test_received_non_ascii_helo_survives() -> None:
    header = _received(helo="b\u00fccher.example")
    assert "b\u00fccher.example".encode() in header


@given(
    st.text(
        alphabet=st.characters(blacklist_characters="\r\n\x00 ", codec="ascii", min_codepoint=0x21),
        min_size=1,
        max_size=30,
    ),
    st.lists(
        st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.example", fullmatch=True), min_size=1, max_size=3
    ),
    st.booleans(),
    st.booleans(),
)
def test_received_always_parses(helo: str, rcpts: list[str], tls: bool, auth: bool) -> None:
    header = _received(
        helo=helo,
        recipients=rcpts,
        tls="TLSv1.2 with cipher X" if tls else None,
        auth_user="app" if auth else None,
    )
    value = _parse_header(header)
    assert value.count("(") == value.count(")")
    assert ("for <" in value) == (len(rcpts) == 1)


# --- origin_headers -------------------------------------------------------------------------


def test_origin_headers_adds_only_missing() -> None:
    both = origin_headers(HeaderFacts("<x@y>", True), "0123456789ABC", "relay.example", _NOW)
    assert both == b""

    only_id = origin_headers(HeaderFacts(None, True), "0123456789ABC", "relay.example", _NOW)
    assert only_id == b"Message-ID: <0123456789ABC@relay.example>\r\n"

    only_date = origin_headers(HeaderFacts("<x@y>", False), "0123456789ABC", "relay.example", _NOW)
    assert only_date.startswith(b"Date: ") and only_date.endswith(b"\r\n")
    assert only_date.count(b"\r\n") == 1
    assert parsedate_to_datetime(only_date[6:].decode().strip()).timestamp() == _NOW

    neither = origin_headers(HeaderFacts(None, False), "0123456789ABC", "relay.example", _NOW)
    msg = BytesParser(policy=policy.compat32).parsebytes(neither + b"\r\nbody")
    assert msg["Message-ID"] == "<0123456789ABC@relay.example>"
    assert parsedate_to_datetime(msg["Date"]).timestamp() == _NOW


def test_origin_headers_not_duplicated_for_folded_message_id() -> None:
    msg = b"Subject: s\r\nMessage-ID:\r\n <long-id@example.com>\r\nDate: x\r\n\r\nbody\r\n"
    added = origin_headers(header_facts(msg), "0123456789ABC", "relay.example", _NOW)
    assert b"Message-ID" not in added
