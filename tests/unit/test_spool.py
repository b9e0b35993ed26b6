"""smtprelay.safeio + smtprelay.spool.store: durable, atomic commit of message + envelope."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtprelay import safeio
from smtprelay.envelope import Envelope, QueueState
from smtprelay.spool import Spool, SpoolError
from tests.unit.helpers import make_envelope

DATA = b"Received: from x\r\nSubject: hello\r\n\r\nbody \xff bytes\r\n.\r\n"


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def _files(spool: Spool) -> set[str]:
    return set(os.listdir(spool.queue_dir))


def _commit(spool: Spool, data: bytes = DATA) -> Envelope:
    envelope = make_envelope(size=len(data))
    spool.commit(envelope, data)
    return envelope


# --- layout and round trip ---------------------------------------------------------------


def test_spool_creates_layout(tmp_path: Path) -> None:
    s = Spool(tmp_path / "a" / "b")
    try:
        assert (tmp_path / "a" / "b" / "queue").is_dir()
        assert (tmp_path / "a" / "b" / "corrupt").is_dir()
    finally:
        s.close()
    Spool(tmp_path / "a" / "b").close()  # existing directories are fine


def test_commit_writes_exact_bytes(spool: Spool) -> None:
    envelope = _commit(spool)
    qid = envelope.qid
    assert _files(spool) == {qid + ".eml", qid + ".json"}
    assert (spool.queue_dir / (qid + ".eml")).read_bytes() == DATA
    assert (spool.queue_dir / (qid + ".json")).read_bytes() == envelope.to_json()
    assert spool.read_message(qid) == DATA
    assert spool.load(qid) == envelope
    assert not any(name.endswith(safeio.TMP_SUFFIX) for name in _files(spool))


def test_commit_empty_and_large_messages(spool: Spool) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)
    for data in (b"", big):
        envelope = _commit(spool, data)
        assert spool.read_message(envelope.qid) == data


def test_files_are_not_world_readable(spool: Spool) -> None:
    envelope = _commit(spool)
    for suffix in (".eml", ".json"):
        mode = os.stat(spool.queue_dir / (envelope.qid + suffix)).st_mode
        assert mode & 0o007 == 0


def test_exclusive_commit_keeps_the_original(spool: Spool) -> None:
    original = _commit(spool)
    qid = original.qid
    eml = (spool.queue_dir / (qid + ".eml")).read_bytes()
    env = (spool.queue_dir / (qid + ".json")).read_bytes()
    intruder = make_envelope(qid, size=5, sender="other@example.com")
    with pytest.raises(SpoolError):
        spool.commit(intruder, b"other")
    assert (spool.queue_dir / (qid + ".eml")).read_bytes() == eml
    assert (spool.queue_dir / (qid + ".json")).read_bytes() == env
    assert spool.load(qid) == original
    assert _files(spool) == {qid + ".eml", qid + ".json"}


def test_safeio_exclusive_refuses_existing(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        safeio.write_file(fd, "f", b"one", exclusive=True)
        with pytest.raises(FileExistsError):
            safeio.write_file(fd, "f", b"two", exclusive=True)
        assert (tmp_path / "f").read_bytes() == b"one"
        safeio.write_file(fd, "f", b"three")  # non-exclusive replaces
        assert (tmp_path / "f").read_bytes() == b"three"
        assert sorted(os.listdir(tmp_path)) == ["f"]
    finally:
        os.close(fd)


def test_update_rewrites_envelope(spool: Spool) -> None:
    envelope = _commit(spool)
    envelope.state = QueueState.DEFERRED
    envelope.next_attempt = 1_800_000_000.0
    envelope.recipients[0].attempts = 3
    envelope.recipients[0].last_reply = "451 4.7.1 greylisted"
    spool.update(envelope)
    assert spool.load(envelope.qid) == envelope
    assert spool.read_message(envelope.qid) == DATA
    assert _files(spool) == {envelope.qid + ".eml", envelope.qid + ".json"}


def test_remove_deletes_both(spool: Spool) -> None:
    keep = _commit(spool)
    gone = _commit(spool)
    spool.remove(gone.qid)
    assert _files(spool) == {keep.qid + ".eml", keep.qid + ".json"}
    spool.remove(gone.qid)  # idempotent
    with pytest.raises(FileNotFoundError):
        spool.load(gone.qid)


def test_quarantine_moves_files(spool: Spool) -> None:
    envelope = _commit(spool)
    spool.quarantine(envelope.qid)
    assert _files(spool) == set()
    assert sorted(os.listdir(spool.corrupt_dir)) == sorted(
        [envelope.qid + ".eml", envelope.qid + ".json"]
    )


# --- failures leave nothing behind --------------------------------------------------------


def _failing_fsync(monkeypatch: pytest.MonkeyPatch, err: int, nth: int) -> None:
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == nth:
            raise OSError(err, os.strerror(err))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("nth", [1, 2, 3], ids=["data-fsync", "envelope-fsync", "dir-fsync"])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_commit_out_of_space(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, err: int, nth: int
) -> None:
    _failing_fsync(monkeypatch, err, nth)
    envelope = make_envelope(size=len(DATA))
    with pytest.raises(SpoolError) as info:
        spool.commit(envelope, DATA)
    assert info.value.no_space is True
    assert envelope.qid in str(info.value)
    assert _files(spool) == set()


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_commit_generic_os_error(spool: Spool, monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    _failing_fsync(monkeypatch, errno.EIO, nth)
    with pytest.raises(SpoolError) as info:
        spool.commit(make_envelope(size=len(DATA)), DATA)
    assert info.value.no_space is False
    assert _files(spool) == set()


def test_commit_write_error(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    def write(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(SpoolError) as info:
        spool.commit(make_envelope(size=len(DATA)), DATA)
    assert info.value.no_space
    assert _files(spool) == set()


def test_commit_rename_error(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.rename
    calls = {"n": 0}

    def rename(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:  # the envelope's rename (the data file is linked into place)
            raise OSError(errno.EIO, "I/O error")
        real(*args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(SpoolError):
        spool.commit(make_envelope(size=len(DATA)), DATA)
    assert _files(spool) == set()


def test_failed_commit_does_not_block_a_later_one(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_fsync(monkeypatch, errno.ENOSPC, 1)
    envelope = make_envelope(size=len(DATA))
    with pytest.raises(SpoolError):
        spool.commit(envelope, DATA)
    monkeypatch.undo()
    spool.commit(envelope, DATA)  # the client retried after the 452
    assert spool.read_message(envelope.qid) == DATA


# --- durability order ---------------------------------------------------------------------


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
def test_commit_fsync_rename_order(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Promise 1: data fsync -> link into place (exclusive) -> envelope fsync -> rename ->
    directory fsync, all before commit returns; and each fsync covers the complete file."""
    events: list[tuple[str, str, int]] = []
    real_fsync, real_rename, real_link = os.fsync, os.rename, os.link
    queue = str(spool.queue_dir)

    def fsync(fd: int) -> None:
        path = _fd_path(fd)
        size = os.fstat(fd).st_size
        real_fsync(fd)
        events.append(("fsync", os.path.relpath(path, queue), size))

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        real_rename(src, dst, *args, **kwargs)
        events.append(("rename", f"{src}->{dst}", 0))

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        real_link(src, dst, *args, **kwargs)
        events.append(("link", f"{src}->{dst}", 0))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "link", link)
    envelope = make_envelope(size=len(DATA))
    qid = envelope.qid
    spool.commit(envelope, DATA)
    done = list(events)
    monkeypatch.undo()

    dir_size = os.stat(queue).st_size
    assert done == [
        ("fsync", f"{qid}.eml.tmp", len(DATA)),
        ("link", f"{qid}.eml.tmp->{qid}.eml", 0),
        ("fsync", f"{qid}.json.tmp", len(envelope.to_json())),
        ("rename", f"{qid}.json.tmp->{qid}.json", 0),
        ("fsync", ".", dir_size),
    ]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
@pytest.mark.parametrize("operation", ["update", "remove"])
def test_update_and_remove_end_with_directory_fsync(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    envelope = _commit(spool)
    events: list[str] = []
    real_fsync, real_unlink = os.fsync, os.unlink

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append("fsync " + os.path.basename(_fd_path(fd)))

    def unlink(name: Any, *args: Any, **kwargs: Any) -> None:
        real_unlink(name, *args, **kwargs)
        events.append(f"unlink {os.path.basename(name)}")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    if operation == "update":
        spool.update(envelope)
        assert events == [f"fsync {envelope.qid}.json.tmp", "fsync queue"]
    else:
        spool.remove(envelope.qid)
        # The envelope (the commit marker) goes first, so a crash never leaves an
        # envelope without its data.
        assert events == [f"unlink {envelope.qid}.json", f"unlink {envelope.qid}.eml",
                          "fsync queue"]
