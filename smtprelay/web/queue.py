"""The queue over HTTP: ``GET /queue`` (paged) and the operator actions the CLI uses.

``POST /queue/flush`` (no body or ``{}``: every waiting message; ``{"qids": [...]}``:
those), ``POST /queue/hold``, ``/queue/release``, ``/queue/delete`` and ``/queue/bounce``
(each ``{"qids": [...]}``) answer ``{"action": ..., "results": {QID: outcome}}``; the
outcomes are those of :class:`smtprelay.delivery.scheduler.Scheduler`'s actions.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from smtprelay import ids
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.queueops import QueueEntry
from smtprelay.queueview import queue_item
from smtprelay.stats import QUEUE_STATES
from smtprelay.web.context import Problem, context

MAX_QIDS = 10_000
# Messages per GET /queue page: by default, and at most (the CLI pages through all).
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000


def entry_json(entry: QueueEntry, now: float) -> dict[str, Any]:
    return queue_item(entry.envelope, entry.state, now)


def queue_summary(scheduler: Scheduler, top: int = 10) -> dict[str, Any]:
    """Queue counts by state, the oldest message's age, and the biggest backlogs by
    recipient domain (pending recipients, and messages with any) -- from the
    scheduler's in-memory ledger: no spool file is read, whatever the queue's size."""
    ledger = scheduler.ledger
    oldest = ledger.oldest_arrival()
    now = scheduler.clock()
    return {
        "queue": {
            **ledger.counts(),
            "total": len(ledger),
            # Found in the spool at start-up and not read yet: not in the figures above.
            "loading": scheduler.loading,
            "oldest_age_s": round(max(0.0, now - oldest), 3) if oldest is not None else 0.0,
        },
        "destinations": ledger.destinations(top),
    }


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw)
    except ValueError:
        raise Problem(400, "bad_request", f"limit: {raw!r} is not a number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise Problem(400, "bad_request", f"limit: must be from 1 to {MAX_LIMIT}")
    return limit


async def list_queue(request: web.Request) -> web.Response:
    """``GET /queue[?state=S][&domain=D][&limit=N][&after=QID]``: at most ``limit``
    messages (default DEFAULT_LIMIT) in QID order, i.e. oldest first, after ``after``;
    ``next`` is the ``after`` of the next page (null on the last one), ``total`` the
    number of queued messages that match. Only the listed envelopes are read."""
    ctx = context(request)
    state = request.query.get("state")
    if state is not None and state not in QUEUE_STATES:
        raise Problem(
            400, "bad_request", f"state: {state!r} is not one of {', '.join(QUEUE_STATES)}"
        )
    domain = request.query.get("domain", "").strip().rstrip(".").lower() or None
    after = request.query.get("after") or None
    if after is not None and not ids.is_valid(after):
        raise Problem(400, "bad_request", f"after: {after!r} is not a queue ID")
    limit = _limit(request)
    entries, following = await ctx.scheduler.listing(after, limit, state, domain)
    now = ctx.scheduler.clock()
    listed = [entry_json(entry, now) for entry in entries]
    return web.json_response(
        {
            "messages": listed,
            "total": ctx.scheduler.ledger.matching(state, domain),
            "next": following,
            # Queued messages not read yet since the start (neither listed nor counted).
            "loading": ctx.scheduler.loading,
        }
    )


async def _qids(request: web.Request, *, required: bool) -> list[str] | None:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise Problem(400, "bad_request", 'send {"qids": ["QID", ...]}')
        return None
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise Problem(400, "bad_request", f"the body is not JSON: {e}") from None
    except RecursionError:  # json's C parser recurses once per [ or {
        raise Problem(400, "bad_request", "the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise Problem(400, "bad_request", 'the body must be an object: {"qids": [...]}')
    unknown = set(body) - {"qids"}
    if unknown:
        raise Problem(400, "bad_request", f"unknown key(s): {', '.join(sorted(unknown))}")
    if "qids" not in body:
        if required:
            raise Problem(400, "bad_request", 'qids: required, e.g. {"qids": ["QID"]}')
        return None
    qids = body["qids"]
    if not isinstance(qids, list) or not qids or not all(isinstance(q, str) for q in qids):
        raise Problem(400, "bad_request", "qids: must be a non-empty list of queue IDs")
    if len(qids) > MAX_QIDS:
        raise Problem(400, "bad_request", f"qids: at most {MAX_QIDS} per request")
    for qid in qids:
        if not ids.is_valid(qid):
            raise Problem(400, "bad_request", f"qids: {qid!r} is not a queue ID")
    return list(dict.fromkeys(qids))


async def flush(request: web.Request) -> web.Response:
    qids = await _qids(request, required=False)
    results = await context(request).scheduler.flush(qids)
    if qids is None:
        return web.json_response({"action": "flush", "flushed": len(results)})
    return web.json_response({"action": "flush", "results": results})


def action(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of ``POST /queue/<name>`` for hold, release, delete and bounce."""

    async def handle(request: web.Request) -> web.Response:
        qids = await _qids(request, required=True)
        assert qids is not None
        scheduler = context(request).scheduler
        do = {
            "hold": scheduler.hold,
            "release": scheduler.release,
            "delete": scheduler.delete,
            "bounce": scheduler.bounce,
        }[name]
        return web.json_response({"action": name, "results": await do(qids)})

    return handle
