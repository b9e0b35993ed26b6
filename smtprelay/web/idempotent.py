"""One submission request's frame, around what it submits: who sent it (the token and
the client address), its body read within a limit, and its ``Idempotency-Key`` -- the
first answer recorded and replayed to a repeat (:mod:`smtprelay.web.idempotency` keeps
the records). :mod:`smtprelay.web.submission` gives the handler that answers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from smtprelay import maillog
from smtprelay.web import intake
from smtprelay.web.context import context, require
from smtprelay.web.idempotency import MAX_KEY, Conflict, IdempotencyStore, Record
from smtprelay.web.idempotency import fingerprint as fingerprint_of
from smtprelay.web.problem import (
    MEDIA_TYPE,
    ApiProblem,
    FieldError,
    conflict,
    invalid,
    json_response,
    too_large,
    unsupported_media,
)

STORE = web.AppKey("idempotency", IdempotencyStore)
JSON = "application/json"


async def _read(request: web.Request, limit: int, origin: intake.Origin) -> bytes:
    """The body, refused with 413 past ``limit`` (the app's small default limit is for
    the other paths); the refusal is logged as a rejection (a ``message.rejected``
    event), as a message over ``max_message_size`` is."""
    try:
        return await _read_within(request, limit)
    except ApiProblem as p:
        maillog.http_reject(origin.ip, origin.token.name, p.body())
        raise


async def _read_within(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise too_large(f"the body is {request.content_length} bytes, more than {limit}")
    data = bytearray()
    while chunk := await request.content.read(1 << 16):
        data += chunk
        if len(data) > limit:
            raise too_large(f"the body is larger than {limit} bytes")
    return bytes(data)


def _origin(request: web.Request) -> intake.Origin:
    token = require(request, "send")
    peer = request.transport.get_extra_info("peername") if request.transport else None
    port = int(peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else 0
    return intake.Origin(token, request.remote or "unknown", port)


# The Idempotency-Key (as TOKEN-NAME:KEY) and the fingerprint of the request.
Keyed = tuple[str, str]
# (request, body, origin, keyed or None) -> (status, body)
Handler = Callable[
    [web.Request, bytes, intake.Origin, Keyed | None], Awaitable[tuple[int, dict[str, Any]]]
]


async def idempotent(
    request: web.Request, limit: int, media: tuple[str, ...], handle: Handler
) -> web.Response:
    """Read the body, then answer it, or replay the answer of its Idempotency-Key."""
    origin = _origin(request)
    given = request.content_type
    if given not in media:
        raise unsupported_media(given, " or ".join(media))
    key = _key(request, origin)
    if key is None:
        body = await _read(request, limit, origin)
        status, answer = await handle(request, body, origin, None)
        return _respond(status, answer)
    store = request.app[STORE]
    try:
        record = store.begin(key)
    except Conflict:
        raise conflict(
            "a request with this Idempotency-Key is still in flight", "idempotency-in-flight"
        ) from None
    try:
        body = await _read(request, limit, origin)
    except BaseException:
        if record is None:
            store.abandon(key)
        raise
    print_ = fingerprint_of(request.method, request.path_qs, given, body)
    if record is not None:
        if record.fingerprint != print_:
            raise invalid(
                [FieldError("", "this Idempotency-Key was used with another request")],
                "Idempotency-Key reused with a different request",
            )
        response = _respond(record.status, record.body)
        response.headers["Idempotent-Replayed"] = "true"
        return response
    expires = context(request).settings.http.idempotency_retention
    try:
        status, answer = await handle(request, body, origin, (key, print_))
    except ApiProblem as p:
        if p.status >= 500:
            store.abandon(key)
        else:
            record = Record(key, print_, p.status, p.body(), time.time() + expires)
            store.finish(record, durable=False)
        raise
    except BaseException:
        store.abandon(key)
        raise
    return _respond(status, answer)


def _key(request: web.Request, origin: intake.Origin) -> str | None:
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':  # an RFC 8941 sf-string
        value = value[1:-1]
    if not value or len(value) > MAX_KEY or not value.isprintable() or not value.isascii():
        raise ApiProblem(
            400,
            "invalid-idempotency-key",
            "Invalid Idempotency-Key",
            f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters",
        )
    return f"{origin.token.name}:{value}"


def _respond(status: int, body: dict[str, Any]) -> web.Response:
    headers = {}
    if status == 202 and "id" in body:
        headers["Location"] = f"/v1/messages/{body['id']}"
    return json_response(status, body, MEDIA_TYPE if status >= 400 else JSON, headers)
