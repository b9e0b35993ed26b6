"""smtprelay.replies: Reply values and enhanced codes for aiosmtpd's own replies."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from smtprelay import replies
from smtprelay.replies import Reply, add_enhanced_code

_ENHANCED = re.compile(r"^(\d)\d\d ([245])\.\d{1,3}\.\d{1,3} ")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
        ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
        ("501 Syntax: NOOP", "501 5.5.4 Syntax: NOOP"),
        ("502 Command not implemented", "502 5.5.1 Command not implemented"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("250 OK", "250 2.0.0 OK"),
        ("252 Cannot VRFY user", "252 2.5.0 Cannot VRFY user"),
        ("421 Too busy", "421 4.3.0 Too busy"),
        ("530 Authentication required", "530 5.7.0 Authentication required"),
        ("554 Transaction failed", "554 5.7.0 Transaction failed"),
    ],
)
def test_adds_enhanced_code(line: str, expected: str) -> None:
    assert add_enhanced_code(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "250 2.1.0 Ok",
        "550 5.7.1 Relay access denied",
        "452 4.5.3 Too many recipients",
        "250 2.0.0",
        "220 relay.example ESMTP smtprelay",
        "334 VXNlcm5hbWU6",
        "334 ",
        "354 End data with <CR><LF>.<CR><LF>",
        "250-PIPELINING",
        "250-relay.example",
        "250-SIZE 25000000",
        "503",
        "",
    ],
)
def test_leaves_line_alone(line: str) -> None:
    assert add_enhanced_code(line) == line


def test_every_reply_constant_is_consistent() -> None:
    for name, value in vars(replies).items():
        if isinstance(value, Reply):
            assert str(value) == f"{value.code} {value.enhanced} {value.text}", name
            assert str(value.code)[0] == value.enhanced[0], name
            assert add_enhanced_code(str(value)) == str(value), name
            assert value.is_temporary == (400 <= value.code < 500), name


def test_queued_reply() -> None:
    reply = replies.queued("0123456789ABC")
    assert str(reply) == "250 2.0.0 Ok: queued as 0123456789ABC"


def test_with_text() -> None:
    reply = replies.RELAY_DENIED.with_text("nope")
    assert reply == Reply(554, "5.7.1", "nope")


@given(
    st.sampled_from(
        [
            "221",
            "250",
            "252",
            "421",
            "451",
            "454",
            "500",
            "501",
            "502",
            "503",
            "504",
            "530",
            "535",
            "552",
            "553",
            "554",
            "555",
        ]
    ),
    st.text(alphabet=st.characters(codec="ascii", min_codepoint=32), max_size=40),
)
def test_added_code_matches_class_and_keeps_text(code: str, text: str) -> None:
    assume(not re.match(r"[245]\.\d", text))  # text that already starts like a code
    line = f"{code} {text}"
    out = add_enhanced_code(line)
    assert out.endswith(text)
    match = _ENHANCED.match(out)
    assert match is not None, out
    assert match.group(1) == match.group(2)
    # Idempotent: a second pass never adds another code.
    assert add_enhanced_code(out) == out
