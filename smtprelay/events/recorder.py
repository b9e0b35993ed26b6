"""The logging handler that turns mail-log records into events, without ever waiting.

:class:`Recorder` sits on the ``smtprelay.mail`` logger beside :class:`smtprelay.stats.
Stats` (records from inbound worker processes are handed to both). ``emit`` only appends
the record's fields to a list (no I/O, no await), so SMTP and HTTP acceptance never
wait for the event store; :meth:`Recorder.run` takes everything appended since its last
commit and writes it in one transaction on the database thread (group commit: under
load a commit carries many events, at rest one). Commits start at most every
COMMIT_INTERVAL: each is an fsync of the event log on the disk the spool fsyncs to
before every 250, and a hand-off to the database thread, whose Python work competes
with the event loop for the GIL -- under load, fewer and larger batches cost the mail
less than many small ones, and an event still reaches the store within a tenth of a
second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping

from smtprelay import maillog
from smtprelay.envelope import Envelope
from smtprelay.events.model import WATCHED, Fact, MessageInfo
from smtprelay.maillog import Event

# How long a "queued" record may wait for its envelope (noted just after it is logged;
# from a worker process the two come as separate frames). Then the store reads the
# envelope from the spool instead.
NOTE_WAIT = 0.5
# While the store cannot be written: retry this often, keep at most this many records.
COMMIT_RETRY = 1.0
MAX_PENDING = 100_000
COMMIT_INTERVAL = 0.05

log = logging.getLogger("smtprelay.events")

Commit = Callable[[list[Fact], dict[str, MessageInfo]], Awaitable[None]]


class Recorder(logging.Handler):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__(logging.DEBUG)
        self.clock = clock
        self._mutex = threading.Lock()
        self._facts: list[Fact] = []
        self._notes: dict[str, MessageInfo] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._signalled = False

    # --- wiring ---------------------------------------------------------------------

    def attach(self) -> None:
        maillog.attach(self)

    def detach(self) -> None:
        maillog.detach(self)

    # --- capture (any thread, never blocks on I/O) ----------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if not isinstance(fields, Mapping) or fields.get("event") not in WATCHED:
            return
        qid = getattr(record, "qid", None)
        fact = Fact(record.created, str(fields["event"]), str(qid) if qid else None, dict(fields))
        with self._mutex:
            self._facts.append(fact)
            first = not self._signalled
            self._signalled = True
        if first:
            self._signal()

    def note_queued(self, envelope: Envelope) -> None:
        """The envelope as accepted: how it came in, its tags and metadata."""
        with self._mutex:
            self._notes[envelope.qid] = MessageInfo.of(envelope)

    def _signal(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # RuntimeError: the loop is closing; close() takes what is left.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake.set)

    # --- commit (the event loop) ----------------------------------------------------

    def take(self, final: bool = False) -> tuple[list[Fact], dict[str, MessageInfo]]:
        """Everything captured so far, but a "queued" record whose envelope is not
        noted yet (and what follows it for that message) waits up to NOTE_WAIT."""
        now = self.clock()
        with self._mutex:
            facts, notes = self._facts, self._notes
            self._facts, self._notes = [], {}
            self._signalled = False
            if final:
                return facts, notes
            ready: list[Fact] = []
            waiting: set[str] = set()
            kept: list[Fact] = []
            for fact in facts:
                if fact.qid in waiting or (
                    fact.event == Event.QUEUED
                    and fact.qid not in notes
                    and now - fact.time < NOTE_WAIT
                ):
                    waiting.add(str(fact.qid))
                    kept.append(fact)
                else:
                    ready.append(fact)
            if kept:
                self._facts[:0] = kept
                self._signalled = True
            return ready, notes

    async def run(self, commit: Commit, interval: float = COMMIT_INTERVAL) -> None:
        """Commit what is captured, batch after batch, until cancelled; a batch starts
        no sooner than ``interval`` after the previous one (at rest: at once)."""
        loop = self._loop = asyncio.get_running_loop()
        self._signal()
        last = -interval
        while True:
            await self._wake.wait()
            self._wake.clear()
            wait = last + interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            last = loop.time()
            facts, notes = self.take()
            if facts or notes:
                try:
                    await commit(facts, notes)
                except Exception as e:  # disk full, read-only: mail goes on regardless
                    self._requeue(facts, notes, e)
                    await asyncio.sleep(COMMIT_RETRY)
                    self._wake.set()
                    continue
            with self._mutex:
                pending = self._signalled
            if pending:  # kept back for their envelope: look again shortly
                await asyncio.sleep(0.05)
                self._wake.set()

    def _requeue(self, facts: list[Fact], notes: dict[str, MessageInfo], error: Exception) -> None:
        """A commit failed: keep the events for the next one, up to MAX_PENDING."""
        with self._mutex:
            self._facts[:0] = facts
            self._notes = {**notes, **self._notes}
            dropped = max(0, len(self._facts) - MAX_PENDING)
            if dropped:
                del self._facts[:dropped]
            self._signalled = True
        log.error(
            "events: cannot write the event store (%s); %d event record(s) waiting%s",
            error,
            len(self._facts),
            f", {dropped} oldest dropped" if dropped else "",
        )

    def pending(self) -> int:
        with self._mutex:
            return len(self._facts)
