"""One HTTP-submitted message from its validated JSON to a durable spool file.

:func:`prepare` applies the relay's policy (the same rules as SMTP: the token's sender
domains and ``[relay] allowed_sender_domains`` -> 403, ``allowed_recipient_domains``
-> 422 per recipient, ``[server] max_message_size`` -> 413), renders a template,
builds the message and its envelope. :func:`commit` writes a group of prepared
messages to the spool and fsyncs them together (with the idempotency record, committed
once they are durable); only then are they logged (``queued``, as for SMTP) and handed to the queue.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from smtprelay import ids, maillog
from smtprelay.addresses import domain_of, in_domains
from smtprelay.config import Settings
from smtprelay.envelope import Client, Envelope, Recipient, Submission, SubmittedVia
from smtprelay.errors import RelayError
from smtprelay.spool import Spool, SpoolError
from smtprelay.web import compose
from smtprelay.web.messagemodel import MessageIn, cross_checks, field_errors, xtext
from smtprelay.web.problem import (
    ApiProblem,
    FieldError,
    forbidden,
    invalid,
    lone_surrogates,
    pointer,
    too_large,
)
from smtprelay.web.tokens import Token

# Renders ``template`` with ``variables``: (subject, text, html); raises ApiProblem.
Renderer = Callable[[str, int | None, dict[str, Any], tuple[str | int, ...]], compose.Content]


@dataclass(frozen=True, slots=True)
class Origin:
    """Who is submitting: the token and the HTTP client."""

    token: Token
    ip: str
    port: int


@dataclass(slots=True)
class Prepared:
    envelope: Envelope
    data: bytes
    # The envelope's JSON (Envelope.to_json): encoded once, for the spool file and the
    # statistics' copy of the accepted envelope.
    encoded: bytes = b""

    def __post_init__(self) -> None:
        if not self.encoded:
            self.encoded = self.envelope.to_json()

    def answer(self) -> dict[str, Any]:
        """The message's part of the 202 body."""
        env = self.envelope
        status = "scheduled" if env.send_at is not None else "queued"
        body: dict[str, Any] = {"id": env.qid, "status": status}
        if env.send_at is not None:
            body["send_at"] = rfc3339(env.send_at)
        body["recipients"] = [{"email": r.address, "status": status} for r in env.recipients]
        return body


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def validate(doc: Any, prefix: tuple[str | int, ...] = ()) -> MessageIn:
    """The message of ``doc``; raises 422 naming every invalid field."""
    if not isinstance(doc, Mapping):
        raise invalid([FieldError(pointer(*prefix), "must be a JSON object")])
    errors = cross_checks(doc, prefix)
    try:
        model = MessageIn.model_validate(doc)
    except ValidationError as e:
        errors = field_errors(e, doc, prefix) + errors
        model = None
    # A lone surrogate passes the model (it is a str) but no message can carry it. The
    # model's own error about such a string, or about what holds it, goes (pydantic
    # reports a member name with one as it cannot find it: at the object).
    unencodable = lone_surrogates(doc, prefix)
    if unencodable:
        errors = unencodable + [e for e in errors if not _holds(e.pointer, unencodable)]
    if errors or model is None:
        raise invalid(errors)
    return model


def _holds(where: str, errors: list[FieldError]) -> bool:
    return any(e.pointer == where or e.pointer.startswith(where + "/") for e in errors)


