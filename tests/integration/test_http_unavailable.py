"""503 with Retry-After (problem+json) for a submission the relay cannot take now: the
spool's file system turned read-only (as ext4 does after an I/O error), and the daemon
shutting down after SIGTERM. Nothing is queued, nothing is remembered for the key: the
retry later is sent. (A full disk: test_http_submit.)
"""

from __future__ import annotations

import signal
import smtplib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.integration.http_support import post_json
from tests.polling import wait_until

pytest_plugins = ["tests.integration.diskfull_fixtures"]  # tiny_fs: a tmpfs of our own

TOKEN = "unavailable-token-0a4f1b"
MESSAGE = {"from": "app@sender.test", "to": ["bob@dest.test"], "text": "later"}


def post(
    port: int, path: str, body: Any, key: str | None = None
) -> tuple[int, dict[str, str], Any]:
    return post_json(port, TOKEN, path, body, key)


def assert_unavailable(status: int, headers: dict[str, str], answer: Any, why: str) -> None:
    assert status == 503, answer
    assert headers["content-type"].startswith("application/problem+json")
    assert headers["retry-after"].isdigit() and int(headers["retry-after"]) > 0
    assert answer["type"].endswith("/unavailable") and answer["status"] == 503
    assert why in answer["detail"], answer


@pytest.fixture
def relay(make_daemon: Callable[..., Daemon], tmp_path: Path) -> Callable[..., tuple[Daemon, int]]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"app {TOKEN} scopes=send\n")

    def start(**sections: dict[str, Any]) -> tuple[Daemon, int]:
        port = free_port()
        http = {"listen": f"{LOOPBACK}:{port}", "tokens_file": str(tokens)}
        return make_daemon(overrides={"http": http, **sections}), port

    return start


def remount(mountpoint: Path, mode: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,{mode}", str(mountpoint)], check=True, capture_output=True
    )


def test_a_read_only_spool_is_503_and_the_keyed_retry_is_sent_later(
    relay: Callable[..., tuple[Daemon, int]], tiny_fs: Path
) -> None:
    daemon, port = relay(spool={"dir": str(tiny_fs / "spool")})
    batch = {"messages": [MESSAGE, MESSAGE]}
    remount(tiny_fs, "ro")
    try:
        assert_unavailable(*post(port, "/v1/messages", MESSAGE), "write error")
        assert_unavailable(*post(port, "/v1/messages/batch", batch), "write error")
        # The message's file or the key's record, whichever is written first, cannot be.
        assert_unavailable(*post(port, "/v1/messages", MESSAGE, key="k1"), "cannot")
    finally:
        remount(tiny_fs, "rw")
    assert daemon.queued_ids() == []
    status, headers, answer = post(port, "/v1/messages", MESSAGE, key="k1")
    assert status == 202 and "idempotent-replayed" not in headers, answer
    assert daemon.queued_ids() == [answer["id"]]
    assert "Traceback" not in daemon.log()


def test_a_submission_while_the_daemon_stops_is_503(
    relay: Callable[..., tuple[Daemon, int]],
) -> None:
    daemon, port = relay()
    status, _, first = post(port, "/v1/messages", MESSAGE)
    assert status == 202, first
    # An SMTP transaction under way holds the stop in its grace period: the HTTP
    # listener still answers meanwhile.
    client = smtplib.SMTP(LOOPBACK, daemon.port, timeout=30)
    try:
        client.ehlo("client.test")
        client.mail("app@sender.test")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping: no new connections" in daemon.log(), timeout=20)
        assert_unavailable(*post(port, "/v1/messages", MESSAGE), "shutting down")
        assert_unavailable(*post(port, "/v1/messages/batch", {"messages": [MESSAGE]}), "shut")
        assert_unavailable(*post(port, "/v1/messages", MESSAGE, key="k2"), "shutting down")
    finally:
        client.close()  # the transaction ends: the stop goes on
    assert daemon.stop() == 0
    assert daemon.queued_ids() == [first["id"]]
    daemon.start()  # and after the restart, the keyed retry is sent
    status, headers, answer = post(port, "/v1/messages", MESSAGE, key="k2")
    assert status == 202 and "idempotent-replayed" not in headers, answer
    assert sorted(daemon.queued_ids()) == sorted([first["id"], answer["id"]])
