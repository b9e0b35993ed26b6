"""What the daemon's child processes (inbound workers, HTTP fronts, preparing workers)
share: dying with the main process, and the main process's view of one starting or
ending."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys

from smtprelay.systemd import PRIVATE_ENV

PR_SET_PDEATHSIG = 1


async def spawn(module: str, argv: list[str], pass_fds: list[int]) -> asyncio.subprocess.Process:
    """``python -m MODULE ARGV...`` with ``pass_fds`` inherited, without systemd's
    variables (systemd talks to the main process only); stdout and stderr are the
    daemon's (its log)."""
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *argv,
        pass_fds=pass_fds,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
    )


def die_with(parent: int) -> bool:
    """Make this process get SIGKILL when ``parent`` dies; False if it already has (its
    death signal is lost then: the child must end at once)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == parent


async def ready_or_exit(ready: asyncio.Event, process: asyncio.subprocess.Process) -> bool:
    """Wait until a child says it is ready or exits; True if it is ready."""
    said = asyncio.ensure_future(ready.wait())
    exited = asyncio.ensure_future(process.wait())
    try:
        await asyncio.wait([said, exited], return_when=asyncio.FIRST_COMPLETED)
    finally:
        said.cancel()
        exited.cancel()
    return ready.is_set()


def describe_exit(code: int) -> str:
    """A child's return code as the log says it: ``signal SIGKILL`` or ``code 3``."""
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"
