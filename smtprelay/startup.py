"""The daemon's start-up steps before anything serves (app.py runs them in order).

Each step that can fail on the host (spool, DKIM keys, certificate, users file, a
listener) raises :class:`StartupError` saying why; nothing has been acknowledged to a
client by then. What is built here: the scheduler with its resolver, transport and
notices; the spool scan (names taken, partial writes removed; the envelopes are loaded
later, while serving); the bound sockets; and the inbound side (worker processes or an
in-process server, with the local submission socket beside either).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smtprelay.config import Settings
from smtprelay.delivery.notices import Notices
from smtprelay.delivery.resolver import Resolver
from smtprelay.delivery.routes import Router
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.delivery.transport import Timeouts, Transport
from smtprelay.dkimsign import DkimKeyError, Signer, load_keyring
from smtprelay.dkimsign.keys import describe
from smtprelay.envelope import Envelope
from smtprelay.errors import RelayError
from smtprelay.events.service import EventService
from smtprelay.inbound import local
from smtprelay.inbound.auth import Authenticator
from smtprelay.inbound.server import (
    InboundServer,
    ListenerKind,
    Listeners,
    bind,
    build_intake,
    users,
)
from smtprelay.inbound.workers import WorkerPool
from smtprelay.spool import Spool
from smtprelay.spool.recovery import Names, Recovered, scan
from smtprelay.stats import Stats
from smtprelay.tls import TLSError, server_context
from smtprelay.usersfile import UsersFileError

log = logging.getLogger("smtprelay")


class StartupError(RelayError):
    """The daemon cannot start (spool, certificate, users file, listener); says why."""


def warn_legacy(settings: Settings) -> None:
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


@dataclass
class Prepared:
    """What the start-up steps made before anything serves."""

    signer: Signer
    scheduler: Scheduler
    recovered: Recovered
    found: Names  # the queue IDs in the spool, loaded while the daemon serves
    on_queued: Callable[[Envelope, bytes], None]
    tls_context: ssl.SSLContext
    authenticator: Authenticator | None
    sockets: list[tuple[socket.socket, ListenerKind]]
    local_socket: socket.socket | None  # smtprelay-sendmail's, or None


def prepare(
    settings: Settings, spool: Spool, stats: Stats | None, events: EventService
) -> Prepared:
    """Every step that can fail on the host, in order; StartupError says which and why."""
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
        on_queued = remembering(stats, events, scheduler.enqueue_new)
        # Before any worker starts: the self-signed certificate is made here on first run.
        tls_context = server_context(settings)
        authenticator = users(settings)  # a broken users file stops the start here
        sockets = bind(settings)
        warn_legacy(settings)
        local_socket = local.bind_socket(settings)
    except (OSError, UsersFileError, TLSError, DkimKeyError) as e:
        raise StartupError(str(e)) from None
    return Prepared(
        signer,
        scheduler,
        recovered,
        found,
        on_queued,
        tls_context,
        authenticator,
        sockets,
        local_socket,
    )


def build_inbound(
    settings: Settings,
    path: Path,
    spool: Spool,
    prepared: Prepared,
    stats: Stats | None,
    events: EventService,
) -> tuple[Listeners, WorkerPool | InboundServer]:
    """The inbound side, not serving yet: every listener, and the part that serves the
    SMTP ports (worker processes, or a server in this process), which ``start(sockets)``."""
    smtp: WorkerPool | InboundServer
    if settings.server.workers:
        smtp = WorkerPool(
            settings,
            path,
            prepared.on_queued,
            log_handlers(stats, events),
            on_lost=functools.partial(adopt_unknown, spool, prepared.scheduler),
        )
    else:
        intake = build_intake(settings, spool, prepared.authenticator, prepared.on_queued)
        smtp = InboundServer(settings, intake, prepared.tls_context)
    # The local submission socket is served by this process, beside either.
    inbound = local.wrap(smtp, settings, spool, prepared.on_queued, prepared.local_socket)
    return inbound, smtp


async def adopt_unknown(spool: Spool, scheduler: Scheduler) -> None:
    """After a worker died: a message it made durable but could not announce is in the
    spool only. Count and schedule every queued file the scheduler does not know (a held
    one is counted and left alone)."""
    qids = await asyncio.get_running_loop().run_in_executor(None, spool.ids)
    await scheduler.adopt(qids)


def remembering(
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


def log_handlers(
    stats: Stats | None, events: EventService
) -> Callable[[logging.LogRecord], object]:
    """Where a worker process's mail-log records go: the statistics and the events."""

    def handle(record: logging.LogRecord) -> None:
        if stats is not None:
            stats.handle(record)
        events.recorder.handle(record)

    return handle
