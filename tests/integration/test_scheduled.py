"""Scheduled sends against the real daemon and real sinks: a message with ``send_at``
waits in the spool (listed, counted, across a restart) and goes out at its time, not
before; a canceled one never reaches a sink and causes no bounce."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smtprelay import ids
from smtprelay.envelope import Client, Envelope, Recipient
from smtprelay.spool import Spool
from tests.integration.daemon import Daemon
from tests.integration.delivery_support import MX1, MX2, SENDER, make_message, wait_removed
from tests.integration.http_support import api_of, http_overrides, metric_samples, wait_loaded
from tests.integration.sinks import Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures", "tests.integration.http_fixtures"]

# Far enough ahead that the first life, its stop and the second start all happen
# before it (checked below: the test says so if the machine was slower than that).
AHEAD = 12.0
BY = "api token app"


def spool_scheduled(
    spool_dir: Path, rcpt: str, send_at: float, tag: str, cancel_requested_by: str | None = None
) -> tuple[str, bytes]:
    """A message as an HTTP submission leaves it: durable in the spool, with send_at."""
    now = time.time()
    data = b"Received: from client.test by relay.test; scheduled\r\n" + make_message(tag)
    envelope = Envelope(
        qid=ids.new_id(now),
        sender=SENDER,
        recipients=[Recipient(rcpt)],
        client=Client(ip="127.0.0.1", port=0, helo="client.test"),
        arrival=now,
        size=len(data),
        next_attempt=now,
        send_at=send_at,
        cancel_requested_by=cancel_requested_by,
    )
    spool = Spool(spool_dir)
    try:
        spool.commit(envelope, data)
    finally:
        spool.close()
    return envelope.qid, data


def test_scheduled_message_waits_survives_a_restart_and_is_sent_at_its_time(
    zone: Any,
    make_sink: Callable[..., Sink],
    make_daemon: Callable[..., Daemon],
    delivery_config: Callable[..., dict[str, Any]],
    tokens_file: Path,
) -> None:
    mx = make_sink(MX1, name="mx1.dest.test")
    senders_mx = make_sink(MX2, name="mx.sender.test")  # where a bounce would go
    overrides = {"delivery": delivery_config(), "http": http_overrides(tokens_file)}
    first = make_daemon(name="first", start=False, overrides=overrides)
    send_at = time.time() + AHEAD
    # The same instant on the sinks' clock (Received.at is monotonic).
    send_at_mono = send_at - time.time() + time.monotonic()
    qid, data = spool_scheduled(first.spool, "user@dest.test", send_at, "scheduled")
    # Canceled by the API while its attempt was under way, then the daemon died: the
    # cancel is applied when the message is next looked at, and nothing goes out.
    canceled, _ = spool_scheduled(
        first.spool, "other@dest.test", send_at, "canceled", cancel_requested_by=BY
    )
    first.start()
    api = wait_loaded(first)
    listed = api.ok("GET", "/queue?state=scheduled")["messages"]
    assert sorted((m["qid"], m["state"], m["send_at"]) for m in listed) == sorted(
        [(qid, "scheduled", send_at), (canceled, "scheduled", send_at)]
    )
    assert api.ok("GET", "/status")["queue"]["scheduled"] == 2
    status, text = api.get("/metrics")
    assert status == 200
    found = metric_samples(text)
    assert found[("smtprelay_queue_messages", (("state", "scheduled"),))] == 2
    shown = first.cli("queue", "list").stdout
    assert "scheduled for" in shown and qid in shown, shown
    assert api.ok("POST", "/queue/flush", {"qids": [qid]})["results"] == {qid: "scheduled"}
    assert first.stop() == 0
    assert time.time() < send_at, "the machine was too slow for this test's AHEAD"
    assert sorted(first.queued_ids()) == sorted([qid, canceled])
    assert mx.messages == []

    second = make_daemon(name="second", overrides={**overrides, "spool": {"dir": str(first.spool)}})
    wait_removed(second, qid, timeout=AHEAD + 30)
    wait_removed(second, canceled, timeout=30)
    [received] = mx.messages
    assert received.rcpt_tos == ("user@dest.test",)
    assert received.content.endswith(data.split(b"\r\n", 1)[1])
    assert received.at >= send_at_mono  # not before its time
    log = second.log()
    assert f"{canceled}: canceled by {BY}" in log
    assert "other@dest.test" not in "".join(str(m.rcpt_tos) for m in mx.messages)
    # No bounce or other notice for the canceled one, whatever a moment later brings.
    api2 = api_of(second)
    wait_until(lambda: api2.ok("GET", "/status")["queue"]["total"] == 0, 10)
    assert senders_mx.messages == [] and "notification" not in log
