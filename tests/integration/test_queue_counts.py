"""``/status``, ``/metrics`` and ``GET /queue`` against the real daemon: after a mix of
deliveries, deferrals, bounces and holds the counts are what a full scan of the spool
gives, also after a restart; the listing pages."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.integration.daemon import Daemon
from tests.integration.delivery_support import MX1, MX2, make_message, submit, wait_removed
from tests.integration.http_support import Api, metric_samples, wait_loaded
from tests.integration.sinks import Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures", "tests.integration.http_fixtures"]

BUSY = "450 4.2.1 Mailbox busy, try later"
BAD = "550 5.1.1 No such user"


def scan(relay: Daemon) -> dict[str, Any]:
    """Counts from every envelope in the spool, as the status page made them before."""
    states: Counter[str] = Counter(
        {"active": 0, "deferred": 0, "hold": 0, "scheduled": 0, "rate-limited": 0}
    )
    recipients: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    arrivals = []
    for qid in relay.queued_ids():
        envelope = relay.envelope(qid)
        states[envelope["state"]] += 1
        arrivals.append(envelope["arrival"])
        domains = [
            r["address"].rpartition("@")[2].lower()
            for r in envelope["recipients"]
            if r["state"] == "pending"
        ]
        recipients.update(domains)
        messages.update(set(domains))
    return {
        "queue": {**states, "total": sum(states.values())},
        "destinations": sorted((d, recipients[d], messages[d]) for d in recipients),
        "oldest": min(arrivals) if arrivals else None,
    }


def check_status(api: Api, relay: Daemon) -> dict[str, Any]:
    expected = scan(relay)
    before = time.time()
    answer = api.ok("GET", "/status?top=100")
    after = time.time()
    queue = dict(answer["queue"])
    oldest_age = queue.pop("oldest_age_s")
    assert queue.pop("attempting") == 0
    assert queue.pop("loading") == 0
    assert queue == expected["queue"]
    assert (
        sorted((d["domain"], d["recipients"], d["messages"]) for d in answer["destinations"])
        == expected["destinations"]
    )
    # The daemon's clock read between ours (the age is rounded to the millisecond).
    assert before - expected["oldest"] - 0.001 <= oldest_age <= after - expected["oldest"] + 0.001
    status, text = api.get("/metrics")
    assert status == 200
    found = metric_samples(text)
    for state in ("active", "deferred", "hold", "scheduled", "rate-limited"):
        assert found[("smtprelay_queue_messages", (("state", state),))] == expected["queue"][state]
    return expected


def test_status_counts_equal_a_spool_scan_across_a_restart(
    relay_with_api: Callable[..., tuple[Daemon, Api]],
    make_sink: Callable[..., Sink],
) -> None:
    sink = make_sink(MX1, name="mx1.dest.test")
    make_sink(MX2, name="mx.sender.test")  # where the bounce notices go
    relay, api = relay_with_api(retry_schedule=["1h"])
    for n in range(3):
        sink.rcpt_reply(f"busy{n}@dest.test", BUSY)
        sink.rcpt_reply(f"bad{n}@dest.test", BAD)
    delivered = [submit(relay, [f"ok{n}@dest.test"], make_message(n)) for n in range(3)]
    bounced = submit(relay, ["bad0@dest.test"], make_message("bounced"))
    deferred = [
        submit(relay, [f"busy{n}@dest.test", f"x{n}@dest.test"], make_message(n)) for n in range(3)
    ]
    mixed = submit(
        relay, ["ok9@dest.test", "busy0@dest.test", "bad1@dest.test"], make_message("mixed")
    )
    for qid in [*delivered, bounced]:
        wait_removed(relay, qid)

    def settled() -> bool:
        queued = relay.queued_ids()
        try:
            states = [relay.envelope(q)["state"] for q in queued]
        except FileNotFoundError:  # a notice removed between the listing and the read
            return False
        # the deferred and the mixed; the notice has gone
        return all(state == "deferred" for state in states) and len(queued) == 4

    wait_until(
        lambda: settled() and api.ok("GET", "/status")["queue"]["attempting"] == 0,
        20,
        lambda: f"every message deferred\n{relay.log()}",
    )
    expected = check_status(api, relay)
    assert expected["queue"] == {
        "active": 0,
        "deferred": 4,
        "hold": 0,
        "scheduled": 0,
        "rate-limited": 0,
        "total": 4,
    }
    assert expected["destinations"] == [("dest.test", 4, 4)]

    assert api.ok("POST", "/queue/hold", {"qids": deferred[:2]})["results"] == dict.fromkeys(
        deferred[:2], "held"
    )
    assert api.ok("POST", "/queue/delete", {"qids": [deferred[2]]})["results"] == {
        deferred[2]: "deleted"
    }
    expected = check_status(api, relay)
    assert expected["queue"]["hold"] == 2 and expected["queue"]["total"] == 3

    # The listing pages through them in QID order, reading only what it lists.
    first = api.ok("GET", "/queue?limit=2")
    assert [m["qid"] for m in first["messages"]] == relay.queued_ids()[:2]
    assert first["total"] == 3 and first["next"] == relay.queued_ids()[1]
    rest = api.ok("GET", f"/queue?limit=2&after={first['next']}")
    assert [m["qid"] for m in rest["messages"]] == relay.queued_ids()[2:]
    assert rest["next"] is None
    held = api.ok("GET", "/queue?state=hold")
    assert sorted(m["qid"] for m in held["messages"]) == sorted(deferred[:2])
    assert held["total"] == 2
    for bad in ("limit=0", "limit=x", "limit=10001", "after=nope"):
        assert api.get(f"/queue?{bad}")[0] == 400, bad

    # After a restart the counts come from the envelopes the start-up load read.
    assert relay.stop() == 0
    relay.start()
    wait_loaded(relay)
    check_status(api, relay)
    assert api.ok("POST", "/queue/release", {"qids": [deferred[0]]})["results"] == {
        deferred[0]: "released"
    }
    wait_until(
        lambda: (
            relay.envelope(deferred[0])["state"] == "deferred"
            and api.ok("GET", "/status")["queue"]["attempting"] == 0
        ),
        20,
        lambda: f"the released message deferred again\n{relay.log()}",
    )
    check_status(api, relay)
    assert mixed in relay.queued_ids()
