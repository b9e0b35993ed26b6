"""The spool: the durable hand-off between receiving and delivering a message."""

from smtprelay.spool.store import Spool, SpoolError

__all__ = ["Spool", "SpoolError"]