def prepare(
    model: MessageIn,
    settings: Settings,
    origin: Origin,
    render: Renderer,
    prefix: tuple[str | int, ...] = (),
    idempotency_key: str | None = None,
    qid: str | None = None,
) -> Prepared:
    """``model`` as a message and its envelope, under ``qid`` (a new queue ID if None);
    raises ApiProblem (403 sender, 413 size, 422 recipients or limits, 404 template)."""
    now = time.time()
    qid = qid or ids.new_id(now)
    errors: list[FieldError] = []

    def err(detail: str, *parts: str | int) -> None:
        errors.append(FieldError(pointer(*prefix, *parts), detail))

    data = b""
    facts = compose.HeaderFacts(None, False, None)
    if model.raw is not None:
        try:
            data = compose.normalize_raw(model.raw)
            facts = compose.header_facts(data)
        except compose.RawMessageError as e:
            err(str(e), "raw")
    if model.envelope is not None:
        sender = model.envelope.mail_from
    elif model.from_ is not None:
        sender = model.from_.email
    else:
        sender = facts.sender or ""
        if not sender:  # only a raw message may leave "from" out (cross_checks)
            err("required: the raw message has no From: address", "envelope", "mail_from")
    # The sender policy: 403, as SMTP's 553 5.7.1 refuses the MAIL command.
    relay = settings.relay
    for address in {sender, model.from_.email if model.from_ else ""} - {""}:
        domain = domain_of(address)
        if not origin.token.may_send_from(domain):
            raise forbidden(f"token {origin.token.name} may not send from {domain}")
        if relay.allowed_sender_domains and not in_domains(domain, relay.allowed_sender_domains):
            raise forbidden(
                f"sender domain {domain} is not allowed ([relay] allowed_sender_domains)"
            )
    recipients: list[Recipient] = []
    seen: set[str] = set()
    notify = {"NOTIFY": ",".join(model.dsn.notify)} if model.dsn and model.dsn.notify else {}
    for where_rcpt, box in model.recipients:
        parts = where_rcpt.split("/")[1:]
        if relay.allowed_recipient_domains and not in_domains(
            domain_of(box.email), relay.allowed_recipient_domains
        ):
            err("recipient domain not allowed ([relay] allowed_recipient_domains)", *parts)
        elif box.email.lower() not in seen:
            seen.add(box.email.lower())
            recipients.append(Recipient(box.email, params=dict(notify)))
    if len(recipients) > settings.server.max_recipients:
        err(
            f"more than {settings.server.max_recipients} recipients ([server] max_recipients)", "to"
        )
    send_at = None
    if model.send_at is not None:
        ts = model.send_at.timestamp()
        if ts > now + settings.http.schedule_horizon:
            err(
                f"more than {settings.http.schedule_horizon:g} s ahead ([http] schedule_horizon)",
                "send_at",
            )
        elif ts > now:
            send_at = ts  # a time in the past means now
    if model.template is not None:
        try:
            content = render(
                model.template.name, model.template.version, model.variables or {}, prefix
            )
        except ApiProblem as p:
            if p.status != 422:
                raise
            errors += p.errors
    else:
        content = compose.Content(model.subject, model.text, model.html)
    if errors:
        raise invalid(errors)
    addresses = [sender, *(r.address for r in recipients)]
    addresses += [b.email for b in (model.from_, *model.reply_to) if b is not None]
    utf8 = compose.needs_smtputf8(addresses)
    if model.raw is None:
        data = compose.build(
            sender=model.from_,
            to=model.to,
            cc=model.cc,
            reply_to=model.reply_to,
            content=content,
            headers=model.headers,
            attachments=model.attachments,
            utf8=utf8,
        )
        facts = compose.built_facts(model.headers, data)
    elif not data.isascii():
        utf8 = utf8 or _utf8_headers(data)
    hostname = settings.server.hostname
    trace = compose.trace_headers(
        facts=facts,
        qid=qid,
        hostname=hostname,
        ip=origin.ip,
        token=origin.token.name,
        recipients=[r.address for r in recipients],
        now=now,
    )
    data = trace + data
    if len(data) > settings.server.max_message_size:
        raise too_large(
            f"the message is {len(data)} bytes, more than "
            f"{settings.server.max_message_size} ([server] max_message_size)"
        )
    params: dict[str, str] = {}
    if utf8:
        params["SMTPUTF8"] = ""
    if not data.isascii():
        params["BODY"] = "8BITMIME"
    if model.dsn is not None:
        if model.dsn.ret:
            params["RET"] = model.dsn.ret.upper()
        if model.dsn.envid:
            params["ENVID"] = xtext(model.dsn.envid)
    envelope = Envelope(
        qid=qid,
        sender=sender,
        recipients=recipients,
        client=Client(
            ip=origin.ip, port=origin.port, helo=f"api-token-{origin.token.name}", protocol="HTTP"
        ),
        arrival=now,
        size=len(data),
        mail_params=params,
        next_attempt=send_at or now,
        message_id=facts.message_id or f"<{qid}@{hostname}>",
        send_at=send_at,
        submission=Submission(
            via=SubmittedVia.HTTP,
            token=origin.token.name,
            tags=list(model.tags),
            metadata=dict(model.metadata),
            idempotency_key=idempotency_key,
        ),
    )
    return Prepared(envelope, data)


