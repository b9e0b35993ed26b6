"""smtprelay.spool.recovery: rebuild the queue from whatever a crash left behind."""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay import ids
from smtprelay.envelope import Envelope, QueueState
from smtprelay.spool import Spool
from smtprelay.spool.recovery import recover
from tests.unit.helpers import make_envelope


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def _record(envelope: Envelope, data: bytes) -> bytes:
    return envelope.to_json() + b"\n" + data


def _good(spool: Spool, body: bytes) -> Envelope:
    envelope = make_envelope(size=len(body))
    spool.commit(envelope, body)
    return envelope


def test_empty_spool(spool: Spool) -> None:
    result = recover(spool)
    assert result.envelopes == [] and result.removed_partial == 0 and result.quarantined == []


def test_recover_sorts_out_a_messy_spool(spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    q = spool.queue_dir
    good = [_good(spool, b"message %d\r\n" % i) for i in range(3)]
    good_files = {e.qid + ".msg": (q / (e.qid + ".msg")).read_bytes() for e in good}

    # Stray temp files of writes that never finished.
    partial = make_envelope(size=10)
    (q / (partial.qid + ".msg.tmp")).write_bytes(_record(partial, b"half")[:-2])
    (q / (ids.new_id() + ".msg.tmp")).write_bytes(b"")
    # A complete temp file beside its linked twin (crash between link and unlink).
    twin = _good(spool, b"twin\r\n")
    good.append(twin)
    twin_raw = (q / (twin.qid + ".msg")).read_bytes()
    good_files[twin.qid + ".msg"] = twin_raw
    (q / (twin.qid + ".msg.tmp")).write_bytes(twin_raw)

    bad: dict[str, bytes] = {}  # file name -> content, all to be quarantined
    # First line is not JSON.
    bad[ids.new_id() + ".msg"] = b"\x00garbage{\n" + b"data\r\n"
    # No newline at all: an envelope cut short.
    cut = make_envelope(size=4)
    bad[cut.qid + ".msg"] = cut.to_json()[:40]
    # Empty file.
    bad[ids.new_id() + ".msg"] = b""
    # JSON, but not an envelope.
    bad[ids.new_id() + ".msg"] = b'{"qid": 1}\n' + b"data"
    # Truncated data (size mismatch).
    truncated = make_envelope(size=100)
    bad[truncated.qid + ".msg"] = _record(truncated, b"x" * 60)
    # Too much data (size mismatch the other way).
    longer = make_envelope(size=3)
    bad[longer.qid + ".msg"] = _record(longer, b"abcd")
    # Data that starts on the first line: the envelope line is not followed by "\n".
    glued = make_envelope(size=4)
    bad[glued.qid + ".msg"] = glued.to_json() + b"abcd"
    # Files whose name is not a queue ID (e.g. copied in by hand), content that names
    # the file otherwise fine.
    bad["notes.msg"] = _record(make_envelope("notes", size=4), b"abcd")
    lower = ids.new_id().lower()
    bad[lower + ".msg"] = _record(make_envelope(lower, size=4), b"abcd")
    # Envelope that names another message.
    other = make_envelope(size=3)
    mismatched = ids.new_id()
    bad[mismatched + ".msg"] = _record(other, b"abc")
    for name, content in bad.items():
        (q / name).write_bytes(content)

    with caplog.at_level(logging.WARNING, logger="smtprelay.spool"):
        result = recover(spool)

    assert sorted(result.envelopes, key=lambda e: e.qid) == sorted(good, key=lambda e: e.qid)
    assert result.removed_partial == 3
    assert sorted(result.quarantined) == sorted(n.removesuffix(".msg") for n in bad)

    # Good messages untouched, temp files gone, bad files moved byte-for-byte.
    assert {p.name: p.read_bytes() for p in q.iterdir()} == good_files
    assert {p.name: p.read_bytes() for p in spool.corrupt_dir.iterdir()} == bad
    assert "notes: spool file quarantined to corrupt/: file name is not" in caplog.text
    assert f"{truncated.qid}: spool file quarantined to corrupt/: message data is" in caplog.text
    assert f"{mismatched}: spool file quarantined to corrupt/: envelope names" in caplog.text


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
@pytest.mark.parametrize("leftovers", ["tmp", "junk", "both"])
def test_recover_makes_its_removals_durable(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, leftovers: str
) -> None:
    """Every temp file removed and every file moved out of queue/ is followed by an
    fsync of queue/ before recover() returns."""
    _good(spool, b"hello\r\n")
    tmp, junk = leftovers in ("tmp", "both"), leftovers in ("junk", "both")
    if tmp:
        (spool.queue_dir / (ids.new_id() + ".msg.tmp")).write_bytes(b"half")
    if junk:
        (spool.queue_dir / (ids.new_id() + ".msg")).write_bytes(b"junk")
    events: list[str] = []
    real_fsync, real_unlink, real_rename = os.fsync, os.unlink, os.rename

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append("fsync " + os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))

    def unlink(*args: Any, **kwargs: Any) -> None:
        real_unlink(*args, **kwargs)
        events.append("unlink")

    def rename(*args: Any, **kwargs: Any) -> None:
        real_rename(*args, **kwargs)
        events.append("rename")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "rename", rename)
    result = recover(spool)
    monkeypatch.undo()
    assert result.removed_partial == int(tmp) and len(result.quarantined) == int(junk)
    assert events.count("unlink") == int(tmp) and events.count("rename") == int(junk)
    last_change = max(i for i, e in enumerate(events) if e in ("unlink", "rename"))
    assert "fsync queue" in events[last_change + 1 :]


