"""JSON submissions prepared in worker processes ([http] prepare_workers): the same
answers and messages as when the main process prepares them, a strict batch refused
across workers leaves nothing behind, a killed worker costs no acknowledged message,
and the workers die with the daemon.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smtprelay import config, ids
from smtprelay.web import intake, preparing
from smtprelay.web.tokens import Token
from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.integration.http_support import post_json
from tests.integration.procfs import alive, cmdline, descendants
from tests.polling import wait_until

TOKEN = "preparing-token-6d2e91"
MESSAGE = {"from": "app@sender.test", "to": ["bob@dest.test"], "subject": "é", "text": "hi"}
SPAWNED = b"smtprelay.web.preparing"
CONFIG = Path(__file__).resolve().parents[2] / "conf" / "smtprelay.toml"


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
        # The main process serves every request: the fronts (smtprelay.web.front) would
        # prepare the common ones themselves (tests/integration/test_http_front.py).
        http["workers"] = 0  # type: ignore[assignment]
        return make_daemon(name=f"relay{workers}", overrides={"http": http}), port

    return start


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
        status, _, one = post_json(port, TOKEN, "/v1/messages", MESSAGE)
        assert status == 202, one
        status, _, many = post_json(port, TOKEN, "/v1/messages/batch", batch)
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
    status, _, answer = post_json(
        port, TOKEN, "/v1/messages/batch", {"messages": [MESSAGE] * 3 + [bad]}
    )
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
    status, _, answer = post_json(port, TOKEN, "/v1/messages", MESSAGE)
    assert status == 202, answer
    acked.append(answer["id"])
    (worker,) = preparers(daemon)
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: not alive(worker), timeout=10)
    # The pool finds its worker gone: the request is either served by a new one or
    # answered 503 with Retry-After (never a 500); the one after it is served.
    for _ in range(2):
        status, headers, answer = post_json(
            port, TOKEN, "/v1/messages/batch", {"messages": [MESSAGE] * 2}
        )
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
    status, _, answer = post_json(port, TOKEN, "/v1/messages/batch", {"messages": [MESSAGE] * 4})
    assert status == 202, answer
    workers = preparers(daemon)
    assert workers
    daemon.kill()
    wait_until(lambda: not any(alive(p) for p in workers), timeout=10)


def test_a_worker_whose_daemon_dies_mid_conversation_exits_quietly(tmp_path: Path) -> None:
    # A daemon killed with answers unread resets the channel (RST), or leaves a request
    # cut short: the worker's stderr is the daemon's log, so it must say nothing.
    ours, theirs = socket.socketpair()
    worker = subprocess.Popen(
        [sys.executable, "-m", "smtprelay.web.preparing", str(theirs.fileno()), str(os.getpid())],
        pass_fds=[theirs.fileno()],
        stderr=subprocess.PIPE,
    )
    theirs.close()
    settings = pickle.dumps(config.load(CONFIG))
    origin = intake.Origin(Token("t", frozenset({"send"})), LOOPBACK, 1)
    jobs = [preparing.Job(MESSAGE, (), ids.new_id())]
    frame = pickle.dumps((1, (str(tmp_path), settings, origin, None, True, True, jobs)))
    for _ in range(3):
        ours.sendall(len(frame).to_bytes(4, "big") + frame)
    wait_until(lambda: len(list((tmp_path / "queue").glob("*.msg"))) == 1, timeout=20)
    wait_until(lambda: _pending(ours) > 0, timeout=20)
    ours.sendall(len(frame).to_bytes(4, "big") + frame[:10])  # a frame cut short
    ours.close()  # with answers unread: a reset
    assert worker.wait(timeout=20) == 0
    assert worker.stderr is not None and worker.stderr.read() == b""


def _pending(sock: socket.socket) -> int:
    """Bytes waiting to be read on ``sock`` (FIONREAD)."""
    buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(buf, sys.byteorder)


def test_a_worker_dying_under_a_batch_takes_back_what_the_other_one_writes_after(
    relay: Callable[[int], tuple[Daemon, int]],
) -> None:
    daemon, port = relay(2)
    status, _, answer = post_json(port, TOKEN, "/v1/messages/batch", {"messages": [MESSAGE] * 4})
    assert status == 202, answer
    first, second = preparers(daemon)
    acked = sorted(daemon.queued_ids())
    for pid in (first, second):
        os.kill(pid, signal.SIGSTOP)
    answered: list[tuple[int, dict[str, str], Any]] = []
    batch = {"messages": [MESSAGE] * 4}
    request = threading.Thread(
        target=lambda: answered.append(post_json(port, TOKEN, "/v1/messages/batch", batch))
    )
    request.start()
    try:
        time.sleep(1.0)  # the loopback request reaches both stopped workers' channels
        os.kill(second, signal.SIGKILL)
        # The answer waits for the first worker's chunk: taken back only once written.
        request.join(1.0)
        assert request.is_alive()
    finally:
        os.kill(first, signal.SIGCONT)
    request.join(30)
    ((status, headers, answer),) = answered
    assert status == 503 and int(headers["retry-after"]) > 0, answer
    assert sorted(daemon.queued_ids()) == acked
    assert sorted(p.name for p in (daemon.spool / "queue").iterdir()) == [
        f"{qid}.msg" for qid in acked
    ]
