"""sd_notify(3): tell systemd (Type=notify) when the relay is ready, busy or stopping.

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Without the variable
every call is a no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import os
import socket

# Variables a child process must not inherit: systemd talks to the main process only.
PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``); False when not under a notify-aware manager."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    # Like sd_notify(3), a manager that went away is not the daemon's problem.
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between the pings systemd expects (WatchdogSec), if it expects any."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000
