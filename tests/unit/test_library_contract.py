"""The private members of aiosmtpd, aiosmtplib and asyncio the relay depends on exist.

The relay reaches into its libraries where their public API has no hook (a STARTTLS and
implicit-TLS path of its own, the fast DATA reader, the pipelined batch). pyproject.toml
pins aiosmtpd and aiosmtplib below their next major/minor version; this test is the
check to run before raising a pin, and on every new Python (asyncio's are not pinned):
a failure names the member that is gone and the module of the relay that uses it.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from asyncio import sslproto

import aiosmtpd.smtp
import aiosmtplib
import aiosmtplib.protocol
import pytest


def _rsa_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(65537, 1024).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


_RSA_PEM = _rsa_pem()

# (class, member, the relay's module that uses it, why)
METHODS = [
    (
        aiosmtpd.smtp.SMTP,
        "_set_rset_state",
        "inbound/commandloop.py, connection.py",
        "RSET state after EHLO and after a STARTTLS of our own",
    ),
    (
        aiosmtpd.smtp.SMTP,
        "_create_session",
        "inbound/connection.py",
        "a fresh session after STARTTLS",
    ),
    (
        aiosmtpd.smtp.SMTP,
        "_strip_command_keyword",
        "inbound/protocol.py",
        "MAIL FROM: / RCPT TO: argument",
    ),
    (
        aiosmtpd.smtp.SMTP,
        "_reset_timeout",
        "inbound/protocol.py",
        "the idle timer, re-armed by the fast DATA reader",
    ),
    (
        sslproto.SSLProtocol,
        "_process_outgoing",
        "inbound/handshake.py",
        "flushing the server's last handshake bytes",
    ),
    (
        sslproto.SSLProtocol,
        "_get_app_transport",
        "inbound/handshake.py",
        "the TLS transport handed to the session",
    ),
    (
        sslproto.SSLProtocol,
        "_on_handshake_complete",
        "inbound/handshake.py",
        "overridden to flush before completing",
    ),
    (
        aiosmtplib.protocol.SMTPProtocol,
        "write",
        "delivery/transaction.py",
        "the dot-stuffed message written in one call",
    ),
    (
        aiosmtplib.protocol.SMTPProtocol,
        "read_response",
        "delivery/transaction.py",
        "the reply to the message",
    ),
    (
        aiosmtplib.protocol.SMTPProtocol,
        "connection_lost",
        "delivery/pipelining.py",
        "forwarded while the protocol is swapped for a batch",
    ),
    (aiosmtplib.SMTP, "execute_command", "delivery/transaction.py", "DATA without data()"),
]

# Instance attributes, assigned in the library's code (``self.<name> = ...``).
ATTRIBUTES = [
    (
        aiosmtpd.smtp.SMTP,
        "_reader",
        "inbound/protocol.py, commandloop.py, connection.py",
        "the fast DATA reader; re-pointed at the TLS transport",
    ),
    (
        aiosmtpd.smtp.SMTP,
        "_writer",
        "inbound/connection.py, commandloop.py",
        "re-pointed at the TLS transport; the replies (held ones in one write)",
    ),
    (
        aiosmtpd.smtp.SMTP,
        "_smtp_methods",
        "inbound/commandloop.py",
        "the command table, wrapped to count junk commands and answer unknown ones",
    ),
    (
        aiosmtpd.smtp.SMTP,
        "_tls_protocol",
        "inbound/greeting.py, connection.py",
        "whether the session is encrypted",
    ),
    (
        aiosmtpd.smtp.SMTP,
        "_original_transport",
        "inbound/connection.py",
        "the TCP transport under TLS",
    ),
    (
        aiosmtpd.smtp.SMTP,
        "_handler_coroutine",
        "inbound/connection.py, commandloop.py",
        "cancelled when a STARTTLS handshake fails or a session is closed for junk",
    ),
    (
        aiosmtpd.smtp.SMTP,
        "_timeout_handle",
        "inbound/connection.py",
        "cancelled while the TLS handshake runs",
    ),
    (
        aiosmtpd.smtp.SMTP,
        "_auth_require_tls",
        "inbound/greeting.py, protocol.py (a property: [auth] plaintext_networks)",
        "whether AUTH is offered in clear text",
    ),
    (
        asyncio.StreamReader,
        "_buffer",
        "inbound/connection.py, commandloop.py",
        "cleared at STARTTLS (no plaintext carried into TLS); replies are held while it "
        "holds a complete command line (pipelining)",
    ),
    (
        asyncio.StreamReader,
        "_transport",
        "inbound/connection.py",
        "re-pointed at the TLS transport",
    ),
    (
        asyncio.StreamWriter,
        "_transport",
        "inbound/connection.py",
        "re-pointed at the TLS transport",
    ),
    (
        aiosmtplib.protocol.SMTPProtocol,
        "transport",
        "delivery/transaction.py",
        "the transport a pipelined batch swaps the protocol on",
    ),
    (aiosmtplib.SMTP, "protocol", "delivery/transaction.py", "the connection's protocol"),
]


def _label(owner: type, member: str) -> str:
    return f"{owner.__module__}.{owner.__qualname__}.{member}"


def _assigns(owner: type, member: str) -> bool:
    """Some class in ``owner``'s MRO assigns ``self.<member>`` in its code."""
    pattern = re.compile(rf"self\.{re.escape(member)}\s*(?::[^=\n]*)?=(?!=)")
    for cls in owner.__mro__:
        if cls is object:
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):  # a class defined in C: nothing to read
            continue
        if pattern.search(source):
            return True
    return False