def test_recover_returns_envelopes_exactly(spool: Spool) -> None:
    envelope = make_envelope(size=6, sender="j\u00f6rg@example.com")
    envelope.state = QueueState.DEFERRED
    envelope.recipients[1].last_reply = "451-a\n451 b"
    spool.commit(envelope, b"hello\n")
    (result,) = recover(spool).envelopes
    assert result == envelope
    assert spool.read_message(envelope.qid) == b"hello\n"


def test_recover_is_idempotent(spool: Spool) -> None:
    good = _good(spool, b"hello\r\n")
    (spool.queue_dir / "X.tmp").write_bytes(b"")
    (spool.queue_dir / (ids.new_id() + ".msg")).write_bytes(b"junk")
    first = recover(spool)
    assert first.removed_partial == 1 and len(first.quarantined) == 1
    second = recover(spool)
    assert [e.qid for e in first.envelopes] == [e.qid for e in second.envelopes] == [good.qid]
    assert second.removed_partial == 0 and second.quarantined == []


def test_recover_returns_oldest_first(spool: Spool) -> None:
    made = [make_envelope(size=3) for _ in range(5)]
    for envelope in reversed(made):  # creation order must not matter
        spool.commit(envelope, b"m\r\n")
    assert [e.qid for e in recover(spool).envelopes] == [e.qid for e in made]


def test_recover_hands_each_envelope_on_as_it_reads_it(spool: Spool) -> None:
    """With ``keep`` nothing is collected: a huge queue is never all in memory at once."""
    made = [make_envelope(size=3) for _ in range(3)]
    for envelope in made:
        spool.commit(envelope, b"m\r\n")
    (spool.queue_dir / (ids.new_id() + ".msg")).write_bytes(b"junk")
    kept: list[Envelope] = []
    result = recover(spool, kept.append)
    assert [e.qid for e in kept] == [e.qid for e in made]
    assert result.envelopes == [] and result.count == 3 and len(result.quarantined) == 1


def test_unexpected_files_are_left_alone(spool: Spool) -> None:
    good = _good(spool, b"hi\r\n")
    q = spool.queue_dir
    (q / "README").write_text("operator notes")
    # Files of the old two-file format are neither queued nor destroyed.
    old = make_envelope(size=3)
    (q / (old.qid + ".json")).write_bytes(old.to_json())
    (q / (old.qid + ".eml")).write_bytes(b"abc")
    (q / "subdir").mkdir()
    before = {p.name: p.read_bytes() for p in q.iterdir() if p.is_file()}
    result = recover(spool)
    assert [e.qid for e in result.envelopes] == [good.qid]
    assert result.quarantined == [] and result.removed_partial == 0
    assert {p.name: p.read_bytes() for p in q.iterdir() if p.is_file()} == before
    assert (q / "subdir").is_dir()
    assert os.listdir(spool.corrupt_dir) == []


# --- crash anywhere during commit (and the updates after it) ----------------------------
#
# The model: a process crash keeps every name and every byte written so far. A power
# loss also keeps the directory as of its last fsync plus any subset of the directory
# operations (create, link, rename, unlink) made after it, and of each file only what
# its last fsync covered plus any prefix of what was written to it afterwards.


