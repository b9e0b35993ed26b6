"""Delivery events and signed webhooks (issue 13) against the real daemon: SMTP mail to
the real aiosmtpd sinks and test DNS server, events to a real aiohttp receiver that
verifies every signature with the ``standardwebhooks`` library.

Webhook retries use a 1 s schedule here (``[events] webhook_retry_schedule``), so
nothing waits for the real 5 s / 5 min steps.
"""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtprelay.events.webhooks import new_secret
from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.delivery_support import MX1, make_message, submit, wait_removed
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink
from tests.integration.webhook_receiver import Receiver
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures"]

TOKEN = "events-token-8c1f0a"
FAST_RETRIES = ["0s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s"]


@pytest.fixture
def dest(dns: TestDNSServer) -> str:
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    return "dest.test"


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def receiver(secret: str) -> Iterator[Receiver]:
    r = Receiver(secret).start()
    yield r
    r.stop()


@pytest.fixture
def relay(
    tmp_path: Path, delivering_relay: Callable[..., Daemon], receiver: Receiver, secret: str
) -> Callable[..., Daemon]:
    """A delivering daemon with one [[webhooks]] to ``receiver`` and an API token."""

    def start(**sections: dict[str, Any]) -> Daemon:
        secret_file = tmp_path / "whsec"
        secret_file.write_text(secret + "\n")
        tokens = tmp_path / "tokens"
        tokens.write_text(TOKEN + "\n")
        overrides: dict[str, dict[str, Any]] = {
            "http": {"tokens_file": str(tokens)},
            "events": {"webhook_retry_schedule": FAST_RETRIES, "webhook_timeout": "5s"},
            "[webhooks]": {
                "url": receiver.url,
                "secret_file": str(secret_file),
                "allow_private": True,
            },
        }
        for name, keys in sections.items():
            overrides.setdefault(name, {}).update(keys)
        return delivering_relay(**overrides)

    return start


