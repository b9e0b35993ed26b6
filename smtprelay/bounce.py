"""Delivery status notifications (RFC 3464): the message a sender gets back.

:func:`build_dsn` turns what the delivery stage knows about some recipients of one
message into one complete DSN, as bytes ready to spool and send from the null sender
``<>`` to the original envelope sender. It is pure: no I/O, no clock (``now`` is passed
in), no randomness, so the same input gives the same bytes and tests need no fakes.

The MIME structure is written by hand, as bytes, because the returned message must be
carried exactly: the ``email`` package re-encodes or mangles 8-bit content when it
serialises, and a bounce that alters the message it returns is useless as evidence.

Choices an operator would expect (mostly what Postfix does):

- One DSN covers every recipient given, never one per recipient.
- RET (RFC 3461 section 4.3) decides for failures: FULL returns the whole message,
  HDRS its header section. Without RET a failure returns the whole message. A DSN
  without a failure (delay warning, success report) returns the header section only,
  whatever RET says. A message above ``max_original_bytes`` is returned as headers,
  and the text part says so.
- ENVID and ORCPT are taken as given on the SMTP command line, that is xtext-encoded
  (RFC 3461 section 4); they are decoded here, as Postfix's smtpd does, so the DSN
  shows ``bob+tag@example.net`` and not ``bob+2Btag@example.net``.
- RFC 6533/6532 types are used only where UTF-8 or 8-bit data demands them, so that
  bounce processors which understand only RFC 3464 (mailing-list managers) still read
  as many DSNs as possible: ``message/global-delivery-status`` when a status field
  holds a non-ASCII address, ``message/global`` when the returned message has 8-bit
  bytes, ``message/global-headers`` when its header section does.
- Every field value is one line: CR, LF and other control characters become spaces,
  so a hostile remote reply cannot add header lines.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

from smtprelay import dsntext
from smtprelay.dsnfields import CRLF as _CRLF
from smtprelay.dsnfields import ascii_text as _ascii
from smtprelay.dsnfields import bchars as _bchars
from smtprelay.dsnfields import boundary as _boundary
from smtprelay.dsnfields import date as _date
from smtprelay.dsnfields import field as _field
from smtprelay.dsnfields import from_header as _from_header
from smtprelay.dsnfields import one_line as _one_line
from smtprelay.dsnparams import xtext_decode

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
Ret = Literal["FULL", "HDRS"]

_ACTIONS: Final = frozenset(get_args(Action))

SUBJECT_FAILED: Final = "Undelivered Mail Returned to Sender"
SUBJECT_DELAYED: Final = "Delayed Mail (still being retried)"
SUBJECT_SUCCESS: Final = "Successful Mail Delivery Report"

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_SMTP_REPLY = re.compile(r"[2-5]\d\d(?:[ -]|$)")
_UTF8_ADDR_HEX = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


@dataclass(frozen=True, slots=True)
class DSNRecipient:
    """What the DSN says about one recipient.

    ``original`` is the ORCPT parameter as given on RCPT (``"rfc822;bob@example.net"``,
    still xtext-encoded); ``diagnostic`` the remote server's reply (or a reply the relay
    composed for a local failure); ``remote_mta`` the host name of the server that
    gave it. Times are seconds since the epoch; ``will_retry_until`` is reported only
    for ``delayed``.
    """

    address: str
    original: str | None
    action: Action
    status: str
    diagnostic: str | None
    remote_mta: str | None
    last_attempt: float | None
    will_retry_until: float | None


def build_dsn(
    *,
    original: bytes,
    envelope_sender: str,
    reporting_mta: str,
    arrival: float,
    recipients: Sequence[DSNRecipient],
    from_address: str,
    now: float,
    envid: str | None = None,
    ret: Ret | None = None,
    max_original_bytes: int = 100_000,
    qid: str | None = None,
) -> bytes:
    """The complete DSN message (CRLF line endings) about ``recipients`` of ``original``.

    Raises ValueError for input that must never become a DSN: no recipients, the null
    sender as ``envelope_sender`` (RFC 5321 section 4.5.5: never bounce a bounce), an
    unknown action or a malformed status code.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    if not _one_line(envelope_sender):
        raise ValueError("a DSN is never sent to the null sender")
    for r in recipients:
        if r.action not in _ACTIONS:
            raise ValueError(f"{r.address}: unknown DSN action {r.action!r}")
        if not _STATUS.fullmatch(r.status):
            raise ValueError(f"{r.address}: {r.status!r} is not an enhanced status code")

    host = _one_line(reporting_mta)
    original = _crlf(original)
    rows = [Row.of(r) for r in recipients]
    failed = any(r.action == "failed" for r in recipients)

    status_global = any(not row.final.isascii() or not row.orcpt_ascii for row in rows)
    status_part = _status_part(rows, host, arrival, envid, qid, status_global)
    returned = _returned_part(original, failed, ret, max_original_bytes)
    text_part = dsntext.text_part(rows, host, arrival, now, qid, returned)
    parts = [text_part, status_part, returned.part]

    boundary = _boundary(qid, now, host, parts)
    report_type = "global-delivery-status" if status_global else "delivery-status"
    body = b"".join(b"--" + boundary + _CRLF + part + _CRLF for part in parts)
    body += b"--" + boundary + b"--" + _CRLF
    eight_bit = not body.isascii()

    if failed:
        subject = SUBJECT_FAILED
    elif any(r.action == "delayed" for r in recipients):
        subject = SUBJECT_DELAYED
    else:
        subject = SUBJECT_SUCCESS
    header = [
        _field("From", _from_header(from_address)),
        _field("To", _one_line(envelope_sender)),
        _field("Subject", subject),
        _field("Date", _date(now)),
        _field("Message-ID", _message_id(qid, host, now, envelope_sender, rows)),
        _field("MIME-Version", "1.0"),
        _field("Auto-Submitted", "auto-replied"),
        _field(
            "Content-Type",
            f'multipart/report; report-type={report_type}; boundary="{boundary.decode()}"',
        ),
    ]
    if eight_bit:
        header.append(_field("Content-Transfer-Encoding", "8bit"))
    preamble = b"This is a MIME-encapsulated message." + _CRLF + _CRLF
    return b"".join(header) + _CRLF + preamble + body


