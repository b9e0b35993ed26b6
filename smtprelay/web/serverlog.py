"""aiohttp's own log lines about requests it could not parse, made one warning line each.

aiohttp logs every malformed request (a bad request line, an oversized header, invalid
HTTP, TLS to the plain port) as ``Error handling request`` with a traceback at ERROR
(only a first garbage request line at DEBUG). Those are the client's mistakes:
:class:`MalformedRequests`, a filter on the logger the server is given, rewrites each
into ``warning: unknown[ADDR]: malformed HTTP request: REASON``, with the client's
bytes escaped and shortened, and rate-limited like the token failures
(:class:`smtprelay.web.guard.LogBudget`). Anything else aiohttp logs passes unchanged.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

from smtprelay.web.guard import LogBudget

SERVER_LOGGER = "smtprelay.http.server"
MAX_REASON = 160


def printable(text: str, limit: int = MAX_REASON) -> str:
    """``text`` on one line: control characters and non-ASCII escaped, at most ``limit``."""
    out = []
    for ch in " ".join(text.split()):
        out.append(ch if " " <= ch <= "~" else ascii(ch)[1:-1])
    line = "".join(out)
    return line if len(line) <= limit else line[: limit - 3] + "..."


class MalformedRequests(logging.Filter):
    def __init__(self, budget: LogBudget | None = None) -> None:
        super().__init__()
        self.budget = budget or LogBudget()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            # aiohttp's debug chatter only when the operator asked for debug.
            return record.levelno > logging.DEBUG or logging.getLogger().isEnabledFor(logging.DEBUG)
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
        client = str(remote or "unknown")
        left_out = self.budget.allow(client)
        if left_out is None:
            return False
        reason = printable(exc.message or type(exc).__name__)
        status = f"{exc.code} " if exc.code else ""
        text = f"unknown[{printable(client)}]: malformed HTTP request ({status}{reason})"
        if left_out:
            text += f"; {left_out} more from this address not logged"
        record.msg, record.args = text, ()
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        record.service = "http"
        return True


def server_logger() -> logging.Logger:
    """The logger to give aiohttp's server (``logger=``), with the filter on it once."""
    logger = logging.getLogger(SERVER_LOGGER)
    # DEBUG: a first garbage request line is logged at DEBUG; the filter decides.
    logger.setLevel(logging.DEBUG)
    if not any(isinstance(f, MalformedRequests) for f in logger.filters):
        logger.addFilter(MalformedRequests())
    return logger
