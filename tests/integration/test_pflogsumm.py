"""pflogsumm (Debian's ``pflogsumm`` package) summarises a smtprelay log as a Postfix one.

One real daemon delivers, through [delivery.routes], to three scripted sinks on loopback,
so that a known mix of events happens and is logged:

* 7 messages received over SMTP from app@sender.test;
* 5 recipients delivered at dest.test (a1, a2 in one message; a3, a4, a5 alone);
* 3 recipients delivered at other.test (one message to b1, b2, b3);
* 2 recipients bounced (550 at RCPT: bad1, bad2@dest.test, one message), which makes
  one non-delivery notice (from <>) delivered to app@sender.test: a 9th delivery, to a
  3rd domain, and not a received message (Postfix's bounce daemon does the same);
* 1 message deferred (450 always to later@other.test; retry in 1 h, so one deferral);
* 2 RCPTs rejected (recipient domain not allowed): one before any accepted recipient
  (``NOQUEUE: reject: RCPT ...``), one after (``QID: reject: RCPT ...``).

Then ``pflogsumm --syslog-name=smtprelay LOG`` must report exactly that. The daemon is
started outside journald, so its lines carry the RFC 3339 timestamp and host name.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trustme

from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.delivery_support import (
    MX1,
    MX2,
    MX3,
    SENDER,
    deliveries,
    make_message,
    removed,
    send,
)
from tests.integration.inbound_support import line as reply_line
from tests.integration.inbound_support import qid_of
from tests.integration.sinks import Sink, free_port
from tests.polling import wait_until

PFLOGSUMM = shutil.which("pflogsumm") or next(
    (p for p in ("/usr/sbin/pflogsumm", "/usr/bin/pflogsumm") if shutil.which(p)), None
)

pytestmark = pytest.mark.skipif(
    PFLOGSUMM is None,
    reason="pflogsumm is not installed (Debian: apt-get install pflogsumm)",
)

DEST, OTHER, SENDER_DOMAIN = "dest.test", "other.test", "sender.test"
DELIVERED_DEST = [f"a{i}@{DEST}" for i in range(1, 6)]
DELIVERED_OTHER = [f"b{i}@{OTHER}" for i in range(1, 4)]
BOUNCED = [f"bad1@{DEST}", f"bad2@{DEST}"]
DEFERRED = f"later@{OTHER}"
REFUSED = ["nobody@elsewhere.test", "x@elsewhere.test"]  # domain not allowed
RECIPIENT_DOMAIN_DENIED = "Recipient address rejected: domain not allowed"


@dataclass(frozen=True)
class Run:
    daemon: Daemon
    port: int  # the sinks' port
    received: list[str]  # the QIDs of the messages received over SMTP
    log: str
    report: str  # pflogsumm's output


def _transaction(
    client: smtplib.SMTP,
    recipients: list[str],
    tag: str,
    refused: str | None = None,
    refused_first: bool = True,
) -> str:
    """One transaction; ``refused`` is a RCPT the relay must reject (550 5.7.1), sent
    before the accepted recipients or after them."""
    if refused is None:
        return send(client, recipients, make_message(tag))
    code, reply = client.mail(SENDER)
    assert code == 250, reply
    order = [refused, *recipients] if refused_first else [*recipients, refused]
    for rcpt in order:
        code, reply = client.rcpt(rcpt)
        if rcpt == refused:
            assert code == 550 and RECIPIENT_DOMAIN_DENIED in reply.decode(), (code, reply)
        else:
            assert code == 250, (rcpt, reply)
    code, reply = client.data(make_message(tag))
    assert code == 250, reply
    return qid_of(reply_line(code, reply))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Run]:
    port = free_port([MX1, MX2, MX3])
    sinks = {
        DEST: Sink(MX1, port, name="mx.dest.test").start(),
        OTHER: Sink(MX2, port, name="mx.other.test").start(),
        SENDER_DOMAIN: Sink(MX3, port, name="mx.sender.test").start(),
    }
    for bad in BOUNCED:
        sinks[DEST].rcpt_reply(bad, "550 5.1.1 No such user")
    sinks[OTHER].rcpt_reply(DEFERRED, "450 4.2.1 Mailbox busy, try later")
    daemon: Daemon | None = None
    try:
        with pytest.MonkeyPatch.context() as patch:
            # Under journald the daemon leaves time and host to the journal; here the
            # lines must be the whole syslog line, as in /var/log/mail.log.
            patch.delenv("JOURNAL_STREAM", raising=False)
            daemon = Daemon(
                tmp_path_factory.mktemp("pflogsumm"),
                ca,
                overrides={
                    "delivery": {
                        "retry_schedule": ["1h"],  # the deferred one is tried once in the test
                        "max_queue_lifetime": "1d",
                        "connect_timeout": "2s",
                        "command_timeout": "3s",
                        "data_timeout": "3s",
                    },
                    "delivery.routes": {
                        DEST: f"{MX1}:{port}",
                        OTHER: f"{MX2}:{port}",
                        SENDER_DOMAIN: f"{MX3}:{port}",
                    },
                    "relay": {"allowed_recipient_domains": [DEST, OTHER]},
                    "bounce": {"enabled": True, "delay_warning": "0"},
                },
            ).start()
        received = []
        with smtplib.SMTP(
            LOOPBACK, daemon.port, local_hostname="client.test", timeout=30
        ) as client:
            client.ehlo()
            received.append(
                _transaction(
                    client, DELIVERED_DEST[:2], "dest-1", refused=REFUSED[0], refused_first=True
                )
            )
            for i, rcpt in enumerate(DELIVERED_DEST[2:], start=2):
                received.append(_transaction(client, [rcpt], f"dest-{i}"))
            received.append(
                _transaction(
                    client, DELIVERED_OTHER, "other", refused=REFUSED[1], refused_first=False
                )
            )
            received.append(_transaction(client, BOUNCED, "bounced"))
            deferred_qid = _transaction(client, [DEFERRED], "deferred")
            received.append(deferred_qid)

        def settled() -> bool:
            done = [qid for qid in received if qid != deferred_qid]
            return (
                all(removed(daemon, qid) for qid in done)
                and any(d.status == "deferred" for d in deliveries(daemon, deferred_qid))
                and len(sinks[SENDER_DOMAIN].messages) == 1
                and len(deliveries(daemon, to=SENDER)) == 1
                and "disconnect from" in daemon.log()
            )

        wait_until(settled, 30, lambda: f"all deliveries settled\n{daemon.log()}")
        # The scenario happened as scripted (else the report could not be right either).
        assert sorted(r for m in sinks[DEST].messages for r in m.rcpt_tos) == DELIVERED_DEST
        assert sorted(r for m in sinks[OTHER].messages for r in m.rcpt_tos) == DELIVERED_OTHER
        assert sinks[SENDER_DOMAIN].messages[0].mail_from in ("", "<>")  # a notice
        assert daemon.queued_ids() == [deferred_qid]
        log = daemon.log()
        # Both forms of a refused RCPT: before any accepted recipient, and after one.
        assert re.search(r"smtprelay/smtpd\[\d+\]: NOQUEUE: reject: RCPT from ", log), log
        assert re.search(rf"smtprelay/smtpd\[\d+\]: {received[4]}: reject: RCPT from ", log), log
        assert PFLOGSUMM is not None
        result = subprocess.run(
            [PFLOGSUMM, "--syslog-name=smtprelay", str(daemon.log_path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "LC_ALL": "C"},
        )
        assert result.returncode == 0, result.stderr
        yield Run(daemon, port, received, log, result.stdout)
    finally:
        if daemon is not None:
            daemon.kill()
        for sink in sinks.values():
            sink.stop()


def _context(run: Run) -> str:
    return f"\n--- pflogsumm ---\n{run.report}\n--- log ---\n{run.log}"


def section(report: str, title: str) -> list[str]:
    """The lines of a report section: after its title and underline, to a blank line."""
    lines = report.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == title.strip() and i + 1 < len(lines) and lines[i + 1].startswith("-"):
            body = []
            for rest in lines[i + 2 :]:
                if not rest.strip():
                    break
                body.append(rest)
            return body
    return []


def grand_totals(report: str) -> dict[str, int]:
    """The "Grand Totals" block: label -> number (k/m units scaled back)."""
    totals: dict[str, int] = {}
    block = report.split("Grand Totals", 1)[-1].split("Per-Hour Traffic Summary", 1)[0]
    for line in block.splitlines():
        m = re.match(r"^ +(\d+)([km ]?)  ([a-z][a-z /-]*?)(?: +\(.*\))?$", line)
        if m:
            scale = {"k": 1024, "m": 1024 * 1024}.get(m[2], 1)
            totals[m[3].strip()] = int(m[1]) * scale
    return totals


def deferrals(report: str) -> int:
    m = re.search(r"^ +\d+[km ]?  deferred +\((\d+)[km ]? deferrals\)$", report, re.M)
    return int(m[1]) if m else 0


def domain_table(report: str, title: str) -> dict[str, tuple[int, ...]]:
    """A "Host/Domain Summary" table: domain -> its integer columns (counts, bytes)."""
    rows: dict[str, tuple[int, ...]] = {}
    for line in section(report, title):
        cells = line.split()
        if not cells or cells[0] in ("sent", "msg") or cells[0].startswith("-"):
            continue  # the column headings and their underline
        rows[cells[-1]] = tuple(
            int(c.rstrip("km")) for c in cells[:-1] if re.fullmatch(r"\d+[km]?", c)
        )
    return rows


def test_grand_totals(run: Run) -> None:
    totals = grand_totals(run.report)
    expected = {
        "received": 7,
        "delivered": 9,  # 5 + 3 recipients, and the non-delivery notice
        "forwarded": 0,
        "deferred": 1,
        "bounced": 2,
        "rejected": 2,
        "reject warnings": 0,
        "held": 0,
        "discarded": 0,
        "senders": 1,
        "sending hosts/domains": 1,
        "recipients": 9,
        "recipient hosts/domains": 3,
    }
    got = {label: totals.get(label) for label in expected}
    assert got == expected, _context(run)
    assert deferrals(run.report) == 1, _context(run)
    assert re.search(r"^ +2[km ]?  rejected \(18%\)$", run.report, re.M), _context(run)


def test_bytes_received_are_the_received_messages_sizes(run: Run) -> None:
    """pflogsumm ties each ``client=`` line to its ``from=<...>, size=N`` line by QID."""
    sizes = []
    for qid in run.received:
        m = re.search(rf"smtprelay/qmgr\[\d+\]: {qid}: from=<[^>]*>, size=(\d+),", run.log)
        assert m, f"no from= line for {qid}{_context(run)}"
        sizes.append(int(m[1]))
    assert grand_totals(run.report).get("bytes received") == sum(sizes), _context(run)


def test_per_domain_delivery_counts(run: Run) -> None:
    rows = domain_table(run.report, "Host/Domain Summary: Message Delivery")
    # (sent cnt, bytes, defers); the delays are not compared
    got = {domain: (cells[0], cells[2]) for domain, cells in rows.items()}
    assert got == {DEST: (5, 0), OTHER: (3, 1), SENDER_DOMAIN: (1, 0)}, _context(run)


def test_per_domain_received_counts(run: Run) -> None:
    rows = domain_table(run.report, "Host/Domain Summary: Messages Received")
    assert {domain: cells[0] for domain, cells in rows.items()} == {SENDER_DOMAIN: 7}, _context(run)


def test_problem_details(run: Run) -> None:
    """The detail sections give the right reasons: the 450 deferral, the 550 bounces
    (by relay), and the two refused RCPTs, keyed by recipient as for Postfix's lines."""
    deferral = section(run.report, "message deferral detail")
    assert deferral == ["  smtp (total: 1)", "         1   4.2.1 Mailbox busy, try later"], (
        _context(run)
    )
    bounce = section(run.report, "message bounce detail (by relay)")
    assert [line.strip() for line in bounce] == [
        f"{MX1}[{MX1}]:{run.port} (total: 2)",
        "2   5.1.1 No such user",
    ], _context(run)
    reject = section(run.report, "message reject detail")
    assert [line.strip() for line in reject] == [
        "RCPT",
        f"{RECIPIENT_DOMAIN_DENIED} (total: 2)",
        *(f"1   {address}" for address in REFUSED),
    ], _context(run)
