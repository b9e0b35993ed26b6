"""The main process's side of the HTTP fronts (``[http] workers``, :mod:`smtprelay.web.front`).

The main process binds ``[http] listen`` and its aiohttp server gets no site of its own:
the fronts accept every connection. Each front's channel brings the messages it queued
(to delivery, as an inbound worker's do), its mail-log events (to the statistics) and
the connections it hands over: each is adopted by the main process's aiohttp server
with the bytes the front had read of it, so aiohttp answers the request as if it had
accepted the connection itself (the real client address included).

A front that exits unexpectedly is logged and replaced after a second by
:meth:`Fronts.run`, a long-lived task of the daemon, and the messages it made durable
but could not announce are found in the spool (``on_lost``). Meanwhile new connections
wait in the listening socket's backlog: none is refused.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtprelay import channel, children
from smtprelay.envelope import Envelope
from smtprelay.errors import RelayError

log = logging.getLogger("smtprelay.http")

READY_TIMEOUT = 30.0
RESTART_DELAY = 1.0
CLOSE_GRACE = 8.0  # the front gives its submissions 5 s (front.CLOSE_GRACE)
READ_SIZE = 256 * 1024
MAX_FDS = 16  # per read: a front sends one with each hand-off frame


class FrontStartError(RelayError):
    pass


@dataclass(frozen=True, slots=True)
class Feeds:
    """Where a front's news goes in the main process."""

    on_queued: Callable[[Envelope, bytes], None]
    on_log: Callable[[logging.LogRecord], object]
    on_lost: Callable[[], Awaitable[None]]


@dataclass
class _Front:
    index: int
    process: asyncio.subprocess.Process
    sock: socket.socket  # the main process's end of the channel
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # its channel is read


