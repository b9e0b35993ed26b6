"""``/healthz``: can this relay accept and keep mail right now?

Four checks, each answering ``None`` (fine) or the reason it is not:

* the spool is writable: an unnamed file is written in ``queue/`` (the directory every
  message is committed to) by a thread of its own; on a filesystem without unnamed
  files, a named one is written and removed. A probe slower than ``PROBE_TIMEOUT``
  fails. A read-only or full filesystem, or lost permissions, fail here.
* every SMTP listener is serving;
* the event loop is responsive: a task measures how late a periodic sleep wakes up
  (``LoopMonitor``); a lag over ``MAX_LAG`` fails.
* the delivery loop is running: mail accepted now would be delivered. It is not
  before start-up is complete, nor once it has failed (the daemon then stops) or the
  daemon is stopping.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROBE_NAME = ".healthz.tmp"  # *.tmp: removed at start-up if a crash ever left it
PROBE_TIMEOUT = 5.0
MAX_LAG = 5.0
LAG_INTERVAL = 0.5


class LoopMonitor:
    """How late the event loop runs a callback: the latest measured delay."""

    def __init__(self, interval: float = LAG_INTERVAL) -> None:
        self.interval = interval
        self.lag = 0.0
        self._last = time.monotonic()

    async def run(self) -> None:
        # Measured from here: the time between construction and the first run is the
        # daemon's start-up (workers spawned, listeners opened), which no client waited
        # for; counted as "overdue" it showed as a 270-380 ms lag right after READY.
        self._last = time.monotonic()
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            self._last = time.monotonic()
            self.lag = max(0.0, self._last - before - self.interval)

    @property
    def current(self) -> float:
        """The latest delay, or how overdue the next measurement is, if more."""
        overdue = time.monotonic() - self._last - self.interval
        return max(self.lag, overdue)


class SpoolProbe:
    """The spool probe, run in a thread of its own, one at a time.

    Every request starts a probe (unless one is running) and is answered by the last
    one that finished, if that was less than ``timeout`` ago: what a request finds, the
    next one reports, and none waits for the disk. Otherwise (the first request, or one
    after a quiet spell) the request waits for its own probe, up to ``timeout``; a
    probe running longer than that (a hung disk) fails every request meanwhile. On the
    event loop itself, the probe's ``open`` was on the loop's stack in a 61 ms stall
    with a million messages being deferred (ext4's journal busy with their fsyncs): a
    stall for every connection; in a thread the wait is the probe's alone, and under
    load no request waits for it at all.
    """

    def __init__(self, directory: Path, timeout: float = PROBE_TIMEOUT) -> None:
        self.directory = directory
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="healthz")
        self._running: asyncio.Future[None] | None = None
        self._started = 0.0
        self._last: str | None = None  # the last finished probe's answer
        self._finished_at: float | None = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def check(self) -> str | None:
        now = time.monotonic()
        running = self._running
        if running is None or running.done():
            running = self._running = asyncio.get_running_loop().run_in_executor(
                self._executor, self._probe
            )
            running.add_done_callback(self._record)
            self._started = now
        hung = now - self._started >= self.timeout
        if not hung and self._finished_at is not None and now - self._finished_at < self.timeout:
            return self._last
        await asyncio.wait([running], timeout=max(0.0, self.timeout - (now - self._started)))
        if running.done():
            return self._answer(running)
        return f"spool {self.directory}: a test write did not finish in {self.timeout:g}s"

    def _record(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled():
            self._last = self._answer(future)
            self._finished_at = time.monotonic()

    def _answer(self, future: asyncio.Future[None]) -> str | None:
        error = future.exception()
        if error is None:
            return None
        reason = error.strerror if isinstance(error, OSError) else None
        return f"spool {self.directory} is not writable: {reason or error}"

    def _probe(self) -> None:
        """Write an unnamed file (O_TMPFILE) and let it go: it needs what a commit
        needs (an inode, a block, write permission) and leaves nothing behind. Where
        the filesystem has no unnamed files, a named one is written and removed."""
        try:
            fd = os.open(self.directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self._probe_named()
            return
        try:
            os.write(fd, b"ok\n")  # a full filesystem fails here, not at open
        finally:
            os.close(fd)  # unnamed: nothing is left behind

    def _probe_named(self) -> None:
        path = self.directory / PROBE_NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"ok\n")  # a full filesystem fails here, not at open
        finally:
            os.close(fd)
        os.unlink(path)


class Health:
    def __init__(
        self,
        probe: SpoolProbe,
        monitor: LoopMonitor,
        listeners_down: Callable[[], list[str]],
        delivering: Callable[[], bool],
        max_lag: float = MAX_LAG,
    ) -> None:
        self.probe = probe
        self.monitor = monitor
        self.listeners_down = listeners_down
        self.delivering = delivering
        self.max_lag = max_lag

    async def checks(self) -> dict[str, str]:
        """Each check's result: ``"ok"`` or the reason it fails."""
        results: dict[str, str] = {}
        results["spool"] = await self.probe.check() or "ok"
        down = self.listeners_down()
        results["listeners"] = f"not serving: {', '.join(down)}" if down else "ok"
        lag = self.monitor.current
        results["event_loop"] = (
            f"stalled: callbacks run {lag:.1f}s late (limit {self.max_lag:g}s)"
            if lag > self.max_lag
            else "ok"
        )
        results["delivery"] = "ok" if self.delivering() else "the delivery loop is not running"
        return results
