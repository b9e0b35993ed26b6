"""``GET /v1/messages/{id}``, ``GET /v1/messages``, ``POST /v1/messages/{id}/cancel``
and ``PATCH /v1/messages/{id}``: tracking, canceling and moving a message by its queue
ID, whether it came by SMTP or by HTTP.

The queue is reached only through :class:`~smtprelay.queueops.QueueOperations`; a
message that left it is answered from the history of :mod:`smtprelay.stats`
(``[http] history_retention``). The listing reads that history alone (no spool reads):
every message queued or finished since the daemon started, up to its bound.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, cast

from aiohttp import web

from smtprelay import ids
from smtprelay.history import History
from smtprelay.queueops import CancelResult, Outcome, QueueOperations, RecipientCancel
from smtprelay.web import problem
from smtprelay.web.context import Context, context, require
from smtprelay.web.msgstatus import (
    MESSAGE_STATUSES,
    decode_cursor,
    encode_cursor,
    from_history,
    from_queue,
    quick_status,
)

DEFAULT_LIMIT, MAX_LIMIT = 50, 500
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)", re.IGNORECASE)
_LIST_PARAMETERS = frozenset({"status", "tag", "cursor", "limit"})


def queue_ops(ctx: Context) -> QueueOperations:
    """The queue as the API sees it (the scheduler implements the Protocol)."""
    return cast(QueueOperations, ctx.scheduler)


def _qid(request: web.Request) -> str:
    qid = request.match_info["id"]
    if not ids.is_valid(qid):
        raise problem.not_found(f"{qid!r} is not a message id")
    return qid


def _known(history: History | None) -> bool:
    """A message, not a refused transaction that only got a queue ID."""
    return history is not None and (
        history.queued or history.envelope is not None or history.removed_at is not None
    )


async def _load(ops: QueueOperations, qid: str) -> Any:
    try:
        return await ops.load(qid)
    except (OSError, ValueError) as e:
        raise problem.ApiProblem(
            503,
            "spool-error",
            "Spool error",
            f"{qid}: its envelope cannot be read now: {e}",
            headers={"Retry-After": "5"},
        ) from None


async def status_of(ctx: Context, qid: str) -> dict[str, Any]:
    """The status of ``qid``; raises 404 when neither the queue nor the history has it."""
    ops = queue_ops(ctx)
    envelope = await _load(ops, qid)
    history = ctx.stats.history(qid)
    now = ops.clock()
    if envelope is not None:
        return from_queue(envelope, ops.is_attempting(qid), history, now)
    if history is None or not _known(history):
        raise problem.not_found(f"no message {qid} in the queue or in the recent history")
    return from_history(history, False, now)


async def get_message(request: web.Request) -> web.Response:
    require(request, "read")
    return web.json_response(await status_of(context(request), _qid(request)))


async def list_messages(request: web.Request) -> web.Response:
    """Newest first; ``cursor`` is the ``next_cursor`` of the page before."""
    require(request, "read")
    ctx = context(request)
    query = request.query
    errors = [
        problem.FieldError(f"/{name}", "unknown query parameter")
        for name in query
        if name not in _LIST_PARAMETERS
    ]
    status = query.get("status")
    if status is not None and status not in MESSAGE_STATUSES:
        errors.append(problem.FieldError("/status", f"one of {', '.join(MESSAGE_STATUSES)}"))
    limit = DEFAULT_LIMIT
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError
    except ValueError:
        errors.append(problem.FieldError("/limit", f"a whole number from 1 to {MAX_LIMIT}"))
    before = None
    if "cursor" in query:
        before = decode_cursor(query["cursor"])
        if before is None:
            errors.append(problem.FieldError("/cursor", "not a cursor this API returned"))
    if errors:
        raise problem.invalid(errors, "invalid query parameters")
    tag = query.get("tag")
    ops = queue_ops(ctx)
    now = ops.clock()

    def keep(history: History) -> bool:
        if tag is not None and tag not in history.tags:
            return False
        if status is None:
            return True
        return quick_status(history, ops.is_attempting(history.qid), now) == status

    found, more = ctx.stats.newest(before, limit, keep)
    items = [from_history(h, ops.is_attempting(h.qid), now) for h in found]
    body: dict[str, Any] = {"messages": items}
    body["next_cursor"] = encode_cursor(found[-1].qid) if more and found else None
    return web.json_response(body)


async def cancel(request: web.Request) -> web.Response:
    """Cancel every recipient not delivered or failed yet: 200 with each one's result;
    409 when nothing was left to cancel; a repeat answers as the first did."""
    token = require(request, "cancel")
    ctx = context(request)
    qid = _qid(request)
    results = await queue_ops(ctx).cancel(qid, f"api token {token.name}")
    if results is None:  # not queued (any more): the history says what became of it
        history = ctx.stats.history(qid)
        if history is None or not _known(history):
            raise problem.not_found(f"no message {qid} in the queue or in the recent history")
        results = _from_history(history, queue_ops(ctx).clock())
    shown = [_result(r) for r in results]
    if not any(r.result is not CancelResult.TOO_LATE for r in results):
        raise problem.ApiProblem(
            409,
            "nothing-to-cancel",
            "Conflict",
            f"{qid}: every recipient was delivered or failed already",
            extra={"recipients": shown},
        )
    return web.json_response({"id": qid, "recipients": shown})


def _from_history(history: History, now: float) -> list[RecipientCancel]:
    """What a cancel of a message that left the queue finds: the canceled recipients
    stay canceled (so a second cancel answers as the first), the others too late."""
    results = []
    for recipient in from_history(history, False, now)["recipients"]:
        if recipient["status"] == "canceled":
            results.append(RecipientCancel(recipient["email"], CancelResult.CANCELED))
        else:
            results.append(
                RecipientCancel(recipient["email"], CancelResult.TOO_LATE, recipient["status"])
            )
    return results


def _result(result: RecipientCancel) -> dict[str, str]:
    shown = {"email": result.email, "result": str(result.result)}
    if result.result is CancelResult.TOO_LATE:
        # The envelope's word for a failed recipient is "failed"; the API's "bounced".
        shown["status"] = "bounced" if result.final == "failed" else result.final or "bounced"
    return shown


def parse_time(value: object, where: str) -> tuple[float | None, problem.FieldError | None]:
    """An RFC 3339 time with an offset, as epoch seconds."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        return None, problem.FieldError(
            where, "an RFC 3339 time with an offset, e.g. 2026-12-24T09:00:00+01:00"
        )
    try:
        when = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return None, problem.FieldError(where, "not a valid date and time")
    return when.timestamp(), None