@dataclass(frozen=True, slots=True)
class Row:
    """A recipient with its field values decoded and cleaned once."""

    rcpt: DSNRecipient
    final: str
    orcpt: tuple[str, str] | None  # (address type, decoded address)
    diagnostic: str | None
    remote_mta: str | None

    @property
    def orcpt_ascii(self) -> bool:
        return self.orcpt is None or self.orcpt[1].isascii()

    @classmethod
    def of(cls, r: DSNRecipient) -> Row:
        remote = _one_line(r.remote_mta or "") or None
        if remote is not None and not remote.isascii():
            try:
                remote = remote.encode("idna").decode("ascii")
            except UnicodeError:
                remote = _ascii(remote)
        return cls(
            rcpt=r,
            final=_one_line(r.address),
            orcpt=_decode_orcpt(r.original) if r.original is not None else None,
            diagnostic=_one_line(r.diagnostic or "") or None,
            remote_mta=remote,
        )


@dataclass(frozen=True, slots=True)
class Returned:
    part: bytes
    whole: bool  # the whole message, not only its header section
    oversized: bool  # headers only because the message is above the limit
    size: int
    limit: int


# -- part 2: message/delivery-status ------------------------------------------------


def _status_part(
    rows: Sequence[Row],
    host: str,
    arrival: float,
    envid: str | None,
    qid: str | None,
    utf8: bool,
) -> bytes:
    text = (lambda s: s) if utf8 else _ascii
    fields: list[bytes] = []
    # RFC 3464 section 2.2: Original-Envelope-Id comes first, then Reporting-MTA.
    if envid is not None:
        fields.append(_field("Original-Envelope-Id", _ascii(xtext_decode(envid))))
    fields.append(_field("Reporting-MTA", f"dns; {host}"))
    if qid is not None:
        fields.append(_field("X-Smtprelay-Queue-ID", _one_line(qid)))
    fields.append(_field("Arrival-Date", _date(arrival)))
    for row in rows:
        r = row.rcpt
        fields.append(_CRLF)
        if row.orcpt is not None:
            kind, address = row.orcpt
            fields.append(_field("Original-Recipient", f"{kind};{address}"))
        kind = "rfc822" if row.final.isascii() else "utf-8"
        fields.append(_field("Final-Recipient", f"{kind}; {row.final}"))
        fields.append(_field("Action", r.action))
        fields.append(_field("Status", r.status))
        if row.remote_mta is not None:
            fields.append(_field("Remote-MTA", f"dns; {row.remote_mta}"))
        if row.diagnostic is not None:
            kind = "smtp" if _SMTP_REPLY.match(row.diagnostic) else "X-smtprelay"
            fields.append(_field("Diagnostic-Code", f"{kind}; {text(row.diagnostic)}"))
        if r.last_attempt is not None:
            fields.append(_field("Last-Attempt-Date", _date(r.last_attempt)))
        if r.action == "delayed" and r.will_retry_until is not None:
            fields.append(_field("Will-Retry-Until", _date(r.will_retry_until)))
    content = b"".join(fields)
    if utf8:
        head = [
            _field("Content-Description", "Delivery report"),
            _field("Content-Type", "message/global-delivery-status"),
            _field("Content-Transfer-Encoding", "8bit"),
        ]
    else:
        head = [
            _field("Content-Description", "Delivery report"),
            _field("Content-Type", "message/delivery-status"),
        ]
    return b"".join(head) + _CRLF + content


