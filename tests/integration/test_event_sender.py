"""One webhook sender against a real aiohttp receiver on loopback (no daemon): a
``429`` with ``Retry-After`` holds the rest of its page too, without counting an attempt
for the events that were not sent (issue 13: "Retry-After honoured on 429/503")."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from smtprelay.events.db import Database
from smtprelay.events.metrics import EventMetrics
from smtprelay.events.outbox import Endpoint, Outbox
from smtprelay.events.sender import Policy, Sender
from smtprelay.events.store import EventStore, Subscriber
from smtprelay.events.webhooks import new_secret
from tests.integration.webhook_receiver import Receiver
from tests.unit.test_events import delivery, queued


def test_retry_after_holds_the_rest_of_the_page(tmp_path: Path) -> None:
    receiver = Receiver(new_secret()).start()
    try:
        receiver.script(429, {"Retry-After": "30"})
        db = Database(tmp_path / "events.db")
        conn = db.open()
        outbox = Outbox(conn)
        now = time.time()
        endpoint = Endpoint("wh_t", "api", receiver.url, (), (receiver.secret,), True, now)
        outbox.put(endpoint)
        facts = [queued("Q", now), delivery("Q", "a@x", "sent", 250, "2.0.0", now)]
        EventStore(conn).commit(facts, {}, [Subscriber("wh_t", ())], now)
        policy = Policy((0.0, 1.0), timeout=5.0, concurrency=1)
        metrics = EventMetrics(CollectorRegistry(), dict)
        sender = Sender(endpoint, db, outbox, policy, metrics)

        async def one_page() -> None:
            page = await db.run(outbox.due, "wh_t", time.time(), 4)
            assert len(page) == 2
            async with aiohttp.ClientSession() as session:
                await sender._deliver(session, page)

        asyncio.run(one_page())
        # One request (the 429); the second event was held, not sent and not failed.
        assert [status for _, status in receiver.requests] == [429]
        rows = conn.execute("SELECT attempts, next_at FROM outbox ORDER BY event").fetchall()
        assert rows[0][0] == 1 and rows[1][0] == 0
        assert all(next_at >= now + 29 for _, next_at in rows)
        assert sender.paused_until >= now + 29
        assert len(outbox.errors("wh_t")) == 1
    finally:
        receiver.stop()