class Fronts:
    def __init__(
        self,
        count: int,
        config_path: Path,
        listeners: list[socket.socket],
        protocol: Callable[[], asyncio.Protocol],
        feeds: Feeds,
    ) -> None:
        self.count = count
        self.config_path = config_path
        self.listeners = listeners
        self.protocol = protocol  # the aiohttp server's: one per adopted connection
        self.feeds = feeds
        self._fronts: dict[int, _Front] = {}
        self._adopting: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        """Start every front and wait until each accepts."""
        try:
            for index in range(self.count):
                await self._spawn(index)
            async with asyncio.timeout(READY_TIMEOUT):
                for front in self._fronts.values():
                    await _ready_or_exit(front)
        except TimeoutError:
            await self.close()
            raise FrontStartError(f"HTTP fronts not ready after {READY_TIMEOUT:.0f} s") from None
        except BaseException:
            await self.close()
            raise

    async def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair()
        argv = [str(self.config_path.resolve()), str(index), str(os.getpid()), str(theirs.fileno())]
        argv += [str(s.fileno()) for s in self.listeners]
        try:
            fds = [theirs.fileno(), *(s.fileno() for s in self.listeners)]
            process = await children.spawn("smtprelay.web.front", argv, fds)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        front = _Front(index, process, ours)
        self._fronts[index] = front
        _Reader(front, self).start()
        log.info("HTTP front %d started, pid %d", index, process.pid)

    async def run(self) -> None:
        """Supervise the fronts (a long-lived task of the daemon): one that exits while
        the daemon is not stopping is replaced after a second; raises if it cannot be."""
        async with asyncio.TaskGroup() as group:
            for index in list(self._fronts):
                group.create_task(self._supervise(index), name=f"HTTP front {index}")

    async def _supervise(self, index: int) -> None:
        while True:
            front = self._fronts[index]
            code = await front.process.wait()
            await front.ended.wait()
            if self.closing():
                return
            log.error(
                "HTTP front %d (pid %d) exited with %s; starting a new one",
                index,
                front.process.pid,
                children.describe_exit(code),
            )
            try:
                await self.feeds.on_lost()
            except Exception:  # the spool unreadable: the next start's recovery finds them
                log.exception("cannot look for messages HTTP front %d left", index)
            await asyncio.sleep(RESTART_DELAY)
            if self.closing():  # a stop while this one waited
                return
            await self._spawn(index)
            await _ready_or_exit(self._fronts[index])

    def closing(self) -> bool:  # a method: its answer may change across an await
        return self._closing

    @property
    def serving(self) -> bool:
        return all(f.ready.is_set() and f.process.returncode is None for f in self._fronts.values())

    def stopping(self) -> None:
        """The daemon is stopping: fronts hand every request to the main process."""
        self._signal(signal.SIGTERM)

    def reload(self) -> None:
        self._signal(signal.SIGHUP)

    def _signal(self, signum: int) -> None:
        for front in self._fronts.values():
            if front.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    front.process.send_signal(signum)

    async def close(self) -> None:
        """End the channels: each front finishes what it serves and exits; one that has
        not after CLOSE_GRACE s is killed. Every frame it sent is read first."""
        self._closing = True
        fronts = list(self._fronts.values())
        for front in fronts:
            with contextlib.suppress(OSError):
                front.sock.shutdown(socket.SHUT_WR)
        for front in fronts:
            try:
                async with asyncio.timeout(CLOSE_GRACE):
                    await front.process.wait()
            except TimeoutError:
                log.error("HTTP front %d did not stop; killing it", front.index)
                with contextlib.suppress(ProcessLookupError):
                    front.process.kill()
                await front.process.wait()
            await front.ended.wait()
        if self._adopting:
            await asyncio.gather(*self._adopting, return_exceptions=True)

    def adopt(self, fd: int, read: bytes) -> None:
        """Serve a connection a front handed over, ``read`` being what it had read."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            return
        task = asyncio.get_running_loop().create_task(self._adopt(sock, read))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _adopt(self, sock: socket.socket, read: bytes) -> None:
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: _Primed(self.protocol(), read), sock
            )
        except OSError:
            sock.close()  # the client went away meanwhile


class _Primed(asyncio.Protocol):
    """The aiohttp protocol of an adopted connection, given the bytes the front read
    before any the connection brings from now on (aiohttp's protocol has no other way
    in: it is slotted, and its transport may read before an awaited adoption returns)."""

    def __init__(self, inner: asyncio.Protocol, read: bytes) -> None:
        self.inner = inner
        self.read = read

    def connection_made(self, transport: Any) -> None:
        self.inner.connection_made(transport)
        if self.read:
            self.inner.data_received(self.read)
            self.read = b""

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Reader:
    """Reads one front's channel on the event loop: frames, and the descriptors that
    come with hand-off frames (in order: the n-th hand-off frame has the n-th one)."""

    def __init__(self, front: _Front, fronts: Fronts) -> None:
        self.front = front
        self.fronts = fronts
        self.buffer = bytearray()
        self.fds: deque[int] = deque()
        self.waiting: tuple[dict[str, Any], int] | None = None  # a frame and its payload size

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.front.sock.fileno(), self.readable)

    def readable(self) -> None:
        sock = self.front.sock
        try:
            data, ancillary, flags, _ = sock.recvmsg(
                READ_SIZE, socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancillary, flags = b"", [], 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            log.error("HTTP front %d: a handed-over connection was lost", self.front.index)
        if not data:
            self._end()
            return
        self.buffer += data
        try:
            self._frames()
        except Exception:
            log.exception("HTTP front %d: unreadable channel", self.front.index)
            with contextlib.suppress(ProcessLookupError):
                self.front.process.kill()
            self._end()

    def _frames(self) -> None:
        buffer, start = self.buffer, 0
        while True:
            if self.waiting is not None:
                frame, size = self.waiting
                if len(buffer) - start < size:
                    break
                payload = bytes(buffer[start : start + size])
                start += size
                self.waiting = None
                self._deliver(frame, payload)
                continue
            end = buffer.find(b"\n", start)
            if end < 0:
                if len(buffer) - start > channel.LINE_LIMIT:
                    raise ValueError("a frame's line is over the limit")
                break
            frame = channel.decode(bytes(buffer[start:end]))
            start = end + 1
            length = frame.get("length") if "queued" in frame else frame.get("handoff")
            if length is not None:
                self.waiting = (frame, int(length))
            else:
                self._deliver(frame, b"")
        del buffer[:start]

    def _deliver(self, frame: dict[str, Any], payload: bytes) -> None:
        feeds = self.fronts.feeds
        if "queued" in frame:
            feeds.on_queued(*channel.split_record(payload))
        elif "handoff" in frame:
            self.fronts.adopt(self.fds.popleft(), payload)
        elif "log" in frame:
            feeds.on_log(channel.log_record(frame["log"]))
        elif frame.get("ready"):
            self.front.ready.set()

    def _end(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(self.front.sock.fileno())
        self.front.sock.close()
        while self.fds:  # sent with a frame never completed: nobody will serve them
            os.close(self.fds.popleft())
        self.front.ended.set()


async def _ready_or_exit(front: _Front) -> None:
    if not await children.ready_or_exit(front.ready, front.process):
        raise FrontStartError(f"HTTP front {front.index} exited before serving (see its log line)")
