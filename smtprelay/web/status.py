"""``GET /status``, ``GET /metrics`` and ``GET /messages/{qid}``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from smtprelay import __version__, ids
from smtprelay.envelope import Envelope, QueueState
from smtprelay.queueview import is_scheduled
from smtprelay.stats import QUEUE_STATES
from smtprelay.web.context import Context, Problem, context
from smtprelay.web.queue import queue_summary

MAX_TOP = 1000


def listeners(ctx: Context) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        {
            "protocol": "smtp",
            "address": str(state.endpoint),
            "tls": "implicit" if state.implicit_tls else "none" if state.local else "starttls",
            "serving": state.serving,
            **({"legacy_tls": True} if state.legacy_tls else {}),
        }
        for state in ctx.inbound.states()
    ]
    found += [
        {"protocol": "http", "address": a, "tls": "none", "serving": True}
        for a in ctx.http_endpoints
    ]
    return found


async def status(request: web.Request) -> web.Response:
    ctx = context(request)
    try:
        top = int(request.query.get("top", "10"))
    except ValueError:
        raise Problem(400, "bad_request", "top: not a number") from None
    if not 0 <= top <= MAX_TOP:
        raise Problem(400, "bad_request", f"top: must be from 0 to {MAX_TOP}")
    queue = queue_summary(ctx.scheduler, top)
    queue["queue"]["attempting"] = ctx.scheduler.attempting
    return web.json_response(
        {
            "version": __version__,
            "uptime_s": round(ctx.uptime, 3),
            "listeners": listeners(ctx),
            "connections": ctx.inbound.session_count,
            "queue": queue["queue"],
            "counters": ctx.stats.counters(),
            "destinations": queue["destinations"],
            # Upstreams with rate limits or paused after "slow down" (delivery/ratelimits.py).
            "upstreams": ctx.scheduler.ratelimits.states(),
            "event_loop_lag_s": round(ctx.health.monitor.current, 3),
            "history_messages": ctx.stats.remembered,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    ctx = context(request)
    stats = ctx.stats
    queue = queue_summary(ctx.scheduler, top=0)["queue"]
    for state in QUEUE_STATES:
        stats.metrics.queue_messages.labels(state).set(queue[state])
    stats.metrics.queue_oldest.set(queue["oldest_age_s"])
    stats.metrics.open_connections.set(ctx.inbound.session_count)
    stats.metrics.attempting.set(ctx.scheduler.attempting)
    stats.metrics.loop_lag.set(ctx.health.monitor.current)
    body = generate_latest(stats.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def message(request: web.Request) -> web.Response:
    """The envelope (from the spool while queued, else as accepted, with each
    recipient's final state) and every event the log had for this queue ID."""
    ctx = context(request)
    qid = request.match_info["qid"]
    if not ids.is_valid(qid):
        raise Problem(404, "not_found", f"{qid!r} is not a queue ID")
    loop = asyncio.get_running_loop()
    envelope: Envelope | None
    try:
        envelope = await loop.run_in_executor(None, ctx.scheduler.spool.load, qid)
    except FileNotFoundError:
        envelope = None
    except (OSError, ValueError) as e:
        raise Problem(500, "spool_error", f"{qid}: cannot read the envelope: {e}") from None
    history = ctx.stats.history(qid)
    if envelope is None and history is None:
        raise Problem(404, "not_found", f"no message {qid} in the queue or in the recent history")
    shown: dict[str, Any] | None = None
    if envelope is not None:
        shown = json.loads(envelope.to_json())
        if envelope.state is QueueState.HOLD:
            state = "hold"
        elif ctx.scheduler.is_attempting(qid):
            state = "attempting"
        elif is_scheduled(envelope, ctx.scheduler.clock()):
            state = "scheduled"
        elif ctx.scheduler.ledger.state(qid) == "rate-limited":
            state = "rate-limited"
        else:
            state = envelope.state.value
    else:
        assert history is not None
        state = history.outcome
        if history.envelope is not None:
            shown = history.settled(json.loads(history.envelope))
    return web.json_response(
        {
            "qid": qid,
            "status": state,
            "in_queue": envelope is not None,
            "envelope": shown,
            "events": history.events if history else [],
            # False when events are missing: the daemon restarted since the message came,
            # or the history was too long and its middle was dropped.
            "history_complete": bool(history and history.queued and not history.omitted),
            "events_omitted": history.omitted if history else 0,
        }
    )
