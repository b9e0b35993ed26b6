"""Counters, latency histograms and per-message histories, made from the mail log.

The mail log is the single source of truth: :class:`Stats` is a :class:`logging.Handler`
on the ``smtprelay.mail`` logger, so every event that an operator reads in the log is
what the HTTP endpoint counts and shows -- no stage reports anything twice.

* Prometheus metrics in a registry of their own (never the process-global one):
  ``smtprelay_messages_received_total``, ``smtprelay_deliveries_total{status}``,
  ``smtprelay_delivery_seconds{status}`` and more; the queue gauges are declared here
  and set by whoever scans the queue (``smtprelay.web``) just before an export.
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
from collections import Counter as Tally
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from smtprelay import maillog
from smtprelay.envelope import Envelope
from smtprelay.history import CANCELED_EVENT as CANCELED_EVENT  # re-exported for the tests
from smtprelay.history import MAX_EVENTS as MAX_EVENTS  # re-exported for the tests
from smtprelay.history import History as History  # re-exported for the tests
from smtprelay.history import _Kept
from smtprelay.maillog import MAIL_LOGGER as MAIL_LOGGER  # re-exported for the tests
from smtprelay.maillog import Event

MAX_MESSAGES = 100_000
# Seconds from arrival to delivery (or bounce): from a LAN hop to the 5-day lifetime.
LATENCY_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4 * 3600.0,
    86400.0,
    5 * 86400.0,
)
DELIVERY_STATUSES = ("sent", "deferred", "bounced")
QUEUE_STATES = ("active", "deferred", "hold", "scheduled", "rate-limited")

# No "*_created" series beside every counter: they double the exposition for nothing
# Prometheus uses (process-wide setting; this process exports only these metrics).
disable_created_metrics()  # type: ignore[no-untyped-call]


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
        self.counts: Tally[str] = Tally()
        self._mutex = threading.Lock()
        self._history: OrderedDict[str, _Kept] = OrderedDict()
        self._created: deque[tuple[float, str]] = deque()  # (first event, qid)
        self._finished: deque[tuple[float, str]] = deque()  # (removed, qid)
        self._notice_qids: set[str] = set()

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "smtprelay_messages_received", "Messages accepted from clients and spooled.", registry=r
        )
        self.notices = Counter(
            "smtprelay_notices",
            "Delivery status notifications generated, by kind.",
            ["kind"],
            registry=r,
        )
        self.deliveries = Counter(
            "smtprelay_deliveries",
            "Per-recipient delivery results: sent, deferred (will retry) or bounced.",
            ["status"],
            registry=r,
        )
        self.latency = Histogram(
            "smtprelay_delivery_seconds",
            "Time from arrival to a recipient's final result (sent or bounced).",
            ["status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.replies = Counter(
            "smtprelay_delivery_replies",
            "Per-recipient delivery results by reply class (2xx, 4xx, 5xx), whether the "
            "remote server answered or the relay composed the reply (e.g. unreachable).",
            ["class"],
            registry=r,
        )
        self.rejects = Counter(
            "smtprelay_smtpd_rejects",
            "Commands refused to SMTP clients, by command and reply class.",
            ["command", "class"],
            registry=r,
        )
        self.auth_failures = Counter(
            "smtprelay_smtpd_auth_failures", "Failed SMTP AUTH attempts.", registry=r
        )
        self.tls_failures = Counter(
            "smtprelay_smtpd_tls_failures",
            "TLS handshakes that failed or were abandoned, by kind (protocol_version, "
            "no_shared_cipher, not_tls, timeout, closed, other).",
            ["kind"],
            registry=r,
        )
        self.connections = Counter(
            "smtprelay_smtpd_connections", "SMTP connections accepted.", registry=r
        )
        self.legacy_tls = Counter(
            "smtprelay_smtpd_legacy_tls_sessions",
            "SMTP sessions that negotiated TLS 1.0 or 1.1 (allowed on [server] "
            "legacy_tls_listen listeners), by version.",
            ["version"],
            registry=r,
        )
        self.operator = Counter(
            "smtprelay_operator_actions",
            "Queue operations done by the operator.",
            ["action"],
            registry=r,
        )
        self.upstream_pauses = Counter(
            "smtprelay_upstream_pauses",
            'Upstreams paused after a "slow down" reply (delivery/slowdown.py).',
            registry=r,
        )
        self.removed = Counter(
            "smtprelay_messages_removed",
            "Messages whose life ended (delivered, bounced or deleted).",
            registry=r,
        )
        # Set from a queue scan just before each export (see smtprelay.web.status).
        self.queue_messages = Gauge(
            "smtprelay_queue_messages", "Messages in the queue by state.", ["state"], registry=r
        )
        self.queue_oldest = Gauge(
            "smtprelay_queue_oldest_age_seconds", "Age of the oldest queued message.", registry=r
        )
        self.open_connections = Gauge(
            "smtprelay_smtpd_open_connections", "SMTP sessions open now.", registry=r
        )
        self.attempting = Gauge(
            "smtprelay_delivery_in_progress", "Messages being attempted now.", registry=r
        )
        self.loop_lag = Gauge(
            "smtprelay_event_loop_lag_seconds", "Latest measured event-loop delay.", registry=r
        )
        self.started = Gauge(
            "smtprelay_start_time_seconds", "When the daemon started (Unix time).", registry=r
        )
        self.started.set(self.clock())
        # Every labelled series exists from the start, at 0: rate() needs a first sample.
        for status in DELIVERY_STATUSES:
            self.deliveries.labels(status)
        for status in ("sent", "bounced"):
            self.latency.labels(status)
        for state in QUEUE_STATES:
            self.queue_messages.labels(state)

    # --- wiring -------------------------------------------------------------------------

    def attach(self) -> None:
        maillog.attach(self)

    def detach(self) -> None:
        maillog.detach(self)

    def note_queued(self, envelope: Envelope) -> None:
        """Remember the envelope as accepted (client, TLS, AUTH, recipients)."""
        raw = envelope.to_json()
        submission = envelope.submission
        with self._mutex:
            entry = self._entry(envelope.qid, self.clock())
            entry.envelope = raw
            entry.via = str(submission.via)
            entry.tags = tuple(submission.tags)
            entry.send_at = envelope.send_at

    # --- the handler ----------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if not isinstance(fields, Mapping):
            return
        try:
            with self._mutex:
                self._count(fields)
                qid = getattr(record, "qid", None)
                if qid:
                    self._remember(str(qid), record, fields)
        except Exception:
            self.handleError(record)

    def _count(self, fields: Mapping[str, Any]) -> None:
        event = fields.get("event")
        if event == Event.QUEUED:
            return  # counted in _remember, which knows whether it is a notice
        if event == Event.DELIVERY:
            status = str(fields.get("status"))
            self.counts[status] += 1
            self.deliveries.labels(status).inc()
            code = fields.get("code")
            if isinstance(code, int):
                self.replies.labels(f"{code // 100}xx").inc()
            if status in ("sent", "bounced"):
                delay = fields.get("delay")
                if isinstance(delay, int | float):
                    self.latency.labels(status).observe(max(0.0, float(delay)))
        elif event == Event.REJECT:
            self.counts["rejected"] += 1
            code = fields.get("code")
            cls = f"{code // 100}xx" if isinstance(code, int) else "other"
            self.rejects.labels(str(fields.get("command")), cls).inc()
        elif event == Event.AUTH_FAILED:
            self.counts["auth_failed"] += 1
            self.auth_failures.inc()
        elif event == Event.TLS_FAILED:
            self.counts["tls_failed"] += 1
            self.tls_failures.labels(str(fields.get("kind"))).inc()
        elif event == Event.LEGACY_TLS:
            self.legacy_tls.labels(str(fields.get("version"))).inc()
        elif event == Event.CONNECT:
            self.counts["connections"] += 1
            self.connections.inc()
        elif event == Event.NOTICE:
            kind = str(fields.get("kind"))
            self.counts["notices"] += 1
            self.notices.labels(kind).inc()
            self._notice_qids.add(str(fields.get("notice_qid")))
        elif event == Event.REMOVED:
            self.counts["removed"] += 1
            self.removed.inc()
            if fields.get("reason"):
                self.counts["deleted"] += 1
                self.operator.labels("delete").inc()
        elif event == Event.CANCELED:
            self.counts["canceled"] += 1
        elif event in (Event.HOLD, Event.RELEASE):
            self.operator.labels(str(event)).inc()
        elif event == Event.UPSTREAM_PAUSED:
            self.upstream_pauses.inc()

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
                self.counts["received"] += 1
                self.received.inc()
        elif kind == Event.REMOVED:
            entry.removed_at = now
            self._finished.append((now, qid))
        self._purge(now)

    def _entry(self, qid: str, now: float) -> _Kept:
        entry = self._history.get(qid)
        if entry is None:
            entry = self._history[qid] = _Kept(qid, now)
            self._created.append((now, qid))
            while len(self._history) > self.max_messages:
                self._history.popitem(last=False)
        return entry

    def _purge(self, now: float) -> None:
        """Forget finished messages after ``retention``; and, as long after their first
        event, transactions that never became a queued message (no DATA, refused)."""
        horizon = now - self.retention
        limit = 2 * self.max_messages  # the queues of candidates stay bounded too
        while self._finished and (self._finished[0][0] <= horizon or len(self._finished) > limit):
            removed_at, qid = self._finished.popleft()
            entry = self._history.get(qid)
            if entry is not None and entry.removed_at == removed_at:
                del self._history[qid]
        while self._created and (self._created[0][0] <= horizon or len(self._created) > limit):
            first, qid = self._created.popleft()
            entry = self._history.get(qid)
            if entry is not None and entry.first == first and not entry.queued:
                del self._history[qid]
        if len(self._notice_qids) > 10_000:  # a notice whose queued event never came
            self._notice_qids.clear()

    # --- reading ----------------------------------------------------------------------------

    def history(self, qid: str) -> History | None:
        """A copy of what is known about ``qid`` (None once forgotten or never seen)."""
        with self._mutex:
            self._purge(self.clock())
            entry = self._history.get(qid)
            if entry is None:
                return None
            return entry.history()

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
                    if e.queued and (before is None or q < before)
                ),
                reverse=True,
            )
            chosen: list[History] = []
            for qid in qids:
                history = self._history[qid].history()
                if not keep(history):
                    continue
                if len(chosen) == limit:
                    return chosen, True
                chosen.append(history)
            return chosen, False

    def set_send_at(self, qid: str, send_at: float) -> None:
        """A scheduled message was moved (PATCH /v1/messages/{id})."""
        with self._mutex:
            entry = self._history.get(qid)
            if entry is not None:
                entry.send_at = send_at

    @property
    def remembered(self) -> int:
        with self._mutex:
            return len(self._history)

    def counters(self) -> dict[str, int]:
        """Totals since start for /status."""
        with self._mutex:
            counts = dict(self.counts)
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
