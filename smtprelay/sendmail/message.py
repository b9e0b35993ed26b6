"""The message from standard input, completed as sendmail does: the envelope (sender and
recipients) from the arguments and, with ``-t``, the headers; ``Bcc:`` removed; ``From:``,
``Date:`` (and ``Message-ID:`` when this command qualifies addresses) added when missing;
CRLF line endings."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from typing import BinaryIO

from smtprelay.sendmail.args import Options, bad_address
from smtprelay.sendmail.exits import EX_DATAERR, EX_USAGE, SubmissionFailed


def read_message(stream: BinaryIO, ignore_dots: bool) -> bytes:
    """Standard input up to its end or, without ``-i``, up to a line holding only ``.``
    (which is not part of the message). Dots are not unstuffed (as Postfix does)."""
    if ignore_dots:
        return stream.read()
    lines: list[bytes] = []
    for line in stream:
        if line in (b".\n", b".\r\n", b"."):
            break
        lines.append(line)
    return b"".join(lines)


_EOL = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
_RECIPIENT_FIELDS = ("to", "cc", "bcc")
_RESENT_FIELDS = ("resent-to", "resent-cc", "resent-bcc")


@dataclass(frozen=True)
class Identity:
    """Who runs the command: login name, full name, and the domain for addresses without
    one (``[server] origin``), None when the relay qualifies them (the local socket)."""

    login: str
    full_name: str
    hostname: str | None

    def qualify(self, address: str) -> str:
        """``root`` -> ``root@hostname``, as sendmail appends its own domain."""
        if "@" in address or self.hostname is None:
            return address
        return f"{address}@{self.hostname}"


@dataclass(frozen=True)
class Prepared:
    sender: str  # "" for <>
    recipients: tuple[str, ...]
    data: bytes  # CRLF line endings, ends with CRLF, not dot-stuffed


def _field_name(field_lines: list[bytes]) -> str:
    match = _FIELD_NAME.match(field_lines[0])
    assert match is not None
    return match.group(1).decode("ascii").lower()


def _field_value(field_lines: list[bytes]) -> str:
    unfolded = b"".join(field_lines)
    return unfolded.split(b":", 1)[1].decode("utf-8", "replace")


def prepare(raw: bytes, opts: Options, me: Identity) -> Prepared:
    """Split headers and body, find recipients, remove Bcc, add the missing origin fields.

    Raises :class:`SubmissionFailed` (64) when there is no recipient at all, or (65) for an
    unusable address in a recipient header.
    """
    lines = _EOL.split(raw)
    if lines and lines[-1] == b"":
        lines.pop()  # the split after the last line ending
    if lines and lines[0].startswith(b"From "):
        lines.pop(0)  # an mbox "From sender date" line is not a header (sendmail drops it)
    fields: list[list[bytes]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1].append(line)
        elif _FIELD_NAME.match(line):
            fields.append([line])
        else:
            break
        i += 1
    if i < len(lines) and lines[i] == b"":
        i += 1  # the empty line that ends the headers; added below when missing
    body = lines[i:]

    names = [_field_name(f) for f in fields]
    recipients = [me.qualify(a) for a in opts.recipients]
    if opts.extract_recipients:
        wanted = _RESENT_FIELDS if any(n in _RESENT_FIELDS for n in names) else _RECIPIENT_FIELDS
        for name, field_lines in zip(names, fields, strict=True):
            if name not in wanted:
                continue
            for _, address in getaddresses([_field_value(field_lines)]):
                if not address:
                    continue  # a group such as "undisclosed-recipients:;"
                if bad_address(address):
                    raise SubmissionFailed(
                        EX_DATAERR, f"{name.title()}: {address!r} is not an address"
                    )
                recipients.append(me.qualify(address))
    unique: dict[str, str] = {}
    for address in recipients:
        unique.setdefault(address.lower(), address)
    if not unique:
        where = "on the command line" + (
            " or in To:, Cc:, Bcc:"
            if opts.extract_recipients
            else " (use -t to take them from the headers)"
        )
        raise SubmissionFailed(EX_USAGE, f"no recipient {where}; message not sent")

    sender = (
        me.qualify(opts.sender)
        if opts.sender
        else ("" if opts.sender == "" else me.qualify(me.login))
    )
    out = [f for n, f in zip(names, fields, strict=True) if n not in ("bcc", "resent-bcc")]
    if "from" not in names:
        address = sender or me.qualify(me.login)
        name = me.full_name if opts.full_name is None else opts.full_name
        out.append([b"From: " + _mailbox(name, address).encode()])
    if "date" not in names:
        out.append([b"Date: " + formatdate(localtime=True).encode()])
    if "message-id" not in names and me.hostname is not None:  # else the relay adds it
        out.append([b"Message-ID: " + make_msgid(domain=me.hostname).encode()])
    data = b"".join(line + b"\r\n" for f in out for line in f)
    data += b"\r\n" + b"".join(line + b"\r\n" for line in body)
    return Prepared(sender, tuple(unique.values()), data)


def _mailbox(name: str, address: str) -> str:
    """``"Full Name" <addr>`` with the name quoted or RFC 2047-encoded as needed."""
    if not name:
        return address
    try:
        return formataddr((name, address))
    except UnicodeEncodeError:  # an SMTPUTF8 address: encode only the name
        display = formataddr((name, "x@x"))[: -len(" <x@x>")]
        return f"{display} <{address}>"


def identity(hostname: str | None) -> Identity:
    """Login name and full name (``$NAME``, else the GECOS field, as sendmail does)."""
    login, gecos = "", ""
    try:
        import pwd

        entry = pwd.getpwuid(os.getuid())
        login, gecos = entry.pw_name, entry.pw_gecos
    except (ImportError, KeyError):
        pass
    login = login or os.environ.get("LOGNAME") or os.environ.get("USER") or f"uid{os.getuid()}"
    full_name = os.environ.get("NAME")
    if full_name is None:
        full_name = gecos.split(",")[0].replace("&", login.capitalize())
    return Identity(login, full_name.strip(), hostname)
