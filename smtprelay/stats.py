"""Counters, latency histograms and per-message histories, made from the mail log.

The mail log is the single source of truth: :class:`Stats` is a :class:`logging.Handler`
on the ``smtprelay.mail`` logger, so every event that an operator reads in the log is
what the HTTP endpoint counts and shows -- no stage reports anything twice.

* Prometheus metrics in a registry of their own (never the process-global one),
  declared and counted by :mod:`smtprelay.metrics` (``self.metrics``) from the events
  this handler receives; ``registry`` is what /metrics exports.
* A bounded history of events per queue ID (arrival, client, every delivery attempt
  with the remote reply, notices, the end), kept ``retention`` seconds after the
  message's ``removed`` event and for at most ``max_messages`` messages (oldest first
  out). The envelope as accepted is remembered beside it (``note_queued``), so a
  finished message still shows who sent it, over which TLS and with which AUTH.
  What one history holds and how it is read back lives in :mod:`smtprelay.history`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from smtprelay import maillog
from smtprelay.envelope import Envelope
from smtprelay.history import CANCELED_EVENT as CANCELED_EVENT  # re-exported for the tests
from smtprelay.history import MAX_EVENTS as MAX_EVENTS  # re-exported for the tests
from smtprelay.history import History as History  # re-exported for the tests
from smtprelay.history import Packed, _Kept, first_of, queued_of, readable, removed_at_of
from smtprelay.maillog import MAIL_LOGGER as MAIL_LOGGER  # re-exported for the tests
from smtprelay.maillog import Event
from smtprelay.metrics import DELIVERY_STATUSES as DELIVERY_STATUSES  # re-exported
from smtprelay.metrics import LATENCY_BUCKETS as LATENCY_BUCKETS  # re-exported
from smtprelay.metrics import QUEUE_STATES as QUEUE_STATES  # re-exported
from smtprelay.metrics import RelayMetrics

MAX_MESSAGES = 100_000


class Stats(logging.Handler):
    """Attach with :meth:`attach`; every method is safe from any thread."""

    def __init__(
        self,
        *,
        retention: float = 3600.0,
        max_messages: int = MAX_MESSAGES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(logging.DEBUG)
        self.retention = retention
        self.max_messages = max_messages
        self.clock = clock
        self._mutex = threading.Lock()
        self._history: OrderedDict[str, Packed] = OrderedDict()  # _Kept.packed()
        # Histories by creation and by removal: (time, QID) in two deques side by side,
        # not a deque of pairs (a pair is a 56-byte object of its own per history).
        self._created = _Timeline()  # the histories' first events
        self._finished = _Timeline()  # the messages' removals
        self._notice_qids: set[str] = set()

        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = RelayMetrics(self.registry, self.clock())

    # --- wiring -------------------------------------------------------------------------

    def attach(self) -> None:
        maillog.attach(self)

    def detach(self) -> None:
        maillog.detach(self)

    def note_queued(self, envelope: Envelope, encoded: bytes | None = None) -> None:
        """Remember the envelope as accepted (client, TLS, AUTH, recipients);
        ``encoded``: its JSON, when the caller has it (as written to the spool)."""
        raw = envelope.to_json() if encoded is None else encoded
        submission = envelope.submission
        with self._mutex:
            entry = self._entry(envelope.qid, self.clock())
            entry.envelope = raw
            entry.via = str(submission.via)
            entry.tags = tuple(submission.tags)
            entry.send_at = envelope.send_at
            self._history[entry.qid] = entry.packed()

    # --- the handler ----------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if not isinstance(fields, Mapping):
            return
        try:
            with self._mutex:
                self.metrics.count(fields)
                if fields.get("event") == Event.NOTICE:
                    self._notice_qids.add(str(fields.get("notice_qid")))
                qid = getattr(record, "qid", None)
                if qid:
                    self._remember(str(qid), record, fields)
        except Exception:
            self.handleError(record)

    def _remember(self, qid: str, record: logging.LogRecord, fields: Mapping[str, Any]) -> None:
        event: dict[str, Any] = {
            "time": record.created,
            "service": getattr(record, "service", None),
            "text": record.getMessage(),
        }
        event.update((k, v) for k, v in fields.items() if v is not None)
        now = self.clock()
        entry = self._entry(qid, now)
        entry.add(event)
        kind = fields.get("event")
        if kind == Event.QUEUED and not entry.queued:
            entry.queued = True
            if qid in self._notice_qids:
                self._notice_qids.discard(qid)
            else:
                self.metrics.note_received()
        elif kind == Event.REMOVED:
            entry.removed_at = now
            self._finished.append(now, qid)
        self._history[qid] = entry.packed()
        self._purge(now)

    def _entry(self, qid: str, now: float) -> _Kept:
        """``qid``'s history, new or unpacked; the caller stores it back packed."""
        packed = self._history.get(qid)
        if packed is not None:
            return _Kept.unpacked(qid, packed)
        entry = _Kept(qid, now)
        self._history[qid] = entry.packed()  # its place in the order: created now
        self._created.append(now, qid)
        while len(self._history) > self.max_messages:
            self._history.popitem(last=False)
        return entry

    def _purge(self, now: float) -> None:
        """Forget finished messages after ``retention``; and, as long after their first
        event, transactions that never became a queued message (no DATA, refused)."""
        horizon = now - self.retention
        limit = 2 * self.max_messages  # the queues of candidates stay bounded too
        while self._finished and (self._finished.head() <= horizon or len(self._finished) > limit):
            removed_at, qid = self._finished.popleft()
            packed = self._history.get(qid)
            if packed is not None and removed_at_of(packed) == removed_at:
                del self._history[qid]
        # Histories are created in the order of _created and the oldest dropped past
        # max_messages, so entries past the newest max_messages name dropped ones.
        created_limit = self.max_messages
        while self._created and (
            self._created.head() <= horizon or len(self._created) > created_limit
        ):
            first, qid = self._created.popleft()
            packed = self._history.get(qid)
            if packed is not None and first_of(packed) == first and not queued_of(packed):
                del self._history[qid]
        if len(self._notice_qids) > 10_000:  # a notice whose queued event never came
            self._notice_qids.clear()

    # --- reading ----------------------------------------------------------------------------

    def history(self, qid: str) -> History | None:
        """A copy of what is known about ``qid`` (None once forgotten or never seen)."""
        with self._mutex:
            self._purge(self.clock())
            packed = self._history.get(qid)
            if packed is None:
                return None
            return readable(qid, packed)

    def newest(
        self, before: str | None, limit: int, keep: Callable[[History], bool]
    ) -> tuple[list[History], bool]:
        """Up to ``limit`` queued (or once queued) messages whose QID sorts below
        ``before``, newest first (QIDs sort by arrival), that ``keep`` accepts; and
        whether more follow. Copies, so the caller reads them without the lock."""
        with self._mutex:
            self._purge(self.clock())
            qids = sorted(
                (
                    q
                    for q, e in self._history.items()
                    if queued_of(e) and (before is None or q < before)
                ),
                reverse=True,
            )
            chosen: list[History] = []
            for qid in qids:
                history = readable(qid, self._history[qid])
                if not keep(history):
                    continue
                if len(chosen) == limit:
                    return chosen, True
                chosen.append(history)
            return chosen, False

    def set_send_at(self, qid: str, send_at: float) -> None:
        """A scheduled message was moved (PATCH /v1/messages/{id})."""
        with self._mutex:
            packed = self._history.get(qid)
            if packed is not None:
                entry = _Kept.unpacked(qid, packed)
                entry.send_at = send_at
                self._history[qid] = entry.packed()

    @property
    def remembered(self) -> int:
        with self._mutex:
            return len(self._history)

    def counters(self) -> dict[str, int]:
        """Totals since start for /status."""
        with self._mutex:
            counts = dict(self.metrics.counts)
        return {
            "received": counts.get("received", 0),
            "delivered": counts.get("sent", 0),
            "deferred": counts.get("deferred", 0),
            "bounced": counts.get("bounced", 0),
            "rejected": counts.get("rejected", 0),
            "deleted": counts.get("deleted", 0),
            "canceled": counts.get("canceled", 0),
            "notices": counts.get("notices", 0),
            "auth_failed": counts.get("auth_failed", 0),
            "tls_failed": counts.get("tls_failed", 0),
            "connections": counts.get("connections", 0),
        }


class _Timeline:
    """(time, QID) pairs in time order, first in, first out."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        self._qids: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._times)

    def append(self, when: float, qid: str) -> None:
        self._times.append(when)
        self._qids.append(qid)

    def head(self) -> float:
        return self._times[0]

    def popleft(self) -> tuple[float, str]:
        return self._times.popleft(), self._qids.popleft()
