"""The HTTP front: a process that accepts on ``[http] listen`` and serves the common JSON
submission itself (``[http] workers``).

Why: the main process's one event loop delivers, keeps the statistics and serves HTTP
under one GIL, so every submission it parsed, authenticated, logged and answered was
taken from delivery (bench/README.md, "HTTP submission"). SMTP sessions have the
inbound workers for that reason; this is the same split for HTTP.

What the front serves (:mod:`smtprelay.web.fronthead`): ``POST /v1/messages`` with a
valid token of scope ``send``, no Idempotency-Key and no template, the message valid
and accepted by the relay's policy. It validates and builds the message as the
preparing workers do (:func:`preparing.prepare_job`), writes and fsyncs its spool file,
prints the three mail-log lines, sends the main process the ``queued`` frame and the
log events (:mod:`smtprelay.channel`), then answers ``202``, byte for byte what the
main process would say. Everything else, a refusal and a batch included, goes to the
main process with its connection (``handoff``), whose aiohttp server answers it as it
always has: the front never answers an error.

Started by :mod:`smtprelay.web.fronts` as ``python -m smtprelay.web.front CONFIG INDEX
PARENT_PID CHANNEL_FD LISTEN_FD...``. SIGTERM: the daemon is stopping, so from then on
every request is handed off (the main process answers submissions 503); the front exits
when its channel ends. SIGHUP: read the configuration again. It dies with the main
process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import signal
import socket
import sys
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop

from smtprelay import channel, children, config, ids, maillog
from smtprelay.spool import SYNC_THREADS, Spool, SpoolError
from smtprelay.web import fronthead, intake, preparing, requestbody
from smtprelay.web.connections import ConnectionCap
from smtprelay.web.frontconn import Connection, Reply
from smtprelay.web.problem import ApiProblem, json_bytes
from smtprelay.web.tokens import Token, TokenFile

log = logging.getLogger("smtprelay.http")

EXIT_STARTUP = 3
# Queue ID tags: the main process has 0, inbound workers 1 to 64 ([server] workers).
TAG_BASE = 65
# Seconds an ending front gives the submissions it is serving.
CLOSE_GRACE = 5.0


class _Channel(channel.FrameQueue):
    """Frames to the main process, and connections, whose descriptors travel with their
    frame (SCM_RIGHTS) in the same stream: the main process sees a message queued
    before any request that could ask for it."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.open = True  # False once the main process is gone

    def handoff(self, fd: int, read: bytes) -> bool:
        self.flush()
        self._write(channel.encode({"handoff": len(read)}) + read, fd)
        return self.open

    def _write(self, data: bytes, fd: int | None = None) -> None:
        """All of ``data`` (``fd`` with its first byte), waiting for the main process to
        read when the channel is full: the event loop set the socket non-blocking, and
        the main process's pace is the front's."""
        view = memoryview(data)
        rights = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [fd]))]
        while view and self.open:
            try:
                sent = self._sock.sendmsg([view], rights)
            except BlockingIOError:
                select.select([], [self._sock], [])
                continue
            except OSError:
                self.open = False  # the main process is gone: the front ends (see _serve)
                return
            rights = []
            view = view[sent:]


