"""The spool: the durable hand-off between receiving and delivering a message.

One file per message (envelope and message, ``store.Spool``), created complete and
fsynced before the client hears 250, rewritten after each delivery attempt, removed when
no recipient is pending; ``recovery.recover`` reads the directory at start-up (partial
writes removed, unreadable files quarantined); ``actions`` holds, releases and deletes one
message (for the scheduler, and for ``smtprelay queue`` while the daemon is stopped).
Both stages use it and it uses neither.
Path of a message: docs/flow.md.
"""

from smtprelay.spool.store import SYNC_THREADS, NewFile, Spool, SpoolError

__all__ = ["SYNC_THREADS", "NewFile", "Spool", "SpoolError"]
