"""Which request heads the HTTP front serves itself (smtprelay/web/fronthead.py): the
plain submission is read exactly, a head not all there yet waits, and anything the
strict reading does not take goes to the main process (None) -- never a wrong Head."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay.web.fronthead import INCOMPLETE, MAX_HEAD, Head, read_head

FIELDS = [
    b"Host: relay.example",
    b"Authorization: Bearer tok-123",
    b"Content-Type: application/json; charset=utf-8",
    b"Content-Length: 42",
    b"User-Agent: app/1.0",
]


def head(line: bytes = b"POST /v1/messages HTTP/1.1", fields: list[bytes] = FIELDS) -> bytes:
    return b"\r\n".join([line, *fields]) + b"\r\n\r\n"


def test_the_plain_submission_is_read() -> None:
    data = head()
    assert read_head(data + b"{") == Head(length=42, token="tok-123", close=False, size=len(data))
    closing = read_head(head(fields=[*FIELDS, b"Connection: close"]))
    assert isinstance(closing, Head) and closing.close


@given(st.permutations(FIELDS), st.sampled_from([b"", b" ", b"  ", b"\t"]))
def test_field_order_and_spacing_do_not_matter(fields: list[bytes], space: bytes) -> None:
    spaced = [f.replace(b": ", b":" + space) for f in fields]
    found = read_head(head(fields=spaced))
    assert isinstance(found, Head)
    assert (found.length, found.token) == (42, "tok-123")


@given(st.data())
def test_a_head_cut_anywhere_waits_for_the_rest(data: st.DataObject) -> None:
    full = head()
    cut = data.draw(st.integers(0, len(full) - 1))
    assert read_head(full[:cut]) is INCOMPLETE


@pytest.mark.parametrize(
    "line, fields",
    [
        (b"GET /v1/messages HTTP/1.1", FIELDS),
        (b"POST /v1/messages?x=1 HTTP/1.1", FIELDS),
        (b"POST /v1/messages/batch HTTP/1.1", FIELDS),  # the main process's workers
        (b"POST /v1/messages/ABC/cancel HTTP/1.1", FIELDS),
        (b"POST /v1/templates/x/render HTTP/1.1", FIELDS),
        (b"POST /v1/messages HTTP/1.0", FIELDS),
        (b"POST  /v1/messages HTTP/1.1", FIELDS),
        (b"POST /v1/messages HTTP/1.1", [*FIELDS, b"Idempotency-Key: k1"]),
        (b"POST /v1/messages HTTP/1.1", [*FIELDS, b"Transfer-Encoding: chunked"]),
        (b"POST /v1/messages HTTP/1.1", [*FIELDS, b"Expect: 100-continue"]),
        (b"POST /v1/messages HTTP/1.1", [*FIELDS, b"Upgrade: h2c"]),
        (b"POST /v1/messages HTTP/1.1", [*FIELDS, b"Connection: upgrade"]),
        (b"POST /v1/messages HTTP/1.1", [*FIELDS, b"Content-Length: 42"]),  # repeated
        (b"POST /v1/messages HTTP/1.1", [*FIELDS, b"Authorization: Bearer other"]),
        (b"POST /v1/messages HTTP/1.1", [*FIELDS, b" folded"]),
        (b"POST /v1/messages HTTP/1.1", [*FIELDS, b"X-Name : value"]),
        (b"POST /v1/messages HTTP/1.1", [*FIELDS, "X-Caf\u00e9: 1".encode()]),
        (b"POST /v1/messages HTTP/1.1", FIELDS[:3]),  # no Content-Length
        (b"POST /v1/messages HTTP/1.1", [*FIELDS[:3], b"Content-Length: -1"]),
        (b"POST /v1/messages HTTP/1.1", [*FIELDS[:3], b"Content-Length: 1e3"]),
        (b"POST /v1/messages HTTP/1.1", [FIELDS[1], FIELDS[3]]),  # no Content-Type
        (b"POST /v1/messages HTTP/1.1", [FIELDS[1], FIELDS[3], b"Content-Type: message/rfc822"]),
        (b"POST /v1/messages HTTP/1.1", FIELDS[2:]),  # no Authorization
        (b"POST /v1/messages HTTP/1.1", [b"Authorization: Basic dTpw", *FIELDS[2:]]),
        (b"POST /v1/messages HTTP/1.1", [b"Authorization: Bearer ", *FIELDS[2:]]),
    ],
)
def test_anything_else_goes_to_the_main_process(line: bytes, fields: list[bytes]) -> None:
    assert read_head(head(line, fields)) is None


def test_a_head_longer_than_the_limit_goes_to_the_main_process() -> None:
    long = [*FIELDS, b"X-Padding: " + b"a" * MAX_HEAD]
    assert read_head(head(fields=long)) is None
    assert read_head(b"POST /v1/messages HTTP/1.1\r\nX: " + b"a" * MAX_HEAD) is None
