"""``POST /v1/messages`` and ``POST /v1/messages/batch``: mail submitted as JSON.

The request: ``application/json`` (a message, or a batch), or ``message/rfc822`` (the
raw message as the body, the envelope in the query: ``?mail_from=a@b&rcpt=c@d``). The
answer ``202`` comes only after every message it names is fsynced in the spool, as
SMTP's ``250``; every error is problem+json (:mod:`smtprelay.web.problem`). An
``Idempotency-Key`` replays the first answer (:mod:`smtprelay.web.idempotency`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from smtprelay import ids, maillog
from smtprelay.spool import Spool
from smtprelay.web import compose, intake, preparing, requestbody
from smtprelay.web.context import Context, context, require
from smtprelay.web.idempotency import IdempotencyStore, Record
from smtprelay.web.idempotent import JSON, STORE, Keyed, idempotent
from smtprelay.web.messagemodel import MessageIn
from smtprelay.web.problem import (
    ApiProblem,
    FieldError,
    invalid,
    not_found,
    pointer,
    unavailable,
)
from smtprelay.web.templates import TemplateNotFound, TemplateRenderError

log = logging.getLogger("smtprelay.http")

RFC822 = "message/rfc822"
MAX_DEPTH = 32
PREPARERS = web.AppKey("preparers", preparing.Preparers)
# A message prepared (and, by a preparing worker, made durable), or the problem refusing it.
Result = intake.Prepared | ApiProblem


def install(app: web.Application, ctx: Context) -> None:
    """Routes and the idempotency store (read back at start-up) of the submission API."""
    spool = ctx.scheduler.spool
    store = IdempotencyStore(spool.root)
    app[STORE] = store
    workers = ctx.settings.http.prepare_workers
    preparers = preparing.Preparers(workers, spool) if workers else None
    if preparers is not None:
        app[PREPARERS] = preparers

    async def opened(_: web.Application) -> None:
        # At start-up, before delivery starts: a crash mid-commit is settled first.
        queued = _SpooledKeys(spool)
        await asyncio.get_running_loop().run_in_executor(None, store.open, queued)

    async def closed(_: web.Application) -> None:
        store.close()
        if preparers is not None:
            await preparers.close()

    app.on_startup.append(opened)
    app.on_cleanup.append(closed)
    app.router.add_post("/v1/messages", submit)
    app.router.add_post("/v1/messages/batch", submit_batch)


class _SpooledKeys:
    """The spool as the idempotency store's start-up check sees it."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def key_of(self, qid: str) -> str | None:
        try:
            return self.spool.load(qid).submission.idempotency_key
        except (OSError, ValueError):
            return None

    def remove(self, qid: str) -> None:
        self.spool.remove(qid)


def _limit(ctx: Context) -> int:
    return requestbody.body_limit(ctx.settings.server.max_message_size)


def _render(ctx: Context) -> intake.Renderer:
    """The template branch against ``ctx.templates``: not found -> 404; a render error
    -> 422 at ``/template`` with the template's line."""
    store = ctx.templates

    def render(
        name: str, version: int | None, variables: dict[str, Any], prefix: tuple[str | int, ...]
    ) -> compose.Content:
        if store is None:
            raise not_found(f"no template {name!r}: templates are not available")
        try:
            rendered = store.render(name, version, variables)
        except TemplateNotFound:
            which = f" version {version}" if version is not None else ""
            raise not_found(f"no template {name!r}{which}") from None
        except TemplateRenderError as e:
            line = f" (template line {e.line})" if e.line else ""
            detail = f"{e.detail}{line}" if line and line not in e.detail else e.detail
            raise invalid([FieldError(pointer(*prefix, "template"), detail)]) from None
        return compose.Content(rendered.subject, rendered.text, rendered.html)

    return render


async def _queue(
    request: web.Request,
    group: list[intake.Prepared],
    origin: intake.Origin,
    keyed: Keyed | None,
    status: int,
    answer: dict[str, Any],
    durable: bool,
) -> None:
    """Make ``group`` durable (with the idempotency record of ``answer``), then queue it;
    ``durable``: a preparing worker has written and synced its files already."""
    ctx = context(request)
    store = request.app[STORE]
    spool = ctx.scheduler.spool
    pending = None
    record = None
    if keyed is not None:
        latest = max((p.envelope.send_at or 0.0) for p in group)
        expires = max(time.time() + ctx.settings.http.idempotency_retention, latest + 3600)
        qids = tuple(p.envelope.qid for p in group)
        record = Record(keyed[0], keyed[1], status, answer, expires, qids)
        try:
            pending = store.prepare(record)
        except OSError as e:
            raise unavailable(f"cannot record the Idempotency-Key: {e.strerror or e}") from None
    try:
        if not durable:
            await intake.commit(spool, group, pending)
    except intake.CommitError as e:
        if pending is not None:
            pending.discard()
        raise _not_queued(e) from None
    if record is not None:
        store.finish(record, durable=True)
    on_queued = _on_queued(ctx)
    intake.queued(group, origin.ip, origin.token.name, on_queued)


def _not_queued(e: intake.CommitError) -> ApiProblem:
    log.warning("HTTP submission not queued: %s", e, extra={"service": "http"})
    return unavailable(
        "the spool cannot take the message now "
        f"({'disk full' if e.no_space else 'write error'}): try again later"
    )


def _on_queued(ctx: Context) -> Callable[[intake.Prepared], None]:
    def queued(item: intake.Prepared) -> None:
        # As the daemon's on_queued for SMTP mail: remembered for its history, then queued.
        ctx.stats.note_queued(item.envelope, item.encoded)
        if ctx.events is not None:
            ctx.events.note_queued(item.envelope)
        ctx.scheduler.enqueue_new(item.envelope, item.data)

    return queued


