"""SASL PLAIN (RFC 4616) and LOGIN: from what the client sends to a user name and password.

aiosmtpd runs the AUTH command itself (TLS required, state, which mechanisms exist) and
hands the session the mechanism and the optional initial response; the session asks
:func:`read_credentials`, which decodes that response (base64, RFC 4954's ``=`` for an
empty one) and the answers to the challenges it sends through ``challenge``. Checking
the password is not done here (:mod:`smtprelay.inbound.auth`).

Decoding is pure and strict: base64 with anything but the alphabet and its padding is
refused (``501 5.5.2``), as is a PLAIN message without exactly two NULs or whose
authorization identity differs from the user name (the relay acts for nobody else).
"""

from __future__ import annotations

from base64 import b64decode
from collections.abc import Awaitable, Callable

from smtprelay import replies
from smtprelay.replies import Reply

# Send a challenge (a prompt, base64-encoded by the caller) and wait for the client's
# answer, decoded; None when the client aborted the exchange with "*" (already answered).
Challenge = Callable[[str], Awaitable[bytes | None]]

MECHANISMS = ("PLAIN", "LOGIN")


def decode_response(text: str, *, empty: bool) -> bytes | None:
    """The bytes a base64 response stands for; None when it is not base64.

    ``empty``: ``=`` alone is RFC 4954's empty initial response (PLAIN). For LOGIN it is
    not (an empty user name cannot be sent as an initial response).
    """
    if empty and text == "=":
        return b""
    try:
        return b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII character (sent as UTF-8)
        return None


def split_plain(message: bytes) -> tuple[bytes, bytes] | None:
    """RFC 4616: ``[authzid] NUL authcid NUL passwd`` -> (user name, password), or None
    when malformed or when it asks to act as another user than the one logging in."""
    parts = message.split(b"\0")
    if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
        return None
    return parts[1], parts[2]


def credentials(user: bytes, password: bytes) -> tuple[str, bytes] | Reply:
    """The user name as text (users files hold UTF-8 names); a name that is not UTF-8
    cannot be anybody's, so it fails as wrong credentials do."""
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return replies.AUTH_FAILED


async def read_credentials(
    mechanism: str, initial: str | None, challenge: Challenge
) -> tuple[str, bytes] | Reply | None:
    """(user name, password), the reply refusing what was sent, or None when the client
    aborted the exchange. ``mechanism`` is one of :data:`MECHANISMS` (aiosmtpd refuses
    the others before the session is asked)."""
    if mechanism == "PLAIN":
        blob = await _first_response(initial, challenge, "", empty=True)
        if blob is None or isinstance(blob, Reply):
            return blob
        plain = split_plain(blob)
        if plain is None:
            return replies.MALFORMED_PLAIN
        return credentials(*plain)
    # LOGIN
    user = await _first_response(initial, challenge, "Username:", empty=False)
    if user is None or isinstance(user, Reply):
        return user
    password = await challenge("Password:")
    if password is None:
        return None
    return credentials(user, password)


async def _first_response(
    initial: str | None, challenge: Challenge, prompt: str, *, empty: bool
) -> bytes | Reply | None:
    """The client's first response: the initial one sent with AUTH (decoded; a reply
    when it is not base64), else the answer to ``prompt``; None when it aborted."""
    if initial is None:
        return await challenge(prompt)
    decoded = decode_response(initial, empty=empty)
    return replies.BAD_BASE64 if decoded is None else decoded
