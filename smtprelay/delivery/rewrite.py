"""A sender route's ``rewrite_from``: the identity the upstream mailbox may send as.

Microsoft 365 and Gmail accept only a ``From:`` that the authenticated mailbox may send
as; the scanner that writes ``From: scan@printer.local`` must leave as
``scanner@company.com``. :func:`rewrite_from` changes the envelope sender and the
``From:`` header's address (keeping its display name), and with ``keep_reply_to`` puts
the original ``From:`` into a ``Reply-To:`` so that answers still reach the person,
unless the message has a Reply-To of its own.

It runs on the bytes prepared for one upstream (``Transport.deliver``, before line
folding), so every later step -- folding, and a DKIM signature -- sees the rewritten
header. The spooled message is never changed: another route may take it unchanged.
"""

from __future__ import annotations

from email.utils import formataddr, getaddresses

from smtprelay.delivery.routes import FromRewrite

_CRLF = b"\r\n"


def rewrite_from(rewrite: FromRewrite | None, sender: str, data: bytes) -> tuple[str, bytes]:
    """``(envelope sender, message)`` as they go to the upstream. The null sender (a
    notice) is left alone: it has no identity to replace."""
    if rewrite is None or not sender:
        return sender, data
    end = data.find(_CRLF + _CRLF)
    header_end = end + 2 if end >= 0 else len(data)
    if data.startswith(_CRLF):  # no header at all
        header_end = 0
    fields = _fields(data[:header_end])
    body = data[header_end:]
    names = [name.lower() for name, _ in fields]
    out: list[bytes] = []
    if b"from" not in names:
        out.append(b"From: " + rewrite.mailbox.encode() + _CRLF)
    for name, raw in fields:
        if name.lower() != b"from":
            out.append(raw)
            continue
        value = _unfold(raw[len(name) + 1 :])
        out.append(b"From: " + _with_address(value, rewrite.mailbox).encode() + _CRLF)
        if rewrite.keep_reply_to and b"reply-to" not in names and value.strip():
            out.append(b"Reply-To: " + value.strip().encode("utf-8", "surrogateescape") + _CRLF)
    if end < 0 and not data.startswith(_CRLF):  # a message that is all header
        return rewrite.mailbox, b"".join(out)
    return rewrite.mailbox, b"".join(out) + body


def _fields(header: bytes) -> list[tuple[bytes, bytes]]:
    """``(name, raw field with its continuation lines and CRLFs)`` in order."""
    fields: list[tuple[bytes, bytes]] = []
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line)
            continue
        name = line.split(b":", 1)[0].strip() if b":" in line else b""
        fields.append((name, line))
    return fields


def _unfold(raw: bytes) -> str:
    return raw.replace(b"\r\n", b"").replace(b"\n", b"").decode("utf-8", "surrogateescape")


def _with_address(value: str, mailbox: str) -> str:
    """The From: value with its address replaced, its display name kept."""
    parsed = getaddresses([value])
    name = parsed[0][0] if parsed else ""
    if not name:
        return mailbox
    if "=?" in name:  # an RFC 2047 encoded word: kept as it was written
        return f"{name} <{mailbox}>"
    return formataddr((name, mailbox))