@dataclass(frozen=True)
class DirOp:
    """One directory operation: create/link/rename give ``name`` the inode ``inode``
    (rename also takes away ``source``); unlink takes ``name`` away."""

    kind: str
    name: str
    inode: int = 0
    source: str = ""


@dataclass
class CrashState:
    names: dict[str, int]  # name -> inode, now
    contents: dict[int, bytes]  # inode -> bytes, now (also inodes no longer named)
    durable_names: dict[str, int]  # name -> inode as of the last directory fsync
    durable_contents: dict[int, bytes]  # inode -> bytes as of its last fsync
    # directory operations since the last directory fsync: a power loss may undo them
    pending: list[DirOp] = field(default_factory=list)


def _trace(
    steps: list[Callable[[Spool], None]],
) -> tuple[list[CrashState], list[int]]:
    """Run ``steps`` on a scratch spool, recording the queue directory before the first
    and after every system call; writes are cut into small pieces to expose partial
    files. Returns the states and, for each step, the index of the state it returned in.
    """
    states: list[CrashState] = []
    returned: list[int] = []
    traced_names = ("open", "write", "fsync", "link", "rename", "unlink", "close")
    real = {name: getattr(os, name) for name in traced_names}
    with tempfile.TemporaryDirectory() as scratch:
        spool = Spool(Path(scratch))
        queue = spool.queue_dir
        names: dict[str, int] = {}
        contents: dict[int, bytes] = {}
        durable_names: dict[str, int] = {}
        durable_contents: dict[int, bytes] = {}
        pending: list[DirOp] = []

        def look() -> None:
            names.clear()
            for name in os.listdir(queue):
                inode = os.stat(queue / name).st_ino
                names[name] = inode
                with open(queue / name, "rb") as f:
                    contents[inode] = f.read()

        def snapshot() -> None:
            states.append(
                CrashState(
                    dict(names),
                    dict(contents),
                    dict(durable_names),
                    dict(durable_contents),
                    list(pending),
                )
            )

        def traced(name: str) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                before = dict(names)
                if name == "write":
                    fd, buf = args
                    piece = max(1, len(buf) // 3)
                    result = real["write"](fd, buf[:piece])
                else:
                    result = real[name](*args, **kwargs)
                look()
                if name == "open" and args[1] & os.O_TMPFILE == os.O_TMPFILE:
                    # An unnamed file: no directory operation until it is linked.
                    inode = os.fstat(result).st_ino
                    assert inode not in durable_names.values()
                    assert all(inode != op.inode for op in pending)
                    durable_contents.pop(inode, None)
                elif name == "open" and args[1] & os.O_CREAT:
                    created = os.path.basename(args[0])
                    if created not in before:
                        inode = names[created]
                        # A reused inode must be one the model no longer refers to.
                        assert inode not in durable_names.values()
                        assert all(inode != op.inode for op in pending)
                        durable_contents.pop(inode, None)
                        pending.append(DirOp("create", created, inode))
                elif name == "link":
                    dst = os.path.basename(args[1])
                    pending.append(DirOp("link", dst, names[dst]))
                elif name == "rename":
                    src, dst = (os.path.basename(a) for a in args[:2])
                    pending.append(DirOp("rename", dst, names[dst], source=src))
                elif name == "unlink":
                    pending.append(DirOp("unlink", os.path.basename(args[0])))
                elif name == "fsync":
                    st = os.fstat(args[0])
                    if os.path.samestat(st, os.stat(queue)):
                        durable_names.clear()
                        durable_names.update(names)
                        pending.clear()
                    else:
                        durable_contents[st.st_ino] = contents[st.st_ino]
                snapshot()
                return result

            return call

        snapshot()
        patches = [mock.patch.object(os, name, traced(name)) for name in real]
        for p in patches:
            p.start()
        try:
            for step in steps:
                step(spool)
                returned.append(len(states) - 1)
        finally:
            for p in patches:
                p.stop()
        spool.close()
    return states, returned


def _after_crash(
    state: CrashState, power_loss: bool, kept: list[bool], cut: int
) -> dict[str, bytes]:
    """What the queue directory holds after a crash in ``state``."""
    if not power_loss:
        return {name: state.contents[inode] for name, inode in state.names.items()}
    names = dict(state.durable_names)
    for op, keep in zip(
        state.pending, itertools.chain(kept, itertools.repeat(False)), strict=False
    ):
        if not keep:
            continue
        if op.kind == "unlink":
            names.pop(op.name, None)
        else:
            if op.kind == "rename":
                names.pop(op.source, None)
            names[op.name] = op.inode
    files = {}
    for name, inode in names.items():
        now = state.contents[inode]
        durable = state.durable_contents.get(inode, b"")
        assert now.startswith(durable)  # files are only ever appended to, then renamed
        files[name] = now[: len(durable) + cut % (len(now) - len(durable) + 1)]
    return files


def _later(envelope: Envelope, n: int) -> Envelope:
    """The envelope as the n-th update after its commit rewrites it."""
    later = Envelope.from_json(envelope.to_json())
    later.state = QueueState.DEFERRED
    later.attempts = n
    later.next_attempt = 1_800_000_000.0 + n
    later.recipients[0].attempts = n
    later.recipients[0].last_reply = f"451-4.7.1 greylisted\n451 4.7.1 attempt {n}"
    return later


def _sequence(
    envelope: Envelope, data: bytes, updates: int, pass_data: bool
) -> tuple[list[Callable[[Spool], None]], list[Envelope]]:
    """commit, then ``updates`` updates; and the envelope each step leaves on disk."""
    versions = [envelope] + [_later(envelope, n) for n in range(1, updates + 1)]

    def update(version: Envelope) -> Callable[[Spool], None]:
        return lambda s: s.update(version, data if pass_data else None)

    steps: list[Callable[[Spool], None]] = [lambda s: s.commit(envelope, data)]
    steps += [update(version) for version in versions[1:]]
    return steps, versions


def _check_recovered(
    spool: Spool,
    committed: dict[str, tuple[list[Envelope], bytes]],
    must_be: dict[str, set[int]],
) -> None:
    """recover() returns only messages with exactly the committed data and an envelope
    some step wrote, every message in ``must_be`` with one of the versions listed there,
    and leaves nothing else in queue/."""
    result = recover(spool)
    returned = {e.qid: e for e in result.envelopes}
    assert len(returned) == len(result.envelopes)
    assert set(must_be) <= set(returned)
    for qid, envelope in returned.items():
        versions, data = committed[qid]
        assert envelope in versions
        assert spool.read_message(qid) == data
        if qid in must_be:
            assert versions.index(envelope) in must_be[qid]
    assert set(os.listdir(spool.queue_dir)) == {q + ".msg" for q in returned}
    assert set(result.quarantined).isdisjoint(must_be)


def _must_be(returned: list[int], point: int) -> set[int] | None:
    """Which versions may be on disk after a crash at ``point``: None before the commit
    returned; else the version of the last step that returned, or of the one after it
    (which may have been made durable before the crash)."""
    done = [i for i, at in enumerate(returned) if at <= point]
    if not done:
        return None
    return {done[-1], done[-1] + 1}


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.binary(max_size=200),
            st.integers(min_value=0, max_value=2),  # updates after the commit
            st.booleans(),  # updates get the data (else re-read it)
            st.integers(min_value=0),  # crash point, taken modulo the number of states
            st.booleans(),  # crash at the end (every step returned) instead
            st.booleans(),  # power loss (else a process crash)
            st.lists(st.booleans(), min_size=6, max_size=6),  # directory ops kept
            st.integers(min_value=0),  # how much unsynced data a power loss keeps
        ),
        min_size=1,
        max_size=4,
    )
)
def test_crash_at_any_point_never_yields_wrong_data(
    messages: list[tuple[bytes, int, bool, int, bool, bool, list[bool], int]],
) -> None:
    """Whatever point each commit (and the updates after it) reached when the machine
    died -- including directory operations and file data not yet made durable by an
    fsync being lost -- recover() returns only messages whose envelope and data are
    exactly what was written, and every message whose commit returned."""
    committed: dict[str, tuple[list[Envelope], bytes]] = {}
    must_be: dict[str, set[int]] = {}
    with tempfile.TemporaryDirectory() as root:
        spool = Spool(Path(root))
        try:
            for data, updates, pass_data, point, finished, power, kept, cut in messages:
                envelope = make_envelope(size=len(data))
                steps, versions = _sequence(envelope, data, updates, pass_data)
                states, returned = _trace(steps)
                at = len(states) - 1 if finished else point % len(states)
                state = states[at]
                if at == len(states) - 1:
                    assert state.pending == [], "returned before the directory fsync"
                allowed = _must_be(returned, at)
                if allowed is not None:
                    must_be[envelope.qid] = allowed
                committed[envelope.qid] = (versions, data)
                for name, content in _after_crash(state, power, kept, cut).items():
                    (spool.queue_dir / name).write_bytes(content)
            _check_recovered(spool, committed, must_be)
        finally:
            spool.close()


