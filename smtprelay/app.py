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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop

from smtprelay import ids, mallocsetup, startup, systemd
from smtprelay.config import Settings
from smtprelay.delivery import loader
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.errors import RelayError
from smtprelay.events.service import EventService, EventsStartError
from smtprelay.inbound import local
from smtprelay.inbound.server import SHUTDOWN_GRACE, Listeners
from smtprelay.inbound.workers import WorkerPool, WorkerStartError
from smtprelay.reload import Running, reload
from smtprelay.spool import Spool
from smtprelay.spool.store import SYNC_THREADS
from smtprelay.startup import StartupError as StartupError  # cli.py catches app.StartupError
from smtprelay.stats import Stats
from smtprelay.tasks import Supervisor, TaskDied

log = logging.getLogger("smtprelay")


class DaemonFault(RelayError):
    """A long-lived task died (logged with its traceback); the daemon has stopped."""


DELIVERY = "the delivery loop"


STATUS_PERIOD = 5.0


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
    prepared = startup.prepare(settings, spool, stats, events)
    scheduler, sockets = prepared.scheduler, prepared.sockets
    supervisor = Supervisor()
    inbound, smtp = startup.build_inbound(settings, path, spool, prepared, stats, events)
    pool = smtp if isinstance(smtp, WorkerPool) else None
    # Every listener is bound before any serves: a port that is taken stops the start
    # before a client has seen a greeting, let alone had mail acknowledged.
    http = None
    try:
        if stats is not None:
            from smtprelay.web import app as web  # aiohttp only when the endpoint is on
            from smtprelay.web.fronts import Feeds

            try:
                http = web.bind(
                    settings,
                    scheduler,
                    inbound,
                    stats,
                    spool,
                    functools.partial(supervisor.running, DELIVERY),
                    path,
                    Feeds(
                        prepared.on_queued,
                        startup.log_handlers(stats, events),
                        functools.partial(startup.adopt_unknown, spool, scheduler),
                    ),
                )
            except web.HttpStartError as e:
                raise StartupError(str(e)) from None
            http.ctx.events = events
            await http.start()
        await smtp.start(sockets)
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
    running = Running(path, settings, inbound, scheduler, prepared.tls_context, prepared.signer)
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
                loader.load(spool, prepared.found, scheduler, prepared.recovered),
                finite=True,
            )
            supervisor.start("the event recorder", events.run())
            if http is not None:
                supervisor.start("the HTTP server (loop monitor, fronts)", http.run())
            if pool is not None:
                supervisor.start("the inbound workers' supervisor", pool.run())
            log.info(
                "smtprelay ready: %s; %d message(s) queued, being loaded",
                listening,
                len(prepared.found),
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


def _on_hup(running: Running) -> None:
    systemd.notify("RELOADING=1")
    reload(running)
    systemd.notify("READY=1")


def run(settings: Settings, path: Path) -> None:
    # Spool writes run in threads that give up the GIL for each fsync; with Python's
    # default 5 ms switch interval a thread coming back from the disk can wait that long
    # behind the busy event loop before it may answer, so hand the GIL over sooner.
    sys.setswitchinterval(0.0005)
    mallocsetup.tune()  # a large queue's big tables given back, few arenas
    ids.set_tag(0)  # inbound workers have 1, 2, ...: queue IDs never collide
    uvloop.run(serve(settings, path))