def api(daemon: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    url = f"http://{daemon.sections['http']['listen']}{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def all_events(daemon: Daemon, **query: str) -> list[dict[str, Any]]:
    """Every event through the cursor, a few per page."""
    events: list[dict[str, Any]] = []
    cursor = "0"
    while True:
        extra = "".join(f"&{k}={v}" for k, v in query.items())
        status, page = api(daemon, "GET", f"/v1/events?after={cursor}&limit=3{extra}")
        assert status == 200, page
        events += page["events"]
        if page["next_cursor"] == cursor:
            return events
        cursor = page["next_cursor"]


def of(events: list[dict[str, Any]], qid: str) -> list[dict[str, Any]]:
    return [e for e in events if e["data"].get("qid") == qid]


def test_deferred_then_delivered_in_order_signed(
    dest: str,
    make_sink: Callable[..., Sink],
    relay: Callable[..., Daemon],
    receiver: Receiver,
) -> None:
    later = "later@dest.test"
    sink = make_sink(MX1, name="mx1.dest.test")
    sink.rcpt_reply(later, "450 4.2.1 Mailbox busy, try later", times=1)
    daemon = relay()
    qid = submit(daemon, [later], make_message("events"))
    wait_removed(daemon, qid)
    wait_until(lambda: len(of(receiver.events(), qid)) >= 3)

    # In the order of their sequence (webhooks of one page are sent concurrently).
    got = sorted(of(receiver.events(), qid), key=lambda e: int(e["data"]["sequence"]))
    assert [(e["type"], e["data"]["sequence"]) for e in got] == [
        ("message.received", 1),
        ("recipient.deferred", 2),
        ("recipient.delivered", 3),
    ]
    deferred = got[1]["data"]
    assert deferred["recipient"] == later
    assert deferred["action"] == "delayed" and deferred["status"] == "4.2.1"
    assert deferred["remote_mta"] == "mx1.dest.test"
    assert got[0]["data"]["route"] == "smtp" and got[0]["data"]["recipients"] == [later]
    assert receiver.bad_signatures == []
    assert len(set(receiver.ids())) == len(receiver.ids())
    # The event API has the same events, in the same order.
    stored = of(all_events(daemon), qid)
    assert [e["id"] for e in stored] == [e["id"] for e in got]
    status, page = api(daemon, "GET", f"/v1/messages/{qid}/events")
    assert status == 200 and [e["id"] for e in page["events"]] == [e["id"] for e in got]
    status, problem = api(daemon, "GET", "/v1/messages/NOSUCHQID/events")
    assert status == 404 and problem["status"] == 404
    status, _ = api(daemon, "GET", "/v1/events?after=x")
    assert status == 422
    # /metrics counts what the receiver accepted.
    url = f"http://{daemon.sections['http']['listen']}/metrics"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        metrics = response.read().decode()
    delivered = [
        line
        for line in metrics.splitlines()
        if line.startswith("smtprelay_webhook_delivered_total{")
    ]
    assert delivered and float(delivered[0].split()[-1]) >= 3
    assert "smtprelay_webhook_backlog" in metrics


def test_sequence_counts_per_recipient(
    dest: str,
    make_sink: Callable[..., Sink],
    relay: Callable[..., Daemon],
    receiver: Receiver,
) -> None:
    """Two recipients: each counts on from message.received by itself."""
    later, now = "later@dest.test", "now@dest.test"
    sink = make_sink(MX1, name="mx1.dest.test")
    sink.rcpt_reply(later, "450 4.2.1 Mailbox busy, try later", times=1)
    daemon = relay()
    qid = submit(daemon, [later, now], make_message("two"))
    wait_removed(daemon, qid)
    wait_until(lambda: len(of(receiver.events(), qid)) >= 4)
    got = of(all_events(daemon), qid)
    assert [(e["type"], e["data"]["sequence"]) for e in got if "recipient" not in e["data"]] == [
        ("message.received", 1)
    ]

    def numbered(recipient: str) -> list[tuple[str, int]]:
        return [
            (e["type"], e["data"]["sequence"])
            for e in got
            if e["data"].get("recipient") == recipient
        ]

    assert numbered(later) == [("recipient.deferred", 2), ("recipient.delivered", 3)]
    assert numbered(now) == [("recipient.delivered", 2)]


def test_smtp_rejection_is_message_rejected(
    dest: str,
    make_sink: Callable[..., Sink],
    relay: Callable[..., Daemon],
    receiver: Receiver,
) -> None:
    make_sink(MX1, name="mx1.dest.test")
    daemon = relay(relay={"allowed_recipient_domains": ["dest.test"]})
    with smtplib.SMTP(LOOPBACK, daemon.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        c.mail("app@example.com")
        code, _ = c.rcpt("someone@elsewhere.test")
        assert code == 550

    def rejected() -> list[dict[str, Any]]:
        return [e for e in receiver.events() if e["type"] == "message.rejected"]

    wait_until(rejected)
    event = rejected()[0]
    assert event["data"]["recipient"] == "someone@elsewhere.test"
    assert event["data"]["reply"]["code"] == 550
    assert event["data"]["reply"]["enhanced"] == "5.7.1"
    assert event["data"]["command"] == "RCPT"
    assert [e["type"] for e in all_events(daemon, type="message.rejected")] == ["message.rejected"]


def test_receiver_down_then_up_exactly_once_across_kill(
    dest: str,
    make_sink: Callable[..., Sink],
    relay: Callable[..., Daemon],
    receiver: Receiver,
) -> None:
    """Events made while the receiver is down arrive once it is back -- also those the
    daemon had when it was killed with -9 -- each webhook-id exactly once."""
    make_sink(MX1, name="mx1.dest.test")
    receiver.stop()
    daemon = relay()
    first = [submit(daemon, [f"a{i}@dest.test"], make_message(i)) for i in range(5)]
    for qid in first:
        wait_removed(daemon, qid)
    # Committed a moment after the log line (group commit): wait for all of them.
    wait_until(lambda: len(all_events(daemon)) == 10)  # received + delivered each
    before = all_events(daemon)
    daemon.kill()
    daemon.start()
    # The cursor goes on across the restart: nothing new, nothing repeated.
    assert [e["id"] for e in all_events(daemon)] == [e["id"] for e in before]
    second = [submit(daemon, [f"b{i}@dest.test"], make_message(i)) for i in range(5)]
    for qid in second:
        wait_removed(daemon, qid)
    receiver.start()
    wait_until(lambda: len(receiver.ids()) >= 20, timeout=60)
    ids = receiver.ids()
    assert len(ids) == len(set(ids)) == 20
    assert {e["id"] for e in all_events(daemon)} == set(ids)
    assert receiver.bad_signatures == []


def test_retry_after_honoured_and_410_disables(
    dest: str,
    make_sink: Callable[..., Sink],
    relay: Callable[..., Daemon],
    receiver: Receiver,
) -> None:
    make_sink(MX1, name="mx1.dest.test")
    receiver.script(429, {"Retry-After": "3"})
    daemon = relay(events={"webhook_concurrency": 1})
    qid = submit(daemon, ["x@dest.test"], make_message("retry-after"))
    wait_until(lambda: len(of(receiver.events(), qid)) >= 2)
    first_429 = next(at for at, status in receiver.requests if status == 429)
    after = [at for at, status in receiver.requests if status != 429]
    # Retry-After: 3 against a 1 s retry schedule: nothing was sent again sooner.
    assert min(after) - first_429 >= 2.9

    status, hooks = api(daemon, "GET", "/v1/webhooks")
    webhook = hooks["webhooks"][0]["id"]
    status, shown = api(daemon, "GET", f"/v1/webhooks/{webhook}")
    assert status == 200 and any("429" in e["error"] for e in shown["last_errors"])

    receiver.script(410, times=100)
    qid2 = submit(daemon, ["y@dest.test"], make_message("gone"))
    wait_removed(daemon, qid2)

    def disabled() -> bool:
        return bool(api(daemon, "GET", f"/v1/webhooks/{webhook}")[1]["disabled"])

    wait_until(disabled)
    asked = len(receiver.requests)
    qid3 = submit(daemon, ["z@dest.test"], make_message("after-gone"))
    wait_removed(daemon, qid3)
    wait_until(lambda: of(all_events(daemon), qid3))
    assert len(receiver.requests) == asked  # nothing more sent to a disabled endpoint
    assert "disabled" in daemon.log()


def test_webhook_api_and_ssrf(relay: Callable[..., Daemon], receiver: Receiver) -> None:
    daemon = relay()
    status, problem = api(daemon, "POST", "/v1/webhooks", {"url": receiver.url})
    assert status == 422 and problem["errors"][0]["pointer"] == "/url"
    assert "127.0.0.1" in problem["errors"][0]["detail"]
    status, problem = api(
        daemon, "POST", "/v1/webhooks", {"url": "http://[::ffff:169.254.169.254]/", "bogus": 1}
    )
    assert status == 422
    assert {e["pointer"] for e in problem["errors"]} == {"/url", "/bogus"}
    status, made = api(
        daemon,
        "POST",
        "/v1/webhooks",
        {"url": receiver.url, "allow_private": True, "events": ["recipient.*"]},
    )
    assert status == 201 and made["secret"].startswith("whsec_")
    status, shown = api(daemon, "GET", f"/v1/webhooks/{made['id']}")
    assert status == 200 and "secret" not in shown and shown["events"] == ["recipient.*"]
    status, _ = api(daemon, "DELETE", f"/v1/webhooks/{made['id']}")
    assert status == 204
    assert api(daemon, "GET", f"/v1/webhooks/{made['id']}")[0] == 404


def test_events_from_inbound_worker_processes(
    dest: str,
    make_sink: Callable[..., Sink],
    relay: Callable[..., Daemon],
    receiver: Receiver,
) -> None:
    """With [server] workers, the mail-log records and envelopes come from the worker
    processes over their channel: the same events, with the same data."""
    make_sink(MX1, name="mx1.dest.test")
    daemon = relay(server={"workers": 1})
    qid = submit(daemon, ["w@dest.test"], make_message("worker"))
    wait_removed(daemon, qid)
    wait_until(lambda: len(of(receiver.events(), qid)) >= 2)
    # Webhooks may arrive out of order (a page's requests are concurrent; the README
    # says so): a receiver orders one recipient's events by their sequence.
    got = sorted(of(receiver.events(), qid), key=lambda e: int(e["data"]["sequence"]))
    assert [(e["type"], e["data"]["sequence"]) for e in got] == [
        ("message.received", 1),
        ("recipient.delivered", 2),
    ]
    assert got[0]["data"]["recipients"] == ["w@dest.test"]
    assert got[0]["data"]["route"] == "smtp"
    # The event store recorded them in the order they happened.
    assert [e["id"] for e in of(all_events(daemon), qid)] == [e["id"] for e in got]


def test_http_policy_refusals_are_message_rejected(
    relay: Callable[..., Daemon], receiver: Receiver
) -> None:
    """403 (sender), 422 (recipient refused by policy) and 413 (too large) over HTTP
    become message.rejected with the status, the problem and the token; a malformed
    request does not."""
    daemon = relay(
        relay={"allowed_sender_domains": ["ok.test"], "allowed_recipient_domains": ["dest.test"]},
        server={"max_message_size": 20_000},
    )
    text = {"subject": "s", "text": "hello"}
    status, _ = api(
        daemon, "POST", "/v1/messages", {"from": "app@bad.test", "to": ["r@dest.test"], **text}
    )
    assert status == 403
    status, _ = api(
        daemon,
        "POST",
        "/v1/messages",
        {"from": "app@ok.test", "to": ["eve@elsewhere.test"], **text},
    )
    assert status == 422
    big = {"from": "app@ok.test", "to": ["r@dest.test"], "subject": "s", "text": "x" * 25_000}
    status, _ = api(daemon, "POST", "/v1/messages", big)
    assert status == 413
    status, _ = api(daemon, "POST", "/v1/messages", {"from": "app@ok.test", "bogus": 1})
    assert status == 422  # invalid fields: not a message, no event

    def rejected() -> list[dict[str, Any]]:
        return [e for e in receiver.events() if e["type"] == "message.rejected"]

    wait_until(lambda: len(rejected()) >= 3)
    got = sorted(rejected(), key=lambda e: e["data"]["http_status"])
    assert [e["data"]["http_status"] for e in got] == [403, 413, 422]
    for event in got:
        data = event["data"]
        # The token's name: a bare line of the tokens file is named by its line number.
        assert data["route"] == "http" and data["token"] == "line-1"
        assert data["command"] == "HTTP"
        assert data["qid"] is None and data["sequence"] == 0
        assert data["problem"]["status"] == data["http_status"]
        assert data["sender"] == ("app@bad.test" if data["http_status"] == 403 else "app@ok.test")
    assert "bad.test" in got[0]["data"]["problem"]["detail"]
    assert got[2]["data"]["recipients"] == ["eve@elsewhere.test"]
    assert got[2]["data"]["problem"]["errors"][0]["pointer"] == "/to/0"
    # The event API has the same three, and the mail log has the lines.
    stored = all_events(daemon, type="message.rejected")
    assert sorted(e["id"] for e in stored) == sorted(e["id"] for e in got)
    assert daemon.log().count("NOQUEUE: reject: HTTP from") == 3
    assert receiver.bad_signatures == []
