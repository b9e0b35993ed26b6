"""``/healthz``: can this relay accept and keep mail right now?

Four checks, each answering ``None`` (fine) or the reason it is not:

* the spool is writable: an unnamed file is written in ``queue/`` (the directory every
  message is committed to); on a filesystem without unnamed files, a named one is
  written and removed in a thread of its own, and a probe slower than
  ``PROBE_TIMEOUT`` fails. A read-only or full filesystem, or lost permissions, fail
  here.
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
    def __init__(self, directory: Path, timeout: float = PROBE_TIMEOUT) -> None:
        self.directory = directory
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="healthz")
        self._running: asyncio.Future[None] | None = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def check(self) -> str | None:
        try:
            if self._unnamed():
                return None
        except OSError as e:
            return self._failed(e)
        # One probe at a time: a hung disk must not pile up threads or requests.
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().run_in_executor(
                self._executor, self._probe_named
            )
            self._running.add_done_callback(_retrieve)
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(self._running)
        except TimeoutError:
            return f"spool {self.directory}: a test write did not finish in {self.timeout:g}s"
        except OSError as e:
            return self._failed(e)
        return None

    def _failed(self, error: OSError) -> str:
        return f"spool {self.directory} is not writable: {error.strerror or error}"

    def _unnamed(self) -> bool:
        """Write an unnamed file (O_TMPFILE) and let it go; False where the filesystem
        has none. It needs what a commit needs (an inode, a block, write permission) and
        only the page cache: one file, some 40-450 us of kernel work at most, so the
        event loop does it itself (no thread hand-off to wait for under load, which
        cost more than the probe). It never takes the queue directory's lock,
        which delivering a large queue holds most of the time: the named probe, in a
        thread, answered in up to 0.2 s with 1,000,000 queued."""
        try:
            fd = os.open(self.directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                return False
            raise
        try:
            os.write(fd, b"ok\n")  # a full filesystem fails here, not at open
        finally:
            os.close(fd)  # unnamed: nothing is left behind
        return True

    def _probe_named(self) -> None:
        path = self.directory / PROBE_NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"ok\n")  # a full filesystem fails here, not at open
        finally:
            os.close(fd)
        os.unlink(path)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # read by a later request, or nobody: never "never retrieved"


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
