"""Who owns each task of the daemon.

* :class:`Supervisor`: the long-lived tasks (the delivery loop, the HTTP server's loop
  monitor, the inbound workers' supervisors, the heartbeat) run in one
  ``asyncio.TaskGroup``. Each is meant to run until the daemon stops; one that raises,
  or returns while the daemon is not stopping, is logged once with its traceback and
  ends the group with :class:`TaskDied`, so the daemon stops and exits non-zero
  (systemd restarts it; the spool makes that safe) instead of running on without it --
  accepting mail that nobody delivers. A task started ``finite`` (the start-up load of
  the queue) may return when its work is done; its failure is still fatal.
* :func:`detach`: a short task nobody waits for (an operator action waiting for an
  attempt to end) is kept referenced until it is done, so it cannot be collected while
  pending, and its failure is logged when it happens rather than when it is collected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

from smtprelay.errors import RelayError

log = logging.getLogger("smtprelay")


class TaskDied(RelayError):
    """A long-lived task ended while the daemon was running; it has been logged."""

    def __init__(self, name: str, how: str) -> None:
        super().__init__(f"{name} {how}")
        self.name = name


class Supervisor:
    """``async with Supervisor() as tasks:`` then ``tasks.start(name, coro)`` for each
    long-lived task. The block ends when its body does (the tasks are cancelled then,
    as by :meth:`stop`), or with :class:`TaskDied` as soon as a task dies: the body is
    cancelled, as are the other tasks."""

    def __init__(self) -> None:
        self._group = asyncio.TaskGroup()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._finite: set[str] = set()
        self._ending = False

    async def __aenter__(self) -> Supervisor:
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            self.stop()
        self._ending = True
        try:
            await self._group.__aexit__(kind, error, traceback)
        except BaseExceptionGroup as group:
            # The tasks only ever raise TaskDied; anything else came from the body.
            died = [e for e in group.exceptions if isinstance(e, TaskDied)]
            first = died[0] if died else group.exceptions[0]
            if died or len(group.exceptions) == 1:
                raise first from None
            raise

    def start(self, name: str, coro: Coroutine[Any, Any, None], *, finite: bool = False) -> None:
        """``finite``: the task may end by itself, its work done."""
        if finite:
            self._finite.add(name)
        self._tasks[name] = self._group.create_task(self._guard(name, coro), name=name)

    def running(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    def ending(self) -> None:
        """The daemon is stopping: from now on a task may end by itself (a failure is
        still one)."""
        self._ending = True

    def stop(self) -> None:
        """Cancel every task (the block then ends when the body does)."""
        self._ending = True
        for task in self._tasks.values():
            task.cancel()

    async def _guard(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        this = asyncio.current_task()
        assert this is not None
        try:
            await coro
        except asyncio.CancelledError:
            if this.cancelling():
                raise  # stopped by the supervisor (or the body is being cancelled)
            # A CancelledError nobody asked for (an awaited future was cancelled): the
            # group would take it for a stop and carry on without this task.
            log.critical("%s failed; stopping", name, exc_info=True)
            raise TaskDied(name, "failed") from None
        except Exception:
            log.critical("%s failed; stopping", name, exc_info=True)
            raise TaskDied(name, "failed") from None
        if not self._ending and not this.cancelling() and name not in self._finite:
            log.critical("%s ended unexpectedly; stopping", name)
            raise TaskDied(name, "ended unexpectedly")


def detach(
    coro: Coroutine[Any, Any, None], owner: set[asyncio.Task[None]], what: str
) -> asyncio.Task[None]:
    """Run ``coro`` as a task kept in ``owner`` until it is done; log its failure."""
    task = asyncio.get_running_loop().create_task(coro)
    owner.add(task)
    task.add_done_callback(owner.discard)
    task.add_done_callback(lambda done: _log_failure(done, what))
    return task


def _log_failure(task: asyncio.Task[None], what: str) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("%s failed", what, exc_info=error)
