"""Parse the argument of MAIL FROM / RCPT TO: a path (RFC 5321 4.1.2) and ESMTP parameters.

Strict about what could be re-targeted downstream (CR, LF, NUL, brackets, spaces inside
an address), lenient where legacy senders commonly deviate: a missing ``<>`` around the
address, a space after the colon, and a source route (accepted and ignored, as RFC 5321
section 3.3 asks). Non-ASCII in the address is accepted only with SMTPUTF8 (RFC 6531).
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

from smtprelay.addresses import domain_of
from smtprelay.errors import RelayError

__all__ = [
    "FORBIDDEN",
    "ParameterError",
    "ParsedArgument",
    "PathError",
    "domain_of",
    "parse",
    "parse_params",
]

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
_SOURCE_ROUTE = re.compile(r"@[^,:<>\s]+(?:,@[^,:<>\s]+)*:")
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?")
FORBIDDEN = ("\r", "\n", "\x00")

MAX_DOMAIN = 255
MAX_PATH = 256 + 64  # RFC 5321 4.5.3.1.3 allows 256; be lenient with long local parts


class PathError(RelayError, ValueError):
    """The path is malformed; ``non_ascii`` means it needed SMTPUTF8 to be valid."""

    def __init__(self, message: str, *, non_ascii: bool = False) -> None:
        super().__init__(message)
        self.non_ascii = non_ascii


class ParameterError(PathError):
    """The address is fine; an ESMTP parameter after it is malformed (501 5.5.4)."""


class ParsedArgument(NamedTuple):
    address: str  # "" for the null reverse-path <>
    params: dict[str, str]  # upper-case keyword -> value ("" for a keyword alone)


def parse(argument: str, *, allow_null: bool, utf8: bool) -> ParsedArgument:
    """Split ``<addr> KEY=VALUE ...`` (text after ``FROM:``/``TO:``)."""
    if any(c in argument for c in FORBIDDEN):
        raise PathError("CR, LF or NUL in address")
    text = argument.strip()
    if text.startswith("<"):
        end = _closing_bracket(text)
        if end < 0:
            raise PathError("missing '>'")
        path, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(" "):
            raise PathError("garbage after '>'")
    else:
        path, _, rest = text.partition(" ")
    route = _SOURCE_ROUTE.match(path)
    if route:
        path = path[route.end() :]
    if not path:
        if not allow_null or route:
            raise PathError("empty address")
        address = ""
    else:
        address = _check_mailbox(path, utf8)
    return ParsedArgument(address, parse_params(rest))


def _closing_bracket(text: str) -> int:
    """Index of the '>' closing the path; one inside a quoted local part does not count."""
    quoted = escaped = False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
    return -1


def _check_mailbox(path: str, utf8: bool) -> str:
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


def parse_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for word in text.split():
        match = _PARAM.fullmatch(word)
        if match is None:
            raise ParameterError(f"malformed parameter {word!r}")
        key = match.group(1).upper()
        if key in params:
            raise ParameterError(f"duplicate parameter {key}")
        params[key] = match.group(2) or ""
    return params
