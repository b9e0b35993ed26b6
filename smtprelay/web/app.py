"""The HTTP endpoint: routes, bearer-token check, JSON errors, start and stop.

Every path but ``/healthz`` needs ``Authorization: Bearer <token>`` with a token from
``[http] tokens_file``; without one the answer is 401 with a JSON error, as is every
other error: ``{"error": {"code": "...", "message": "..."}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from smtprelay.config import Settings
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.inbound.server import Listeners
from smtprelay.spool import Spool
from smtprelay.stats import Stats
from smtprelay.units import Endpoint
from smtprelay.web import queue, status
from smtprelay.web.context import CONTEXT, Context, Problem, context, error
from smtprelay.web.health import Health, LoopMonitor, SpoolProbe
from smtprelay.web.tokens import TokenFile

log = logging.getLogger("smtprelay.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz"})
MAX_BODY = 1024 * 1024
SHUTDOWN_TIMEOUT = 3.0


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as p:
        return error(p.status, p.code, p.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed",
                413: "payload_too_large"}.get(e.status, "http_error")
        message = e.reason if e.status != 404 else f"no such path: {request.path}"
        response = error(e.status, code, message)
        if e.status == 405:
            response.headers["Allow"] = e.headers.get("Allow", "")
        return response
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return error(500, "internal_error", "internal error (details in the log)")


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in OPEN_PATHS:
        return await handler(request)
    tokens = context(request).tokens
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        message = tokens.problem or "a bearer token is required (Authorization: Bearer ...)"
    elif not tokens.check(presented):
        message = tokens.problem or "the bearer token is not valid"
    else:
        return await handler(request)
    response = error(401, "unauthorized", message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="smtprelay"'
    return response


async def healthz(request: web.Request) -> web.Response:
    checks = await context(request).health.checks()
    failing = {name: result for name, result in checks.items() if result != "ok"}
    if not failing:
        return web.json_response({"status": "ok", "checks": checks})
    return error(503, "unhealthy", "; ".join(f"{k}: {v}" for k, v in failing.items()),
                 {"status": "unhealthy", "checks": checks})


def build(ctx: Context) -> web.Application:
    app = web.Application(middlewares=[_errors, _auth], client_max_size=MAX_BODY)
    app[CONTEXT] = ctx
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/status", status.status)
    app.router.add_get("/metrics", status.metrics)
    app.router.add_get("/messages/{qid}", status.message)
    app.router.add_get("/queue", queue.list_queue)
    app.router.add_post("/queue/flush", queue.flush)
    for name in ("hold", "release", "delete", "bounce"):
        app.router.add_post(f"/queue/{name}", queue.action(name))
    return app


class HttpStartError(Exception):
    """The endpoint cannot start; the message names the [http] key."""


class HttpServer:
    """The aiohttp site and the event-loop monitor that /healthz reads."""

    def __init__(self, ctx: Context, endpoint: Endpoint) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self._runner = web.AppRunner(build(ctx), access_log=None,
                                     shutdown_timeout=SHUTDOWN_TIMEOUT)
        self._monitor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind ``endpoint``; raises OSError if it cannot."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.endpoint.host, self.endpoint.port,
                           reuse_address=True, backlog=128)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        self.ctx.http_endpoints = [str(Endpoint(*addr[:2])) for addr in self._runner.addresses]
        self._monitor = asyncio.get_running_loop().create_task(self.ctx.health.monitor.run())

    @property
    def endpoints(self) -> list[str]:
        return self.ctx.http_endpoints

    def reload(self, settings: Settings) -> None:
        """SIGHUP: a new tokens file applies at once; the address needs a restart."""
        old = self.ctx.settings.http
        if settings.http.listen != old.listen:
            log.warning("reload: [http] listen changes only on restart")
        if settings.http.history_retention != old.history_retention:
            self.ctx.stats.retention = settings.http.history_retention
        if settings.http.tokens_file != old.tokens_file:
            try:
                self.ctx.tokens = _tokens(settings)
            except HttpStartError as e:
                log.error("reload: %s; no HTTP token is accepted until it is fixed", e)
                self.ctx.tokens = TokenFile(Path(settings.http.tokens_file), strict=False)
        self.ctx.settings = settings

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self._runner.cleanup()
        self.ctx.health.probe.close()


def _tokens(settings: Settings) -> TokenFile:
    path = settings.http.tokens_file
    try:
        return TokenFile(Path(path) if path else None)
    except OSError as e:
        raise HttpStartError(f"[http] tokens_file {path}: {e.strerror or e}") from None


async def start(
    settings: Settings, scheduler: Scheduler, inbound: Listeners, stats: Stats,
    spool: Spool,
) -> HttpServer:
    """The endpoint of ``[http] listen``, serving; raises HttpStartError naming the key."""
    endpoint = settings.http.listen
    assert endpoint is not None

    def listeners_down() -> list[str]:
        down = [str(state.endpoint) for state in inbound.states() if not state.serving]
        # A relay whose every slot is taken admits nobody: not healthy for a balancer.
        limit = ctx.settings.server.max_connections
        if inbound.session_count >= limit:
            down.append(f"all {limit} SMTP connection slots in use")
        return down

    health = Health(SpoolProbe(spool.queue_dir), LoopMonitor(), listeners_down)
    ctx = Context(settings, scheduler, inbound, stats, health, _tokens(settings))
    server = HttpServer(ctx, endpoint)
    try:
        await server.start()
    except OSError as e:
        health.probe.close()
        # aiohttp rewords the error ("error while attempting to bind on address ..."):
        # the plain system message names the problem best.
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise HttpStartError(f"[http] listen {endpoint}: cannot listen: {reason}") from None
    return server
