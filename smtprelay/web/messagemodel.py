"""The JSON body of ``POST /v1/messages`` (and of each message of a batch), validated.

Three passes, every error of all of them reported at once as a :class:`FieldError` with
the JSON Pointer of the field:

1. :class:`MessageIn` (pydantic, strict, unknown fields forbidden): types and the
   syntax of single values (addresses by the SMTP side's rules, base64, RFC 3339 times
   with an offset, DSN options by :mod:`smtprelay.dsnparams`);
2. :func:`cross_checks` on the document itself: what depends on several fields (``raw``
   excludes the content fields, at least one recipient) or on the keys of ``headers``;
3. the policy of the relay and the token, in :mod:`smtprelay.web.submission`.

pydantic's error locations become pointers in :func:`pointer_of`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from smtprelay import dsnparams
from smtprelay.addresses import PathError, check_mailbox
from smtprelay.web.problem import FieldError, pointer

_MODEL = ConfigDict(extra="forbid", strict=True, frozen=True)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab is fine in a header value
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?"
)
_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*")
# Set by the fields of the body or by the relay itself: refused in ``headers``.
OWNED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "sender",
        "date",
        "received",
        "return-path",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
CONTENT_FIELDS = ("subject", "text", "html", "template", "variables", "attachments")
_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "required",
}


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("control characters (CR, LF, NUL ...) are not allowed")
    return value


def _mailbox(value: str) -> str:
    try:
        return check_mailbox(_no_control(value.strip()), utf8=True)
    except PathError as e:
        raise ValueError(f"not an email address: {e}") from None


def _as_mailbox(value: Any) -> Any:
    return {"email": value} if isinstance(value, str) else value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str | dict) else value


def _base64(value: Any) -> Any:
    if value is None or isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


def _rfc3339(value: Any) -> Any:
    if value is None or isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string")
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError("not an RFC 3339 date-time (e.g. 2026-01-31T09:00:00+01:00)")
    if match.group("offset") is None:
        raise ValueError("needs a time zone offset (Z or +01:00): a local time is ambiguous")
    try:
        return datetime.fromisoformat(value.upper().replace(" ", "T"))
    except ValueError as e:
        raise ValueError(f"not a valid date-time: {e}") from None


def xtext(text: str) -> str:
    """RFC 3461 xtext of ``text`` (UTF-8 bytes outside printable ASCII, ``+`` and ``=``
    as ``+HH``): how ENVID is kept, as the SMTP side keeps it."""
    out = []
    for byte in text.encode("utf-8"):
        c = chr(byte)
        out.append(c if 0x21 <= byte <= 0x7E and c not in "+=" else f"+{byte:02X}")
    return "".join(out)


def _envid(value: str) -> str:
    if not value or not dsnparams.mail_params_ok({"ENVID": xtext(value)}):
        raise ValueError(f"must be 1 to {dsnparams.MAX_ENVID} characters (as xtext)")
    return value


def _notify(value: list[str]) -> list[str]:
    words = [w.upper() for w in value]
    if not words or not dsnparams.rcpt_params_ok({"NOTIFY": ",".join(words)}):
        raise ValueError('"never" alone, or some of "success", "failure", "delay" once each')
    return words


Text = Annotated[str, AfterValidator(_no_control)]


class Mailbox(BaseModel):
    model_config = _MODEL
    email: Annotated[str, AfterValidator(_mailbox)]
    name: Text | None = None


Address = Annotated[Mailbox, BeforeValidator(_as_mailbox)]


class Attachment(BaseModel):
    model_config = _MODEL
    filename: Annotated[Text, Field(min_length=1, max_length=255)]
    content_type: Annotated[str, Field(pattern=_MEDIA_TYPE.pattern)] = "application/octet-stream"
    content: Annotated[bytes, BeforeValidator(_base64)]
    content_id: Annotated[Text, Field(min_length=1, max_length=255)] | None = None


class EnvelopeIn(BaseModel):
    model_config = _MODEL
    mail_from: Annotated[str, AfterValidator(_mailbox)]


class DsnIn(BaseModel):
    model_config = _MODEL
    notify: Annotated[list[str], AfterValidator(_notify)] | None = None
    ret: Literal["full", "hdrs", "FULL", "HDRS"] | None = None
    envid: Annotated[str, AfterValidator(_envid)] | None = None


class TemplateRef(BaseModel):
    model_config = _MODEL
    name: Annotated[str, Field(min_length=1, max_length=200)]
    version: Annotated[int, Field(ge=1)] | None = None


class MessageIn(BaseModel):
    model_config = _MODEL
    from_: Address | None = Field(default=None, alias="from")
    to: list[Address] = []
    cc: list[Address] = []
    bcc: list[Address] = []
    reply_to: Annotated[list[Address], BeforeValidator(_as_list)] = []
    subject: Text | None = None
    text: str | None = None
    html: str | None = None
    headers: dict[str, Text] = {}
    attachments: list[Attachment] = []
    tags: list[Annotated[Text, Field(min_length=1, max_length=128)]] = []
    metadata: dict[Annotated[str, Field(min_length=1, max_length=128)], str] = {}
    send_at: Annotated[datetime | None, BeforeValidator(_rfc3339)] = None
    envelope: EnvelopeIn | None = None
    dsn: DsnIn | None = None
    template: TemplateRef | None = None
    variables: dict[str, Any] | None = None
    raw: Annotated[bytes | None, BeforeValidator(_base64)] = None

    @property
    def recipients(self) -> list[tuple[str, Mailbox]]:
        """``(pointer, mailbox)`` of every envelope recipient, to, cc, then bcc."""
        return [
            (pointer(field, i), box)
            for field, boxes in (("to", self.to), ("cc", self.cc), ("bcc", self.bcc))
            for i, box in enumerate(boxes)
        ]


_MISSING = object()


def pointer_of(
    loc: tuple[str | int, ...], document: Any, prefix: tuple[str | int, ...] = ()
) -> str:
    """The JSON Pointer of pydantic's error location ``loc`` in ``document``.

    pydantic's locations follow the model, not the document: an address given as a
    string is validated as ``{"email": ...}``, so its error sits at ``to/0/email``.
    The pointer follows the document as far as it goes and stops at the value that
    is there (``/to/0``); a missing member keeps its name (``/template/name``).
    """
    parts: list[str | int] = []
    node: Any = document
    for part in loc:
        if isinstance(node, Mapping) and isinstance(part, str):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            break  # a scalar (or a missing member): the error is about it as a whole
        parts.append(part)
    return pointer(*prefix, *parts)


def _detail(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def field_errors(
    e: ValidationError, document: Any, prefix: tuple[str | int, ...] = ()
) -> list[FieldError]:
    """Every error of ``e`` with its pointer (one per pointer, the first detail)."""
    found: dict[str, FieldError] = {}
    for error in e.errors():
        where = pointer_of(tuple(error["loc"]), document, prefix)
        found.setdefault(where, FieldError(where, _detail(error)))
    return list(found.values())


def cross_checks(doc: Mapping[str, Any], prefix: tuple[str | int, ...] = ()) -> list[FieldError]:
    """The rules between fields, and the keys of ``headers``, on the document itself
    (so they are reported beside pydantic's errors, not after them)."""
    errors: list[FieldError] = []

    def err(detail: str, *parts: str | int) -> None:
        errors.append(FieldError(pointer(*prefix, *parts), detail))

    if doc.get("raw") is not None:
        for name in CONTENT_FIELDS:
            if name in doc:
                err("not allowed with raw (the message is given whole)", name)
    elif doc.get("template") is not None:
        for name in ("subject", "text", "html"):
            if name in doc:
                err("not allowed with template (the template gives it)", name)
    else:
        if doc.get("text") is None and doc.get("html") is None:
            err("text, html, template or raw is required", "text")
        if "variables" in doc:
            err("variables need a template", "variables")
    if doc.get("raw") is None and doc.get("from") is None:
        err("required (or a raw message)", "from")
    lists = [doc.get(k) for k in ("to", "cc", "bcc")]
    if not any(isinstance(v, list) and v for v in lists):
        err("at least one recipient is required (to, cc or bcc)", "to")
    headers = doc.get("headers")
    if isinstance(headers, Mapping):
        for name in headers:
            if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
                err("not a header field name", "headers", str(name))
            elif name.lower() in OWNED_HEADERS:
                err(f"{name} is set by the relay or by a field of the body", "headers", name)
    return errors
