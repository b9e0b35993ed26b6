"""Outbox rows per webhook, for the ``smtprelay_webhook_backlog`` gauge, kept without
reading the outbox.

Counting the outbox reads its whole index (0.1-0.4 s for a million rows) on the database
thread, the one that commits events; done every few seconds, a large backlog would tax
every commit. So the count is kept as rows come and go: each commit adds, per webhook,
the events whose type it takes (exactly the rows the commit wrote); each settled page
takes off what was delivered or given up; a webhook removed or disabled drops to
nothing. A full count (:meth:`Backlog.replace`) runs at start and after each prune (the
only other remover), so any drift lasts one prune period at most.

Used on the event loop only (each update follows its database call, in the order the
database thread finished them), so it needs no lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from smtprelay.events.store import Subscriber
from smtprelay.events.types import matches


class Backlog:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)

    def replace(self, counts: Mapping[str, int]) -> None:
        """A full count of the outbox (webhooks without rows stay, at 0)."""
        self._counts = {webhook: 0 for webhook in self._counts} | dict(counts)

    def written(self, subscribers: Sequence[Subscriber], by_type: Mapping[str, int]) -> None:
        """A commit wrote one row per event for each subscriber that takes its type."""
        for sub in subscribers:
            rows = sum(n for kind, n in by_type.items() if matches(sub.patterns, kind))
            if rows:
                self._counts[sub.id] = self._counts.get(sub.id, 0) + rows

    def settled(self, webhook: str, rows: int) -> None:
        if webhook in self._counts:
            self._counts[webhook] = max(0, self._counts[webhook] - rows)

    def forget(self, webhooks: Iterable[str]) -> None:
        for webhook in webhooks:
            self._counts.pop(webhook, None)
