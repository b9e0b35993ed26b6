"""smtprelay.spool.recovery: rebuild the queue from whatever a crash left behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay import ids
from smtprelay.envelope import Envelope
from smtprelay.spool import Spool
from smtprelay.spool.recovery import recover
from tests.unit.helpers import make_envelope


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def _good(spool: Spool, body: bytes) -> Envelope:
    envelope = make_envelope(size=len(body))
    spool.commit(envelope, body)
    return envelope


def test_empty_spool(spool: Spool) -> None:
    result = recover(spool)
    assert result.envelopes == [] and result.removed_partial == 0 and result.quarantined == []


def test_recover_sorts_out_a_messy_spool(spool: Spool) -> None:
    q = spool.queue_dir
    good = [_good(spool, b"message %d\r\n" % i) for i in range(3)]

    # Stray temp files of writes that never finished.
    (q / (ids.new_id() + ".eml.tmp")).write_bytes(b"half a mess")
    (q / (ids.new_id() + ".json.tmp")).write_bytes(b"{")
    # Data without an envelope: never acknowledged.
    orphan = ids.new_id()
    (q / (orphan + ".eml")).write_bytes(b"data only\r\n")
    # Envelope without data.
    no_data = make_envelope(size=10)
    (q / (no_data.qid + ".json")).write_bytes(no_data.to_json())
    # Truncated data (size mismatch).
    truncated = make_envelope(size=100)
    (q / (truncated.qid + ".json")).write_bytes(truncated.to_json())
    (q / (truncated.qid + ".eml")).write_bytes(b"x" * 60)
    # Envelope that is not JSON, with its data.
    garbage = ids.new_id()
    (q / (garbage + ".json")).write_bytes(b"\x00garbage{")
    (q / (garbage + ".eml")).write_bytes(b"data\r\n")
    # Envelope file whose name is not a queue ID (e.g. copied in by hand).
    stray = make_envelope(size=4)
    (q / "notes.json").write_bytes(stray.to_json())
    # Envelope that names another message.
    other = make_envelope(size=3)
    mismatched = ids.new_id()
    (q / (mismatched + ".json")).write_bytes(other.to_json())
    (q / (mismatched + ".eml")).write_bytes(b"abc")

    result = recover(spool)

    assert sorted(e.qid for e in result.envelopes) == sorted(e.qid for e in good)
    for envelope in good:
        got = next(e for e in result.envelopes if e.qid == envelope.qid)
        assert got == envelope
    assert result.removed_partial == 3  # two temp files, one orphan data file
    bad = {no_data.qid, truncated.qid, garbage, "notes", mismatched}
    assert sorted(result.quarantined) == sorted(bad)

    expected_queue = {e.qid + suffix for e in good for suffix in (".eml", ".json")}
    assert set(os.listdir(q)) == expected_queue
    assert set(os.listdir(spool.corrupt_dir)) == {
        no_data.qid + ".json",
        truncated.qid + ".json", truncated.qid + ".eml",
        garbage + ".json", garbage + ".eml",
        "notes.json",
        mismatched + ".json", mismatched + ".eml",
    }
    # The quarantined files are moved, not rewritten.
    assert (spool.corrupt_dir / (truncated.qid + ".eml")).read_bytes() == b"x" * 60


def test_recover_is_idempotent(spool: Spool) -> None:
    good = _good(spool, b"hello\r\n")
    (spool.queue_dir / "X.tmp").write_bytes(b"")
    first = recover(spool)
    second = recover(spool)
    assert [e.qid for e in first.envelopes] == [e.qid for e in second.envelopes] == [good.qid]
    assert second.removed_partial == 0 and second.quarantined == []


def test_recover_returns_oldest_first(spool: Spool) -> None:
    made = [_good(spool, b"m\r\n") for _ in range(5)]
    assert [e.qid for e in recover(spool).envelopes] == [e.qid for e in made]


def test_unexpected_files_are_left_alone(spool: Spool) -> None:
    (spool.queue_dir / "README").write_text("operator notes")
    result = recover(spool)
    assert result.envelopes == [] and result.quarantined == []
    assert (spool.queue_dir / "README").read_text() == "operator notes"


# --- crash anywhere during commit --------------------------------------------------------


@dataclass
class CrashState:
    files: dict[str, bytes]
    # renames (src, dst) done since the last directory fsync: a power loss may undo them
    pending_renames: list[tuple[str, str]]


def _crash_states(envelope: Envelope, data: bytes) -> list[CrashState]:
    """Run the real commit in a scratch spool and record the queue directory after every
    system call it makes; writes are cut into small pieces to expose partial files."""
    states: list[CrashState] = []
    pending: list[tuple[str, str]] = []
    real = {name: getattr(os, name) for name in ("open", "write", "fsync", "rename", "close")}
    with tempfile.TemporaryDirectory() as scratch:
        spool = Spool(Path(scratch))
        queue = spool.queue_dir

        def snapshot() -> None:
            files = {}
            for name in os.listdir(queue):
                with open(queue / name, "rb") as f:
                    files[name] = f.read()
            states.append(CrashState(files, list(pending)))

        def traced(name: str) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                if name == "write":
                    fd, buf = args
                    piece = max(1, len(buf) // 3)
                    result = real["write"](fd, buf[:piece])
                else:
                    result = real[name](*args, **kwargs)
                if name == "rename":
                    pending.append((os.fspath(args[0]), os.fspath(args[1])))
                if name == "fsync" and os.path.samestat(os.fstat(args[0]), os.stat(queue)):
                    pending.clear()
                snapshot()
                return result

            return call

        snapshot()
        patches = [mock.patch.object(os, name, traced(name)) for name in real]
        for p in patches:
            p.start()
        try:
            spool.commit(envelope, data)
        finally:
            for p in patches:
                p.stop()
        spool.close()
    return states


def _apply(state: CrashState, undo: list[bool]) -> dict[str, bytes]:
    files = dict(state.files)
    for (src, dst), lost in zip(state.pending_renames, undo, strict=False):
        if lost and dst in files:
            files[src] = files.pop(dst)
    return files


@settings(max_examples=40)
@given(
    st.lists(
        st.tuples(
            st.binary(max_size=200),
            st.integers(min_value=0),  # crash point, taken modulo the number of states
            st.booleans(),  # crash at the end (commit returned) instead
            st.lists(st.booleans(), min_size=2, max_size=2),  # renames lost by power loss
        ),
        min_size=1,
        max_size=4,
    )
)
def test_crash_at_any_point_never_yields_wrong_data(
    messages: list[tuple[bytes, int, bool, list[bool]]],
) -> None:
    """Whatever point each commit reached when the machine died (including renames not
    yet made durable by the directory fsync being lost), recover() returns only
    messages whose envelope and data are exactly what was committed, and every commit
    that returned is recovered."""
    committed: dict[str, tuple[Envelope, bytes]] = {}
    must_survive: set[str] = set()
    with tempfile.TemporaryDirectory() as root:
        spool = Spool(Path(root))
        try:
            for data, point, finished, lost in messages:
                envelope = make_envelope(size=len(data))
                states = _crash_states(envelope, data)
                state = states[-1] if finished else states[point % len(states)]
                if finished:
                    assert state.pending_renames == [], "commit returned before dir fsync"
                    must_survive.add(envelope.qid)
                committed[envelope.qid] = (envelope, data)
                for name, content in _apply(state, lost).items():
                    (spool.queue_dir / name).write_bytes(content)

            result = recover(spool)

            returned = {e.qid for e in result.envelopes}
            assert must_survive <= returned
            for envelope in result.envelopes:
                original, data = committed[envelope.qid]
                assert envelope == original
                assert spool.read_message(envelope.qid) == data
            leftovers = set(os.listdir(spool.queue_dir))
            assert leftovers == {q + s for q in returned for s in (".eml", ".json")}
        finally:
            spool.close()


def test_crash_states_cover_the_whole_commit() -> None:
    envelope = make_envelope(size=9)
    states = _crash_states(envelope, b"123456789")
    assert states[0].files == {}
    assert states[-1].files == {
        envelope.qid + ".eml": b"123456789",
        envelope.qid + ".json": envelope.to_json(),
    }
    # Partial temp files were seen, so the property above exercises them.
    assert any(
        0 < len(s.files.get(envelope.qid + ".eml.tmp", b"")) < 9 for s in states
    )