class Front:
    """The front's state: settings, tokens, spool, and the channel; implements
    :class:`smtprelay.web.frontconn.Server`."""

    def __init__(self, settings: config.Settings, path: Path, sender: _Channel) -> None:
        self.path = path
        self.channel = sender
        self.spool = Spool(Path(settings.spool.dir))
        self.cap = ConnectionCap()
        self.stopping = False
        self.serving = 0  # submissions being served now
        self.idle = asyncio.Event()  # set while serving is 0
        self.idle.set()
        self._apply(settings)

    def _apply(self, settings: config.Settings) -> None:
        self.settings = settings
        self.limit = requestbody.body_limit(settings.server.max_message_size)
        path = settings.http.tokens_file
        self.tokens = TokenFile(Path(path) if path else None, strict=False)

    def reload(self) -> None:
        try:
            self._apply(config.load(self.path))
        except config.ConfigError as e:  # the main process says so too, and keeps its own
            log.error("HTTP front: reload: configuration error: %s", e)

    def admit(self, connection: object, ip: str) -> bool:
        return self.cap.admit(connection, ip)

    def release(self, connection: object) -> None:
        self.cap.release(connection)

    def token(self, head: fronthead.Head) -> Token | None:
        """The request's token if this front serves it; None: the main process answers."""
        if self.stopping or self.serving >= self.settings.http.max_requests:
            return None
        if head.length > self.limit:
            return None
        token = self.tokens.check(head.token)
        return token if token is not None and token.allows("send") else None

    def handoff(self, fd: int, read: bytes) -> bool:
        return self.channel.handoff(fd, read)

    async def submit(
        self, head: fronthead.Head, body: bytes, origin: intake.Origin
    ) -> Reply | None:
        """The message queued and its answer, or None (nothing queued): the main
        process answers the request."""
        self.serving += 1
        self.idle.clear()
        try:
            return await self._submit(head, body, origin)
        finally:
            self.serving -= 1
            if not self.serving:
                self.idle.set()

    async def _submit(
        self, head: fronthead.Head, body: bytes, origin: intake.Origin
    ) -> Reply | None:
        try:
            doc = requestbody.parse_json(body)
            if "template" in doc:
                return None  # the template store is the main process's
            job = preparing.Job(doc, (), ids.new_id())
            prepared = preparing.prepare_job(job, self.settings, origin, None)
        except ApiProblem:
            return None
        except Exception:  # a fault of ours, nothing written: the main process answers
            log.exception("HTTP front: cannot prepare a submission")
            return None
        if not isinstance(prepared, intake.Prepared):
            return None  # a refusal is logged and answered by the main process
        if not await self._commit(prepared):
            return None  # it tries again, and says 503 if the disk still refuses
        intake.queued([prepared], origin.ip, origin.token.name, self._queued)
        self.channel.flush()  # the main process knows it before the client does
        qid = prepared.envelope.qid
        return Reply(json_bytes(prepared.answer()), f"/v1/messages/{qid}")

    def _queued(self, item: intake.Prepared) -> None:
        self.channel.queued(item.envelope, item.data)

    async def _commit(self, item: intake.Prepared) -> bool:
        """The message's file written and durable, or nothing of it left. Creating a
        file waits on the filesystem's journal as an fsync does (measured: half of the
        front's event loop time when it created them itself), so a thread does both."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._write, item)
        except SpoolError as e:
            log.warning("HTTP front: cannot queue: %s", e, extra={"service": "http"})
            return False
        return True

    def _write(self, item: intake.Prepared) -> None:
        self.spool.create_encoded(item.envelope.qid, item.encoded, item.data).sync()


def main(argv: list[str]) -> int:
    path, index, parent, channel_fd = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    listeners = [socket.socket(fileno=int(fd)) for fd in argv[4:]]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides on Ctrl-C
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the handler below is in place
    if not children.die_with(parent):
        return EXIT_STARTUP
    try:
        settings = config.load(path)
    except config.ConfigError as e:  # changed since the main process read it
        print(f"smtprelay: HTTP front {index}: configuration error: {e}", file=sys.stderr)
        return EXIT_STARTUP
    maillog.setup(settings.log.format, settings.log.level)
    ids.set_tag(TAG_BASE + index)
    sys.setswitchinterval(0.0005)  # see smtprelay.app.run
    try:
        uvloop.run(_serve(settings, path, socket.socket(fileno=channel_fd), listeners))
    except OSError as e:
        log.error("HTTP front %d cannot start: %s", index, e)
        return EXIT_STARTUP
    return 0


async def _serve(
    settings: config.Settings, path: Path, sock: socket.socket, listeners: list[socket.socket]
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="fsync"))
    sender = _Channel(sock)
    forwarder = channel.LogForwarder(sender)
    logging.getLogger(maillog.log.name).addHandler(forwarder)
    front = Front(settings, path, sender)
    servers = [
        await loop.create_server(lambda: Connection(front), sock=listener) for listener in listeners
    ]
    ended = loop.create_future()

    def readable() -> None:  # the main process writes nothing: this is the channel's end
        with contextlib.suppress(BlockingIOError):
            if not sock.recv(1, socket.MSG_DONTWAIT) and not ended.done():
                ended.set_result(None)

    def stopping() -> None:
        front.stopping = True

    loop.add_reader(sock.fileno(), readable)
    loop.add_signal_handler(signal.SIGTERM, stopping)
    loop.add_signal_handler(signal.SIGHUP, front.reload)
    sender.send({"ready": True})
    sender.flush()
    try:
        await ended
    finally:
        loop.remove_reader(sock.fileno())
        for server in servers:
            server.close()
        # Submissions being served finish: their files are in the spool either way.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_GRACE):
                await front.idle.wait()
        logging.getLogger(maillog.log.name).removeHandler(forwarder)
        front.spool.close()


if __name__ == "__main__":
    # Run as the module by its name, as smtprelay.web.preparing is.
    from smtprelay.web import front as module

    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(module.main(sys.argv[1:]))
