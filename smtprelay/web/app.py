"""The HTTP endpoint: routes, start and stop (the bearer-token check and the JSON errors
are the middleware of ``web.middleware``).

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
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from smtprelay.config import Settings
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.errors import RelayError
from smtprelay.events import api as events_api
from smtprelay.inbound.server import Listeners, listen
from smtprelay.spool import Spool
from smtprelay.stats import Stats
from smtprelay.units import Endpoint
from smtprelay.web import (
    middleware,
    openapi,
    queue,
    status,
    submission,
    template_api,
    tracking,
)
from smtprelay.web.connections import ConnectionCap
from smtprelay.web.context import CONTEXT, Context, context, error
from smtprelay.web.fronts import Feeds, Fronts, FrontStartError
from smtprelay.web.health import Health, LoopMonitor, SpoolProbe
from smtprelay.web.limits import InFlight
from smtprelay.web.middleware import MAX_BODY
from smtprelay.web.serverlog import server_logger
from smtprelay.web.templates import TemplateStore
from smtprelay.web.tokens import TokenFile

log = logging.getLogger("smtprelay.http")

# Paths whose answer reads envelopes from the spool (up to a page of them): fewer of them
# run at once. /status and /metrics read only the in-memory counts.
HEAVY_PATHS = frozenset({"/queue"})
SHUTDOWN_TIMEOUT = 3.0
KEEPALIVE = 15.0


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
    app = web.Application(
        middlewares=[middleware.errors, middleware.auth, limit.middleware],
        client_max_size=MAX_BODY,
    )
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

    def __init__(self, ctx: Context, endpoint: Endpoint, config_path: Path, feeds: Feeds) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.config_path = config_path
        # With [http] workers: what the fronts queue and log goes here (the daemon's).
        self.feeds = feeds
        self.fronts: Fronts | None = None
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
        """Serve on the bound sockets: through the fronts (``[http] workers``), which
        hand this process the connections they do not serve, or here."""
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        self.connections.install(server)
        workers = self.ctx.settings.http.workers
        if workers:
            fronts = Fronts(workers, self.config_path, self._sockets, server, self.feeds)
            try:
                await fronts.start()
            except (OSError, FrontStartError) as e:
                raise HttpStartError(f"[http] workers: {e}") from None
            self.fronts = fronts
            self.ctx.http_endpoints = [str(Endpoint(*s.getsockname()[:2])) for s in self._sockets]
            return
        for sock in self._sockets:
            await web.SockSite(self._runner, sock, shutdown_timeout=SHUTDOWN_TIMEOUT).start()
        self._sockets = []  # the sites' now
        self.ctx.http_endpoints = [str(Endpoint(*addr[:2])) for addr in self._runner.addresses]

    async def run(self) -> None:
        """The loop monitor that /healthz reads, and the fronts' supervisor."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.ctx.health.monitor.run())
            if self.fronts is not None:
                group.create_task(self.fronts.run())

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
        if self.fronts is not None:
            self.fronts.reload()

    def stopping(self) -> None:
        """The daemon is stopping: new submissions get 503 with Retry-After (the other
        paths, /healthz and status among them, keep answering until :meth:`stop`)."""
        self.ctx.stopping = True
        if self.fronts is not None:
            self.fronts.stopping()  # they hand every request to this process

    async def stop(self) -> None:
        if self.fronts is not None:
            await self.fronts.close()
        await self._runner.cleanup()
        for sock in self._sockets:  # the fronts', or bound but never served
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
            f"[spool] dir {settings.spool.dir}: cannot use its templates folder: {e.strerror or e}"
        ) from None
    return store


def bind(
    settings: Settings,
    scheduler: Scheduler,
    inbound: Listeners,
    stats: Stats,
    spool: Spool,
    delivering: Callable[[], bool],
    config_path: Path,
    feeds: Feeds,
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
        if server.fronts is not None and not server.fronts.serving:
            down.append(f"{endpoint} (an HTTP front is starting again)")
        return down

    health = Health(SpoolProbe(spool.queue_dir), LoopMonitor(), listeners_down, delivering)
    ctx = Context(settings, scheduler, inbound, stats, health, _tokens(settings))
    ctx.penalty.cap = settings.http.bad_token_max_delay
    ctx.templates = _templates(settings)
    server = HttpServer(ctx, endpoint, config_path, feeds)
    try:
        server.bind()
    except OSError as e:
        health.probe.close()
        reason = e.strerror or str(e)
        raise HttpStartError(f"[http] listen {endpoint}: cannot listen: {reason}") from None
    return server
