"""Disk full: the relay answers 4xx, loses nothing it acknowledged, and recovers."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

from smtprelay import replies
from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.inbound_support import line, qid_of

pytest_plugins = ["tests.integration.diskfull_fixtures"]


def message(n: int) -> bytes:
    return f"Subject: fill {n}\r\n\r\n".encode() + (b"x" * 76 + b"\r\n") * 1300  # ~100 KB


def test_disk_full_gives_452_and_recovers(
    make_daemon: Callable[..., Daemon], tiny_fs: Path
) -> None:
    daemon = make_daemon(overrides={"spool": {"dir": str(tiny_fs / "spool")}})
    acked: dict[str, int] = {}
    refused = 0
    with smtplib.SMTP(LOOPBACK, daemon.port) as client:
        client.ehlo("filler.test")
        for n in range(40):  # 40 x 100 KB is twice what fits
            client.mail("a@example.com")
            client.rcpt("b@example.net")
            code, reply = client.data(message(n))
            if code != 250:
                assert (code, reply.split()[0].decode()) == (
                    replies.NO_SPACE.code,
                    replies.NO_SPACE.enhanced,
                )
                refused += 1
                continue
            acked[qid_of(line(code, reply))] = n
    assert acked and refused, "the tiny filesystem must fill up during the test"
    assert "No space left on device" in daemon.log()

    queue = daemon.spool / "queue"
    assert not list(queue.glob("*.tmp")), "a failed commit must not leave temp files"
    assert sorted(daemon.queued_ids()) == sorted(acked)
    for qid, n in acked.items():
        assert daemon.message(qid).endswith(message(n))

    # Space comes back (the operator delivers or moves mail away): accepting resumes.
    for qid in list(acked)[: len(acked) // 2]:
        daemon.message_file(qid).unlink()
        del acked[qid]
    with smtplib.SMTP(LOOPBACK, daemon.port) as client:
        refused_mail = client.sendmail("a@example.com", ["b@example.net"], message(99))
    assert refused_mail == {}
    daemon.stop()
    assert not list(queue.glob("*.tmp"))