@pytest.mark.parametrize("updates", [0, 1])
@pytest.mark.parametrize("pass_data", [False, True], ids=["reread", "data-given"])
def test_crash_at_every_point_exhaustively(updates: int, pass_data: bool) -> None:
    """The same property for one message, over every crash point, every subset of the
    pending directory operations and three amounts of unsynced data kept."""
    data = b"Subject: x\r\n\r\nline\r\n"
    envelope = make_envelope(size=len(data))
    steps, versions = _sequence(envelope, data, updates, pass_data)
    states, returned = _trace(steps)
    seen: set[tuple[object, ...]] = set()
    for at, state in enumerate(states):
        must = _must_be(returned, at)
        allowed = None if must is None else frozenset(must)
        outcomes = [_after_crash(state, False, [], 0)]
        for kept in itertools.product([False, True], repeat=len(state.pending)):
            for cut in (0, 1, 10**9):
                outcomes.append(_after_crash(state, True, list(kept), cut))
        for files in outcomes:
            key = (allowed, *sorted(files.items()))  # same files, other expectations
            if key in seen:
                continue
            seen.add(key)
            with tempfile.TemporaryDirectory() as root:
                spool = Spool(Path(root))
                try:
                    for name, content in files.items():
                        (spool.queue_dir / name).write_bytes(content)
                    _check_recovered(
                        spool,
                        {envelope.qid: (versions, data)},
                        {} if allowed is None else {envelope.qid: set(allowed)},
                    )
                finally:
                    spool.close()


