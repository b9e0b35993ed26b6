"""JSON submissions prepared in worker processes ([http] prepare_workers): the same
answers and messages as when the main process prepares them, a strict batch refused
across workers leaves nothing behind, a killed worker costs no acknowledged message,
and the workers die with the daemon.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.polling import wait_until

TOKEN = "preparing-token-6d2e91"
MESSAGE = {"from": "app@sender.test", "to": ["bob@dest.test"], "subject": "é", "text": "hi"}
SPAWNED = b"smtprelay.web.preparing"


def post(port: int, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        response = conn.getresponse()
        payload = response.read()
        got = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    return response.status, got, json.loads(payload)


@pytest.fixture
def relay(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> Callable[[int], tuple[Daemon, int]]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"app {TOKEN} scopes=send\n")

    def start(workers: int) -> tuple[Daemon, int]:
        port = free_port()
        http = {"listen": f"{LOOPBACK}:{port}", "tokens_file": str(tokens)}
        http["prepare_workers"] = workers  # type: ignore[assignment]
        return make_daemon(name=f"relay{workers}", overrides={"http": http}), port

    return start


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task"):
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except FileNotFoundError:
                continue
            found += children
            todo += children
    return found


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def preparers(daemon: Daemon) -> list[int]:
    assert daemon.proc is not None
    return [p for p in descendants(daemon.proc.pid) if SPAWNED in cmdline(p)]


def spooled(daemon: Daemon, qid: str) -> tuple[dict[str, Any], bytes]:
    envelope, _, data = (daemon.spool / "queue" / f"{qid}.msg").read_bytes().partition(b"\n")
    return json.loads(envelope), data


def test_workers_answer_and_build_as_the_main_process_does(
    relay: Callable[[int], tuple[Daemon, int]],
) -> None:
    batch = {
        "messages": [MESSAGE, {**MESSAGE, "to": ["not an address"]}, MESSAGE],
        "validation": "permissive",
    }
    answers, messages = {}, {}
    for workers in (0, 2):
        daemon, port = relay(workers)
        status, _, one = post(port, "/v1/messages", MESSAGE)
        assert status == 202, one
        status, _, many = post(port, "/v1/messages/batch", batch)
        assert status == 202, many
        assert bool(preparers(daemon)) == bool(workers)
        qids = [one["id"]] + [m["id"] for m in many["messages"] if "id" in m]
        assert sorted(daemon.queued_ids()) == sorted(qids)
        answers[workers] = [one, many]
        built = []
        for qid in qids:
            envelope, data = spooled(daemon, qid)
            # What differs between two submissions: the queue ID and the times.
            lines = [
                line.replace(qid.encode(), b"QID")
                for line in data.split(b"\r\n")
                if not line.startswith((b"Date:", b"\tfor <", b"\t(using", b"Received:"))
                and b"smtprelay" not in line
            ]
            built.append((envelope["sender"], envelope["mail_params"], lines))
        messages[workers] = built
        daemon.stop()

    def without_ids(answer: Any) -> Any:
        if isinstance(answer, dict):
            return {k: without_ids(v) for k, v in answer.items() if k != "id"}
        if isinstance(answer, list):
            return [without_ids(v) for v in answer]
        return answer

    assert without_ids(answers[0]) == without_ids(answers[2])
    assert messages[0] == messages[2]


def test_a_strict_batch_refused_by_one_worker_leaves_no_message_of_another(
    relay: Callable[[int], tuple[Daemon, int]],
) -> None:
    daemon, port = relay(2)
    # Four messages, two workers: the second worker's last message is invalid, so the
    # first worker has written its two files by the time the refusal comes back.
    bad = {**MESSAGE, "to": ["bob@dest.test", 7]}
    status, _, answer = post(port, "/v1/messages/batch", {"messages": [MESSAGE] * 3 + [bad]})
    assert status == 422, answer
    assert [e["pointer"] for e in answer["errors"]] == ["/messages/3/to/1"]
    assert len(preparers(daemon)) >= 1
    assert daemon.queued_ids() == []
    assert list((daemon.spool / "queue").iterdir()) == []


def test_a_killed_worker_costs_no_acknowledged_message(
    relay: Callable[[int], tuple[Daemon, int]],
) -> None:
    daemon, port = relay(1)
    acked = []
    status, _, answer = post(port, "/v1/messages", MESSAGE)
    assert status == 202, answer
    acked.append(answer["id"])
    (worker,) = preparers(daemon)
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: not alive(worker), timeout=10)
    # The pool finds its worker gone: the request is either served by a new one or
    # answered 503 with Retry-After (never a 500); the one after it is served.
    for _ in range(2):
        status, headers, answer = post(port, "/v1/messages/batch", {"messages": [MESSAGE] * 2})
        if status == 202:
            acked += [m["id"] for m in answer["messages"]]
            break
        assert status == 503 and int(headers["retry-after"]) > 0, answer
    else:
        pytest.fail("no new worker took the submission")
    assert [p for p in preparers(daemon) if p != worker]
    assert sorted(daemon.queued_ids()) == sorted(acked)
    assert "Traceback" not in daemon.log()


def test_the_workers_die_with_the_daemon(relay: Callable[[int], tuple[Daemon, int]]) -> None:
    daemon, port = relay(2)
    status, _, answer = post(port, "/v1/messages/batch", {"messages": [MESSAGE] * 4})
    assert status == 202, answer
    workers = preparers(daemon)
    assert workers
    daemon.kill()
    wait_until(lambda: not any(alive(p) for p in workers), timeout=10)