async def reschedule(request: web.Request) -> web.Response:
    """``{"send_at"}``: move a message that still waits for its send time."""
    require(request, "cancel")
    ctx = context(request)
    qid = _qid(request)
    body = await problem.json_object(request)
    errors = [problem.FieldError(f"/{k}", "unknown field") for k in body if k != "send_at"]
    when, error = parse_time(body.get("send_at"), "/send_at")
    ops = queue_ops(ctx)
    now = ops.clock()
    horizon = ctx.settings.http.schedule_horizon
    if error is not None:
        errors.append(error)
    elif when is not None and when > now + horizon:
        errors.append(
            problem.FieldError(
                "/send_at", f"more than {horizon:g} s ahead ([http] schedule_horizon)"
            )
        )
    if errors:
        raise problem.invalid(errors)
    assert when is not None
    envelope = await _load(ops, qid)
    if envelope is None:
        if _known(ctx.stats.history(qid)):
            raise problem.conflict(
                f"{qid} is not scheduled any more: it left the queue", "not-scheduled"
            )
        raise problem.not_found(f"no message {qid} in the queue or in the recent history")
    if (
        envelope.send_at is None
        or envelope.attempts
        or ops.is_attempting(qid)
        or any(r.attempts for r in envelope.recipients)
    ):
        raise problem.conflict(
            f"{qid} is not scheduled any more: it was attempted already", "not-scheduled"
        )
    outcome = await ops.reschedule(qid, max(when, now))
    if outcome == Outcome.NOT_FOUND:
        raise problem.conflict(
            f"{qid} is not scheduled any more: it left the queue", "not-scheduled"
        )
    if outcome != Outcome.RESCHEDULED:
        raise problem.conflict(f"{qid} cannot be moved now: {outcome}", "not-scheduled")
    ctx.stats.set_send_at(qid, max(when, now))
    return web.json_response(await status_of(ctx, qid))


def register(app: web.Application) -> None:
    app.router.add_get("/v1/messages", list_messages)
    app.router.add_get("/v1/messages/{id}", get_message)
    app.router.add_patch("/v1/messages/{id}", reschedule)
    app.router.add_post("/v1/messages/{id}/cancel", cancel)