def _decode_orcpt(value: str) -> tuple[str, str]:
    """ORCPT ``addr-type;xtext`` -> (addr-type, decoded address), cleaned to one line.

    RFC 6533's ``utf-8`` type writes non-ASCII as ``\\x{HEX}``; every other type is
    RFC 3461 xtext (``+HH``). Something without a type is reported as given under
    ``unknown``, the type RFC 3464 section 2.3.1 names for that case.
    """
    kind, sep, address = value.partition(";")
    kind = _one_line(kind)
    if not sep or not kind:
        return "unknown", _one_line(value)
    if kind.lower() == "utf-8":
        decoded = _UTF8_ADDR_HEX.sub(lambda m: _chr(int(m.group(1), 16)), address)
    else:
        decoded = xtext_decode(address)
    return kind, _one_line(decoded)


def _chr(code: int) -> str:
    return chr(code) if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"


# -- part 3: the returned message or its header section --------------------------------


def _returned_part(original: bytes, failed: bool, ret: Ret | None, limit: int) -> Returned:
    want_whole = failed and ret != "HDRS"
    fits = len(original) <= limit
    if want_whole and fits:
        eight_bit = not original.isascii()
        head = [
            _field("Content-Description", "Undelivered Message"),
            _field("Content-Type", "message/global" if eight_bit else "message/rfc822"),
        ]
        if eight_bit:
            head.append(_field("Content-Transfer-Encoding", "8bit"))
        return Returned(b"".join(head) + _CRLF + original, True, False, len(original), limit)
    headers = _header_section(original)
    eight_bit = not headers.isascii()
    description = "Undelivered Message Headers" if failed else "Message Headers"
    head = [
        _field("Content-Description", description),
        _field("Content-Type", "message/global-headers" if eight_bit else "text/rfc822-headers"),
    ]
    if eight_bit:
        head.append(_field("Content-Transfer-Encoding", "8bit"))
    oversized = want_whole and not fits
    return Returned(b"".join(head) + _CRLF + headers, False, oversized, len(original), limit)


def _header_section(message: bytes) -> bytes:
    """The header fields of ``message`` (each ending in CRLF), without the blank line."""
    if message.startswith(_CRLF):
        return b""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def _crlf(data: bytes) -> bytes:
    """Bare LF or CR become CRLF (SMTP allows nothing else); CRLF input is untouched."""
    if b"\r" not in data and b"\n" not in data:
        return data
    return re.sub(rb"\r\n|\r|\n", _CRLF, data)


def _message_id(qid: str | None, host: str, now: float, sender: str, rows: Sequence[Row]) -> str:
    # Unique without randomness: the digest covers the time and whom the DSN is about,
    # so a delay warning and a later bounce for the same queue ID differ.
    seed = repr((qid, now, sender, [(row.final, row.rcpt.action) for row in rows]))
    digest = hashlib.sha256(seed.encode("utf-8", "replace")).hexdigest()[:12]
    local = f"{_bchars(qid)}.{digest}" if qid else digest
    right = _bchars(host).strip(".") or "localhost"
    return f"<{local}.dsn@{right}>"
