"""The event model, the event store's cursor and the webhook rules (issue 13), without
a daemon: real SQLite files in a temporary directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from smtprelay import maillog
from smtprelay.config import ConfigError, parse
from smtprelay.envelope import Client, Envelope, Recipient, Submission, SubmittedVia
from smtprelay.events.db import Database
from smtprelay.events.model import Fact, MessageInfo, translate
from smtprelay.events.recorder import Recorder
from smtprelay.events.sender import _retry_after
from smtprelay.events.store import EventStore, Subscriber
from smtprelay.events.types import matches, valid_pattern
from smtprelay.events.webhooks import forbidden_address, headers, new_secret
from smtprelay.replies import Reply


def store(tmp_path: Path) -> EventStore:
    return EventStore(Database(tmp_path / "events.db").open())


def delivery(
    qid: str,
    rcpt: str,
    status: str,
    code: int,
    dsn: str,
    t: float,
    relay: str = "mx1.example.net[192.0.2.7]:25",
) -> Fact:
    return Fact(
        t,
        maillog.Event.DELIVERY,
        qid,
        {
            "event": maillog.Event.DELIVERY,
            "recipient": rcpt,
            "relay": relay,
            "delay": 1.0,
            "dsn": dsn,
            "code": code,
            "status": status,
            "reason": "text",
        },
    )


def queued(qid: str, t: float) -> Fact:
    return Fact(
        t,
        maillog.Event.QUEUED,
        qid,
        {"event": maillog.Event.QUEUED, "sender": "a@b.example", "size": 10, "nrcpt": 1},
    )


def test_patterns() -> None:
    assert valid_pattern("recipient.*") and valid_pattern("message.rejected")
    assert not valid_pattern("recipient.nope") and not valid_pattern("nope.*")
    assert matches(("recipient.*",), "recipient.bounced")
    assert not matches(("recipient.*",), "message.received")
    assert matches((), "notice.sent")


def test_translate_bounce_expiry_and_tags() -> None:
    info = MessageInfo(route="http", token="app", tags=["t"], metadata={"k": "v"})
    bounced = translate(delivery("Q", "r@x", "bounced", 550, "5.1.1", 1.0), info)
    ((kind, data),) = bounced
    assert kind == "recipient.bounced"
    assert data["action"] == "failed" and data["status"] == "5.1.1"
    assert data["diagnostic"] == "smtp; 550 5.1.1 text"
    assert data["remote_mta"] == "mx1.example.net"
    assert data["token"] == "app" and data["tags"] == ["t"] and data["metadata"] == {"k": "v"}
    ((kind, data),) = translate(delivery("Q", "r@x", "bounced", 554, "5.4.7", 1.0, "none"), None)
    assert kind == "recipient.expired" and data["remote_mta"] is None
    assert translate(queued("N", 1.0), MessageInfo(notice=True)) == []
    scheduled = MessageInfo(send_at=100.0)
    assert translate(queued("S", 1.0), scheduled)[0][0] == "message.scheduled"


def test_sequence_and_cursor_never_skip_or_repeat(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.commit([queued("Q1", 1.0)], {"Q1": MessageInfo()}, [Subscriber("w", ("recipient.*",))], 1.0)
    written = s.commit(
        [
            delivery("Q1", "r@x", "deferred", 450, "4.2.1", 2.0),
            queued("Q2", 2.5),
            delivery("Q1", "r@x", "sent", 250, "2.0.0", 3.0),
        ],
        {},
        [Subscriber("w", ("recipient.*",))],
        3.0,
    )
    assert written.events == 3 and written.webhooks == frozenset({"w"})
    events, cursor = s.page(0, 2)
    assert [e["data"]["sequence"] for e in events] == [1, 2]
    more, cursor2 = s.page(cursor, 2)
    assert [e["type"] for e in more] == ["message.received", "recipient.delivered"]
    assert [e["data"]["sequence"] for e in more] == [1, 3]
    assert s.page(cursor2, 2) == ([], cursor2)
    # A filter that matches nothing more still moves the cursor to the end.
    only, end = s.page(0, 10, ["recipient.deferred"])
    assert len(only) == 1 and end == cursor2
    assert [e["data"]["sequence"] for e in s.page(0, 10, qid="Q1")[0]] == [1, 2, 3]
    # Pruned events leave their positions unused: the next event gets a higher one.
    assert s.prune(10.0) == 4
    s.commit([queued("Q3", 20.0)], {}, [], 20.0)
    (event,), _ = s.page(cursor2, 10)
    assert event["data"]["qid"] == "Q3"
    assert s.page(0, 10)[1] > cursor2


def test_store_survives_reopen(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.commit([queued("Q", 1.0)], {"Q": MessageInfo(tags=["a"])}, [], 1.0)
    s.conn.close()
    again = store(tmp_path)
    again.commit([delivery("Q", "r@x", "sent", 250, "2.0.0", 2.0)], {}, [], 2.0)
    events, _ = again.page(0, 10)
    assert [e["data"]["sequence"] for e in events] == [1, 2]
    assert events[1]["data"]["tags"] == ["a"]  # the info was read back from the file


def test_recorder_takes_mail_log_records() -> None:
    recorder = Recorder()
    recorder.attach()
    try:
        maillog.reject(
            "RCPT",
            "192.0.2.1",
            Reply(550, "5.7.1", "Relay access denied"),
            sender="a@b.example",
            recipient="x@y.example",
        )
        maillog.connect("192.0.2.1")  # not an event
    finally:
        recorder.detach()
    facts, _ = recorder.take()
    assert [f.event for f in facts] == ["reject"]
    ((kind, data),) = translate(facts[0], None)
    assert kind == "message.rejected" and data["reply"]["code"] == 550
    assert recorder not in logging.getLogger("smtprelay.mail").handlers


def test_signatures_verify_with_rotation() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"id": "evt_1"}'
    # The library refuses timestamps far from now: sign with the current time.
    sent = headers((old, new), "evt_1", int(time.time()), body)
    for secret in (old, new):
        assert Webhook(secret).verify(body, sent) == {"id": "evt_1"}
    assert len(sent["webhook-signature"].split(" ")) == 2
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, sent)


def test_ssrf_addresses() -> None:
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "100.64.0.1",
        "0.0.0.0",
    ):
        assert forbidden_address(address), address
    assert not forbidden_address("93.184.216.34")


def test_retry_after() -> None:
    assert _retry_after("3", 0.0) == 3.0
    assert _retry_after("junk", 0.0) == 0.0
    assert _retry_after("999999999", 0.0) == 86400.0


def test_webhooks_config(tmp_path: Path) -> None:
    settings = parse(
        {
            "webhooks": [
                {"url": "https://hooks.example/x", "secret_file": "/s", "events": ["recipient.*"]}
            ]
        }
    )
    assert settings.webhooks[0].events == ("recipient.*",)
    assert settings.events.retention == 7 * 86400
    with pytest.raises(ConfigError, match=r"\[\[webhooks\]\] #1 events"):
        parse(
            {"webhooks": [{"url": "https://h.example/", "secret_file": "/s", "events": ["bogus"]}]}
        )
    with pytest.raises(ConfigError, match=r"\[\[webhooks\]\] #1 url"):
        parse({"webhooks": [{"url": "ftp://h.example/", "secret_file": "/s"}]})


def test_arrival_nobody_noted_reads_the_spool(tmp_path: Path) -> None:
    """A path that queues without noting the envelope (e.g. another intake): the
    store reads it from the spool, so route, tags and metadata are still there."""
    envelope = Envelope(
        qid="Q9",
        sender="a@b.example",
        recipients=[Recipient("r@x.example")],
        client=Client("127.0.0.1", 1, "h"),
        arrival=1.0,
        size=10,
        submission=Submission(via=SubmittedVia.HTTP, token="app", tags=["t"]),
    )
    s = EventStore(Database(tmp_path / "events.db").open(), load={"Q9": envelope}.__getitem__)
    s.commit([queued("Q9", 1.0)], {}, [], 1.0)
    (event,), _ = s.page(0, 10)
    assert event["data"]["route"] == "http" and event["data"]["token"] == "app"
    assert event["data"]["recipients"] == ["r@x.example"] and event["data"]["tags"] == ["t"]


def test_arrival_already_gone_from_the_spool(tmp_path: Path) -> None:
    def gone(qid: str) -> Envelope:
        raise FileNotFoundError(qid)

    s = EventStore(Database(tmp_path / "events.db").open(), load=gone)
    s.commit([queued("Q8", 1.0)], {}, [], 1.0)
    (event,), _ = s.page(0, 10)
    assert event["type"] == "message.received" and event["data"]["qid"] == "Q8"


def test_canceled_by_name() -> None:
    """The scheduler's cancel line is matched by its event name, "canceled"."""
    fact = Fact(1.0, "canceled", "Q", {"event": "canceled", "by": "api token app"})
    ((kind, data),) = translate(fact, MessageInfo(route="http", token="app"))
    assert kind == "message.canceled" and data["by"] == "api token app"
    assert data["route"] == "http"
