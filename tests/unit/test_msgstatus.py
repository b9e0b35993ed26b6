"""smtprelay.web.msgstatus: one message's status (GET /v1/messages/{id}) from the queue's
envelope or from the history stats.py keeps, and the listing's newest-first pages."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from smtprelay import maillog, stats
from smtprelay.envelope import (
    QueueState,
    Recipient,
    RecipientState,
    Submission,
    SubmittedVia,
)
from smtprelay.replies import Reply
from smtprelay.web.msgstatus import (
    decode_cursor,
    encode_cursor,
    from_history,
    from_queue,
    quick_status,
    rfc3339,
)
from tests.unit.helpers import make_envelope

NOW = 1_700_000_100.0
SENT = Reply(250, "2.0.0", "Ok: queued as X")
BUSY = Reply(450, "4.2.1", "Mailbox busy")
EXPIRED = Reply(554, "5.4.7", "Delivery time expired; last error: 450 4.2.1 busy")
DELAYS = (0.0, 0.0, 0.1, 0.2)
RELAY = "mx1.example.net[192.0.2.7]:25"
BOB, CAROL = "bob@example.net", "carol@example.org"


@pytest.fixture
def st() -> Iterator[stats.Stats]:
    logger = logging.getLogger(stats.MAIL_LOGGER)
    saved = logger.level, logger.propagate
    logger.propagate = False
    handler = stats.Stats(retention=600.0, max_messages=100, clock=lambda: NOW)
    handler.attach()
    yield handler
    handler.detach()
    logger.setLevel(saved[0])
    logger.propagate = saved[1]


def accept(st: stats.Stats, qid: str, **overrides: object) -> None:
    envelope = make_envelope(qid, size=2048, **overrides)
    st.note_queued(envelope)
    maillog.queued(qid, envelope.sender, 2048, len(envelope.recipients))


def history(st: stats.Stats, qid: str) -> stats.History:
    found = st.history(qid)
    assert found is not None
    return found


def test_a_delivered_http_message_keeps_tags_metadata_and_replies(st: stats.Stats) -> None:
    qid = "1K17TWEWEZ4Y1"
    submission = Submission(SubmittedVia.HTTP, "erp", ["invoice"], {"order": "42"})
    accept(st, qid, submission=submission)
    maillog.delivery(qid, BOB, RELAY, 5.0, DELAYS, BUSY, "deferred")
    maillog.delivery(qid, BOB, RELAY, 9.0, DELAYS, SENT, "sent")
    maillog.delivery(qid, CAROL, RELAY, 9.0, DELAYS, SENT, "sent")
    maillog.removed(qid)
    shown = from_history(history(st, qid), False, NOW)
    assert shown == {
        "id": qid,
        "status": "delivered",
        "submitted_via": "http",
        "created_at": "2023-11-14T22:13:20.250Z",
        "tags": ["invoice"],
        "metadata": {"order": "42"},
        "size": 2048,
        "recipients": [
            {
                "email": BOB,
                "status": "delivered",
                "attempts": 2,
                "last_reply": {
                    "code": 250,
                    "enhanced": "2.0.0",
                    "text": "Ok: queued as X",
                    "host": "mx1.example.net",
                },
                "delivered_at": shown["recipients"][0]["delivered_at"],
            },
            {
                "email": CAROL,
                "status": "delivered",
                "attempts": 1,
                "last_reply": {
                    "code": 250,
                    "enhanced": "2.0.0",
                    "text": "Ok: queued as X",
                    "host": "mx1.example.net",
                },
                "delivered_at": shown["recipients"][1]["delivered_at"],
            },
        ],
    }
    assert shown["recipients"][0]["delivered_at"].endswith("Z")


def test_expired_canceled_and_partial_outcomes(st: stats.Stats) -> None:
    expired, canceled, partial = "1K17TWEWEZ4Y2", "1K17TWEWEZ4Y3", "1K17TWEWEZ4Y4"
    for qid in (expired, canceled, partial):
        accept(st, qid)
    for address in (BOB, CAROL):
        maillog.delivery(expired, address, "none", 9.0, DELAYS, EXPIRED, "bounced")
    maillog.removed(expired)
    maillog.delivery(canceled, BOB, RELAY, 1.0, DELAYS, BUSY, "deferred")
    maillog._emit(
        "qmgr", f"{canceled}: canceled by api token erp", canceled, event=stats.CANCELED_EVENT
    )
    maillog.removed(canceled)
    maillog.delivery(partial, BOB, RELAY, 1.0, DELAYS, SENT, "sent")
    maillog._emit(
        "qmgr", f"{partial}: canceled by api token erp", partial, event=stats.CANCELED_EVENT
    )
    maillog.removed(partial)

    def statuses(qid: str) -> tuple[str, list[str], str]:
        h = history(st, qid)
        shown = from_history(h, False, NOW)
        return (
            shown["status"],
            [r["status"] for r in shown["recipients"]],
            quick_status(h, False, NOW),
        )

    assert statuses(expired) == ("expired", ["expired", "expired"], "expired")
    assert history(st, expired).finals()[BOB].attempts == 0  # the relay's verdict only
    assert statuses(canceled) == ("canceled", ["canceled", "canceled"], "canceled")
    assert history(st, canceled).canceled_by == "api token erp"
    assert statuses(partial) == (
        "partially_delivered",
        ["delivered", "canceled"],
        "partially_delivered",
    )


def test_a_queued_envelope_shows_scheduled_deferred_and_sending() -> None:
    scheduled = make_envelope(send_at=NOW + 3600)
    assert from_queue(scheduled, False, None, NOW)["status"] == "scheduled"
    assert from_queue(scheduled, False, None, NOW)["send_at"] == rfc3339(NOW + 3600)
    recipients = [
        Recipient(
            BOB, RecipientState.DELIVERED, attempts=1, last_reply=str(SENT), last_relay=RELAY
        ),
        Recipient(CAROL, attempts=1, last_reply=str(BUSY), last_relay=RELAY),
    ]
    deferred = make_envelope(
        recipients=recipients, state=QueueState.DEFERRED, next_attempt=NOW + 300
    )
    shown = from_queue(deferred, False, None, NOW)
    assert shown["status"] == "deferred"
    assert shown["recipients"][1] == {
        "email": CAROL,
        "status": "deferred",
        "attempts": 1,
        "last_reply": {
            "code": 450,
            "enhanced": "4.2.1",
            "text": "Mailbox busy",
            "host": "mx1.example.net",
        },
        "next_attempt_at": rfc3339(NOW + 300),
    }
    sending = from_queue(deferred, True, None, NOW)
    assert sending["status"] == "sending"
    assert sending["recipients"][1]["status"] == "sending"
    assert "next_attempt_at" not in sending["recipients"][1]


def test_the_listing_is_newest_first_by_pages_and_filters(st: stats.Stats) -> None:
    qids = [f"1K17TWEWEZ4{c}0" for c in "ABCDE"]
    for i, qid in enumerate(qids):
        tags = ["even"] if i % 2 == 0 else ["odd"]
        accept(st, qid, submission=Submission(SubmittedVia.HTTP, "erp", tags, {}))
    maillog.delivery(qids[0], BOB, RELAY, 1.0, DELAYS, SENT, "sent")
    maillog.delivery(qids[0], CAROL, RELAY, 1.0, DELAYS, SENT, "sent")
    maillog.removed(qids[0])
    page, more = st.newest(None, 2, lambda h: True)
    assert [h.qid for h in page] == [qids[4], qids[3]] and more
    page, more = st.newest(decode_cursor(encode_cursor(page[-1].qid)), 2, lambda h: True)
    assert [h.qid for h in page] == [qids[2], qids[1]] and more
    page, more = st.newest(qids[1], 2, lambda h: True)
    assert [h.qid for h in page] == [qids[0]] and not more
    even, _ = st.newest(None, 10, lambda h: "even" in h.tags)
    assert [h.qid for h in even] == [qids[4], qids[2], qids[0]]
    done, _ = st.newest(None, 10, lambda h: quick_status(h, False, NOW) == "delivered")
    assert [h.qid for h in done] == [qids[0]]
    assert decode_cursor("not a cursor!") is None
