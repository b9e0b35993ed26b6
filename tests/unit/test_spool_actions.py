"""smtprelay.spool.actions: hold, release and delete as changes to a real spool file,
the same for the scheduler and for ``smtprelay queue`` with the daemon stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smtprelay.envelope import Envelope, QueueState
from smtprelay.queueops import Outcome
from smtprelay.spool import Spool, actions
from tests.unit.helpers import make_envelope

DATA = b"Received: from x\r\nSubject: held\r\n\r\nbody \xff\r\n"
UNKNOWN = "1K17TWEWEZ4Y1"


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def queued(spool: Spool, state: QueueState = QueueState.DEFERRED) -> Envelope:
    envelope = make_envelope(size=len(DATA))
    envelope.state = state
    envelope.next_attempt = 1_800_000_000.0
    spool.commit(envelope, DATA)
    return envelope


def test_hold_is_durable_and_keeps_the_message(spool: Spool) -> None:
    envelope = queued(spool)
    change = actions.hold(spool, envelope.qid)
    assert (change.outcome, change.changed) == (Outcome.HELD, True)
    assert change.envelope is not None and change.envelope.state is QueueState.HOLD
    assert spool.load(envelope.qid).state is QueueState.HOLD
    assert spool.read_message(envelope.qid) == DATA


def test_holding_a_held_message_rewrites_nothing(spool: Spool) -> None:
    envelope = queued(spool, QueueState.HOLD)
    before = spool.path(envelope.qid).stat().st_ino
    change = actions.hold(spool, envelope.qid)
    assert (change.outcome, change.changed) == (Outcome.HELD, False)
    assert spool.path(envelope.qid).stat().st_ino == before  # not replaced by a rename


def test_release_schedules_it_at_the_given_time(spool: Spool) -> None:
    envelope = queued(spool, QueueState.HOLD)
    change = actions.release(spool, envelope.qid, 1_900_000_000.5)
    assert (change.outcome, change.changed) == (Outcome.RELEASED, True)
    on_disk = spool.load(envelope.qid)
    assert (on_disk.state, on_disk.next_attempt) == (QueueState.ACTIVE, 1_900_000_000.5)
    assert spool.read_message(envelope.qid) == DATA


def test_release_of_a_message_not_held_changes_nothing(spool: Spool) -> None:
    envelope = queued(spool)
    change = actions.release(spool, envelope.qid, 1_900_000_000.0)
    assert (change.outcome, change.changed) == (Outcome.NOT_HELD, False)
    assert change.envelope is not None and change.envelope.qid == envelope.qid
    assert spool.load(envelope.qid).next_attempt == 1_800_000_000.0


def test_delete_removes_the_file(spool: Spool) -> None:
    envelope = queued(spool)
    change = actions.delete(spool, envelope.qid)
    assert change == actions.Change(Outcome.DELETED, None, True)
    assert not spool.path(envelope.qid).exists()
    assert actions.delete(spool, envelope.qid) == actions.NOT_FOUND


@pytest.mark.parametrize("action", ["hold", "release", "delete"])
def test_an_unknown_message_is_not_found(spool: Spool, action: str) -> None:
    if action == "release":
        change = actions.release(spool, UNKNOWN, 0.0)
    else:
        change = getattr(actions, action)(spool, UNKNOWN)
    assert change == actions.NOT_FOUND
    assert spool.ids() == []


def test_an_unreadable_envelope_is_the_callers_error(spool: Spool) -> None:
    spool.path(UNKNOWN).write_bytes(b"not json\n" + DATA)
    with pytest.raises(ValueError):
        actions.hold(spool, UNKNOWN)
    assert spool.path(UNKNOWN).read_bytes() == b"not json\n" + DATA
