"""The main process's side of the inbound worker processes (``[server] workers``).

The main process binds the listening sockets (so a worker that dies and is replaced
loses no connection: they wait in the backlog), starts the workers
(:mod:`smtprelay.inbound.worker`) with those sockets and a channel each, and reads the
channels: each queued message goes to delivery, each mail-log event to the statistics.
A worker that exits unexpectedly is logged and replaced after a second by
:meth:`WorkerPool.run`, a long-lived task of the daemon; if it cannot be replaced, that
task fails and the daemon stops (see :mod:`smtprelay.tasks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from smtprelay import channel, children
from smtprelay.config import Settings
from smtprelay.envelope import Envelope
from smtprelay.errors import RelayError
from smtprelay.inbound.auth import Authenticator
from smtprelay.inbound.server import ListenerKind, ListenerState, bind, listener_state
from smtprelay.units import Endpoint

log = logging.getLogger("smtprelay")

READY_TIMEOUT = 30.0
RESTART_DELAY = 1.0


class WorkerStartError(RelayError):
    pass


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter  # of the channel: only kept to close it
    reading: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: int = 0


class WorkerPool:
    """Implements :class:`smtprelay.inbound.server.Listeners` with worker processes."""

    def __init__(
        self,
        settings: Settings,
        path: Path,
        on_queued: Callable[[Envelope, bytes], None],
        on_log: Callable[[logging.LogRecord], object] | None,
        on_lost: Callable[[], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.path = path
        self.count = settings.server.workers
        self.on_queued = on_queued
        self.on_log = on_log
        # After a worker died: find what it queued but could not announce.
        self.on_lost = on_lost
        self._sockets: list[tuple[socket.socket, ListenerKind]] = []
        self._endpoints: list[tuple[Endpoint, ListenerKind]] = []
        self._workers: dict[int, _Worker] = {}
        self._stopping = False

    async def start(self, sockets: list[tuple[socket.socket, ListenerKind]] | None = None) -> None:
        """Start every worker on ``sockets`` (listening, with their kind;
        by default bind the listeners of the settings) and wait until all serve. The
        sockets are the pool's from now on: closed by :meth:`close`, or if the start
        fails."""
        self._sockets = bind(self.settings) if sockets is None else sockets
        # Kept: /healthz names the listeners while the pool stops, its sockets closed.
        self._endpoints = [(Endpoint(*s.getsockname()[:2]), kind) for s, kind in self._sockets]
        try:
            for index in range(self.count):
                await self._spawn(index)
            async with asyncio.timeout(READY_TIMEOUT):
                for worker in self._workers.values():
                    await _ready_or_exit(worker)
        except TimeoutError:
            await self._abort()
            raise WorkerStartError(
                f"inbound workers not ready after {READY_TIMEOUT:.0f} s"
            ) from None
        except BaseException:
            await self._abort()
            raise

    async def _abort(self) -> None:
        self.close()
        await self.drain(0.0)

    async def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno(), *(s.fileno() for s, _ in self._sockets)]
        argv = [
            str(self.path.resolve()),
            str(index),
            str(self.count),
            str(os.getpid()),
            str(theirs.fileno()),
        ]
        argv += [f"{s.fileno()}:{kind.value}" for s, kind in self._sockets]
        try:
            process = await children.spawn("smtprelay.inbound.worker", argv, fds)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        # One-way: the writer is only kept to close the channel.
        reader, writer = await asyncio.open_connection(sock=ours, limit=channel.LINE_LIMIT)
        worker = _Worker(index, process, writer)
        # The reader belongs to its worker: whoever sees the worker exit (the
        # supervisor, or drain) waits for it, so every frame written is read.
        worker.reading = asyncio.get_running_loop().create_task(self._read(worker, reader))
        self._workers[index] = worker
        log.info("inbound worker %d started, pid %d", index, process.pid)
        if self._stopping:  # the pool was closed while this one started
            process.send_signal(signal.SIGTERM)

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                frame = channel.decode(line)
                if "queued" in frame:
                    envelope, data = channel.split_record(await reader.readexactly(frame["length"]))
                    self.on_queued(envelope, data)
                elif "log" in frame:
                    if self.on_log is not None:
                        self.on_log(channel.log_record(frame["log"]))
                elif "sessions" in frame:
                    worker.sessions = int(frame["sessions"])
                elif frame.get("ready"):
                    worker.ready.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # killed in the middle of a frame: its message is in the spool
        except Exception:
            log.exception("inbound worker %d: unreadable channel", worker.index)
        finally:
            worker.sessions = 0

    async def run(self) -> None:
        """Supervise the workers (a long-lived task of the daemon): a worker that exits
        while the pool is not stopping is logged and replaced after a second. Returns
        once the pool stops; raises if a worker cannot be replaced (the daemon then
        stops: systemd restarts it)."""
        async with asyncio.TaskGroup() as group:
            for index in list(self._workers):
                group.create_task(self._supervise(index), name=f"inbound worker {index}")

    async def _supervise(self, index: int) -> None:
        while True:
            worker = self._workers[index]
            code = await worker.process.wait()
            await _finish(worker)
            if self._stopping:
                return
            log.error(
                "inbound worker %d (pid %d) exited with %s; starting a new one",
                worker.index,
                worker.process.pid,
                children.describe_exit(code),
            )
            try:
                await self.on_lost()
            except Exception:  # the spool unreadable: the next start's recovery finds them
                log.exception("cannot look for messages inbound worker %d left", worker.index)
            await asyncio.sleep(RESTART_DELAY)
            if not self._stopping:  # else the next turn returns
                await self._spawn(index)

    @property
    def endpoints(self) -> list[Endpoint]:
        return [endpoint for endpoint, _ in self._endpoints]

    def states(self) -> list[ListenerState]:
        serving = (
            not self._stopping
            and bool(self._workers)
            and all(
                w.ready.is_set() and w.process.returncode is None for w in self._workers.values()
            )
        )
        return [listener_state(endpoint, kind, serving) for endpoint, kind in self._endpoints]

    @property
    def session_count(self) -> int:
        return sum(w.sessions for w in self._workers.values())

    def apply(self, settings: Settings, authenticator: Authenticator | None) -> None:
        """A reload: each worker reads the accepted file again itself."""
        self._signal(signal.SIGHUP)

    def close(self) -> None:
        """Workers stop accepting and finish their sessions; the listeners close."""
        self._stopping = True
        self._signal(signal.SIGTERM)
        for sock, _ in self._sockets:
            sock.close()

    async def drain(self, grace: float) -> None:
        """Wait for the workers (which give transactions ``grace`` seconds) to exit."""
        workers = list(self._workers.values())
        waits = [asyncio.ensure_future(w.process.wait()) for w in workers]
        if waits:
            _, late = await asyncio.wait(waits, timeout=grace + 5.0)
            for worker in workers:
                if worker.process.returncode is None:
                    log.error("inbound worker %d did not stop; killing it", worker.index)
                    worker.process.kill()
            if late:
                await asyncio.wait(late)
        # Everything the workers wrote before they exited reaches delivery.
        await asyncio.gather(*(_finish(w) for w in workers))

    def _signal(self, signum: int) -> None:
        for worker in self._workers.values():
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)


async def _finish(worker: _Worker) -> None:
    """After the worker exited: wait until its channel is read to the end, close it."""
    if worker.reading is not None:
        # Shielded: the supervisor, cancelled as the daemon stops, must not cut short
        # the reading that drain waits for as well.
        await asyncio.shield(worker.reading)
    worker.writer.close()


async def _ready_or_exit(worker: _Worker) -> None:
    if not await children.ready_or_exit(worker.ready, worker.process):
        raise WorkerStartError(
            f"inbound worker {worker.index} exited with "
            f"{children.describe_exit(worker.process.returncode or 0)} before serving "
            "(see its log line)"
        )