def test_crash_states_cover_the_whole_sequence() -> None:
    envelope = make_envelope(size=9)
    data = b"123456789"
    steps, versions = _sequence(envelope, data, 1, True)
    states, returned = _trace(steps)
    msg, tmp = envelope.qid + ".msg", envelope.qid + ".msg.tmp"

    def files(state: CrashState) -> dict[str, bytes]:
        return _after_crash(state, False, [], 0)

    assert files(states[0]) == {}
    assert files(states[returned[0]]) == {msg: _record(envelope, data)}
    assert files(states[-1]) == {msg: _record(versions[1], data)}
    assert states[returned[0]].pending == [] and states[-1].pending == []
    # Partial temp files (of the update) were seen, so the properties above exercise them
    assert any(0 < len(files(s).get(tmp, b"")) < len(_record(versions[1], data)) for s in states)
    # ... and the moment the new message is linked in, complete, before any fsync ...
    assert any(
        files(s) == {msg: _record(envelope, data)} and s.durable_contents == {}
        for s in states[: returned[0]]
    )
    # ... and power losses that undo the link of the new file, and the rename of an update.
    kinds = {op.kind for s in states for op in s.pending}
    assert kinds == {"link", "create", "rename"}
    assert all(len(s.pending) <= 6 for s in states)
    # Unsynced data is modelled: before the file fsync nothing of the new file is durable.
    assert any(s.durable_contents == {} and len(files(s).get(msg, b"")) > 0 for s in states)


def test_an_envelope_longer_than_the_first_read_is_recovered(spool: Spool) -> None:
    from smtprelay.envelope import Recipient
    from smtprelay.spool.store import HEAD_CHUNK

    many = make_envelope(size=4, recipients=[Recipient(f"r{n}@example.net") for n in range(300)])
    assert len(many.to_json()) > 2 * HEAD_CHUNK
    spool.commit(many, b"ab\r\n")
    cut = make_envelope(size=4, recipients=[Recipient(f"r{n}@example.net") for n in range(300)])
    (spool.queue_dir / (cut.qid + ".msg")).write_bytes(cut.to_json()[: 2 * HEAD_CHUNK + 7])
    result = recover(spool)
    assert [e.qid for e in result.envelopes] == [many.qid]
    assert len(result.envelopes[0].recipients) == 300
    assert result.quarantined == [cut.qid]