def _prepare(
    model: MessageIn,
    ctx: Context,
    origin: intake.Origin,
    render: intake.Renderer,
    prefix: tuple[str | int, ...],
    key: str | None,
) -> intake.Prepared:
    """:func:`intake.prepare`; a message it refuses (the relay's policy applied to a
    well-formed message: 403 sender, 413 size, 422 recipients or limits, 404 template)
    is logged as a rejection, as SMTP's are, and so becomes a ``message.rejected``
    event. A request that is not a well-formed message (not JSON, invalid fields) is
    answered but not logged: a client's bug, with no envelope to report."""
    try:
        return intake.prepare(model, ctx.settings, origin, render, prefix, key)
    except ApiProblem as p:
        if p.status < 500:
            sender, recipients = intake.parties(model)
            maillog.http_reject(
                origin.ip, origin.token.name, p.body(), sender=sender, recipients=recipients
            )
        raise


# Retry-After while the daemon is stopping: a restart takes seconds.
STOPPING_RETRY = 10


def _refuse_while_stopping(request: web.Request) -> None:
    require(request, "send")  # a token that may not send is told so (403) first
    if context(request).stopping:
        raise unavailable(
            "the relay is shutting down: try again in a moment (or on another node)",
            STOPPING_RETRY,
        )


async def submit(request: web.Request) -> web.Response:
    ctx = context(request)
    _refuse_while_stopping(request)
    return await idempotent(request, _limit(ctx), (JSON, RFC822), _one)


async def _one(
    request: web.Request, body: bytes, origin: intake.Origin, keyed: Keyed | None
) -> tuple[int, dict[str, Any]]:
    if request.content_type == RFC822:
        doc: dict[str, Any] = {"raw": body, "to": request.query.getall("rcpt", [])}
        if "mail_from" in request.query:
            doc["envelope"] = {"mail_from": request.query["mail_from"]}
        unknown = set(request.query) - {"rcpt", "mail_from"}
        if unknown:
            raise invalid(
                [FieldError(pointer(k), "unknown query parameter") for k in sorted(unknown)]
            )
    else:
        doc = requestbody.parse_json(body)
    key = keyed[0] if keyed else None
    results, durable = await _prepare_all(request, [(doc, ())], origin, key, strict=True)
    prepared = results[0]
    assert isinstance(prepared, intake.Prepared)  # strict: a refusal was raised
    answer = prepared.answer()
    await _queue(request, [prepared], origin, keyed, 202, answer, durable)
    return 202, answer


async def _prepare_all(
    request: web.Request,
    docs: Sequence[tuple[Any, tuple[str | int, ...]]],
    origin: intake.Origin,
    key: str | None,
    strict: bool,
) -> tuple[list[Result], bool]:
    """Each message of ``docs`` (its JSON and the prefix of its pointers) prepared, or
    the problem refusing it; ``strict``: the first refusal is raised and nothing is kept.
    With preparing workers their files are written and made durable unless keyed (the
    bool says whether); messages with a template are prepared here, where the template
    store is."""
    ctx = context(request)
    preparers = request.app.get(PREPARERS)
    if preparers is None or any(isinstance(d, dict) and "template" in d for d, _ in docs):
        render = _render(ctx)
        results: list[Result] = []
        for doc, prefix in docs:
            try:
                results.append(
                    _prepare(intake.validate(doc, prefix), ctx, origin, render, prefix, key)
                )
            except ApiProblem as p:
                if strict:
                    raise
                results.append(p)
        return results, False
    jobs = [preparing.Job(doc, prefix, ids.new_id()) for doc, prefix in docs]
    # Keyed: the files are written after the key's pending record (see preparing).
    write = key is None
    outcomes = await preparers.prepare(jobs, ctx.settings, origin, key, strict, write)
    results = []
    failed: preparing.WriteFailed | None = None
    for outcome in outcomes:
        if isinstance(outcome, preparing.Refused):
            if outcome.policy:
                body = outcome.problem.body()
                sender, recipients = outcome.sender, list(outcome.recipients)
                maillog.http_reject(
                    origin.ip, origin.token.name, body, sender=sender, recipients=recipients
                )
            results.append(outcome.problem)
        elif isinstance(outcome, preparing.WriteFailed):
            failed = failed or outcome
        else:
            results.append(outcome)
    refused = [r for r in results if isinstance(r, ApiProblem)]
    if failed is not None or (strict and refused):
        # Nothing was acknowledged: the files the workers wrote are taken back.
        written = [r.envelope.qid for r in results if write and isinstance(r, intake.Prepared)]
        spool = ctx.scheduler.spool
        await asyncio.get_running_loop().run_in_executor(None, intake.remove, spool, written)
        if failed is not None:
            raise _not_queued(intake.CommitError(failed.reason, no_space=failed.no_space))
        raise refused[0]
    return results, write


async def submit_batch(request: web.Request) -> web.Response:
    ctx = context(request)
    _refuse_while_stopping(request)
    return await idempotent(request, _limit(ctx), (JSON,), _batch)


async def _batch(
    request: web.Request, body: bytes, origin: intake.Origin, keyed: Keyed | None
) -> tuple[int, dict[str, Any]]:
    doc = requestbody.parse_json(body)
    docs, strict = requestbody.batch_docs(doc, context(request).settings.http.batch_max)
    key = keyed[0] if keyed else None
    results, durable = await _prepare_all(request, docs, origin, key, strict)
    answer = requestbody.batch_answer(results)
    group = [r for r in results if isinstance(r, intake.Prepared)]
    await _queue(request, group, origin, keyed, 202, answer, durable)
    return 202, answer
