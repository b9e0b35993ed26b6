"""The ESMTP parameters of MAIL and RCPT the relay accepts, and the reply for each fault.

Pure rules, no I/O: :mod:`smtprelay.inbound.address` has split the command into the path
and its ``KEYWORD=value`` parameters (keywords upper-cased); these functions say whether
the relay takes them, as a :class:`~smtprelay.replies.Reply` refusing them or None.

MAIL: ``SIZE`` (RFC 1870; over ``max_message_size`` is ``552 5.3.4``), ``BODY``
(``7BIT``/``8BITMIME``, RFC 6152), ``SMTPUTF8`` (RFC 6531, no value; a non-ASCII sender
without it is ``553 5.6.7``), ``RET`` and ``ENVID`` (RFC 3461). RCPT: ``NOTIFY`` and
``ORCPT`` (RFC 3461). Another keyword is ``555 5.5.4``, a bad value ``501 5.5.4``, and any
parameter after ``HELO`` (no ESMTP) is ``501 5.5.4``. The RFC 3461 syntax itself is shared
with the delivery stage (:mod:`smtprelay.dsnparams`).
"""

from __future__ import annotations

from smtprelay import dsnparams, replies
from smtprelay.inbound.address import ParameterError, PathError
from smtprelay.replies import Reply

MAIL_PARAMS = frozenset({"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID"})
RCPT_PARAMS = frozenset({"NOTIFY", "ORCPT"})
BODY_TYPES = ("7BIT", "8BITMIME")


def check_mail(
    params: dict[str, str], sender: str, *, extended: bool, max_message_size: int
) -> Reply | None:
    """The reply refusing MAIL FROM's parameters for ``sender``, or None to go on."""
    if params and not extended:
        return replies.BAD_PARAMETER
    if not params.keys() <= MAIL_PARAMS:
        return replies.UNKNOWN_PARAMETER
    size = params.get("SIZE")
    if size is not None:
        if not size.isdigit():
            return replies.BAD_PARAMETER
        if int(size) > max_message_size:
            return replies.SIZE_EXCEEDED
    if params.get("BODY", "7BIT").upper() not in BODY_TYPES:
        return replies.BAD_PARAMETER
    if params.get("SMTPUTF8", "") != "":
        return replies.BAD_PARAMETER
    if "SMTPUTF8" not in params and not sender.isascii():
        return replies.SMTPUTF8_NOT_ADVERTISED
    if not dsnparams.mail_params_ok(params):
        return replies.BAD_PARAMETER
    return None


def check_rcpt(params: dict[str, str]) -> Reply | None:
    """The reply refusing RCPT TO's parameters, or None to go on."""
    if not params.keys() <= RCPT_PARAMS:
        return replies.UNKNOWN_PARAMETER
    if not dsnparams.rcpt_params_ok(params):
        return replies.BAD_PARAMETER
    return None


def mail_path_reply(error: PathError) -> Reply:
    """The reply to a MAIL FROM the address parser refused."""
    if isinstance(error, ParameterError):
        return replies.BAD_PARAMETER
    return replies.BAD_SENDER_SYNTAX


def rcpt_path_reply(error: PathError) -> Reply:
    """The reply to a RCPT TO the address parser refused: a malformed parameter, a
    non-ASCII address in a transaction without SMTPUTF8, or a malformed path."""
    if isinstance(error, ParameterError):
        return replies.BAD_PARAMETER
    if error.non_ascii:
        return replies.SMTPUTF8_NOT_ADVERTISED
    return replies.BAD_RECIPIENT_SYNTAX


def utf8(params: dict[str, str]) -> bool:
    """Whether MAIL FROM asked for SMTPUTF8 (RFC 6531)."""
    return "SMTPUTF8" in params


def size_hint(params: dict[str, str]) -> int:
    """The size MAIL FROM declared (1 when none), for reserving the data's memory."""
    return int(params.get("SIZE") or 1)
