"""smtprelay.queuecli.format: ``queue show`` and ``trace`` from the envelope JSON the
daemon (and the spool) holds, in a fixed time zone."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from smtprelay.envelope import Client, QueueState, RecipientState
from smtprelay.queuecli import format as fmt
from tests.unit.helpers import make_envelope

QID = "1K17TWEWEZ4Y1"


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def answer(in_queue: bool = True, **changes: Any) -> dict[str, Any]:
    """``GET /messages/QID`` for a deferred message: its envelope as the spool has it."""
    envelope = make_envelope(QID, size=1834, message_id="<m1@example.com>")
    envelope.client = Client(
        ip="192.0.2.5",
        port=40000,
        helo="client.example",
        auth_user="app1",
        auth_method="PLAIN",
        tls="TLSv1.3",
    )
    envelope.state = QueueState.DEFERRED
    envelope.attempts = 2
    envelope.next_attempt = 1_700_000_600.0
    bob, carol = envelope.recipients
    bob.attempts, bob.last_reply, bob.last_relay = (
        2,
        "450 4.2.1 busy",
        "mx.example.net[192.0.2.7]:25",
    )
    carol.state = RecipientState.DELIVERED
    for key, value in changes.items():
        setattr(envelope, key, value)
    return {
        "qid": QID,
        "status": envelope.state.value,
        "in_queue": in_queue,
        "envelope": json.loads(envelope.to_json()),
        "events": [],
        "history_complete": False,
        "events_omitted": 0,
    }


def test_show_a_queued_message() -> None:
    lines = fmt.format_show(answer(), "Subject: hi\nTo: bob@example.net").splitlines()
    assert lines == [
        f"Queue ID:     {QID}",
        "Status:       deferred (in the queue)",
        "Arrival:      2023-11-14 22:13:20.250",
        "Size:         1834 bytes",
        "Sender:       <app@example.com>",
        "Message-ID:   <m1@example.com>",
        "Client:       client.example [192.0.2.5]:40000, auth app1 (PLAIN), TLSv1.3",
        "Attempts:     2, next 2023-11-14 22:23:20.000",
        "Recipients:",
        "  <bob@example.net>  pending, 2 attempt(s)",
        "      last reply from mx.example.net[192.0.2.7]:25: 450 4.2.1 busy",
        "  <carol@example.org>  delivered",
        "Headers:",
        "  Subject: hi",
        "  To: bob@example.net",
    ]


def test_a_held_message_has_no_next_attempt_and_plaintext_says_so() -> None:
    shown = answer(state=QueueState.HOLD, client=Client(ip="192.0.2.5", port=1, helo="h"))
    text = fmt.format_show(shown)
    assert "Attempts:     2\n" in text
    assert "Client:       h [192.0.2.5]:1, no TLS\n" in text
    assert "Headers:" not in text


def test_a_message_that_left_the_queue_shows_its_history() -> None:
    shown = answer(in_queue=False)
    shown["events"] = [
        {
            "time": 1_700_000_000.25,
            "service": "smtpd",
            "text": f"{QID}: client=client.example[192.0.2.5]",
        }
    ]
    lines = fmt.format_show(shown).splitlines()
    assert lines[1] == "Status:       deferred (no longer queued)"
    assert "Attempts:     2" in lines  # no next attempt for a message gone
    at = lines.index("History:")
    assert lines[at + 1] == (
        "  2023-11-14 22:13:20.250    +0.000s smtpd     client=client.example[192.0.2.5]"
    )
    assert (
        lines[at + 2] == "  (history incomplete: events before the daemon's last start are missing)"
    )


def test_no_events_known() -> None:
    assert fmt.timeline({"qid": QID}).startswith("(no events known: ")


def test_trace_heads_the_timeline_with_sender_and_recipients() -> None:
    head = fmt.format_trace(answer()).splitlines()[0]
    assert head == (
        f"{QID}: deferred, from=<app@example.com> to <bob@example.net>, <carol@example.org>"
    )
    assert fmt.format_trace({"qid": QID, "status": "unknown"}).splitlines()[0] == (
        f"{QID}: unknown"
    )


@pytest.mark.parametrize(
    ("outcome", "shown", "failed"),
    [
        ("held", "held", False),
        (
            "after-attempt",
            "after-attempt (applied when the delivery attempt under way ends)",
            False,
        ),
        ("on-hold", "on-hold (not flushed: release it first)", False),
        ("not-found", "not-found (no such message in the queue)", True),
        ("error: No space left on device", "error: No space left on device", True),
    ],
)
def test_each_outcome_for_a_person(outcome: str, shown: str, failed: bool) -> None:
    results = {"action": "release", "results": {QID: outcome}}
    assert fmt.format_results(results) == f"{QID}: {shown}\n"
    assert fmt.results_failed(results) is failed
