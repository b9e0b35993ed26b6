"""Composition root: build every stage from the settings, run them, stop them in order.

Stages only meet here: the inbound intake tells the scheduler about each message it
has made durable (``on_queued``); neither imports the other.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from smtprelay import ids, systemd
from smtprelay.config import Settings
from smtprelay.delivery import loader
from smtprelay.delivery.notices import Notices
from smtprelay.delivery.resolver import Resolver
from smtprelay.delivery.routes import Router
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.delivery.transport import Timeouts, Transport
from smtprelay.dkimsign import DkimKeyError, Signer, load_keyring
from smtprelay.dkimsign.keys import describe
from smtprelay.envelope import Envelope
from smtprelay.errors import RelayError
from smtprelay.events.service import EventService, EventsStartError
from smtprelay.inbound import local
from smtprelay.inbound.server import (
    SHUTDOWN_GRACE,
    InboundServer,
    Listeners,
    bind,
    build_intake,
    users,
)
from smtprelay.inbound.workers import WorkerPool, WorkerStartError
from smtprelay.reload import Running, reload
from smtprelay.spool import Spool
from smtprelay.spool.recovery import Recovered, scan
from smtprelay.spool.store import SYNC_THREADS
from smtprelay.stats import Stats
from smtprelay.tasks import Supervisor, TaskDied
from smtprelay.tls import TLSError, server_context
from smtprelay.usersfile import UsersFileError

if TYPE_CHECKING:
    from smtprelay.web.app import HttpServer

log = logging.getLogger("smtprelay")


class StartupError(RelayError):
    """The daemon cannot start (spool, certificate, users file, listener); says why."""


class DaemonFault(RelayError):
    """A long-lived task died (logged with its traceback); the daemon has stopped."""


DELIVERY = "the delivery loop"


STATUS_PERIOD = 5.0


def _warn_legacy(settings: Settings) -> None:
    """The legacy-client profile weakens what the relay promises: say so at every start."""
    if settings.server.legacy_tls_listen:
        log.warning(
            "[server] legacy_tls_listen: TLS 1.0 and 1.1 (deprecated by RFC 8996) are "
            "accepted on %s; each such session is logged and counted "
            "(smtprelay_smtpd_legacy_tls_sessions_total)",
            ", ".join(str(e) for e in settings.server.legacy_tls_listen),
        )
    if settings.auth.plaintext_networks and not settings.auth.allow_plaintext:
        log.warning(
            "[auth] plaintext_networks: AUTH without TLS is allowed from %s",
            ", ".join(str(n) for n in settings.auth.plaintext_networks),
        )


def build_scheduler(
    settings: Settings,
    spool: Spool,
    on_notice: Callable[[Envelope], None] | None = None,
    signer: Signer | None = None,
) -> Scheduler:
    delivery = settings.delivery
    resolver = Resolver(
        delivery.nameservers,
        port=delivery.port,
        own_names=[settings.server.hostname],
        own_endpoints=[
            *settings.server.listen,
            *settings.server.listen_implicit_tls,
            *settings.server.legacy_tls_listen,
        ],
    )
    transport = Transport(
        helo_name=settings.server.hostname,
        ca_file=delivery.ca_file,
        timeouts=Timeouts(
            delivery.connect_timeout, delivery.command_timeout, delivery.data_timeout
        ),
        max_idle_per_hop=delivery.per_destination_concurrency,
        line_length_limit=delivery.line_length_limit,
        signer=signer or Signer(),
    )
    notices = Notices(spool, settings.bounce, settings.server.hostname, delivery.max_queue_lifetime)
    return Scheduler(
        spool, Router(delivery, resolver), transport, delivery, notices=notices, on_notice=on_notice
    )


async def serve(settings: Settings, path: Path) -> None:
    try:
        spool = Spool(Path(settings.spool.dir))
    except OSError as e:
        raise StartupError(f"[spool] dir {settings.spool.dir}: {e.strerror or e}") from None
    # The statistics and histories of the HTTP endpoint come from the mail log.
    stats = Stats(retention=settings.http.history_retention) if settings.http.listen else None
    if stats is not None:
        stats.attach()
    # Delivery events come from the same records (issue 13): attached before anything
    # is logged, committed to the event store by a task of their own.
    try:
        events = EventService(
            settings, stats.registry if stats is not None else None, load=spool.load
        )
        await events.open()
    except EventsStartError as e:
        if stats is not None:
            stats.detach()
        spool.close()
        raise StartupError(str(e)) from None
    events.attach()
    try:
        await _serve(settings, path, spool, stats, events)
    finally:
        await events.close()
        if stats is not None:
            stats.detach()
        spool.close()


async def _serve(
    settings: Settings, path: Path, spool: Spool, stats: Stats | None, events: EventService
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="spool")
    )
    try:
        signer = Signer(load_keyring(settings.dkim))  # a bad key file stops the start here
        if signer.keyring.keys:
            log.info("DKIM signing with %s", ", ".join(describe(signer.keyring.keys)))
        scheduler = build_scheduler(
            settings, spool, stats.note_queued if stats is not None else None, signer
        )
        # Before READY=1 only what safety needs: partial writes removed, names taken. The
        # envelopes are read after it, while the daemon serves (delivery.loader).
        recovered = Recovered()
        found = scan(spool, recovered)
        scheduler.loading = len(found)  # /status says so from the first request on
        scheduler.loaded.clear()
        log.info(
            "spool %s: %d message(s) queued (to be loaded), %d partial write(s) removed, "
            "%d quarantined",
            settings.spool.dir,
            len(found),
            recovered.removed_partial,
            len(recovered.quarantined),
        )
        on_queued: Callable[[Envelope, bytes], None] = _remembering(
            stats, events, scheduler.enqueue_new
        )
        # Before any worker starts: the self-signed certificate is made here on first run.
        tls_context = server_context(settings)
        authenticator = users(settings)  # a broken users file stops the start here
        sockets = bind(settings)
        _warn_legacy(settings)
        local_socket = local.bind_socket(settings)  # smtprelay-sendmail's, or None
    except (OSError, UsersFileError, TLSError, DkimKeyError) as e:
        raise StartupError(str(e)) from None
    supervisor = Supervisor()
    pool: WorkerPool | None = None
    inbound: Listeners
    if settings.server.workers:
        inbound = pool = WorkerPool(
            settings,
            path,
            on_queued,
            _log_handlers(stats, events),
            on_lost=functools.partial(_adopt_unknown, spool, scheduler),
        )
    else:
        inbound = server = InboundServer(
            settings, build_intake(settings, spool, authenticator, on_queued), tls_context
        )
    # The local submission socket is served by this process, beside either.
    inbound = local.wrap(inbound, settings, spool, on_queued, local_socket)
    # Every listener is bound before any serves: a port that is taken stops the start
    # before a client has seen a greeting, let alone had mail acknowledged.
    http = None
    try:
        if stats is not None:
            http = _bind_http(
                settings,
                scheduler,
                inbound,
                stats,
                spool,
                functools.partial(supervisor.running, DELIVERY),
            )
            http.ctx.events = events
            await http.start()
        if pool is not None:
            await pool.start(sockets)
        else:
            await server.start(sockets)
        await local.start(inbound)
    except BaseException as e:
        inbound.close()
        await inbound.drain(0.0)
        for sock, _ in sockets:
            sock.close()
        if http is not None:
            await http.stop()
        if isinstance(e, OSError | WorkerStartError):
            raise StartupError(str(e)) from None
        raise
    # Signal handlers before READY=1: a reload or stop sent right after start-up must
    # not meet the default action (which for SIGHUP is to die).
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    running = Running(path, settings, inbound, scheduler, tls_context, signer)
    if http is not None:
        running.on_reload.append(http.reload)
    running.staged.append(events.stage_reload)
    loop.add_signal_handler(signal.SIGHUP, _on_hup, running)
    listening = "smtp on " + ", ".join(str(e) for e in inbound.endpoints)
    if http is not None:
        listening += "; http on " + ", ".join(http.endpoints)
    fault: TaskDied | None = None
    try:
        async with supervisor:
            supervisor.start(DELIVERY, scheduler.run())
            supervisor.start(
                "the start-up load of the queue",
                loader.load(spool, found, scheduler, recovered),
                finite=True,
            )
            supervisor.start("the event recorder", events.run())
            if http is not None:
                supervisor.start("the HTTP server's loop monitor", http.run())
            if pool is not None:
                supervisor.start("the inbound workers' supervisor", pool.run())
            log.info(
                "smtprelay ready: %s; %d message(s) queued, being loaded", listening, len(found)
            )
            systemd.notify("READY=1", f"STATUS={listening}", f"MAINPID={os.getpid()}")
            supervisor.start("the heartbeat", _heartbeat(listening, scheduler, inbound))
            await stop.wait()
            supervisor.ending()
            if http is not None:
                http.stopping()
            log.info("stopping: no new connections, %d session(s) open", inbound.session_count)
            systemd.notify("STOPPING=1")
            # Delivery and /healthz go on while sessions finish (it says 503 meanwhile).
            inbound.close()
            await inbound.drain(SHUTDOWN_GRACE)
    except TaskDied as e:
        # Logged with its traceback already. Stop as for SIGTERM, without the part that
        # died, and exit non-zero: systemd restarts the daemon, the spool has the mail.
        fault = e
        if http is not None:
            http.stopping()
        log.error(
            "stopping after a fault (%s): no new connections, %d session(s) open",
            e,
            inbound.session_count,
        )
        systemd.notify("STOPPING=1", f"STATUS=stopping after a fault: {e}")
        inbound.close()
        await inbound.drain(SHUTDOWN_GRACE)
    if http is not None:
        await http.stop()
    await scheduler.stop(SHUTDOWN_GRACE)
    if fault is not None:
        raise DaemonFault(str(fault))
    log.info("stopped")


async def _heartbeat(listening: str, scheduler: Scheduler, inbound: Listeners) -> None:
    """STATUS= with the queue size for ``systemctl status``; WATCHDOG=1 when the unit sets
    WatchdogSec (a stuck event loop then misses it and systemd restarts the service)."""
    interval = systemd.watchdog_interval()
    period = min(STATUS_PERIOD, interval / 2) if interval else STATUS_PERIOD
    while True:
        await asyncio.sleep(period)
        loading = f" ({scheduler.loading} still loading)" if scheduler.loading else ""
        lines = [
            f"STATUS={listening}; {scheduler.queued} queued{loading}, "
            f"{inbound.session_count} SMTP session(s)"
        ]
        if interval:
            lines.append("WATCHDOG=1")
        systemd.notify(*lines)


async def _adopt_unknown(spool: Spool, scheduler: Scheduler) -> None:
    """After a worker died: a message it made durable but could not announce is in the
    spool only. Count and schedule every queued file the scheduler does not know (a held
    one is counted and left alone)."""
    qids = await asyncio.get_running_loop().run_in_executor(None, spool.ids)
    await scheduler.adopt(qids)


def _remembering(
    stats: Stats | None, events: EventService, enqueue: Callable[[Envelope, bytes], None]
) -> Callable[[Envelope, bytes], None]:
    """``enqueue``, after noting the envelope as accepted for /messages/{qid} and for
    the events (how it came in, tags, metadata)."""

    def queued(envelope: Envelope, data: bytes) -> None:
        if stats is not None:
            stats.note_queued(envelope)
        events.note_queued(envelope)
        enqueue(envelope, data)

    return queued


def _log_handlers(
    stats: Stats | None, events: EventService
) -> Callable[[logging.LogRecord], object]:
    """Where a worker process's mail-log records go: the statistics and the events."""

    def handle(record: logging.LogRecord) -> None:
        if stats is not None:
            stats.handle(record)
        events.recorder.handle(record)

    return handle


def _bind_http(
    settings: Settings,
    scheduler: Scheduler,
    inbound: Listeners,
    stats: Stats,
    spool: Spool,
    delivering: Callable[[], bool],
) -> HttpServer:
    from smtprelay.web import app as web  # aiohttp only when the endpoint is on

    try:
        return web.bind(settings, scheduler, inbound, stats, spool, delivering)
    except web.HttpStartError as e:
        raise StartupError(str(e)) from None


def _on_hup(running: Running) -> None:
    systemd.notify("RELOADING=1")
    reload(running)
    systemd.notify("READY=1")


def run(settings: Settings, path: Path) -> None:
    # Spool writes run in threads that give up the GIL for each fsync; with Python's
    # default 5 ms switch interval a thread coming back from the disk can wait that long
    # behind the busy event loop before it may answer, so hand the GIL over sooner.
    sys.setswitchinterval(0.0005)
    ids.set_tag(0)  # inbound workers have 1, 2, ...: queue IDs never collide
    uvloop.run(serve(settings, path))