def parties(model: MessageIn) -> tuple[str | None, list[str]]:
    """The sender and recipients a refusal of ``model`` is logged with."""
    sender = model.envelope.mail_from if model.envelope is not None else None
    if sender is None and model.from_ is not None:
        sender = model.from_.email
    return sender, [box.email for _, box in model.recipients]


def _utf8_headers(data: bytes) -> bool:
    """A raw message whose header has non-ASCII (addresses or unencoded text): sent on
    with SMTPUTF8, as a client would have had to ask for it over SMTP."""
    return not data.split(b"\r\n\r\n", 1)[0].isascii()


class CommitError(RelayError):
    """Nothing of the group was queued; ``no_space``: the disk is full."""

    def __init__(self, message: str, *, no_space: bool) -> None:
        super().__init__(message)
        self.no_space = no_space


class Pending(Protocol):
    """The idempotency record committed with a group (idempotency.Pending)."""

    def sync(self) -> None: ...
    def commit(self) -> None: ...


async def commit(spool: Spool, group: list[Prepared], record: Pending | None = None) -> None:
    """Write and fsync every message of ``group`` and ``record`` beside them, then fsync
    the queue directory once for all (one group commit); once all are durable, commit
    ``record`` (its rename: the point after which a crash replays the answer). All or
    nothing: on failure every file of the group is taken back and CommitError raised
    (the caller discards ``record``).

    Each file is created in a thread too, not only synced there: creating a file is
    kernel work (an inode found and initialised) that cost 40-450 us per file on the
    benchmark machine's ext4, depending on the directory; the event loop does none of it."""
    loop = asyncio.get_running_loop()

    async def write_all() -> None:
        jobs = [loop.run_in_executor(None, write, spool, item) for item in group]
        if record is not None:
            jobs.append(loop.run_in_executor(None, record.sync))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if not failed:
            try:
                await loop.run_in_executor(None, spool.sync)
            except OSError as e:
                failed.append(SpoolError(f"cannot sync the queue directory: {e.strerror}"))
        if not failed and record is not None:
            try:
                await loop.run_in_executor(None, record.commit)
            except OSError as e:
                failed.append(SpoolError(f"cannot record the Idempotency-Key: {e.strerror}"))
        if failed:
            done = [
                item.envelope.qid
                for item, r in zip(group, results, strict=False)
                if not isinstance(r, BaseException)
            ]
            await loop.run_in_executor(None, remove, spool, done)
            first = failed[0]
            no_space = isinstance(first, SpoolError | OSError) and no_space_left(first)
            raise CommitError(str(first), no_space=no_space)

    # Shielded: once started the commit finishes even if the client goes away (then the
    # messages are queued without a reply, as with SMTP).
    task = asyncio.ensure_future(write_all())
    await asyncio.shield(task)


def write(spool: Spool, item: Prepared) -> None:
    """The message's file, complete and fsynced; its name is durable with the next
    directory fsync. In a thread: every step blocks."""
    spool.create_encoded(item.envelope.qid, item.encoded, item.data).sync_file()


def no_space_left(error: BaseException) -> bool:
    if isinstance(error, SpoolError):
        return error.no_space
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def remove(spool: Spool, qids: list[str]) -> None:
    for qid in qids:
        spool.remove(qid)


def queued(
    group: list[Prepared], ip: str, token: str, on_queued: Callable[[Prepared], None]
) -> None:
    """Durable: log each message as SMTP's are logged, then hand it to the queue."""
    for item in group:
        env = item.envelope
        maillog.http_client(env.qid, ip, token)
        maillog.message_id(env.qid, env.message_id or "")
        maillog.queued(env.qid, env.sender, env.size, len(env.recipients))
        on_queued(item)
