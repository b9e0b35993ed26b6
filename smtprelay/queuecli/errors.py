"""Exit statuses of the queue commands and the exceptions that choose them."""

from __future__ import annotations

from smtprelay.errors import RelayError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class QueueFailure(RelayError):
    """The operation failed (exit 1); the message is printed as is."""


class QueueUsageError(RelayError):
    """Wrong use of a command (exit 2)."""


class DaemonDown(RelayError):
    """Nothing listens on the HTTP port: the daemon is stopped."""
