"""The HTTP endpoint: routes, bearer-token check, JSON errors, start and stop.

Every path but ``/healthz`` needs ``Authorization: Bearer <token>`` with a token from
``[http] tokens_file``; without one the answer is 401 with a JSON error, as is every
other error: ``{"error": {"code": "...", "message": "..."}}``.

Request hygiene: a wrong token is logged and answered after a delay per client address
(``web.guard``); at most ``[http] max_requests`` requests with a good token are served
at once (``web.limits``), and connections are bounded per address and in all
(``web.connections``); every refused request is one log line, and so is every
request aiohttp cannot parse (``web.serverlog``), never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from smtprelay.clientkey import client_key
from smtprelay.config import Settings
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.errors import RelayError
from smtprelay.events import api as events_api
from smtprelay.inbound.server import Listeners, listen
from smtprelay.spool import Spool
from smtprelay.stats import Stats
from smtprelay.units import Endpoint
from smtprelay.web import openapi, queue, status, submission, template_api, tracking
from smtprelay.web.connections import ConnectionCap
from smtprelay.web.context import CONTEXT, TOKEN, V1, Context, Problem, context, error
from smtprelay.web.health import Health, LoopMonitor, SpoolProbe
from smtprelay.web.limits import InFlight
from smtprelay.web.problem import ApiProblem
from smtprelay.web.serverlog import printable, server_logger
from smtprelay.web.templates import TemplateStore
from smtprelay.web.tokens import Token, TokenFile

log = logging.getLogger("smtprelay.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", openapi.PATH})
# Paths whose answer reads envelopes from the spool (up to a page of them): fewer of them
# run at once. /status and /metrics read only the in-memory counts.
HEAVY_PATHS = frozenset({"/queue"})
MAX_BODY = 1024 * 1024
SHUTDOWN_TIMEOUT = 3.0
KEEPALIVE = 15.0


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
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
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
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


async def healthz(request: web.Request) -> web.Response:
    checks = await context(request).health.checks()
    failing = {name: result for name, result in checks.items() if result != "ok"}
    if not failing:
        return web.json_response({"status": "ok", "checks": checks})
    return error(
        503,
        "unhealthy",
        "; ".join(f"{k}: {v}" for k, v in failing.items()),
        {"status": "unhealthy", "checks": checks},
    )


def build(ctx: Context) -> web.Application:
    # The bound is outside the token check: a request holds a slot only once its token
    # is good, so failed guesses sleeping out their delay never crowd out valid ones.
    limit = InFlight(ctx.settings.http.max_requests, heavy_paths=HEAVY_PATHS)
    app = web.Application(middlewares=[_errors, _auth, limit.middleware], client_max_size=MAX_BODY)
    app[CONTEXT] = ctx
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/status", status.status)
    app.router.add_get("/metrics", status.metrics)
    app.router.add_get("/messages/{qid}", status.message)
    app.router.add_get("/queue", queue.list_queue)
    app.router.add_post("/queue/flush", queue.flush)
    for name in ("hold", "release", "delete", "bounce"):
        app.router.add_post(f"/queue/{name}", queue.action(name))
    # The JSON submission API (POST /v1/messages, /v1/messages/batch).
    submission.install(app, ctx)
    tracking.register(app)
    template_api.register(app)
    openapi.register(app)
    events_api.add_routes(app)  # /v1/events, /v1/webhooks
    return app


class HttpStartError(RelayError):
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
        # No access log; aiohttp's complaints about malformed requests become one
        # warning line each (serverlog). Handlers are not cancelled when the client
        # goes away: a queue operation is never cut off halfway. Idle keep-alive
        # connections close after KEEPALIVE s, not aiohttp's hour.
        self._runner = web.AppRunner(
            build(ctx),
            access_log=None,
            logger=server_logger(),
            handler_cancellation=False,
            keepalive_timeout=KEEPALIVE,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        self.connections = ConnectionCap()
        self._sockets: list[socket.socket] = []

    def bind(self) -> None:
        """Bind ``endpoint`` (every address its host name has); raises OSError if it
        cannot."""
        self._sockets = listen(self.endpoint)

    async def start(self) -> None:
        """Serve on the bound sockets."""
        await self._runner.setup()
        assert self._runner.server is not None
        self.connections.install(self._runner.server)
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
        if settings.http.max_requests != old.max_requests:
            log.warning("reload: [http] max_requests changes only on restart")
        self.ctx.penalty.cap = settings.http.bad_token_max_delay
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
    except ValueError as e:
        raise HttpStartError(f"[http] tokens_file {path}: {e}") from None


def _templates(settings: Settings) -> TemplateStore:
    store = TemplateStore(Path(settings.spool.dir) / "templates")
    try:
        store.load()
    except OSError as e:
        raise HttpStartError(
            f"[spool] dir {settings.spool.dir}: cannot use its templates folder: "
            f"{e.strerror or e}") from None
    return store


def bind(
    settings: Settings,
    scheduler: Scheduler,
    inbound: Listeners,
    stats: Stats,
    spool: Spool,
    delivering: Callable[[], bool],
) -> HttpServer:
    """The endpoint of ``[http] listen``, bound but not serving yet (``start`` it);
    raises HttpStartError naming the key. ``delivering``: is the delivery loop running
    (for /healthz)?"""
    endpoint = settings.http.listen
    assert endpoint is not None

    def listeners_down() -> list[str]:
        down = [str(state.endpoint) for state in inbound.states() if not state.serving]
        # A relay whose every slot is taken admits nobody: not healthy for a balancer.
        limit = ctx.settings.server.max_connections
        if inbound.session_count >= limit:
            down.append(f"all {limit} SMTP connection slots in use")
        return down

    health = Health(SpoolProbe(spool.queue_dir), LoopMonitor(), listeners_down, delivering)
    ctx = Context(settings, scheduler, inbound, stats, health, _tokens(settings))
    ctx.penalty.cap = settings.http.bad_token_max_delay
    ctx.templates = _templates(settings)
    server = HttpServer(ctx, endpoint)
    try:
        server.bind()
    except OSError as e:
        health.probe.close()
        reason = e.strerror or str(e)
        raise HttpStartError(f"[http] listen {endpoint}: cannot listen: {reason}") from None
    return server
