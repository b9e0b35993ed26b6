"""Mail addresses as every stage sees them: the domain an address belongs to, the
syntax of a mailbox (RFC 5321 4.1.2, RFC 6531) and the domain allow-list rule.

Shared vocabulary: the inbound stage checks a recipient's domain against the relay
policy, the delivery stage groups recipients by destination domain, the HTTP queue
view filters by it, and the HTTP submission API checks addresses and domains by the same
rules as SMTP, so they live here once rather than inside one of the stages. Parsing an
address off the SMTP command line (brackets, source routes, parameters) stays in
:mod:`smtprelay.inbound.address`.
"""

from __future__ import annotations

import ipaddress
import re

from smtprelay.errors import RelayError


def domain_of(address: str) -> str:
    """The domain part, lower-cased and without a trailing dot (``a@Example.org.`` ->
    ``example.org``); ``""`` for the null path."""
    return address.rpartition("@")[2].rstrip(".").lower()


_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
# Non-ASCII allowed with SMTPUTF8, except lone surrogates: aiosmtpd decodes bytes that are
# not UTF-8 to those, and they cannot be stored or sent on.
_UTF8 = "\u0080-\ud7ff\ue000-\U0010ffff"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e' + _UTF8 + r']|\\[\x20-\x7e])*"'


def _mailbox_pattern(utf8: bool) -> re.Pattern[str]:
    extra = _UTF8 if utf8 else ""
    atom = f"[{_ATEXT}{extra}]+"
    label = f"[A-Za-z0-9{extra}](?:[A-Za-z0-9{extra}-]*[A-Za-z0-9{extra}])?"
    local = f"(?:{atom}(?:\\.{atom})*|{_QUOTED})"
    domain = f"(?:{label}(?:\\.{label})*|\\[[\\x21-\\x5a\\x5e-\\x7e]+\\])"
    return re.compile(f"({local})@({domain})")


_MAILBOX = {False: _mailbox_pattern(False), True: _mailbox_pattern(True)}

MAX_DOMAIN = 255
MAX_PATH = 256 + 64  # RFC 5321 4.5.3.1.3 allows 256; be lenient with long local parts


class PathError(RelayError, ValueError):
    """The path is malformed; ``non_ascii`` means it needed SMTPUTF8 to be valid."""

    def __init__(self, message: str, *, non_ascii: bool = False) -> None:
        super().__init__(message)
        self.non_ascii = non_ascii


def check_mailbox(path: str, utf8: bool) -> str:
    """``path`` (``local@domain``) if it is a valid mailbox; raises PathError. ``utf8``:
    non-ASCII is allowed (the transaction has SMTPUTF8)."""
    if len(path) > MAX_PATH:
        raise PathError("address too long")
    if _MAILBOX[utf8].fullmatch(path) is None:
        if not utf8 and _MAILBOX[True].fullmatch(path) is not None:
            raise PathError("non-ASCII address without SMTPUTF8", non_ascii=True)
        raise PathError("malformed address")
    domain = path.rpartition("@")[2]
    if len(domain) > MAX_DOMAIN:
        raise PathError("domain too long")
    if domain.startswith("[") and not _valid_literal(domain[1:-1]):
        raise PathError("malformed address literal")
    return path


def _valid_literal(literal: str) -> bool:
    try:
        if literal[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(literal[5:])
        else:
            ipaddress.IPv4Address(literal)
    except ValueError:
        return False
    return True


def in_domains(domain: str, allowed: tuple[str, ...]) -> bool:
    """Exact match, or a subdomain of an entry written with a leading dot (".example.com")."""
    return any(domain == d or (d.startswith(".") and domain.endswith(d)) for d in allowed)
