"""The HTTP endpoint's middleware: the bearer-token check (a wrong token answered after
the client's delay, ``web.guard``) and every error as JSON -- problem+json under ``/v1``,
``{"error": {...}}`` before it -- with one log line per refused request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from smtprelay.clientkey import client_key
from smtprelay.web import openapi
from smtprelay.web.context import TOKEN, V1, Context, Problem, context, error
from smtprelay.web.problem import ApiProblem
from smtprelay.web.serverlog import printable
from smtprelay.web.tokens import Token

log = logging.getLogger("smtprelay.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", openapi.PATH})
MAX_BODY = 1024 * 1024


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    api = request.path.startswith(V1)
    try:
        return await handler(request)
    except ApiProblem as p:
        return _refused(request, p.response(), p.detail)
    except Problem as p:
        if api:
            return _refused(
                request, ApiProblem(p.status, p.code, p.code, p.message).response(), p.message
            )
        return _refused(request, error(p.status, p.code, p.message), p.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            e.status, "http_error"
        )
        message = {
            404: f"no such path: {request.path}",
            413: f"the body is larger than {MAX_BODY} bytes",
        }.get(e.status, e.reason)
        headers = {"Allow": e.headers.get("Allow", "")} if e.status == 405 else None
        if api:
            slug = code.replace("_", "-")
            problem = ApiProblem(e.status, slug, e.reason, message, headers=headers)
            return _refused(request, problem.response(), message)
        response = error(e.status, code, message)
        if headers:
            response.headers.update(headers)
        return _refused(request, response, message)
    except Exception:
        log.exception(
            "HTTP %s %s failed",
            request.method,
            printable(request.raw_path),
            extra={"service": "http"},
        )
        if api:
            return ApiProblem(
                500, "internal-error", "Internal error", "internal error (details in the log)"
            ).response()
        return error(500, "internal_error", "internal error (details in the log)")


def _refused(request: web.Request, response: web.Response, message: str) -> web.Response:
    """One line per refused request (a 401 logs itself, see ``_penalise``):
    ``unknown[ADDR]: HTTP POST /queue/hold: 400 the body is nested too deeply``."""
    level = logging.INFO if response.status < 500 else logging.WARNING
    log.log(
        level,
        "unknown[%s]: HTTP %s %s: %d %s",
        printable(request.remote or "unknown"),
        request.method,
        printable(request.raw_path, 80),
        response.status,
        printable(message),
        extra={"service": "http"},
    )
    return response


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in OPEN_PATHS:
        return await handler(request)
    ctx = context(request)
    tokens = ctx.tokens
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        message = tokens.problem or "a bearer token is required (Authorization: Bearer ...)"
    elif (token := tokens.check(presented)) is None:
        message = tokens.problem or "the bearer token is not valid"
        if tokens.problem is None:  # tokens exist, so this was a guess, or a typo
            await _penalise(ctx, request)
    else:
        request[TOKEN] = token
        if not request.path.startswith(V1) and not _legacy_allowed(token, request):
            raise Problem(403, "forbidden", f"token {token.name} lacks scope admin")
        return await handler(request)
    if request.path.startswith(V1):
        return ApiProblem(
            401,
            "unauthorized",
            "Unauthorized",
            message,
            headers={"WWW-Authenticate": 'Bearer realm="smtprelay"'},
        ).response()
    response = error(401, "unauthorized", message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="smtprelay"'
    return response


def _legacy_allowed(token: Token, request: web.Request) -> bool:
    """The paths before /v1: the queue API needs scope admin; looking at status,
    metrics and one message's history is also open to scope read."""
    if token.allows("admin"):
        return True
    return (
        request.method in ("GET", "HEAD")
        and token.allows("read")
        and (request.path in ("/status", "/metrics") or request.path.startswith("/messages/"))
    )


async def _penalise(ctx: Context, request: web.Request) -> None:
    """One warning line (rate-limited per address), then the address's delay."""
    client = request.remote or "unknown"
    failures, delay = ctx.penalty.failure(client)
    left_out = ctx.log_budget.allow(client_key(client))
    if left_out is not None:
        more = f"; {left_out} more from this address not logged" if left_out else ""
        answered = f"answered after {delay:g}s" if delay > 0 else "answered at once"
        log.warning(
            "unknown[%s]: bad bearer token (%s %s; %d recent failure%s, %s)%s",
            printable(client),
            request.method,
            printable(request.raw_path, 80),
            failures,
            "" if failures == 1 else "s",
            answered,
            more,
            extra={"service": "http"},
        )
    if delay <= 0:
        return
    ctx.penalty.waiting += 1
    try:
        await asyncio.sleep(delay)
    finally:
        ctx.penalty.waiting -= 1
