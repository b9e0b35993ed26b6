"""Composition root: build every stage from the settings, run them, stop them in order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import uvloop

from smtprelay import systemd
from smtprelay.config import Settings
from smtprelay.inbound.auth import Authenticator
from smtprelay.inbound.handler import Intake
from smtprelay.inbound.policy import Policy
from smtprelay.inbound.server import InboundServer
from smtprelay.spool import Spool
from smtprelay.spool.recovery import recover
from smtprelay.tls import server_context

log = logging.getLogger("smtprelay")

# How long a SIGTERM waits for SMTP transactions under way to finish.
SHUTDOWN_GRACE = 10.0


async def serve(settings: Settings) -> None:
    spool = Spool(Path(settings.spool.dir))
    try:
        recovered = recover(spool)
        log.info(
            "spool %s: %d message(s) queued, %d partial write(s) removed, %d quarantined",
            settings.spool.dir,
            len(recovered.envelopes),
            recovered.removed_partial,
            len(recovered.quarantined),
        )
        authenticator = None
        if settings.auth.users_file:
            authenticator = Authenticator(Path(settings.auth.users_file))
            authenticator.refresh()
        intake = Intake(
            hostname=settings.server.hostname,
            policy=Policy(settings.relay, settings.server.max_recipients),
            authenticator=authenticator,
            spool=spool,
        )
        inbound = InboundServer(settings, intake, server_context(settings))
        await inbound.start()
        listening = ", ".join(str(e) for e in inbound.endpoints)
        log.info("smtprelay ready: smtp on %s", listening)
        systemd.notify("READY=1", f"STATUS=smtp on {listening}", f"MAINPID={os.getpid()}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping: no new connections, %d session(s) open", len(inbound.sessions))
        systemd.notify("STOPPING=1")
        inbound.close()
        await inbound.drain(SHUTDOWN_GRACE)
        log.info("stopped")
    finally:
        spool.close()


def run(settings: Settings) -> None:
    uvloop.run(serve(settings))
