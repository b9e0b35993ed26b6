"""SASL PLAIN and LOGIN decoding: initial responses, challenges, and what is refused."""

from __future__ import annotations

import asyncio
import binascii
from base64 import b64decode, b64encode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay import replies
from smtprelay.inbound import sasl
from smtprelay.replies import Reply

# A user name without NUL (PLAIN separates its fields with NUL), as UTF-8 bytes.
names = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=40)
passwords = st.binary(max_size=80).filter(lambda b: b"\0" not in b)


def b64(data: bytes) -> str:
    return b64encode(data).decode()


def read(
    mechanism: str, initial: str | None, answers: list[bytes | None]
) -> tuple[tuple[str, bytes] | Reply | None, list[str]]:
    """Run the exchange with a client that answers the challenges with ``answers``;
    returns the result and the prompts it was sent."""
    prompts: list[str] = []
    queue = list(answers)

    async def challenge(prompt: str) -> bytes | None:
        prompts.append(prompt)
        return queue.pop(0)

    result = asyncio.run(sasl.read_credentials(mechanism, initial, challenge))
    assert not queue, "the exchange asked fewer questions than expected"
    return result, prompts


@given(names, passwords)
def test_plain_initial_response_round_trips(name: str, password: bytes) -> None:
    user = name.encode()
    for authzid in (b"", user):
        result, prompts = read("PLAIN", b64(authzid + b"\0" + user + b"\0" + password), [])
        assert result == (name, password)
        assert prompts == []


@given(names, passwords)
def test_plain_after_an_empty_challenge(name: str, password: bytes) -> None:
    result, prompts = read("PLAIN", None, [b"\0" + name.encode() + b"\0" + password])
    assert result == (name, password)
    assert prompts == [""]


@given(names, passwords)
def test_login_with_and_without_initial_response(name: str, password: bytes) -> None:
    result, prompts = read("LOGIN", None, [name.encode(), password])
    assert (result, prompts) == ((name, password), ["Username:", "Password:"])
    result, prompts = read("LOGIN", b64(name.encode()), [password])
    assert (result, prompts) == ((name, password), ["Password:"])


# Base64's alphabet, its padding, and characters a careless client might add.
BASE64ISH = st.text(st.sampled_from("ABCXYZabcxyz0189+/= \t-_.*"), max_size=30)


@given(BASE64ISH.filter(lambda t: t != "="))
def test_decode_response_accepts_only_strict_base64(text: str) -> None:
    try:
        expected: bytes | None = b64decode(text, validate=True)
    except binascii.Error:
        expected = None
    assert sasl.decode_response(text, empty=True) == expected
    assert sasl.decode_response(text, empty=False) == expected


@given(st.binary(max_size=60))
def test_decode_response_inverts_base64(data: bytes) -> None:
    assert sasl.decode_response(b64(data), empty=False) == data


@given(st.text(min_size=1, max_size=20).filter(lambda t: not t.isascii()))
def test_non_ascii_response_is_not_base64(text: str) -> None:
    # aiosmtpd hands over the argument decoded as UTF-8: an AUTH PLAIN with non-ASCII
    # is a client's mistake (501), not an internal error.
    assert sasl.decode_response(text, empty=True) is None
    assert read("PLAIN", text, [])[0] == replies.BAD_BASE64


def test_equals_sign_is_empty_only_for_plain() -> None:
    assert sasl.decode_response("=", empty=True) == b""
    assert sasl.decode_response("=", empty=False) is None
    # PLAIN's empty initial response is then malformed credentials, not bad base64.
    assert read("PLAIN", "=", [])[0] == replies.MALFORMED_PLAIN


@pytest.mark.parametrize("initial", ["not base64!", "AAA", "AA==AA==", "YWJj\n"])
def test_bad_base64_initial_response(initial: str) -> None:
    assert read("PLAIN", initial, [])[0] == replies.BAD_BASE64
    assert read("LOGIN", initial, [])[0] == replies.BAD_BASE64


@pytest.mark.parametrize(
    "message",
    [
        b"user\0secret",  # one NUL
        b"\0user\0secret\0",  # three
        b"",
        b"admin\0user\0secret",  # acting as another user
    ],
)
def test_malformed_plain(message: bytes) -> None:
    assert sasl.split_plain(message) is None
    assert read("PLAIN", b64(message), [])[0] == replies.MALFORMED_PLAIN


def test_a_user_name_that_is_not_utf8_fails_like_wrong_credentials() -> None:
    assert read("PLAIN", b64(b"\0\xff\xfe\0secret"), [])[0] == replies.AUTH_FAILED
    assert read("LOGIN", None, [b"\xff", b"secret"])[0] == replies.AUTH_FAILED


@pytest.mark.parametrize(
    ("mechanism", "initial", "answers"),
    [
        ("PLAIN", None, [None]),
        ("LOGIN", None, [None]),
        ("LOGIN", None, [b"user", None]),
        ("LOGIN", b64(b"user"), [None]),
    ],
)
def test_an_aborted_exchange_is_none(
    mechanism: str, initial: str | None, answers: list[bytes | None]
) -> None:
    assert read(mechanism, initial, answers)[0] is None
