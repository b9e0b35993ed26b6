"""The relay's Prometheus series, counted from the mail log's events.

:class:`smtprelay.stats.Stats` (the handler on the mail logger) feeds each event's
fields to :meth:`RelayMetrics.count`; the series live in the registry /metrics exports
(never the process-global one): ``smtprelay_messages_received_total``,
``smtprelay_deliveries_total{status}``, ``smtprelay_delivery_seconds{status}`` and more.
The queue gauges are declared here and set by whoever scans the queue
(``smtprelay.web.status``) just before an export. Not thread-safe by itself: Stats
calls it under its lock.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Mapping
from typing import Any, Generic, TypeVar, overload

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from smtprelay.maillog import Event

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


_M = TypeVar("_M", Counter, Gauge, Histogram)


class Series(Generic[_M]):
    """A series of a metrics class, declared in its body: each instance has the metric
    itself as that attribute, made in the instance's registry by :func:`declare`.
    ``labels`` are space-separated (like namedtuple's field names)."""

    def __init__(self, kind: type[_M], name: str, text: str, labels: str = "", **options: Any):
        self.kind: type[_M] = kind
        self.name, self.text, self.labels = name, text, labels.split()
        self.options = options  # Histogram's buckets

    @overload
    def __get__(self, metrics: None, owner: type) -> Series[_M]: ...
    @overload
    def __get__(self, metrics: object, owner: type) -> _M: ...
    def __get__(self, metrics: object | None, owner: type) -> Series[_M] | _M:
        # Only before declare(): after it the instance's own attribute is found first.
        if metrics is None:
            return self
        raise AttributeError(f"{self.name} is not declared in a registry yet")


def declare(metrics: object, registry: CollectorRegistry) -> None:
    """Make every :class:`Series` of ``metrics``'s class in ``registry`` (in the order
    of the class body, the order of the export), as an attribute of ``metrics``."""
    for attribute, series in vars(type(metrics)).items():
        if isinstance(series, Series):
            metric = series.kind(
                series.name, series.text, series.labels, registry=registry, **series.options
            )
            setattr(metrics, attribute, metric)


class RelayMetrics:
    """Every series of the relay's own (the events stage adds its: events/metrics.py),
    and the totals since start that /status shows (``counts``)."""

    received = Series(
        Counter, "smtprelay_messages_received", "Messages accepted from clients and spooled."
    )
    notices = Series(
        Counter, "smtprelay_notices", "Delivery status notifications generated, by kind.", "kind"
    )
    deliveries = Series(
        Counter,
        "smtprelay_deliveries",
        "Per-recipient delivery results: sent, deferred (will retry) or bounced.",
        "status",
    )
    latency = Series(
        Histogram,
        "smtprelay_delivery_seconds",
        "Time from arrival to a recipient's final result (sent or bounced).",
        "status",
        buckets=LATENCY_BUCKETS,
    )
    replies = Series(
        Counter,
        "smtprelay_delivery_replies",
        "Per-recipient delivery results by reply class (2xx, 4xx, 5xx), whether the "
        "remote server answered or the relay composed the reply (e.g. unreachable).",
        "class",
    )
    rejects = Series(
        Counter,
        "smtprelay_smtpd_rejects",
        "Commands refused to SMTP clients, by command and reply class.",
        "command class",
    )
    auth_failures = Series(Counter, "smtprelay_smtpd_auth_failures", "Failed SMTP AUTH attempts.")
    tls_failures = Series(
        Counter,
        "smtprelay_smtpd_tls_failures",
        "TLS handshakes that failed or were abandoned, by kind (protocol_version, "
        "no_shared_cipher, not_tls, timeout, closed, other).",
        "kind",
    )
    connections = Series(Counter, "smtprelay_smtpd_connections", "SMTP connections accepted.")
    legacy_tls = Series(
        Counter,
        "smtprelay_smtpd_legacy_tls_sessions",
        "SMTP sessions that negotiated TLS 1.0 or 1.1 (allowed on [server] "
        "legacy_tls_listen listeners), by version.",
        "version",
    )
    operator = Series(
        Counter, "smtprelay_operator_actions", "Queue operations done by the operator.", "action"
    )
    upstream_pauses = Series(
        Counter,
        "smtprelay_upstream_pauses",
        'Upstreams paused after a "slow down" reply (delivery/slowdown.py).',
    )
    removed = Series(
        Counter,
        "smtprelay_messages_removed",
        "Messages whose life ended (delivered, bounced or deleted).",
    )
    # Set from a queue scan just before each export (see smtprelay.web.status).
    queue_messages = Series(
        Gauge, "smtprelay_queue_messages", "Messages in the queue by state.", "state"
    )
    queue_oldest = Series(
        Gauge, "smtprelay_queue_oldest_age_seconds", "Age of the oldest queued message."
    )
    open_connections = Series(Gauge, "smtprelay_smtpd_open_connections", "SMTP sessions open now.")
    attempting = Series(Gauge, "smtprelay_delivery_in_progress", "Messages being attempted now.")
    loop_lag = Series(
        Gauge, "smtprelay_event_loop_lag_seconds", "Latest measured event-loop delay."
    )
    started = Series(Gauge, "smtprelay_start_time_seconds", "When the daemon started (Unix time).")

    def __init__(self, registry: CollectorRegistry, started: float) -> None:
        self.counts: Tally[str] = Tally()
        declare(self, registry)
        self.started.set(started)
        # Every labelled series exists from the start, at 0: rate() needs a first sample.
        for status in DELIVERY_STATUSES:
            self.deliveries.labels(status)
        for status in ("sent", "bounced"):
            self.latency.labels(status)
        for state in QUEUE_STATES:
            self.queue_messages.labels(state)

    def count(self, fields: Mapping[str, Any]) -> None:
        """Count one mail-log event (its structured fields)."""
        event = fields.get("event")
        if event == Event.QUEUED:
            return  # note_received, from Stats, which knows whether it is a notice
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

    def note_received(self) -> None:
        """A message accepted from a client (a notice the relay made itself is not)."""
        self.counts["received"] += 1
        self.received.inc()
