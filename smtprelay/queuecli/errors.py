"""Exit statuses of the queue commands and the exceptions that choose them."""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class QueueFailure(Exception):
    """The operation failed (exit 1); the message is printed as is."""


class UsageError(Exception):
    """Wrong use of a command (exit 2)."""


class DaemonDown(Exception):
    """Nothing listens on the HTTP port: the daemon is stopped."""
