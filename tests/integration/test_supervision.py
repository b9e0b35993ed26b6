"""A long-lived task of the daemon that dies stops the daemon (exit 1, its traceback
logged once) instead of leaving one that accepts mail and delivers none; started again,
the daemon delivers everything it had acknowledged.

Two faults: a real one -- the main process runs out of file descriptors (its limit
lowered from outside with prlimit(2)) while an inbound worker dies, so the workers'
supervisor cannot start a new one -- and a delivery loop that raises. Nothing real can
make the delivery loop itself fail (it only pops due times off a heap and starts
attempts, whose faults are caught and retried), so that one is injected by this test:
a ``sitecustomize`` on the daemon's PYTHONPATH replaces ``Scheduler.run``; the product
has no switch for it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import smtplib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.delivery_support import MX1, make_message, submit
from tests.integration.sinks import Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures"]

RCPT = "bob@dest.test"
FIRST_LIFE = {
    # Attempts of the first life go to a closed port and are deferred for a second only:
    # the second life finds every message due at once.
    "delivery": {"retry_schedule": ["1s"]},
}


def _second_life(first: Daemon, make_daemon: Callable[..., Daemon], sink: Sink) -> Daemon:
    return make_daemon(
        name="second",
        overrides={
            "spool": {"dir": str(first.spool)},
            "delivery.smarthost": {"hosts": [f"{sink.host}:{sink.port}"]},
        },
    )


def _delivered_all(second: Daemon, sink: Sink, acknowledged: set[str]) -> None:
    def done() -> bool:
        return all(f"{qid}: removed" in second.log() for qid in acknowledged)

    wait_until(done, 30, lambda: f"all of {sorted(acknowledged)} removed\n{second.log()}")
    assert len(sink.messages) == len(acknowledged)
    assert second.queued_ids() == []
    assert second.stop() == 0


def _healthz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    url = f"http://{daemon.sections['http']['listen']}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _exit_status(daemon: Daemon, timeout: float = 30) -> int:
    assert daemon.proc is not None
    return daemon.proc.wait(timeout)


def test_a_worker_that_cannot_be_replaced_stops_the_daemon(
    make_daemon: Callable[..., Daemon],
    make_sink: Callable[..., Sink],
) -> None:
    first = make_daemon(name="first", overrides={**FIRST_LIFE, "server": {"workers": 2}})
    assert first.proc is not None
    acknowledged = {submit(first, [RCPT], make_message(n)) for n in range(5)}
    workers = dict(re.findall(r"inbound worker (\d) started, pid (\d+)", first.log()))
    assert sorted(workers) == ["0", "1"]
    # Not "with": its QUIT would meet the 421 that ends every session of a stopping relay.
    client = smtplib.SMTP(LOOPBACK, first.port, local_hostname="client.test", timeout=30)
    try:
        client.ehlo()
        assert client.mail("app@sender.test")[0] == 250
        assert client.rcpt(RCPT)[0] == 250
        # The worker that has this transaction stays; the other one dies.
        (serving,) = re.findall(r"smtpd\[(\d+)\]: connect from", first.log())[-1:]
        (other,) = [pid for pid in workers.values() if pid != serving]
        # The main process may open no more files (as when a burst of connections has
        # used them all up); the descriptors it holds stay usable. So the supervisor of
        # the workers cannot make the new worker's channel.
        _, hard = resource.prlimit(first.proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(first.proc.pid, resource.RLIMIT_NOFILE, (3, hard))
        os.kill(int(other), signal.SIGKILL)
        wait_until(lambda: "stopping after a fault" in first.log(), 20, first.log)
        # The burst is over: the stop itself needs a descriptor or two (the event loop
        # makes a socket pair each time it starts running).
        resource.prlimit(first.proc.pid, resource.RLIMIT_NOFILE, (1024, hard))
        # The transaction under way gets the grace of a stop.
        code, reply = client.data(make_message("during the stop"))
        assert code == 250, reply
        acknowledged.add(reply.decode().rsplit(" ", 1)[1])
    finally:
        client.close()

    assert _exit_status(first) == 1
    log = first.log()
    assert "exited with signal SIGKILL; starting a new one" in log
    assert log.count("the inbound workers' supervisor failed; stopping") == 1
    assert "OSError: [Errno 24] Too many open files" in log
    assert log.count("error: stopped after a fault: the inbound workers' supervisor failed") == 1
    assert "Cannot close" not in log
    assert sorted(first.queued_ids()) == sorted(acknowledged)

    sink = make_sink(MX1)
    _delivered_all(_second_life(first, make_daemon, sink), sink, acknowledged)


SITECUSTOMIZE = '''\
"""Injected by tests/integration/test_supervision.py: the delivery loop fails once
the file FLAG exists."""
import asyncio
import pathlib

from smtprelay.delivery import scheduler

FLAG = pathlib.Path({flag!r})


async def run(self):
    while not FLAG.exists():
        await asyncio.sleep(0.02)
    raise RuntimeError("the delivery loop broke (injected by the test)")


scheduler.Scheduler.run = run
'''


def test_a_delivery_loop_that_dies_stops_the_daemon_and_healthz_says_so(
    make_daemon: Callable[..., Daemon],
    make_sink: Callable[..., Sink],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flag = tmp_path / "break-the-loop"
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE.format(flag=str(flag)))
    first = make_daemon(name="first", start=False, overrides=FIRST_LIFE)
    with monkeypatch.context() as patched:
        patched.setenv("PYTHONPATH", str(inject))
        first.start()
    assert _healthz(first) == (
        200,
        {
            "status": "ok",
            "checks": {"spool": "ok", "listeners": "ok", "event_loop": "ok", "delivery": "ok"},
        },
    )
    acknowledged = {submit(first, [RCPT], make_message(n)) for n in range(3)}

    # A transaction under way when the loop dies: it gets the grace a stop gives.
    # Not "with": its QUIT would meet the 421 that ends every session of a stopping relay.
    client = smtplib.SMTP(LOOPBACK, first.port, local_hostname="client.test", timeout=30)
    try:
        client.ehlo()
        assert client.mail("app@sender.test")[0] == 250
        assert client.rcpt(RCPT)[0] == 250
        flag.touch()
        wait_until(lambda: "stopping after a fault" in first.log(), 20, first.log)
        status, answer = _healthz(first)
        assert status == 503
        assert answer["checks"]["delivery"] == "the delivery loop is not running"
        code, reply = client.data(make_message("during the stop"))
        assert code == 250, reply
        acknowledged.add(reply.decode().rsplit(" ", 1)[1])
    finally:
        client.close()

    assert _exit_status(first) == 1
    log = first.log()
    assert log.count("Traceback") == 1
    assert log.count("the delivery loop failed; stopping") == 1
    assert "RuntimeError: the delivery loop broke (injected by the test)" in log
    assert sorted(first.queued_ids()) == sorted(acknowledged)

    sink = make_sink(MX1)
    _delivered_all(_second_life(first, make_daemon, sink), sink, acknowledged)
