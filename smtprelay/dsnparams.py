"""RFC 3461 DSN parameters on MAIL (RET, ENVID) and RCPT (NOTIFY, ORCPT), and xtext.

Shared vocabulary of both stages: the inbound stage checks the syntax
(:func:`mail_params_ok`, :func:`rcpt_params_ok`), the delivery stage asks what the sender
wants to hear about (:func:`notify_wants`) and the DSN builder decodes xtext
(:func:`xtext_decode`); ``smtprelay-sendmail`` encodes its ``-V`` (:func:`xtext_encode`).
Values are stored as given (xtext-encoded).
"""

from __future__ import annotations

import re

# xtext: printable ASCII except "+" and "=", or "+" and two upper-case hex digits.
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
# Decoding is lenient about the case of the hex digits (a DSN reports what it was given).
_XTEXT_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_NOTIFY_WORDS = {"SUCCESS", "FAILURE", "DELAY"}
MAX_ENVID = 100
MAX_ORCPT = 500


def mail_params_ok(params: dict[str, str]) -> bool:
    ret = params.get("RET")
    if ret is not None and ret.upper() not in ("FULL", "HDRS"):
        return False
    envid = params.get("ENVID")
    return envid is None or (0 < len(envid) <= MAX_ENVID and bool(_XTEXT.fullmatch(envid)))


def rcpt_params_ok(params: dict[str, str]) -> bool:
    notify = params.get("NOTIFY")
    if notify is not None:
        words = notify.upper().split(",")
        valid_list = set(words) <= _NOTIFY_WORDS and len(set(words)) == len(words)
        if words != ["NEVER"] and not valid_list:
            return False
    orcpt = params.get("ORCPT")
    if orcpt is not None:
        kind, sep, value = orcpt.partition(";")
        if not sep or not _ADDR_TYPE.fullmatch(kind) or not value or len(orcpt) > MAX_ORCPT:
            return False
        if not _XTEXT.fullmatch(value):
            return False
    return True


def notify_wants(params: dict[str, str], event: str) -> bool:
    """Whether the sender asked to hear about ``event`` (SUCCESS, FAILURE, DELAY).

    Without NOTIFY the default is FAILURE and DELAY, as RFC 3461 section 4.1 lets the
    MTA choose and as Postfix does.
    """
    notify = params.get("NOTIFY")
    if notify is None:
        return event in ("FAILURE", "DELAY")
    return event in notify.upper().split(",")


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext: ``+HH`` is the byte HH; the bytes are read as UTF-8."""
    data = bytearray()
    for i, piece in enumerate(_XTEXT_HEX.split(value)):  # text, hex, text, hex, ...
        data += bytes([int(piece, 16)]) if i % 2 else piece.encode("utf-8", "replace")
    return data.decode("utf-8", "replace")


def xtext_encode(text: str) -> str:
    """RFC 3461 4: ``+`` ``=`` and anything outside ``!``..``~`` as ``+XX``."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in text)
