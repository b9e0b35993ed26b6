"""Inbound worker processes ([server] workers): SMTP in the workers, delivery in the main
process, and what happens when either of them dies."""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import socket
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from smtprelay import ids, replies
from smtprelay.envelope import Recipient
from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.integration.delivery_support import (
    MX1,
    make_message,
    send,
    submit,
    wait_removed,
)
from tests.integration.procfs import alive, children, cmdline
from tests.integration.sinks import Sink
from tests.polling import wait_until
from tests.unit.helpers import make_envelope

pytest_plugins = ["tests.integration.delivery_fixtures"]

RCPT = "bob@dest.test"


TOKEN = "workers-test-token"


def _relay(
    make_daemon: Callable[..., Daemon], sink_port: int, workers: int, **sections: dict[str, Any]
) -> Daemon:
    overrides: dict[str, dict[str, Any]] = {
        "server": {"workers": workers},
        "delivery.smarthost": {"hosts": [f"{MX1}:{sink_port}"], "tls": "none"},
        "http": {"listen": f"{LOOPBACK}:{free_port()}"},
    }
    for section, keys in sections.items():
        overrides.setdefault(section, {}).update(keys)
    daemon = make_daemon(overrides=overrides, start=False)
    tokens = daemon.workdir / "tokens"
    tokens.write_text(TOKEN + "\n")
    daemon.reconfigure({"http": {"tokens_file": str(tokens)}})
    return daemon.start()


def _workers(daemon: Daemon) -> list[int]:
    assert daemon.proc is not None
    return [p for p in children(daemon.proc.pid) if b"smtprelay.inbound.worker" in cmdline(p)]


def _status(daemon: Daemon) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{daemon.sections['http']['listen']}/status",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, Any] = json.load(response)
        return answer


def _healthz(daemon: Daemon) -> int:
    url = f"http://{daemon.sections['http']['listen']}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@pytest.mark.parametrize("workers", [0, 2])
def test_messages_from_many_sessions_are_all_delivered(
    workers: int,
    make_daemon: Callable[..., Daemon],
    make_sink: Callable[..., Sink],
    sink_port: int,
) -> None:
    sink = make_sink(MX1)
    relay = _relay(make_daemon, sink_port, workers)
    assert len(_workers(relay)) == workers
    # Sessions open in the workers are counted by the main process (/status).
    with smtplib.SMTP(LOOPBACK, relay.port) as one, smtplib.SMTP(LOOPBACK, relay.port) as two:
        one.ehlo("client.test")
        two.ehlo("client.test")
        wait_until(lambda: _status(relay)["connections"] == 2, 10, "2 open sessions")
    wait_until(lambda: _status(relay)["connections"] == 0, 10, "no open session")

    def session(n: int) -> list[str]:
        with smtplib.SMTP(LOOPBACK, relay.port, timeout=10) as client:
            client.ehlo("client.test")
            return [send(client, [RCPT], make_message(f"{n}-{i}")) for i in range(10)]

    with ThreadPoolExecutor(8) as pool:
        qids = [q for batch in pool.map(session, range(8)) for q in batch]
    assert len(set(qids)) == 80
    wait_until(lambda: len(sink.messages) >= 80, 30, "80 deliveries")
    for qid in qids:
        wait_removed(relay, qid)
    bodies = sorted(m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in sink.messages)
    assert len(bodies) == 80 and len(set(bodies)) == 80
    # Each accepted message is logged by the process that accepted it.
    assert relay.proc is not None
    servers = {str(p) for p in _workers(relay)} if workers else {str(relay.proc.pid)}
    pids = re.findall(r"smtprelay/smtpd\[(\d+)\]: \w+: client=", relay.log())
    assert len(pids) == 80 and set(pids) <= servers
    assert _status(relay)["counters"]["received"] == 80  # the workers' log events count


def test_a_killed_worker_is_replaced_and_nothing_it_queued_is_stranded(
    make_daemon: Callable[..., Daemon],
    make_sink: Callable[..., Sink],
    sink_port: int,
) -> None:
    """A worker killed between making a message durable and announcing it: the main
    process starts a new worker and finds the message in the spool itself."""
    sink = make_sink(MX1)
    relay = _relay(make_daemon, sink_port, 1)
    (victim,) = _workers(relay)
    before = submit(relay, [RCPT], make_message("before"))
    # What the worker leaves when it dies after the fsync, before the announcement: a
    # durable queue file the scheduler was never told about.
    data = make_message("stray")
    stray = make_envelope(
        ids.new_id(),
        size=len(data),
        recipients=[Recipient(RCPT)],
        arrival=time.time(),
        next_attempt=time.time(),
    )
    path = relay.spool / "queue" / f"{stray.qid}.msg"
    path.write_bytes(stray.to_json() + b"\n" + data)

    os.kill(victim, signal.SIGKILL)
    line = wait_until(
        lambda: re.search(
            r"inbound worker 0 \(pid (\d+)\) exited with signal "
            r"SIGKILL; starting a new one",
            relay.log(),
        ),
        10,
        "the restart line",
    )
    assert int(line.group(1)) == victim
    (replacement,) = wait_until(
        lambda: [p for p in _workers(relay) if p != victim], 20, "a new worker"
    )
    wait_until(lambda: _healthz(relay) == 200, 20, "/healthz 200 again")
    after = submit(relay, [RCPT], make_message("after"))
    for qid in (before, stray.qid, after):
        wait_removed(relay, qid, timeout=30)
    assert alive(replacement)
    subjects = {m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in sink.messages}
    assert {b"delivery test before", b"delivery test stray", b"delivery test after"} <= subjects


def test_killing_the_main_process_takes_the_workers_with_it(
    make_daemon: Callable[..., Daemon],
    sink_port: int,
) -> None:
    relay = _relay(make_daemon, sink_port, 2)
    workers = _workers(relay)
    assert len(workers) == 2
    relay.kill()
    wait_until(lambda: not any(alive(p) for p in workers), 10, "the workers to die")
    # Nobody accepts on the port any more: no orphan keeps taking mail.
    with pytest.raises(OSError), socket.create_connection((LOOPBACK, relay.port), timeout=2):
        pass


def test_reload_reaches_the_workers(
    make_daemon: Callable[..., Daemon],
    sink_port: int,
) -> None:
    relay = _relay(make_daemon, sink_port, 2)
    big = make_message("big", extra="x" * 5000)
    with smtplib.SMTP(LOOPBACK, relay.port) as client:
        client.ehlo("client.test")
        send(client, [RCPT], big)
    relay.reconfigure({"server": {"max_message_size": 4000}})
    assert "configuration reloaded" in relay.hup()
    wait_until(
        lambda: relay.log().count("inbound worker: configuration reloaded") == 2,
        10,
        "both workers to reload",
    )
    for _ in range(6):  # fresh connections, served by either worker
        with smtplib.SMTP(LOOPBACK, relay.port) as client:
            client.ehlo("client.test")
            assert client.esmtp_features["size"] == "4000"
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                client.sendmail("app@example.com", [RCPT], big)
            assert info.value.smtp_code == replies.SIZE_EXCEEDED.code


def test_stop_waits_for_the_workers_and_exits_0(
    make_daemon: Callable[..., Daemon],
    sink_port: int,
) -> None:
    relay = _relay(make_daemon, sink_port, 2)
    workers = _workers(relay)
    with smtplib.SMTP(LOOPBACK, relay.port) as client:
        client.ehlo("client.test")
        send(client, [RCPT], make_message("last"))
    assert relay.stop() == 0
    assert not any(alive(p) for p in workers)
    assert "exited with" not in relay.log()  # a requested stop is not a crash
