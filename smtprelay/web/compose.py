"""The message bytes of an HTTP submission, as the spool keeps them.

A JSON message is built with the standard library's :class:`EmailMessage` (RFC 2047
encoded words for non-ASCII names and subjects, RFC 2231 for attachment file names,
multipart/alternative for text and html, multipart/mixed around attachments); a raw one
(``raw``, or a ``message/rfc822`` body) is taken as it is with its line endings made
CRLF. Either way the relay adds what it adds to SMTP mail: a ``Received:`` trace header
first, and ``Date:`` and ``Message-ID:`` when missing. ``Bcc`` is never a header.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime
from typing import Unpack

from smtprelay.errors import RelayError
from smtprelay.web import mimewriter
from smtprelay.web.messagemodel import Mailbox

_BARE_NEWLINE = re.compile(rb"\r\n|\r|\n")
_HEADER_END = re.compile(rb"\r\n\r\n")
# Lines as SMTP carries them: CRLF, folded at 78, never longer than 998 octets; bodies
# in 7 bits (quoted-printable or base64), so no next hop needs 8BITMIME.
_SMTP = policy.SMTP.clone(cte_type="7bit")
_SMTPUTF8 = policy.SMTPUTF8.clone(cte_type="7bit")


class RawMessageError(RelayError, ValueError):
    """A raw message that cannot be relayed as it is (the detail says why)."""


@dataclass(frozen=True, slots=True)
class Content:
    subject: str | None
    text: str | None
    html: str | None


def needs_smtputf8(addresses: Sequence[str]) -> bool:
    return any(not a.isascii() for a in addresses)


def _address(box: Mailbox) -> Address:
    local, _, domain = box.email.rpartition("@")
    return Address(display_name=box.name or "", username=local, domain=domain)


def build(*, content: Content, **parts: Unpack[mimewriter.Parts]) -> bytes:
    """The RFC 5322 message (CRLF line endings, no Received/Date/Message-ID yet):
    written by :mod:`smtprelay.web.mimewriter` when it can, else by EmailMessage."""
    fast = mimewriter.build(subject=content.subject, text=content.text, html=content.html, **parts)
    if fast is not None:
        return fast
    return build_email(content=content, **parts)


def build_email(*, content: Content, **parts: Unpack[mimewriter.Parts]) -> bytes:
    """:func:`build` with the standard library's EmailMessage, for every shape."""
    sender = parts["sender"]
    msg = EmailMessage(policy=_SMTPUTF8 if parts["utf8"] else _SMTP)
    if sender is not None:
        msg["From"] = _address(sender)
    for name, boxes in (("To", parts["to"]), ("Cc", parts["cc"]), ("Reply-To", parts["reply_to"])):
        if boxes:
            msg[name] = [_address(b) for b in boxes]
    if content.subject is not None:
        msg["Subject"] = content.subject
    for name, value in parts["headers"].items():
        msg[name] = value
    if content.text is not None:
        msg.set_content(content.text)
        if content.html is not None:
            msg.add_alternative(content.html, subtype="html")
    elif content.html is not None:
        msg.set_content(content.html, subtype="html")
    else:
        msg.set_content("")
    for item in parts["attachments"]:
        maintype, _, subtype = item.content_type.partition("/")
        msg.add_attachment(
            item.content,
            maintype=maintype,
            subtype=subtype,
            filename=item.filename,
            cid=f"<{item.content_id}>" if item.content_id else None,
            disposition="inline" if item.content_id else "attachment",
        )
    return msg.as_bytes()


def normalize_raw(raw: bytes) -> bytes:
    """``raw`` with CRLF line endings; raises RawMessageError for what SMTP would refuse
    (a NUL byte, no header at all)."""
    if b"\x00" in raw:
        raise RawMessageError("a NUL byte in the message")
    data = _BARE_NEWLINE.sub(b"\r\n", raw)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    head = data.split(b"\r\n\r\n", 1)[0]
    if not head or b":" not in head.split(b"\r\n", 1)[0]:
        raise RawMessageError("not an RFC 5322 message: it does not start with a header")
    return data


@dataclass(frozen=True, slots=True)
class HeaderFacts:
    message_id: str | None
    has_date: bool
    sender: str | None  # the address of From:, for a raw message without mail_from


def header_facts(data: bytes) -> HeaderFacts:
    end = _HEADER_END.search(data)
    head = data[: end.start() + 2] if end else data
    parsed = BytesHeaderParser(policy=policy.default).parsebytes(head)
    message_id = parsed.get("Message-ID")
    sender = None
    try:
        found = parsed.get("From")
        addresses = getattr(found, "addresses", ()) if found is not None else ()
        if addresses:
            sender = addresses[0].addr_spec or None
    except (ValueError, IndexError, AttributeError):  # an unparsable From: stays as it is
        sender = None
    return HeaderFacts(
        " ".join(str(message_id).split()) if message_id else None,
        parsed.get("Date") is not None,
        sender,
    )


def built_facts(headers: dict[str, str], data: bytes) -> HeaderFacts:
    """:func:`header_facts` of a message :func:`build` wrote from ``headers``: Date is
    never there (the relay's own), a Message-ID only when ``headers`` gave one, and
    From is not asked for (the envelope sender is known). Parsing the header back
    cost more than building it."""
    if any(name.lower() == "message-id" for name in headers):
        return header_facts(data)
    return HeaderFacts(None, False, None)


def trace_headers(
    *,
    facts: HeaderFacts,
    qid: str,
    hostname: str,
    ip: str,
    token: str,
    recipients: Sequence[str],
    now: float,
) -> bytes:
    """``Received:`` in the SMTP side's layout (``with HTTP``, RFC 3848 has no keyword
    for it; the comment names the API token), then ``Date:`` and ``Message-ID:`` when
    the message has none."""
    stamp = _date(int(now))
    lines = [
        f"Received: from api-token-{_comment_safe(token)} (unknown [{ip}])",
        f"\tby {hostname} (smtprelay) with HTTP id {qid}",
    ]
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {stamp}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{stamp}")
    if not facts.has_date:
        lines.append(f"Date: {stamp}")
    if facts.message_id is None:
        lines.append(f"Message-ID: <{qid}@{hostname}>")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _comment_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "?", text)


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    return format_datetime(datetime.fromtimestamp(second).astimezone())
