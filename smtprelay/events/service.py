"""The events stage as the daemon runs it: the recorder, the store, the webhook senders.

``app.py`` makes one :class:`EventService`, attaches its recorder to the mail log (as it
attaches :class:`smtprelay.stats.Stats`), runs :meth:`run` as a supervised task and
:meth:`close` after delivery has stopped (the last records are committed then).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from smtprelay.config import Settings
from smtprelay.envelope import Envelope
from smtprelay.errors import RelayError
from smtprelay.events.backlog import Backlog
from smtprelay.events.db import Database
from smtprelay.events.metrics import EventMetrics
from smtprelay.events.model import Fact, MessageInfo
from smtprelay.events.outbox import Endpoint, Outbox
from smtprelay.events.recorder import Recorder
from smtprelay.events.sender import Policy, Sender
from smtprelay.events.store import EventStore, Subscriber
from smtprelay.events.webhooks import CONFIG_ID_PREFIX, configured

log = logging.getLogger("smtprelay.events")

PRUNE_PERIOD = 600.0
HOUSEKEEPING_PERIOD = 2.0
SENDER_RESTART = 5.0


class EventsStartError(RelayError):
    """The event store or a [[webhooks]] entry is unusable; names the key."""


class EventService:
    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        load: Callable[[str], Envelope] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.load = load  # the spool's envelope of a QID (for arrivals nobody noted)
        directory = settings.events.dir or str(Path(settings.spool.dir) / "events")
        self.db = Database(Path(directory) / "events.db")
        self.recorder = Recorder(clock)
        self.backlog = Backlog()
        self.metrics = EventMetrics(registry or CollectorRegistry(), self.backlog.snapshot)
        self.store: EventStore | None = None
        self.outbox: Outbox | None = None
        self.senders: dict[str, tuple[Sender, asyncio.Task[None]]] = {}
        self._subscribers: list[Subscriber] = []
        self._configured: list[Endpoint] = []
        self._group: asyncio.TaskGroup | None = None
        self._reloads: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        try:
            now = clock()
            self._configured = [configured(w, now) for w in settings.webhooks]
        except ValueError as e:
            raise EventsStartError(f"[[webhooks]] secret_file: {e}") from None

    # --- wiring ---------------------------------------------------------------------

    def attach(self) -> None:
        self.recorder.attach()

    def detach(self) -> None:
        self.recorder.detach()

    def note_queued(self, envelope: Envelope) -> None:
        self.recorder.note_queued(envelope)

    async def open(self) -> None:
        try:
            conn = await self.db.run(self.db.open)
        except Exception as e:  # sqlite3.Error or OSError: the file is unusable
            raise EventsStartError(f"[events] dir {self.db.path.parent}: {e}") from None
        self.store, self.outbox = EventStore(conn, self.load), Outbox(conn)
        await self.db.run(self.outbox.sync_config, self._configured)
        await self._refresh()

    @property
    def policy(self) -> Policy:
        e = self.settings.events
        return Policy(e.webhook_retry_schedule, e.webhook_timeout, e.webhook_concurrency)

    # --- running --------------------------------------------------------------------

    async def run(self) -> None:
        """The committer, pruning, backlog counts and one sender per webhook."""
        assert self.store is not None
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.recorder.run(self._commit))
                group.create_task(self._housekeeping())
                self._group = group
                for endpoint in await self.db.run(self._outbox().endpoints):
                    self._start_sender(endpoint)
        finally:
            self.senders.clear()

    async def _commit(self, facts: list[Fact], notes: dict[str, MessageInfo]) -> None:
        store = self.store
        assert store is not None
        subscribers = self._subscribers
        written = await self.db.run(store.commit, facts, notes, subscribers, self.clock())
        self.backlog.written(subscribers, written.by_type)
        for kind, count in written.by_type.items():
            self.metrics.events.labels(kind).inc(count)
        for webhook in written.webhooks:
            entry = self.senders.get(webhook)
            if entry is not None:
                entry[0].wake.set()

    async def _housekeeping(self) -> None:
        last_prune = 0.0
        while True:
            now = self.clock()
            try:
                if now - last_prune >= PRUNE_PERIOD:
                    last_prune = now
                    assert self.store is not None
                    horizon = now - self.settings.events.retention
                    gone = await self.db.run(self.store.prune, horizon)
                    if gone:
                        log.info("events: %d event(s) older than the retention pruned", gone)
                    # The one full count of the outbox (see events.backlog): at start
                    # and after the prune, the only remover the counts do not follow.
                    self.backlog.replace(await self.db.run(self._outbox().backlog))
            except sqlite3.Error as e:  # e.g. the disk is full: try again later
                log.warning("events: housekeeping failed: %s", e)
            await asyncio.sleep(HOUSEKEEPING_PERIOD)

    def _start_sender(self, endpoint: Endpoint) -> None:
        if endpoint.disabled_at is not None or endpoint.id in self.senders or self._group is None:
            return
        sender = Sender(
            endpoint,
            self.db,
            self._outbox(),
            self.policy,
            self.metrics,
            self.clock,
            settled=self.backlog.settled,
        )
        task = self._group.create_task(self._sending(sender))
        self.senders[endpoint.id] = (sender, task)

    async def _sending(self, sender: Sender) -> None:
        try:
            while not sender.disabled:
                try:
                    await sender.run()
                except Exception:  # a webhook's fault must not stop the mail
                    log.exception(
                        "webhook %s: sender failed; again in %gs",
                        sender.endpoint.id,
                        SENDER_RESTART,
                    )
                    await asyncio.sleep(SENDER_RESTART)
        finally:
            entry = self.senders.get(sender.endpoint.id)
            if entry is not None and entry[0] is sender:  # not its successor (a reload)
                del self.senders[sender.endpoint.id]
        if sender.disabled:  # 410 Gone: no more outbox rows for it
            self.backlog.forget([sender.endpoint.id])
            await self._refresh()

    async def _refresh(self) -> None:
        endpoints = await self.db.run(self._outbox().endpoints)
        self._subscribers = [Subscriber(e.id, e.events) for e in endpoints if e.disabled_at is None]

    def _outbox(self) -> Outbox:
        assert self.outbox is not None
        return self.outbox

    # --- reload (SIGHUP) -----------------------------------------------------------

    def stage_reload(self, new: Settings) -> Callable[[], None]:
        """Check the ``[events]`` and ``[[webhooks]]`` of a configuration being reloaded
        (every secret file is read now: a missing or bad one refuses the whole file,
        ValueError naming the key); returns what applies them."""
        try:
            endpoints = [configured(w, self.clock()) for w in new.webhooks]
        except ValueError as e:
            raise ValueError(f"[[webhooks]] secret_file: {e}") from None

        def apply() -> None:
            if new.events.dir != self.settings.events.dir:
                log.warning("reload: [events] dir changes only on restart")
            self.settings = new  # retention and the webhook policy: read where used
            self._configured = endpoints
            task = asyncio.get_running_loop().create_task(self._reconfigure(endpoints))
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)

        return apply

    async def _reconfigure(self, endpoints: list[Endpoint]) -> None:
        """The config file's webhooks now: added ones start, removed ones stop (their
        backlog goes with them), changed ones (events, secrets, allow_private) keep
        their backlog and sender, which takes the change from its next request; the
        retry schedule, timeout and concurrency apply to every sender the same way."""
        async with self._reload_lock:
            try:
                keep = {e.id for e in endpoints}
                # Removed ones get no more outbox rows from the commits queued meanwhile.
                self._subscribers = [
                    s
                    for s in self._subscribers
                    if s.id in keep or not s.id.startswith(CONFIG_ID_PREFIX)
                ]
                await self.db.run(self._outbox().sync_config, endpoints)
                await self._refresh()
                current = {e.id: e for e in await self.db.run(self._outbox().endpoints)}
                self.backlog.forget(w for w in self.backlog.snapshot() if w not in current)
            except sqlite3.Error as e:
                log.error("events: reload not applied to the webhooks: %s", e)
                return
            for webhook, (sender, task) in list(self.senders.items()):
                endpoint = current.get(webhook)
                if (
                    endpoint is None
                    or endpoint.disabled_at is not None
                    # Its resolver (the SSRF guard or none) is made when it starts.
                    or endpoint.allow_private != sender.endpoint.allow_private
                ):
                    self.senders.pop(webhook, None)
                    task.cancel()
                    continue
                sender.endpoint = endpoint
                sender.policy = self.policy
                sender.wake.set()
            for endpoint in current.values():
                self._start_sender(endpoint)
            log.info(
                "events: %d webhook(s) from the config file now, %d sending",
                len(endpoints),
                len(self.senders),
            )

    # --- the API's operations -------------------------------------------------------

    async def add_webhook(self, endpoint: Endpoint) -> None:
        outbox = self._outbox()
        await self.db.run(outbox.put, endpoint)
        await self._refresh()
        self._start_sender(endpoint)

    async def remove_webhook(self, webhook: str) -> bool:
        entry = self.senders.pop(webhook, None)
        if entry is not None:
            entry[1].cancel()
        # No outbox rows for it from the commits queued meanwhile (none left behind).
        self._subscribers = [s for s in self._subscribers if s.id != webhook]
        removed = await self.db.run(self._outbox().remove, webhook)
        self.backlog.forget([webhook])
        await self._refresh()
        return removed

    # --- stopping -------------------------------------------------------------------

    async def close(self) -> None:
        """After delivery stopped: commit the last records, close the store."""
        self.detach()
        if self.store is not None:
            facts, notes = self.recorder.take(final=True)
            if facts or notes:
                await self._commit(facts, notes)
            await self.db.run(self.db.close)
        self.db.shutdown()
