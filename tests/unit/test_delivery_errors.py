"""The one mapping of library exceptions to the delivery stage's (delivery/errors.py)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable

import aiosmtplib
import dns.exception
import dns.resolver
import pytest

from smtprelay.delivery import errors
from smtprelay.delivery.errors import DeliveryError, LinkLost, TLSHandshakeFailed


def _new(kind: type[BaseException]) -> BaseException:
    return kind()  # dnspython's exception classes are untyped


Mapper = Callable[[], contextlib.AbstractContextManager[None]]

# (context manager, library exception, expected code, enhanced code, unreachable)
DELIVERY_ERRORS: list[tuple[str, Mapper, BaseException, int, str, bool]] = [
    (
        "nxdomain",
        lambda: errors.lookup_errors("x.test"),
        _new(dns.resolver.NXDOMAIN),
        550,
        "5.1.2",
        False,
    ),
    (
        "servfail",
        lambda: errors.lookup_errors("x.test"),
        _new(dns.resolver.NoNameservers),
        451,
        "4.4.3",
        False,
    ),
    (
        "dns timeout",
        lambda: errors.lookup_errors("x.test"),
        _new(dns.exception.Timeout),
        451,
        "4.4.3",
        False,
    ),
    (
        "refused",
        lambda: errors.connect_errors("h[127.0.0.1]:25"),
        ConnectionRefusedError(111, "Connection refused"),
        451,
        "4.4.1",
        True,
    ),
    ("connect timeout", lambda: errors.connect_errors("h"), TimeoutError(), 451, "4.4.1", True),
    (
        "greeting 554",
        lambda: errors.session_errors("h"),
        aiosmtplib.SMTPConnectResponseError(554, "5.7.1 go away"),
        554,
        "5.7.1",
        False,
    ),
    ("tls", lambda: errors.session_errors("h"), ssl.SSLError(1, "bad"), 451, "4.7.5", False),
    (
        "disconnect",
        lambda: errors.session_errors("h"),
        aiosmtplib.SMTPServerDisconnected("gone"),
        451,
        "4.4.2",
        False,
    ),
    (
        "auth refused",
        lambda: errors.auth_errors("h"),
        aiosmtplib.SMTPAuthenticationError(535, "no"),
        451,
        "4.7.8",
        False,
    ),
]


@pytest.mark.parametrize(
    ("case", "mapper", "error", "code", "enhanced", "unreachable"),
    DELIVERY_ERRORS,
    ids=[c[0] for c in DELIVERY_ERRORS],
)
def test_library_errors_become_delivery_errors(
    case: str,
    mapper: Mapper,
    error: BaseException,
    code: int,
    enhanced: str,
    unreachable: bool,
) -> None:
    with pytest.raises(DeliveryError) as raised, mapper():
        raise error
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (code, enhanced)
    assert raised.value.unreachable is unreachable
    assert raised.value.permanent is (code >= 500)


def test_starttls_refusal_and_broken_links_are_signals_not_outcomes() -> None:
    with pytest.raises(TLSHandshakeFailed), errors.starttls_errors():
        raise aiosmtplib.SMTPResponseException(454, "4.7.0 TLS not available")
    with pytest.raises(LinkLost) as lost, errors.link_errors():
        raise aiosmtplib.SMTPReadTimeoutError("slow")
    assert lost.value.reply == errors.TIMED_OUT


def test_no_answer_and_foreign_errors_pass_through() -> None:
    with pytest.raises(dns.resolver.NoAnswer), errors.lookup_errors("x.test"):
        raise _new(dns.resolver.NoAnswer)  # the resolver's implicit MX, not an error
    with pytest.raises(ValueError), errors.session_errors("h"):
        raise ValueError("a bug stays a bug")
