"""The queue over HTTP: ``GET /queue`` and the operator actions the CLI uses.

``POST /queue/flush`` (no body or ``{}``: every waiting message; ``{"qids": [...]}``:
those), ``POST /queue/hold``, ``/queue/release``, ``/queue/delete`` and ``/queue/bounce``
(each ``{"qids": [...]}``) answer ``{"action": ..., "results": {QID: outcome}}``; the
outcomes are those of :class:`smtprelay.delivery.scheduler.Scheduler`'s actions.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from smtprelay import ids
from smtprelay.addresses import domain_of
from smtprelay.delivery.scheduler import QueueEntry
from smtprelay.envelope import RecipientState
from smtprelay.queueview import queue_item
from smtprelay.stats import QUEUE_STATES
from smtprelay.web.context import Problem, context

MAX_QIDS = 10_000


def entry_json(entry: QueueEntry, now: float) -> dict[str, Any]:
    return queue_item(entry.envelope, entry.state, now)


def summary(entries: Iterable[QueueEntry], now: float, top: int = 10) -> dict[str, Any]:
    """Queue counts by state, the oldest message's age, and the biggest backlogs by
    recipient domain (pending recipients, and messages with any)."""
    states: Counter[str] = Counter(dict.fromkeys(QUEUE_STATES, 0))
    recipients: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    oldest: float | None = None
    total = 0
    for entry in entries:
        total += 1
        states[entry.state] += 1
        arrival = entry.envelope.arrival
        oldest = arrival if oldest is None else min(oldest, arrival)
        domains = [domain_of(r.address) for r in entry.envelope.recipients
                   if r.state is RecipientState.PENDING]
        recipients.update(domains)
        messages.update(set(domains))
    return {
        "queue": {
            **states,
            "total": total,
            "oldest_age_s": round(max(0.0, now - oldest), 3) if oldest is not None else 0.0,
        },
        "destinations": [
            {"domain": domain, "recipients": count, "messages": messages[domain]}
            for domain, count in recipients.most_common(top)
        ],
    }


async def list_queue(request: web.Request) -> web.Response:
    ctx = context(request)
    state = request.query.get("state")
    if state is not None and state not in QUEUE_STATES:
        raise Problem(400, "bad_request",
                      f"state: {state!r} is not one of {', '.join(QUEUE_STATES)}")
    domain = request.query.get("domain", "").strip().rstrip(".").lower() or None
    entries = await ctx.scheduler.snapshot()
    now = ctx.scheduler.clock()
    listed = []
    for entry in entries:
        if state is not None and entry.state != state:
            continue
        item = entry_json(entry, now)
        if domain is not None and not any(domain_of(a) == domain for a in item["recipients"]):
            continue
        listed.append(item)
    return web.json_response({"messages": listed, "total": len(listed)})


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
        do = {"hold": scheduler.hold, "release": scheduler.release,
              "delete": scheduler.delete, "bounce": scheduler.bounce}[name]
        return web.json_response({"action": name, "results": await do(qids)})

    return handle
