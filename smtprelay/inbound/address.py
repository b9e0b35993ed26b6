"""Parse the argument of MAIL FROM / RCPT TO: a path (RFC 5321 4.1.2) and ESMTP parameters.

Strict about what could be re-targeted downstream (CR, LF, NUL, brackets, spaces inside
an address), lenient where legacy senders commonly deviate: a missing ``<>`` around the
address, a space after the colon, and a source route (accepted and ignored, as RFC 5321
section 3.3 asks). Non-ASCII in the address is accepted only with SMTPUTF8 (RFC 6531).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from smtprelay.addresses import PathError as PathError  # re-exported
from smtprelay.addresses import check_mailbox
from smtprelay.addresses import domain_of as domain_of  # re-exported

_SOURCE_ROUTE = re.compile(r"@[^,:<>\s]+(?:,@[^,:<>\s]+)*:")
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?")
FORBIDDEN = ("\r", "\n", "\x00")


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
        address = check_mailbox(path, utf8)
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
