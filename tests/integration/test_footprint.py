"""What the daemon's processes load: a relay that signs nothing and has no OAuth upstream
never loads dkimpy, ``cryptography`` or authlib (about 15 MB of its main process;
bench/README.md, "1,000,000 queued"). ``cryptography``'s compiled library is what both
pull in, so the check reads each process's memory map for it -- after a delivery, when
the signer has run -- and a relay with a DKIM key shows that the check sees it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import Daemon, free_port
from tests.integration.delivery_support import SENDER, submit, wait_status
from tests.integration.procfs import descendants
from tests.integration.sinks import Sink

SINK_HOST = "127.0.0.2"
RCPT = "bob@dest.test"
MESSAGE = f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: footprint\r\n\r\nHello.\r\n".encode()
CRYPTOGRAPHY = "/cryptography/hazmat/bindings/_rust"


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(SINK_HOST, free_port()) as s:
        yield s


def relay(make_daemon: Callable[..., Daemon], sink: Sink, name: str, **more: Any) -> Daemon:
    overrides: dict[str, dict[str, Any]] = {
        "delivery.smarthost": {"hosts": [f"{SINK_HOST}:{sink.port}"], "tls": "none"},
        **more,
    }
    return make_daemon(name, overrides=overrides)


def deliver_one(daemon: Daemon) -> None:
    qid = submit(daemon, [RCPT], MESSAGE)
    wait_status(daemon, qid, RCPT, "sent")


def loading_cryptography(daemon: Daemon) -> list[int]:
    """The daemon's processes (main, inbound worker, HTTP front) that map it."""
    assert daemon.proc is not None
    pids = [daemon.proc.pid, *descendants(daemon.proc.pid)]
    assert len(pids) >= 3, pids  # the main process and its children were all looked at
    return [pid for pid in pids if CRYPTOGRAPHY in Path(f"/proc/{pid}/maps").read_text()]


def test_a_relay_without_dkim_keys_or_oauth_loads_no_cryptography(
    make_daemon: Callable[..., Daemon], sink: Sink
) -> None:
    daemon = relay(make_daemon, sink, "plain")
    deliver_one(daemon)
    assert loading_cryptography(daemon) == []


def test_a_dkim_key_loads_it_in_the_main_process_only(
    make_daemon: Callable[..., Daemon], sink: Sink, tmp_path: Path
) -> None:
    keygen = ["dkim", "keygen", "sender.test", "s1", "--dir", str(tmp_path)]
    made = subprocess.run(
        [sys.executable, "-m", "smtprelay", *keygen],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    key = {"domain": "sender.test", "selector": "s1", "key_file": f"{tmp_path}/sender.test.s1.key"}
    daemon = relay(make_daemon, sink, "signing", **{"[dkim.keys]#1": key})
    deliver_one(daemon)
    assert sink.messages[-1].content.startswith(b"DKIM-Signature:")
    assert daemon.proc is not None
    assert loading_cryptography(daemon) == [daemon.proc.pid]