@pytest.mark.parametrize(
    ("owner", "member", "user", "why"), METHODS, ids=[_label(o, m) for o, m, _, _ in METHODS]
)
def test_method_exists(owner: type, member: str, user: str, why: str) -> None:
    assert callable(getattr(owner, member, None)), (
        f"{_label(owner, member)} is gone: smtprelay/{user} calls it ({why})"
    )


@pytest.mark.parametrize(
    ("owner", "member", "user", "why"), ATTRIBUTES, ids=[_label(o, m) for o, m, _, _ in ATTRIBUTES]
)
def test_attribute_is_assigned(owner: type, member: str, user: str, why: str) -> None:
    assert _assigns(owner, member), (
        f"{_label(owner, member)} is no longer set by {owner.__module__}: "
        f"smtprelay/{user} uses it ({why})"
    )


def test_commands_are_looked_up_with_get() -> None:
    source = inspect.getsource(aiosmtpd.smtp.SMTP._handle_client)
    assert "self._smtp_methods.get(command)" in source, (
        "aiosmtpd no longer looks commands up with self._smtp_methods.get(): "
        "smtprelay/inbound/commandloop.py's _Commands (junk and unknown commands) relies on it"
    )


def test_read_response_takes_a_timeout() -> None:
    parameters = inspect.signature(aiosmtplib.protocol.SMTPProtocol.read_response).parameters
    assert "timeout" in parameters, (
        "aiosmtplib.protocol.SMTPProtocol.read_response has no timeout parameter: "
        "smtprelay/delivery/transaction.py passes the DATA timeout to it"
    )


def test_auth_missing_sentinel_exists() -> None:
    assert hasattr(aiosmtpd.smtp, "MISSING"), (
        "aiosmtpd.smtp.MISSING is gone: smtprelay/inbound/greeting.py compares AUTH "
        "answers with it and returns it from handler hooks"
    )


def test_dkimpy_signs_rsa_through_a_module_global_looked_up_per_call() -> None:
    import dkim
    import dkim.crypto

    names = dkim.DKIM.gen_header.__code__.co_names
    assert "RSASSA_PKCS1_v1_5_sign" in names and callable(dkim.crypto.RSASSA_PKCS1_v1_5_sign), (
        "dkimpy's DKIM.gen_header no longer calls the module's RSASSA_PKCS1_v1_5_sign: "
        "smtprelay/dkimsign/fastrsa.py replaces that name to sign RSA through OpenSSL"
    )
    assert set(dkim.crypto.parse_pem_private_key(_RSA_PEM)) >= {
        "modulus",
        "publicExponent",
        "privateExponent",
        "prime1",
        "prime2",
        "exponent1",
        "exponent2",
        "coefficient",
    }, "dkimpy's parsed RSA key has other fields: smtprelay/dkimsign/fastrsa.py reads them"


def test_the_check_fails_for_a_member_that_is_not_there() -> None:
    # The checks above must be able to fail.
    assert not _assigns(aiosmtpd.smtp.SMTP, "_no_such_member")
    assert not callable(getattr(sslproto.SSLProtocol, "_no_such_method", None))
