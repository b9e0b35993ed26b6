"""``smtprelay_webhook_*`` and ``smtprelay_events_*`` series, in the registry /metrics
exports (the one :class:`smtprelay.stats.Stats` made)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from smtprelay.metrics import Series, declare


class _Backlog(Collector):
    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "smtprelay_webhook_backlog",
            "Events waiting in the outbox of each webhook (due or waiting for a retry).",
            labels=["webhook"],
        )
        for webhook, count in sorted(self.read().items()):
            family.add_metric([webhook], count)
        yield family


class EventMetrics:
    events = Series(
        Counter, "smtprelay_events", "Delivery events recorded in the event store, by type.", "type"
    )
    requests = Series(
        Counter,
        "smtprelay_webhook_requests",
        "Webhook requests by result: 2xx, 4xx, 5xx, or error (no HTTP answer).",
        "webhook result",
    )
    delivered = Series(
        Counter,
        "smtprelay_webhook_delivered",
        "Events a webhook receiver accepted (2xx).",
        "webhook",
    )
    given_up = Series(
        Counter,
        "smtprelay_webhook_given_up",
        "Events dropped after the last retry of the schedule failed.",
        "webhook",
    )
    disabled = Series(
        Counter, "smtprelay_webhook_disabled", "Webhooks disabled by a 410 Gone answer."
    )

    def __init__(self, registry: CollectorRegistry, backlog: Callable[[], dict[str, int]]) -> None:
        declare(self, registry)
        registry.register(_Backlog(backlog))
