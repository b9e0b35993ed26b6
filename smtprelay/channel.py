"""The one-way pipe from a worker process (inbound SMTP, or the HTTP front) to the main
process.

A stream of frames, each a line of JSON, one of::

    {"ready": true}                      the worker serves its listeners
    {"sessions": 3}                      open SMTP sessions (sent when the number changed)
    {"log": {...}}                       a mail-log event, for the main process's statistics
    {"queued": "QID", "length": 2345}    then that many bytes: the spool record just made
                                         durable (envelope line, message), for delivery
    {"handoff": 812}                     (HTTP front only) a client connection for the main
                                         process to serve, its descriptor passed with the
                                         line, then the 812 bytes already read from it

The inbound worker writes frames through :class:`Sender`, which gathers everything one event
loop iteration produced into one write: a message costs the worker one system call
here, not one per event. Like Postfix's smtpd telling qmgr about a new queue file, the
frame only saves the main process a read; the spool file is the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from smtprelay.envelope import Envelope

# A frame's JSON line: a log event can carry a long remote reply, never megabytes.
LINE_LIMIT = 1024 * 1024


def encode(frame: Mapping[str, Any]) -> bytes:
    return json.dumps(frame, separators=(",", ":"), default=str).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    frame = json.loads(line)
    if not isinstance(frame, dict):
        raise ValueError(f"not a frame: {line[:80]!r}")
    return frame


class FrameQueue:
    """Frames sent from a child's event loop thread (or, via the loop, any other),
    gathered per loop iteration into one write (:meth:`_write`, the subclass's)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._pending: list[bytes] = []

    def send(self, frame: Mapping[str, Any], payload: bytes = b"") -> None:
        data = encode(frame) + payload if payload else encode(frame)
        if threading.get_ident() == self._thread:
            self._queue(data)
        else:
            self._loop.call_soon_threadsafe(self._queue, data)

    def queued(self, envelope: Envelope, data: bytes) -> None:
        record = envelope.to_json() + b"\n" + data
        self.send({"queued": envelope.qid, "length": len(record)}, record)

    def _queue(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if self._pending:
            self._write(b"".join(self._pending))
        self._pending.clear()

    def _write(self, data: bytes) -> None:
        raise NotImplementedError


class Sender(FrameQueue):
    """Frames on a stream (an inbound worker's channel)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self._writer = writer

    def _write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    async def close(self) -> None:
        self.flush()
        self._writer.close()
        with contextlib.suppress(OSError):  # the main process is gone: nothing to tell
            await self._writer.wait_closed()


class FrameSender(Protocol):
    def send(self, frame: Mapping[str, Any], payload: bytes = b"") -> None: ...


class LogForwarder(logging.Handler):
    """Sends each mail-log event to the main process (its statistics and histories are
    made from the log, see smtprelay.stats); the worker prints its own lines."""

    def __init__(self, sender: FrameSender) -> None:
        super().__init__(logging.DEBUG)
        self.sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if not isinstance(fields, Mapping):
            return
        try:
            self.sender.send(
                {
                    "log": {
                        "created": record.created,
                        "service": getattr(record, "service", None),
                        "qid": getattr(record, "qid", None),
                        "msg": record.getMessage(),
                        "fields": fields,
                    }
                }
            )
        except Exception:
            self.handleError(record)


def log_record(event: Mapping[str, Any]) -> logging.LogRecord:
    """The forwarded event as a record the main process's log handlers understand."""
    record = logging.makeLogRecord(dict(event))
    record.name = "smtprelay.mail"
    return record


def split_record(record: bytes) -> tuple[Envelope, bytes]:
    """A ``queued`` frame's payload: the envelope and the message."""
    head, _, data = record.partition(b"\n")
    return Envelope.from_json(head), data
