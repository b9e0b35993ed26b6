"""The HTTP endpoint: routes, bearer-token check, JSON errors, start and stop.

Every path but ``/healthz`` needs ``Authorization: Bearer <token>`` with a token from
``[http] tokens_file``; without one the answer is 401 with a JSON error, as is every
other error: ``{"error": {"code": "...", "message": "..."}}``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from smtprelay.config import Settings
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.inbound.server import Listeners, listen
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
    """The aiohttp site and the event-loop monitor that /healthz reads.

    Started in steps so that the daemon binds every listener before any serves:
    :meth:`bind` (may fail: the port is taken), :meth:`start` (serve), :meth:`run`
    (the monitor, a long-lived task of the daemon), :meth:`stop`.
    """

    def __init__(self, ctx: Context, endpoint: Endpoint) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self._runner = web.AppRunner(build(ctx), access_log=None,
                                     shutdown_timeout=SHUTDOWN_TIMEOUT)
        self._sockets: list[socket.socket] = []

    def bind(self) -> None:
        """Bind ``endpoint`` (every address its host name has); raises OSError if it
        cannot."""
        self._sockets = listen(self.endpoint)

    async def start(self) -> None:
        """Serve on the bound sockets."""
        await self._runner.setup()
        for sock in self._sockets:
            await web.SockSite(self._runner, sock, shutdown_timeout=SHUTDOWN_TIMEOUT).start()
        self.ctx.http_endpoints = [str(Endpoint(*addr[:2])) for addr in self._runner.addresses]

    async def run(self) -> None:
        await self.ctx.health.monitor.run()

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
        await self._runner.cleanup()
        for sock in self._sockets:  # bound but never served (a start that failed)
            sock.close()
        self.ctx.health.probe.close()


def _tokens(settings: Settings) -> TokenFile:
    path = settings.http.tokens_file
    try:
        return TokenFile(Path(path) if path else None)
    except OSError as e:
        raise HttpStartError(f"[http] tokens_file {path}: {e.strerror or e}") from None


def bind(
    settings: Settings, scheduler: Scheduler, inbound: Listeners, stats: Stats,
    spool: Spool, delivering: Callable[[], bool],
) -> HttpServer:
    """The endpoint of ``[http] listen``, bound but not serving yet (``start`` it);
    raises HttpStartError naming the key. ``delivering``: is the delivery loop running
    (for /healthz)?"""
    endpoint = settings.http.listen
    assert endpoint is not None

    def listeners_down() -> list[str]:
        return [str(state.endpoint) for state in inbound.states() if not state.serving]

    health = Health(SpoolProbe(spool.queue_dir), LoopMonitor(), listeners_down, delivering)
    ctx = Context(settings, scheduler, inbound, stats, health, _tokens(settings))
    server = HttpServer(ctx, endpoint)
    try:
        server.bind()
    except OSError as e:
        health.probe.close()
        reason = e.strerror or str(e)
        raise HttpStartError(f"[http] listen {endpoint}: cannot listen: {reason}") from None
    return server
