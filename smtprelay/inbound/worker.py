"""An inbound worker process: SMTP sessions on listeners the main process bound.

Started by :mod:`smtprelay.inbound.workers` as
``python -m smtprelay.inbound.worker CONFIG INDEX COUNT PARENT_PID CHANNEL_FD FD:TLS...``. It
accepts mail exactly as the main process would (same intake, same spool, 250 only once
the file is durable) and tells the main process about each queued message over the
channel. Why processes: one event loop and its GIL serve SMTP *or* deliver at full
speed, not both; Postfix splits smtpd from qmgr and smtp for the same reason.

Signals: SIGTERM stops (421 to idle sessions, transactions get the grace time), SIGHUP
reloads the inbound settings; both come from the main process. SIGINT is ignored: a
Ctrl-C in a terminal reaches the whole process group, and the main process decides.
It dies with the main process (PR_SET_PDEATHSIG, and the channel's end of file), so a
killed daemon never leaves a worker accepting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop

from smtprelay import children, config, ids, maillog
from smtprelay.channel import LogForwarder, Sender
from smtprelay.inbound.reload import reload_inbound
from smtprelay.inbound.server import (
    SHUTDOWN_GRACE,
    InboundServer,
    ListenerKind,
    build_intake,
    users,
)
from smtprelay.spool import Spool
from smtprelay.spool.store import SYNC_THREADS
from smtprelay.tls import TLSError, server_context
from smtprelay.usersfile import UsersFileError

log = logging.getLogger("smtprelay")

EXIT_STARTUP = 3


def main(argv: list[str]) -> int:
    path, index, count = Path(argv[0]), int(argv[1]), int(argv[2])
    parent, channel_fd = int(argv[3]), int(argv[4])
    listeners = []
    for item in argv[5:]:
        fd, _, kind = item.partition(":")
        listeners.append((socket.socket(fileno=int(fd)), ListenerKind(kind)))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A reload signalled while this worker starts must not kill it (SIGHUP's default);
    # it reads the configuration file below anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if not children.die_with(parent):
        return EXIT_STARTUP
    try:
        settings = config.load(path)
    except config.ConfigError as e:  # changed since the main process read it
        print(f"smtprelay: inbound worker {index}: configuration error: {e}", file=sys.stderr)
        return EXIT_STARTUP
    maillog.setup(settings.log.format, settings.log.level)
    ids.set_tag(index + 1)  # the main process is 0: IDs never collide between processes
    sys.setswitchinterval(0.0005)  # see smtprelay.app.run
    channel = socket.socket(fileno=channel_fd)
    try:
        uvloop.run(_serve(settings, path, count, channel, listeners))
    except (OSError, UsersFileError, TLSError) as e:
        log.error("inbound worker %d cannot start: %s", index, e)
        return EXIT_STARTUP
    return 0


async def _serve(
    settings: config.Settings,
    path: Path,
    count: int,
    channel: socket.socket,
    listeners: list[tuple[socket.socket, ListenerKind]],
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="spool")
    )
    reader, writer = await asyncio.open_connection(sock=channel)
    sender = Sender(writer)
    forwarder = LogForwarder(sender)
    logging.getLogger(maillog.log.name).addHandler(forwarder)
    spool = Spool(Path(settings.spool.dir))
    try:
        tls_context = server_context(settings)
        intake = build_intake(settings, spool, users(settings), sender.queued)
        inbound = InboundServer(
            settings, intake, tls_context, share=count, on_sessions=_SessionReport(sender)
        )
        await inbound.start(listeners)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload_inbound, path, inbound, tls_context)
        sender.send({"ready": True})
        orphaned = loop.create_task(reader.read())  # the main process writes nothing: EOF
        stopping = loop.create_task(stop.wait())
        await asyncio.wait([orphaned, stopping], return_when=asyncio.FIRST_COMPLETED)
        inbound.close()
        # Orphaned: nobody would deliver, but every commit finishing now is in the spool
        # for the next start; sessions are not kept waiting.
        await inbound.drain(0.0 if orphaned.done() else SHUTDOWN_GRACE)
        for task in (orphaned, stopping):
            task.cancel()
    finally:
        logging.getLogger(maillog.log.name).removeHandler(forwarder)
        await sender.close()
        spool.close()


class _SessionReport:
    """Sends the number of open sessions when it changed: at most one frame per event
    loop iteration, however many sessions opened or closed in it."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.count = 0
        self.sent = 0
        self.scheduled = False

    def __call__(self, count: int) -> None:
        self.count = count
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self.scheduled = False
        if self.count != self.sent:
            self.sent = self.count
            self.sender.send({"sessions": self.count})


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
