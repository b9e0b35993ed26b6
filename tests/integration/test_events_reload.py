"""SIGHUP re-reads ``[events]`` and ``[[webhooks]]`` (issue 13) against the real daemon,
real aiohttp receivers that verify every signature with ``standardwebhooks``, and real
SMTP mail to an aiosmtpd sink: a new webhook starts receiving, a removed one stops, a
rotated secret signs from then on -- also the events that waited in the outbox while
the receiver was down -- and a broken file is refused with the running webhooks kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtprelay.events.webhooks import new_secret
from tests.integration.daemon import Daemon, write_config
from tests.integration.delivery_support import MX1, make_message, submit, wait_removed
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink
from tests.integration.test_events import TOKEN, all_events, api, of
from tests.integration.webhook_receiver import Receiver
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures"]

# Long enough that nothing is given up while a receiver is down for a few seconds.
RETRIES = ["0s"] + ["1s"] * 30
APPLIED = "webhook(s) from the config file now"


@pytest.fixture
def receivers() -> Iterator[Callable[[], Receiver]]:
    made: list[Receiver] = []

    def make() -> Receiver:
        made.append(Receiver(new_secret()).start())
        return made[-1]

    yield make
    for r in made:
        r.stop()


def write_webhooks(daemon: Daemon, hooks: list[tuple[str, Path]]) -> None:
    """The daemon's config file with one [[webhooks]] per (url, secret file)."""
    write_config(daemon.config, daemon.sections)
    with daemon.config.open("a") as f:
        for url, secret_file in hooks:
            f.write(
                f'\n[[webhooks]]\nurl = "{url}"\nsecret_file = "{secret_file}"\n'
                "allow_private = true\n"
            )


def secret_file(tmp_path: Path, name: str, secret: str) -> Path:
    path = tmp_path / f"{name}.whsec"
    path.write_text(secret + "\n")
    return path


def applied(daemon: Daemon) -> int:
    return daemon.log().count(APPLIED)


def test_sighup_adds_removes_and_rotates_webhooks(
    tmp_path: Path,
    dns: TestDNSServer,
    make_sink: Callable[..., Sink],
    make_daemon: Callable[..., Daemon],
    delivery_config: Callable[..., dict[str, Any]],
    receivers: Callable[[], Receiver],
) -> None:
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    make_sink(MX1, name="mx1.dest.test")
    a, b, c = receivers(), receivers(), receivers()
    a_file = secret_file(tmp_path, "a", a.secret)
    b_file = secret_file(tmp_path, "b", b.secret)
    c_file = secret_file(tmp_path, "c", c.secret)
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    daemon = make_daemon(
        start=False,
        overrides={
            "delivery": delivery_config(),
            "http": {"tokens_file": str(tokens)},
            "events": {"webhook_retry_schedule": RETRIES, "webhook_timeout": "5s"},
        },
    )
    write_webhooks(daemon, [(a.url, a_file), (b.url, b_file)])
    daemon.start()

    first = submit(daemon, ["one@dest.test"], make_message("before"))
    wait_removed(daemon, first)
    wait_until(lambda: len(of(a.events(), first)) == 2 and len(of(b.events(), first)) == 2)

    # A goes down; its events wait in the outbox, signed with nothing yet.
    a.stop()
    waiting = submit(daemon, ["two@dest.test"], make_message("while down"))
    wait_removed(daemon, waiting)
    wait_until(lambda: len(of(all_events(daemon), waiting)) == 2)  # committed, in A's outbox
    wait_until(lambda: any("Error" in e["error"] for e in last_errors(daemon, a.url)))
    b_before = len(b.ids())

    # B removed, C added, A's secret rotated (A now verifies with the new one only).
    rotated = new_secret()
    a_file.write_text(rotated + "\n")
    a.secret = rotated
    write_webhooks(daemon, [(a.url, a_file), (c.url, c_file)])
    seen = applied(daemon)
    assert "configuration reloaded" in daemon.hup()
    wait_until(lambda: applied(daemon) > seen)
    status, listed = api(daemon, "GET", "/v1/webhooks")
    assert status == 200
    assert sorted(w["url"] for w in listed["webhooks"]) == sorted([a.url, c.url])

    a.start()
    after = submit(daemon, ["three@dest.test"], make_message("after"))
    wait_removed(daemon, after)
    wait_until(lambda: len(of(a.events(), waiting)) == 2 and len(of(a.events(), after)) == 2)
    wait_until(lambda: len(of(c.events(), after)) == 2)
    assert a.bad_signatures == [] and c.bad_signatures == []
    assert len(a.ids()) == len(set(a.ids())) == 6  # first, waiting, after: once each
    assert of(c.events(), waiting) == []  # C sees events from when it was added on
    assert len(b.ids()) == b_before and of(b.events(), after) == []

    # A broken file (a secret file that is not there) is refused; the webhooks stay.
    write_webhooks(daemon, [(a.url, a_file), (c.url, tmp_path / "missing.whsec")])
    outcome = daemon.hup()
    assert "reload refused" in outcome and "[[webhooks]] secret_file" in outcome
    last = submit(daemon, ["four@dest.test"], make_message("after refused"))
    wait_removed(daemon, last)
    wait_until(lambda: len(of(a.events(), last)) == 2 and len(of(c.events(), last)) == 2)
    assert a.bad_signatures == [] and c.bad_signatures == []


def last_errors(daemon: Daemon, url: str) -> list[dict[str, Any]]:
    _, listed = api(daemon, "GET", "/v1/webhooks")
    (webhook,) = [w for w in listed["webhooks"] if w["url"] == url]
    _, shown = api(daemon, "GET", f"/v1/webhooks/{webhook['id']}")
    errors: list[dict[str, Any]] = shown["last_errors"]
    return errors
