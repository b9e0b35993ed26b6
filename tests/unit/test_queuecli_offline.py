"""smtprelay.queuecli.offline: the queue commands on a real spool with the daemon stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprelay import config
from smtprelay.envelope import Envelope, QueueState, Recipient
from smtprelay.queuecli.errors import QueueFailure
from smtprelay.queuecli.offline import read_headers, spool_action, spool_list, spool_show
from smtprelay.spool import Spool
from tests.unit.helpers import make_envelope

DATA = b"Received: from x\r\nSubject: offline\r\n\r\nbody\r\n"


@pytest.fixture
def settings(tmp_path: Path) -> config.Settings:
    Spool(tmp_path / "spool").close()  # the daemon made it once
    return config.Settings(spool=config.SpoolSettings(dir=str(tmp_path / "spool")))


def queued(
    settings: config.Settings,
    state: QueueState = QueueState.DEFERRED,
    rcpt: str = "bob@Example.NET.",
) -> Envelope:
    envelope = make_envelope(size=len(DATA), recipients=[Recipient(rcpt)])
    envelope.state = state
    spool = Spool(Path(settings.spool.dir))
    try:
        spool.commit(envelope, DATA)
    finally:
        spool.close()
    return envelope


def test_no_spool_is_not_created(tmp_path: Path) -> None:
    settings = config.Settings(spool=config.SpoolSettings(dir=str(tmp_path / "none")))
    with pytest.raises(QueueFailure, match="no queue directory"):
        spool_list(settings, None, None)
    assert not (tmp_path / "none").exists()


def test_list_filters_by_state_and_domain(settings: config.Settings) -> None:
    held = queued(settings, QueueState.HOLD)
    other = queued(settings, rcpt="carol@example.org")
    assert [m["qid"] for m in spool_list(settings, None, None)["messages"]] == sorted(
        [held.qid, other.qid]
    )
    assert [m["qid"] for m in spool_list(settings, "hold", None)["messages"]] == [held.qid]
    assert spool_list(settings, None, " example.net. ")["messages"][0]["qid"] == held.qid
    assert spool_list(settings, None, "example.com") == {"messages": [], "total": 0}


def test_show_reads_envelope_and_headers(settings: config.Settings) -> None:
    envelope = queued(settings)
    answer, headers = spool_show(settings, envelope.qid)
    assert (answer["status"], answer["envelope"]["qid"]) == ("deferred", envelope.qid)
    assert headers == "Received: from x\nSubject: offline"
    assert read_headers(settings, "1K17TWEWEZ4Y1") is None
    with pytest.raises(QueueFailure, match="no message 1K17TWEWEZ4Y1"):
        spool_show(settings, "1K17TWEWEZ4Y1")


def test_actions_answer_as_the_api_does(settings: config.Settings) -> None:
    envelope = queued(settings)
    qid, unknown = envelope.qid, "1K17TWEWEZ4Y1"
    assert spool_action(settings, "release", [qid]) == {
        "action": "release",
        "results": {qid: "not-held"},
    }
    assert spool_action(settings, "hold", [qid, unknown]) == {
        "action": "hold",
        "results": {qid: "held", unknown: "not-found"},
    }
    assert spool_action(settings, "hold", [qid])["results"] == {qid: "held"}
    assert spool_action(settings, "release", [qid])["results"] == {qid: "released"}
    assert spool_list(settings, "active", None)["total"] == 1
    assert spool_action(settings, "delete", [qid])["results"] == {qid: "deleted"}
    assert spool_list(settings, None, None)["total"] == 0


def test_an_unreadable_envelope_is_an_error_for_that_qid(settings: config.Settings) -> None:
    bad = "1K17TWEWEZ4Y1"
    (Path(settings.spool.dir) / "queue" / f"{bad}.msg").write_bytes(b"{}\n" + DATA)
    good = queued(settings)
    results = spool_action(settings, "hold", [bad, good.qid])["results"]
    assert results[bad].startswith("error: malformed spool record")
    assert results[good.qid] == "held"


def test_flush_and_bounce_are_not_spool_actions(settings: config.Settings) -> None:
    for action in ("flush", "bounce"):
        with pytest.raises(ValueError, match=action):
            spool_action(settings, action, [])
