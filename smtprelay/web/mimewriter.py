"""The MIME message of the usual JSON submission, written directly as bytes.

:func:`build` writes the shapes most submissions have -- text, html, text and html as
``multipart/alternative``, attachments in a ``multipart/mixed`` around them, non-ASCII
names and subjects as RFC 2047 encoded words, non-ASCII file names by RFC 2231 -- in
the layout :meth:`email.message.EmailMessage.as_bytes` gives them (what the ``email``
package parses back is the same: headers, structure, parameters and decoded content),
about seven times faster than building the message with the ``email`` package's header
objects. Anything else it answers ``None`` for, and :mod:`smtprelay.web.compose`
builds that message with ``EmailMessage``: SMTPUTF8 messages, header fields the
``email`` package parses as structured (``Message-ID``, ``Sender`` ...), unusual
spacing, a word too long for one line, ``message/*`` or ``multipart/*`` attachments.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence
from email.headerregistry import HeaderRegistry
from typing import TypedDict, Unpack
from urllib.parse import quote

from smtprelay.errors import RelayError
from smtprelay.web.messagemodel import Attachment, Mailbox

CRLF = b"\r\n"
# Header lines folded at 78 where there is a space, never longer than 998 octets.
FOLD_AT = 78
MAX_LINE = 998
# The email package parses these itself (structured headers): EmailMessage builds them.
_STRUCTURED = frozenset(HeaderRegistry().registry)
# A display name written as it is: RFC 5322 atext words separated by single spaces.
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# A local part that needs no quoting (dot-atom), and a domain as the model checked it.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# An unstructured value written as it is: printable ASCII, single spaces between words.
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")
# A file name that can be a quoted-string parameter as it is.
_PLAIN_FILENAME = re.compile(r"[ !#-\[\]-~]+")
_CONTENT_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+")
# RFC 2231 attribute-char, minus the ones that need no escape in quote() anyway.
_ATTRIBUTE_SAFE = "!#$&+^`|~"
# UTF-8 bytes per encoded word: 45 bytes are 60 base64 characters, a word of 72 (<= 75).
_WORD_BYTES = 45


class Unsupported(RelayError):
    """Not a shape :func:`build` writes: EmailMessage builds the message."""


class Parts(TypedDict):
    """What both writers of a JSON message take as it is: this module's :func:`build`
    and :func:`smtprelay.web.compose.build_email` (the subject, text and html come
    besides, as each takes them)."""

    sender: Mailbox | None
    to: Sequence[Mailbox]
    cc: Sequence[Mailbox]
    reply_to: Sequence[Mailbox]
    headers: dict[str, str]
    attachments: Sequence[Attachment]
    utf8: bool


def build(
    *, subject: str | None, text: str | None, html: str | None, **parts: Unpack[Parts]
) -> bytes | None:
    """The message (CRLF line endings, no Received/Date/Message-ID), or ``None`` when
    it is not a shape this module writes."""
    if parts["utf8"]:
        return None
    try:
        lines: list[bytes] = []
        sender = parts["sender"]
        if sender is not None:
            lines.append(_addresses("From", [sender]))
        for name, boxes in (
            ("To", parts["to"]),
            ("Cc", parts["cc"]),
            ("Reply-To", parts["reply_to"]),
        ):
            if boxes:
                lines.append(_addresses(name, boxes))
        if subject is not None:
            lines.append(_unstructured("Subject", subject))
        for name, value in parts["headers"].items():
            if name.lower() in _STRUCTURED:
                return None
            lines.append(_unstructured(name, value))
        body = _body(text, html, parts["attachments"])
    except Unsupported:
        return None
    return CRLF.join(lines) + CRLF + body


def _body(text: str | None, html: str | None, attachments: Sequence[Attachment]) -> bytes:
    """The MIME headers, the blank line and the body, of the whole message. Where
    EmailMessage writes ``MIME-Version`` is kept: last in a single part and in the
    parts it adds (html, attachments), first before a multipart's Content-Type."""
    multipart = bool(attachments) or (text is not None and html is not None)
    if text is not None:
        content = _text(text, "plain", mime_version=not multipart)
        if html is not None:
            html_part = _text(html, "html", mime_version=True)
            content = _multipart("alternative", [content, html_part])
    elif html is not None:
        content = _text(html, "html", mime_version=not multipart)
    else:
        content = _text("", "plain", mime_version=not multipart)
    if attachments:
        content = _multipart("mixed", [content] + [_attachment(a) for a in attachments])
    return b"MIME-Version: 1.0\r\n" + content if multipart else content


