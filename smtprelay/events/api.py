"""``/v1/events``, ``/v1/messages/{id}/events`` and ``/v1/webhooks``: the HTTP side of
the events stage. Reading events needs scope ``read``; webhooks need ``admin``. Every
error is RFC 9457 problem+json (:mod:`smtprelay.web.problem`)."""

from __future__ import annotations

import secrets

from aiohttp import web

from smtprelay.events.outbox import Endpoint
from smtprelay.events.service import EventService
from smtprelay.events.types import valid_pattern
from smtprelay.events.webhooks import UnsafeUrl, check_url, endpoint_json, new_secret, valid_secret
from smtprelay.web import problem
from smtprelay.web.context import context, require

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
WEBHOOK_FIELDS = frozenset({"url", "events", "allow_private", "secret"})
# Each route is declared on its handler.
_ROUTES = web.RouteTableDef()


def _service(request: web.Request) -> EventService:
    service = context(request).events
    if service is None or service.store is None:
        raise problem.ApiProblem(
            503,
            "unavailable",
            "Service unavailable",
            "the event store is not open",
            headers={"Retry-After": "5"},
        )
    assert isinstance(service, EventService)
    return service


def _query(request: web.Request) -> tuple[int, int, list[str]]:
    errors: list[problem.FieldError] = []
    after = limit = 0
    raw_after = request.query.get("after", "0") or "0"
    if raw_after.isdigit() and len(raw_after) < 19:
        after = int(raw_after)
    else:
        errors.append(
            problem.FieldError("/after", "not a cursor (pass next_cursor as it was given)")
        )
    raw_limit = request.query.get("limit", str(DEFAULT_LIMIT))
    if raw_limit.isdigit() and 1 <= int(raw_limit) <= MAX_LIMIT:
        limit = int(raw_limit)
    else:
        errors.append(problem.FieldError("/limit", f"an integer from 1 to {MAX_LIMIT}"))
    types: list[str] = []
    for value in request.query.getall("type", []):
        for pattern in filter(None, (p.strip() for p in value.split(","))):
            if valid_pattern(pattern):
                types.append(pattern)
            else:
                errors.append(
                    problem.FieldError(
                        "/type", f"{pattern!r} is not an event type or pattern such as recipient.*"
                    )
                )
    if errors:
        raise problem.invalid(errors, "invalid query parameters")
    return after, limit, types


@_ROUTES.get("/v1/events")
async def list_events(request: web.Request) -> web.Response:
    require(request, "read")
    service = _service(request)
    after, limit, types = _query(request)
    qid = request.query.get("qid") or None
    assert service.store is not None
    events, cursor = await service.db.run(service.store.page, after, limit, types, qid)
    return web.json_response({"events": events, "next_cursor": str(cursor)})


@_ROUTES.get("/v1/messages/{id}/events")
async def message_events(request: web.Request) -> web.Response:
    require(request, "read")
    service = _service(request)
    qid = request.match_info["id"]
    after, limit, types = _query(request)
    store = service.store
    assert store is not None
    events, cursor = await service.db.run(store.page, after, limit, types, qid)
    if not events and after == 0 and not await service.db.run(store.count_for, qid):
        raise problem.not_found(f"no events for message {qid}")
    return web.json_response({"events": events, "next_cursor": str(cursor)})


@_ROUTES.post("/v1/webhooks")
async def create_webhook(request: web.Request) -> web.Response:
    require(request, "admin")
    service = _service(request)
    body = await problem.json_object(request)
    errors = [
        problem.FieldError(f"/{key}", "unknown field") for key in body if key not in WEBHOOK_FIELDS
    ]
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        errors.append(problem.FieldError("/url", "an http:// or https:// URL is required"))
    events = body.get("events", [])
    if not isinstance(events, list):
        errors.append(problem.FieldError("/events", "a list of event types or patterns"))
        events = []
    for i, pattern in enumerate(events):
        if not isinstance(pattern, str) or not valid_pattern(pattern):
            errors.append(problem.FieldError(f"/events/{i}", "not an event type or pattern"))
    allow_private = body.get("allow_private", False)
    if not isinstance(allow_private, bool):
        errors.append(problem.FieldError("/allow_private", "true or false"))
    secret = body.get("secret") or new_secret()
    if not isinstance(secret, str) or not valid_secret(secret):
        errors.append(problem.FieldError("/secret", "whsec_ and the base64 of 16 bytes or more"))
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        try:
            await check_url(url, allow_private is True)
        except UnsafeUrl as e:
            errors.append(problem.FieldError("/url", str(e)))
    if errors:
        raise problem.invalid(errors)
    endpoint = Endpoint(
        id="wh_" + secrets.token_hex(8),
        source="api",
        url=str(url),
        events=tuple(events),
        secrets=(str(secret),),
        allow_private=bool(allow_private),
        created=service.clock(),
    )
    await service.add_webhook(endpoint)
    shown = endpoint_json(endpoint, {"secret": secret, "backlog": 0, "last_errors": []})
    return web.json_response(shown, status=201, headers={"Location": f"/v1/webhooks/{endpoint.id}"})


@_ROUTES.get("/v1/webhooks")
async def list_webhooks(request: web.Request) -> web.Response:
    require(request, "admin")
    service = _service(request)
    outbox = service._outbox()
    endpoints = await service.db.run(outbox.endpoints)
    backlog = await service.db.run(outbox.backlog)
    return web.json_response(
        {"webhooks": [endpoint_json(e, {"backlog": backlog.get(e.id, 0)}) for e in endpoints]}
    )


@_ROUTES.get("/v1/webhooks/{id}")
async def show_webhook(request: web.Request) -> web.Response:
    require(request, "admin")
    service = _service(request)
    outbox = service._outbox()
    webhook = request.match_info["id"]
    endpoint = await service.db.run(outbox.get, webhook)
    if endpoint is None:
        raise problem.not_found(f"no webhook {webhook}")
    backlog = await service.db.run(outbox.backlog_of, webhook)
    errors = await service.db.run(outbox.errors, webhook)
    next_at = await service.db.run(outbox.next_due, webhook)
    return web.json_response(
        endpoint_json(
            endpoint, {"backlog": backlog, "last_errors": errors, "next_attempt_at": next_at}
        )
    )


@_ROUTES.delete("/v1/webhooks/{id}")
async def delete_webhook(request: web.Request) -> web.Response:
    require(request, "admin")
    service = _service(request)
    webhook = request.match_info["id"]
    endpoint = await service.db.run(service._outbox().get, webhook)
    if endpoint is None:
        raise problem.not_found(f"no webhook {webhook}")
    if endpoint.source == "config":
        raise problem.conflict(
            f"webhook {webhook} is in the config file ([[webhooks]]): remove it there and restart"
        )
    await service.remove_webhook(webhook)
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_routes(_ROUTES)
