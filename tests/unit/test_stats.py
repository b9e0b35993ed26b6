"""smtprelay.stats: counters, histograms and histories made from the mail log."""

from __future__ import annotations

import gc
import io
import json
import logging
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from smtprelay import maillog, stats
from smtprelay.envelope import Client, Recipient
from smtprelay.replies import Reply
from tests.unit.helpers import make_envelope

SENT = Reply(250, "2.0.0", "Ok")
LATER = Reply(451, "4.3.0", "try later")
REFUSED = Reply(550, "5.1.1", "no such user")
DELAYS = (0.0, 0.0, 0.1, 0.2)
QID = "1K17TWEWEZ4Y1"
QID2 = "1K17TWEWEZ4Y2"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def st(clock: Clock) -> Iterator[stats.Stats]:
    logger = logging.getLogger(stats.MAIL_LOGGER)
    saved = logger.level, logger.propagate
    logger.propagate = False  # keep pytest's capture out of it
    handler = stats.Stats(retention=60.0, max_messages=100, clock=clock)
    handler.attach()
    yield handler
    handler.detach()
    logger.setLevel(saved[0])
    logger.propagate = saved[1]


def receive(qid: str, recipients: int = 1) -> None:
    maillog.client(qid, "192.0.2.5", "PLAIN", "app1")
    maillog.message_id(qid, f"<{qid}@example.com>")
    maillog.queued(qid, "app@example.com", 1234, recipients)