def _text(value: str, subtype: str, *, mime_version: bool) -> bytes:
    """A text part as EmailMessage.set_content writes it: UTF-8, its lines ending in
    CRLF, 7bit when it can be, else quoted-printable (base64 for mostly non-ASCII)."""
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the model refuses it
        raise Unsupported from None
    lines = data.splitlines()
    body = CRLF.join(lines) + CRLF
    if data.isascii() and all(len(line) <= FOLD_AT for line in lines):
        cte = b"7bit"
    elif _mostly_ascii(data):
        cte = b"quoted-printable"
        body = binascii.b2a_qp(body, istext=True)
    else:
        cte = b"base64"
        body = _base64(body)
    head = b'Content-Type: text/%s; charset="utf-8"\r\nContent-Transfer-Encoding: %s\r\n' % (
        subtype.encode("ascii"),
        cte,
    )
    if mime_version:
        head += b"MIME-Version: 1.0\r\n"
    return head + CRLF + body


def _mostly_ascii(data: bytes) -> bool:
    high = len(data) - len(data.decode("utf-8").encode("ascii", "ignore"))
    return high * 3 < len(data)


def _base64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", CRLF)


def _attachment(item: Attachment) -> bytes:
    maintype, _, subtype = item.content_type.partition("/")
    if maintype.lower() in ("multipart", "message"):
        raise Unsupported
    disposition = "inline" if item.content_id else "attachment"
    name = item.filename
    if _PLAIN_FILENAME.fullmatch(name) and name == name.strip() and "  " not in name:
        param = f'filename="{name}"'
    else:
        param = "filename*=utf-8''" + quote(name, safe=_ATTRIBUTE_SAFE)
    lines = [
        f"Content-Type: {maintype}/{subtype}",
        "Content-Transfer-Encoding: base64",
        _line(f"Content-Disposition: {disposition}; {param}"),
    ]
    if item.content_id is not None:
        if not _CONTENT_ID.fullmatch(item.content_id):
            raise Unsupported
        lines.append(_line(f"Content-ID: <{item.content_id}>"))
    lines.append("MIME-Version: 1.0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + _base64(item.content)


def _multipart(subtype: str, parts: list[bytes]) -> bytes:
    boundary = _boundary(parts)
    out = [b'Content-Type: multipart/%s; boundary="%s"\r\n\r\n' % (subtype.encode(), boundary)]
    for part in parts:
        out += (b"--", boundary, CRLF, part, CRLF)
    out += (b"--", boundary, b"--\r\n")
    return b"".join(out)


def _boundary(parts: list[bytes]) -> bytes:
    while True:
        # "=_" never occurs in quoted-printable or base64; a 7bit part is checked.
        boundary = b"=_" + os.urandom(12).hex().encode("ascii")
        if not any(boundary in part for part in parts):
            return boundary


def _line(line: str) -> str:
    if len(line) > MAX_LINE:
        raise Unsupported
    return line


def _addresses(name: str, boxes: Sequence[Mailbox]) -> bytes:
    items = [_mailbox(box) for box in boxes]
    return _fold(f"{name}: ", items, ",").encode("ascii")


def _mailbox(box: Mailbox) -> str:
    local = box.email.rpartition("@")[0]
    if not box.email.isascii() or not _DOT_ATOM.fullmatch(local):
        raise Unsupported
    if not box.name:
        return box.email
    name = box.name
    if not name.isascii():
        if name != name.strip() or "  " in name or "\t" in name:
            raise Unsupported
        words = _encoded_words(name)
        if len(words) > 1:  # CPython keeps the space between the words of a phrase
            raise Unsupported
        return f"{words[0]} <{box.email}>"
    if _ATOMS.fullmatch(name) and "=?" not in name:
        return f"{name} <{box.email}>"
    if not _PLAIN.fullmatch(name) or "=?" in name:
        raise Unsupported
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{box.email}>'


def _unstructured(name: str, value: str) -> bytes:
    if not value:
        raise Unsupported
    if value.isascii():
        if not _PLAIN.fullmatch(value) or "=?" in value:
            raise Unsupported
        return _fold(f"{name}: ", value.split(" "), "").encode("ascii")
    # Encoded words keep every space (a decoder joins adjacent words without the one
    # between them).
    return _fold(f"{name}: ", _encoded_words(value), "").encode("ascii")


def _fold(start: str, items: list[str], separator: str) -> str:
    """``start`` and ``items`` joined by ``separator`` and a space, folded before an item
    (the space becomes CRLF and a space) where a line would pass FOLD_AT."""
    lines: list[str] = []
    line = start
    last = len(items) - 1
    for i, item in enumerate(items):
        word = item + separator if i < last else item
        if line != start and len(line) + 1 + len(word) > FOLD_AT:
            lines.append(line)
            line = " " + word
        else:
            line = line + word if line == start else line + " " + word
        if len(line) > MAX_LINE:
            raise Unsupported
    lines.append(line)
    return "\r\n".join(lines)


def _encoded_words(value: str) -> list[str]:
    """RFC 2047 encoded words (UTF-8, base64) of ``value``, each at most 75 characters,
    split between characters: a decoder joins adjacent words without the space."""
    data = value.encode("utf-8")
    words = []
    start = 0
    while start < len(data):
        end = min(start + _WORD_BYTES, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # inside a character
            end -= 1
        chunk = binascii.b2a_base64(data[start:end], newline=False).decode("ascii")
        words.append(f"=?utf-8?b?{chunk}?=")
        start = end
    return words