def samples(handler: stats.Stats) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, as Prometheus would parse it."""
    text = generate_latest(handler.registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_counts_what_the_log_says(st: stats.Stats) -> None:
    receive(QID, recipients=2)
    maillog.delivery(QID, "a@x.test", "mx[192.0.2.7]:25", 0.4, DELAYS, SENT, "sent")
    maillog.delivery(QID, "b@x.test", "mx[192.0.2.7]:25", 0.4, DELAYS, LATER, "deferred")
    maillog.delivery(QID, "b@x.test", "mx[192.0.2.7]:25", 600.0, DELAYS, REFUSED, "bounced")
    maillog.removed(QID)
    maillog.connect("192.0.2.9")
    maillog.reject("RCPT", "192.0.2.9", Reply(554, "5.7.1", "Relay access denied"))
    maillog.auth_failed("192.0.2.9", "LOGIN", "x")

    assert st.counters() == {
        "received": 1,
        "delivered": 1,
        "deferred": 1,
        "bounced": 1,
        "rejected": 1,
        "deleted": 0,
        "canceled": 0,
        "notices": 0,
        "auth_failed": 1,
        "tls_failed": 0,
        "connections": 1,
    }
    found = samples(st)
    assert found[("smtprelay_messages_received_total", ())] == 1
    for status in ("sent", "deferred", "bounced"):
        assert found[("smtprelay_deliveries_total", (("status", status),))] == 1
    assert found[("smtprelay_delivery_replies_total", (("class", "2xx"),))] == 1
    assert found[("smtprelay_delivery_replies_total", (("class", "4xx"),))] == 1
    assert found[("smtprelay_delivery_replies_total", (("class", "5xx"),))] == 1
    assert found[("smtprelay_smtpd_rejects_total", (("class", "5xx"), ("command", "RCPT")))] == 1
    assert found[("smtprelay_smtpd_auth_failures_total", ())] == 1
    assert found[("smtprelay_smtpd_connections_total", ())] == 1
    assert found[("smtprelay_messages_removed_total", ())] == 1
    # Latency: the sent one in the 0.5 s bucket, the bounced one (600 s) in 900 s.
    sent = (("le", "0.5"), ("status", "sent"))
    assert found[("smtprelay_delivery_seconds_bucket", sent)] == 1
    assert found[("smtprelay_delivery_seconds_bucket", (("le", "0.25"), ("status", "sent")))] == 0
    assert found[("smtprelay_delivery_seconds_count", (("status", "bounced"),))] == 1
    assert found[("smtprelay_delivery_seconds_sum", (("status", "bounced"),))] == 600.0
    assert (
        found[("smtprelay_delivery_seconds_bucket", (("le", "900.0"), ("status", "bounced")))] == 1
    )
    assert not any(name.endswith("_created") for name, _ in found)


def test_series_exist_at_zero_before_any_event(st: stats.Stats) -> None:
    found = samples(st)
    for status in stats.DELIVERY_STATUSES:
        assert found[("smtprelay_deliveries_total", (("status", status),))] == 0
    for state in stats.QUEUE_STATES:
        assert found[("smtprelay_queue_messages", (("state", state),))] == 0
    assert found[("smtprelay_messages_received_total", ())] == 0


def test_a_notice_is_not_counted_as_received(st: stats.Stats) -> None:
    receive(QID)
    maillog.delivery(QID, "a@x.test", "mx[192.0.2.7]:25", 1.0, DELAYS, REFUSED, "bounced")
    maillog.notice_sent(QID, "failure", QID2)
    maillog.queued(QID2, "", 2000, 1)
    assert st.counters()["received"] == 1
    assert st.counters()["notices"] == 1
    assert samples(st)[("smtprelay_notices_total", (("kind", "failure"),))] == 1
    history = st.history(QID)
    assert history is not None
    assert [e["event"] for e in history.events][-1] == "notice"
    assert history.events[-1]["notice_qid"] == QID2


def test_history_keeps_every_event_with_its_fields(st: stats.Stats) -> None:
    receive(QID)
    maillog.delivery(QID, "a@x.test", "mx[192.0.2.7]:25", 1.0, DELAYS, LATER, "deferred")
    maillog.delivery(QID, "a@x.test", "mx[192.0.2.7]:25", 9.0, DELAYS, SENT, "sent")
    maillog.removed(QID)
    history = st.history(QID)
    assert history is not None
    assert [e["event"] for e in history.events] == [
        "client",
        "message-id",
        "queued",
        "delivery",
        "delivery",
        "removed",
    ]
    first, second = history.events[3:5]
    assert (first["status"], first["code"], first["reason"]) == ("deferred", 451, "try later")
    assert (second["status"], second["code"], second["dsn"]) == ("sent", 250, "2.0.0")
    assert first["text"].startswith(f"{QID}: to=<a@x.test>, relay=mx[192.0.2.7]:25")
    assert history.events[0]["sasl_username"] == "app1"
    assert history.outcome == "delivered"
    assert history.recipient_states() == {"a@x.test": "sent"}
    assert st.history("1K17TWEWEZ4Y9") is None


@pytest.mark.parametrize(
    ("statuses", "outcome"),
    [
        (["sent", "sent"], "delivered"),
        (["bounced", "bounced"], "bounced"),
        (["sent", "bounced"], "partly delivered"),
    ],
)
def test_outcome(st: stats.Stats, statuses: list[str], outcome: str) -> None:
    receive(QID, 2)
    for n, status in enumerate(statuses):
        reply = SENT if status == "sent" else REFUSED
        maillog.delivery(QID, f"r{n}@x.test", "none", 1.0, DELAYS, reply, status)
    history = st.history(QID)
    assert history is not None and history.outcome == "queued"
    maillog.removed(QID)
    history = st.history(QID)
    assert history is not None and history.outcome == outcome


def test_operator_actions(st: stats.Stats) -> None:
    receive(QID)
    maillog.held(QID)
    maillog.released(QID)
    maillog.deleted(QID)
    history = st.history(QID)
    assert history is not None
    assert [e["event"] for e in history.events][-3:] == ["hold", "release", "removed"]
    assert history.outcome == "deleted"
    assert st.counters()["deleted"] == 1
    found = samples(st)
    for action in ("hold", "release", "delete"):
        assert found[("smtprelay_operator_actions_total", (("action", action),))] == 1


def test_finished_messages_are_forgotten_after_the_retention(st: stats.Stats, clock: Clock) -> None:
    receive(QID)
    receive(QID2)
    clock.now += 30
    maillog.removed(QID)
    clock.now += 59
    assert st.history(QID) is not None
    clock.now += 2
    assert st.history(QID) is None
    # Still queued: kept however old it is.
    clock.now += 3600
    assert st.history(QID2) is not None


def test_transactions_that_never_queued_are_forgotten(st: stats.Stats, clock: Clock) -> None:
    maillog.client(QID, "192.0.2.5", None, None)  # RCPT accepted, then RSET or hang-up
    assert st.history(QID) is not None
    clock.now += 61
    assert st.history(QID) is None


def test_at_most_max_messages_oldest_out(st: stats.Stats) -> None:
    qids = [f"1K17TWEWEZ{n:03d}" for n in range(150)]
    for qid in qids:
        receive(qid)
    assert st.remembered == 100
    assert st.history(qids[0]) is None
    assert st.history(qids[-1]) is not None


def test_the_creation_order_holds_no_more_than_max_messages(st: stats.Stats, clock: Clock) -> None:
    # Transactions that never queued wait for the retention in the creation order;
    # past max_messages their histories are gone, and so are their places in it.
    qids = [f"1K17TWEWEZ{n:03d}" for n in range(250)]
    for qid in qids:
        maillog.client(qid, "192.0.2.5", None, None)
    assert len(st._created) == 100
    assert st.remembered == 100
    assert st.history(qids[-100]) is not None and st.history(qids[-101]) is None
    clock.now += 61
    assert st.history(qids[-1]) is None and len(st._created) == 0


def test_a_long_history_keeps_its_start_and_its_end(st: stats.Stats) -> None:
    receive(QID)
    for n in range(stats.MAX_EVENTS + 50):
        maillog.delivery(QID, f"r{n}@x.test", "none", 1.0, DELAYS, LATER, "deferred")
    history = st.history(QID)
    assert history is not None
    assert len(history.events) == stats.MAX_EVENTS
    assert history.omitted == 53
    assert history.events[2]["event"] == "queued"
    assert history.events[-1]["recipient"] == f"r{stats.MAX_EVENTS + 49}@x.test"


def test_a_deferral_repeating_the_last_one_is_kept_once_with_its_count(st: stats.Stats) -> None:
    # An outage of days: every retry of every recipient meets the same refusal.
    receive(QID, recipients=2)
    firsts: list[float] = []
    for attempt in range(200):
        for recipient in ("a@x.test", "b@x.test"):
            maillog.delivery(QID, recipient, "none", 60.0 * attempt, DELAYS, LATER, "deferred")
        history = st.history(QID)
        assert history is not None
        firsts = firsts or [e["time"] for e in history.events[-2:]]
    assert history is not None
    deferrals = [e for e in history.events if e.get("status") == "deferred"]
    assert [(e["recipient"], e["repeated"], e["since"]) for e in deferrals] == [
        ("a@x.test", 200, firsts[0]),
        ("b@x.test", 200, firsts[1]),
    ]
    assert deferrals[0]["delay"] == 60.0 * 199  # the newest attempt's fields
    assert history.omitted == 0 and len(history.events) == 5  # client, id, queued, 2
    assert {a: f.attempts for a, f in history.finals().items()} == {
        "a@x.test": 200,
        "b@x.test": 200,
    }
    # A different reply is a new event; what was repeated before keeps its count.
    maillog.delivery(QID, "a@x.test", "none", 1.0, DELAYS, REFUSED, "bounced")
    maillog.delivery(QID, "b@x.test", "mx[192.0.2.7]:25", 1.0, DELAYS, LATER, "deferred")
    history = st.history(QID)
    assert history is not None
    assert [(e["recipient"], e["status"], e.get("repeated")) for e in history.events[3:]] == [
        ("a@x.test", "deferred", 200),
        ("b@x.test", "deferred", 200),
        ("a@x.test", "bounced", None),
        ("b@x.test", "deferred", None),
    ]
    finals = history.finals()
    assert (finals["a@x.test"].status, finals["a@x.test"].attempts) == ("bounced", 201)
    assert (finals["b@x.test"].status, finals["b@x.test"].attempts) == ("deferred", 201)


def test_note_queued_keeps_the_envelope_as_accepted(st: stats.Stats) -> None:
    envelope = make_envelope(
        QID,
        client=Client(
            ip="192.0.2.5",
            port=40000,
            helo="c.example",
            auth_user="app1",
            auth_method="PLAIN",
            tls="TLSv1.3 TLS_AES_256_GCM_SHA384",
        ),
    )
    receive(QID)
    st.note_queued(envelope)
    history = st.history(QID)
    assert history is not None and history.envelope == envelope.to_json()


def test_a_quiet_history_is_sealed_and_reads_back_the_same(st: stats.Stats) -> None:
    # Queued and not yet attempted: kept as it is (it is about to change).
    receive(QID)
    st.note_queued(make_envelope(QID))
    assert isinstance(st._history[QID][2], tuple)
    before = st.history(QID)
    # Deferred: it waits for its retry, sealed in one blob with its envelope.
    maillog.delivery(QID, "a@x.test", "mx[192.0.2.7]:25", 1.0, DELAYS, LATER, "deferred")
    packed = st._history[QID]
    assert isinstance(packed, bytes)  # sealed: records, envelope and fields in one blob
    # A sealed history still takes events, and shows all of them.
    maillog.delivery(QID, "a@x.test", "mx[192.0.2.7]:25", 9.0, DELAYS, SENT, "sent")
    maillog.removed(QID)
    assert isinstance(st._history[QID], bytes)
    after = st.history(QID)
    assert before is not None and after is not None
    assert after.events[:3] == before.events
    assert [e["event"] for e in after.events[3:]] == ["delivery", "delivery", "removed"]
    assert after.envelope == before.envelope == make_envelope(QID).to_json()
    assert after.outcome == "delivered" and after.deferred and after.removed_at is not None
    assert after.finals()["a@x.test"].attempts == 2


def test_events_below_the_log_level_still_count() -> None:
    """[log] level = "warning" hides info lines from stderr, not from the statistics."""
    root = logging.getLogger()
    logger = logging.getLogger(stats.MAIL_LOGGER)
    saved = list(root.handlers), root.level, logger.level
    handler = stats.Stats()
    try:
        maillog.setup("text", "warning")
        stream = io.StringIO()
        assert isinstance(root.handlers[0], logging.StreamHandler)
        root.handlers[0].setStream(stream)
        handler.attach()
        receive(QID)
        maillog.auth_failed("192.0.2.9", "LOGIN", None)
        assert handler.counters()["received"] == 1
        [line] = stream.getvalue().splitlines()  # only the warning reached stderr
        assert "SASL LOGIN authentication failed" in line
    finally:
        handler.detach()
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        logger.setLevel(saved[2])


def test_records_without_fields_are_ignored(st: stats.Stats) -> None:
    logging.getLogger(stats.MAIL_LOGGER).info("not a mail event")
    assert st.remembered == 0
    assert sum(st.counters().values()) == 0


def test_settled_envelope_shows_each_recipients_final_state_attempts_and_reply(
    st: stats.Stats,
) -> None:
    """/messages/{qid} after the message left the queue: the envelope as accepted
    (before any attempt) brought up to date from the log."""
    envelope = make_envelope(
        QID, recipients=[Recipient("a@x.test"), Recipient("b@x.test"), Recipient("c@x.test")]
    )
    st.note_queued(envelope)
    receive(QID, 3)
    expired = Reply(554, "5.4.7", "Delivery time expired; last error: 451 4.3.0 try later")
    maillog.delivery(QID, "a@x.test", "mx[192.0.2.7]:25", 1.0, DELAYS, LATER, "deferred")
    maillog.delivery(QID, "b@x.test", "mx[192.0.2.7]:25", 1.0, DELAYS, LATER, "deferred")
    maillog.delivery(QID, "c@x.test", "none", 1.0, DELAYS, LATER, "deferred")
    maillog.delivery(QID, "a@x.test", "mx[192.0.2.7]:25", 9.0, DELAYS, SENT, "sent")
    maillog.delivery(QID, "b@x.test", "mx[192.0.2.8]:25", 9.0, DELAYS, REFUSED, "bounced")
    maillog.delivery(QID, "c@x.test", "none", 9.0, DELAYS, LATER, "deferred")
    # The relay's own verdict at the end of the lifetime is not an attempt.
    maillog.delivery(QID, "c@x.test", "none", 9.0, (0.0, 0.0, 0.0, 0.0), expired, "bounced")

    history = st.history(QID)
    assert history is not None and history.envelope is not None
    accepted = json.loads(history.envelope)
    queued = history.settled(accepted)
    assert queued["state"] == "active"  # still queued: only the recipients change
    assert [r["state"] for r in queued["recipients"]] == ["delivered", "failed", "failed"]

    maillog.removed(QID)
    history = st.history(QID)
    assert history is not None
    shown = history.settled(accepted)
    assert shown["state"] == "partly delivered"
    assert shown["next_attempt"] is None
    assert shown["attempts"] == 2
    assert [
        (r["address"], r["state"], r["attempts"], r["last_reply"], r["last_relay"])
        for r in shown["recipients"]
    ] == [
        ("a@x.test", "delivered", 2, "250 2.0.0 Ok", "mx[192.0.2.7]:25"),
        ("b@x.test", "failed", 2, "550 5.1.1 no such user", "mx[192.0.2.8]:25"),
        ("c@x.test", "failed", 2, str(expired), None),
    ]
    assert shown["sender"] == "app@example.com"
    assert accepted["recipients"][0]["attempts"] == 0  # the input is left alone


def test_settled_envelope_of_a_deleted_message_keeps_pending_recipients(
    st: stats.Stats,
) -> None:
    envelope = make_envelope(QID, recipients=[Recipient("a@x.test")])
    st.note_queued(envelope)
    receive(QID)
    maillog.delivery(QID, "a@x.test", "mx[192.0.2.7]:25", 1.0, DELAYS, LATER, "deferred")
    maillog.deleted(QID)
    history = st.history(QID)
    assert history is not None and history.envelope is not None
    shown = history.settled(json.loads(history.envelope))
    assert shown["state"] == "deleted"
    assert [(r["state"], r["attempts"], r["last_reply"]) for r in shown["recipients"]] == [
        ("pending", 1, "451 4.3.0 try later")
    ]


def test_kept_histories_are_not_walked_by_the_cyclic_collector(clock: Clock) -> None:
    """Full collections walk every tracked object; with a large queue deferring, the
    histories were most of them (150-178 ms per collection at 100,000). Kept histories
    must add no tracked object, however many events they hold."""
    logger = logging.getLogger(stats.MAIL_LOGGER)
    saved = logger.level, logger.propagate
    logger.propagate = False
    handler = stats.Stats(retention=3600.0, max_messages=5000, clock=clock)
    handler.attach()
    try:
        gc.collect()
        before = len(gc.get_objects())
        qids = [f"1K17TWEWF{n:05d}" for n in range(2000)]
        for qid in qids:
            receive(qid)
            maillog.delivery(qid, "u@x.test", "mx[192.0.2.7]:25", 0.4, DELAYS, LATER, "deferred")
        gc.collect()
        gc.collect()  # a tuple is untracked when a collection finds it holds atomic values
        grown = len(gc.get_objects()) - before
        assert handler.remembered == 2000
        history = handler.history(qids[-1])
        assert history is not None and len(history.events) == 4 and history.deferred
    finally:
        handler.detach()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    assert grown < 200, f"{grown} more tracked objects for 2,000 kept histories"
