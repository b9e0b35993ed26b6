"""smtprelay.safeio + smtprelay.spool.store: durable, atomic commit of one queue file.

A queue file ``queue/QID.msg`` is the envelope as one line of JSON, ``\\n``, then the
message bytes exactly as accepted.
"""

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


def _record(envelope: Envelope, data: bytes) -> bytes:
    """What the queue file must hold, spelled out independently of the store."""
    return envelope.to_json() + b"\n" + data


def _raw(spool: Spool, qid: str) -> bytes:
    return (spool.queue_dir / (qid + ".msg")).read_bytes()


def _deferred(envelope: Envelope) -> None:
    """Change an envelope the way a failed attempt does (and make its JSON longer)."""
    envelope.state = QueueState.DEFERRED
    envelope.next_attempt = 1_800_000_000.0
    envelope.attempts += 1
    envelope.recipients[0].attempts = 3
    envelope.recipients[0].last_reply = "451-4.7.1 greylisted\r\n451 4.7.1 try again later"


# --- layout and round trip ---------------------------------------------------------------


def test_spool_creates_layout(tmp_path: Path) -> None:
    s = Spool(tmp_path / "a" / "b")
    try:
        assert (tmp_path / "a" / "b" / "queue").is_dir()
        assert (tmp_path / "a" / "b" / "corrupt").is_dir()
    finally:
        s.close()
    Spool(tmp_path / "a" / "b").close()  # existing directories are fine


def test_commit_writes_one_file_envelope_line_then_data(spool: Spool) -> None:
    envelope = _commit(spool)
    qid = envelope.qid
    assert _files(spool) == {qid + ".msg"}
    raw = _raw(spool, qid)
    assert raw == _record(envelope, DATA)
    header, data = raw.split(b"\n", 1)
    assert header == envelope.to_json()
    assert data == DATA
    assert spool.path(qid) == spool.queue_dir / (qid + ".msg")
    assert spool.read_message(qid) == DATA
    assert spool.load(qid) == envelope
    assert spool.read_both(qid) == (envelope, len(DATA))


def test_create_encoded_writes_what_create_writes(spool: Spool) -> None:
    # The envelope encoded elsewhere (an HTTP prepare worker): the same file.
    envelope = make_envelope(size=len(DATA))
    spool.create_encoded(envelope.qid, envelope.to_json(), DATA).sync()
    assert _raw(spool, envelope.qid) == _record(envelope, DATA)
    assert spool.load(envelope.qid) == envelope
    assert spool.read_message(envelope.qid) == DATA
    with pytest.raises(SpoolError, match="already in use"):
        spool.create_encoded(envelope.qid, envelope.to_json(), b"other")
    assert _raw(spool, envelope.qid) == _record(envelope, DATA)


def test_envelope_line_survives_newlines_in_fields(spool: Spool) -> None:
    """Text fields may hold CR, LF and other separators; the first line stays the whole
    envelope and the data starts right after it."""
    envelope = make_envelope(
        size=len(DATA),
        sender="j\u00f6rg@example.com",
        message_id="<a\nb\r\u2028\u0085@example.com>",
    )
    envelope.recipients[0].last_reply = "550-5.1.1 no such user\n550 5.1.1 really\n"
    spool.commit(envelope, DATA)
    raw = _raw(spool, envelope.qid)
    assert raw.count(b"\n") == DATA.count(b"\n") + 1
    assert raw.split(b"\n", 1) == [envelope.to_json(), DATA]
    assert spool.load(envelope.qid) == envelope
    assert spool.read_message(envelope.qid) == DATA
    assert spool.read_both(envelope.qid) == (envelope, len(DATA))


@pytest.mark.parametrize(
    "data",
    [b"", b"\n", b"\n\n", b"\r\n.\r\n", b"{}\n", b"no final newline", None],
    ids=["empty", "lf", "two-lf", "dot", "json-like", "no-eol", "3MiB"],
)
def test_commit_any_data_round_trips(spool: Spool, data: bytes | None) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17) if data is None else data
    envelope = _commit(spool, data)
    assert _raw(spool, envelope.qid) == _record(envelope, data)
    assert spool.read_message(envelope.qid) == data
    assert spool.read_both(envelope.qid) == (envelope, len(data))
    assert spool.load(envelope.qid) == envelope


def test_read_both_reports_the_size_on_disk(spool: Spool) -> None:
    """read_both measures the data in the file, not what the envelope claims."""
    envelope = _commit(spool)
    path = spool.path(envelope.qid)
    path.write_bytes(_raw(spool, envelope.qid)[:-7])
    assert spool.read_both(envelope.qid) == (envelope, len(DATA) - 7)
    path.write_bytes(_raw(spool, envelope.qid) + b"extra")
    assert spool.read_both(envelope.qid) == (envelope, len(DATA) - 7 + 5)


def test_load_rejects_a_bad_envelope_line(spool: Spool) -> None:
    envelope = _commit(spool)
    spool.path(envelope.qid).write_bytes(b"\x00garbage{\n" + DATA)
    with pytest.raises(ValueError):
        spool.load(envelope.qid)
    with pytest.raises(ValueError):
        spool.read_both(envelope.qid)


def test_files_are_not_world_readable(spool: Spool) -> None:
    envelope = _commit(spool)
    mode = os.stat(spool.path(envelope.qid)).st_mode
    assert mode & 0o007 == 0
    _deferred(envelope)
    spool.update(envelope)  # the rewritten file too
    mode = os.stat(spool.path(envelope.qid)).st_mode
    assert mode & 0o007 == 0


def test_exclusive_commit_keeps_the_original(spool: Spool) -> None:
    original = _commit(spool)
    qid = original.qid
    raw = _raw(spool, qid)
    inode = os.stat(spool.path(qid)).st_ino
    intruder = make_envelope(qid, size=5, sender="other@example.com")
    with pytest.raises(SpoolError) as info:
        spool.commit(intruder, b"other")
    assert qid in str(info.value)
    assert info.value.no_space is False
    assert _raw(spool, qid) == raw
    assert os.stat(spool.path(qid)).st_ino == inode
    assert spool.load(qid) == original
    assert spool.read_message(qid) == DATA
    assert _files(spool) == {qid + ".msg"}


def test_safeio_create_file_refuses_existing(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(safeio.create_file(fd, "f", b"one"))
        with pytest.raises(FileExistsError):
            safeio.create_file(fd, "f", b"two")
        assert (tmp_path / "f").read_bytes() == b"one"
        safeio.write_file(fd, "f", b"three")  # write_file replaces
        assert (tmp_path / "f").read_bytes() == b"three"
        assert sorted(os.listdir(tmp_path)) == ["f"]
    finally:
        os.close(fd)


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "temp-name"])
def test_safeio_create_file_is_complete_when_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmpfile: bool
) -> None:
    """The name appears only once all bytes are written, with or without O_TMPFILE
    (some filesystems lack it: EOPNOTSUPP), and no temp name is left behind."""
    real_open, real_link = os.open, os.link
    seen: list[int] = []

    def no_tmpfile(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "not supported")
        return real_open(path, flags, *args, **kwargs)

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        real_link(src, dst, *args, **kwargs)
        seen.append((tmp_path / dst).stat().st_size)

    if not tmpfile:
        monkeypatch.setattr(os, "open", no_tmpfile)
    monkeypatch.setattr(os, "link", link)
    data = os.urandom(300_000)
    dir_fd = real_open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(safeio.create_file(dir_fd, "f", data))
    finally:
        os.close(dir_fd)
    assert seen == [len(data)]
    assert (tmp_path / "f").read_bytes() == data
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize("pass_data", [False, True], ids=["reread", "data-given"])
def test_update_rewrites_envelope_keeps_data(spool: Spool, pass_data: bool) -> None:
    envelope = _commit(spool)
    before = envelope.to_json()
    _deferred(envelope)
    assert len(envelope.to_json()) != len(before)  # the data must not shift with it
    if pass_data:
        spool.update(envelope, DATA)
    else:
        spool.update(envelope)
    assert _raw(spool, envelope.qid) == _record(envelope, DATA)
    assert spool.load(envelope.qid) == envelope
    assert spool.read_message(envelope.qid) == DATA
    assert spool.read_both(envelope.qid) == (envelope, len(DATA))
    assert _files(spool) == {envelope.qid + ".msg"}

    # A second update (shorter envelope this time) still keeps the data exactly.
    envelope.recipients[0].last_reply = None
    envelope.state = QueueState.ACTIVE
    spool.update(envelope, DATA if pass_data else None)
    assert _raw(spool, envelope.qid) == _record(envelope, DATA)
    assert _files(spool) == {envelope.qid + ".msg"}


def test_update_replaces_the_file_atomically(spool: Spool) -> None:
    """update renames a new file into place: a reader that opened the old file keeps
    reading the complete old record, and never sees a mix."""
    envelope = _commit(spool)
    old = _raw(spool, envelope.qid)
    with open(spool.path(envelope.qid), "rb") as reader:
        _deferred(envelope)
        spool.update(envelope)
        assert reader.read() == old
    assert _raw(spool, envelope.qid) == _record(envelope, DATA)


def test_remove_deletes_the_file(spool: Spool) -> None:
    keep = _commit(spool)
    gone = _commit(spool)
    spool.remove(gone.qid)
    assert _files(spool) == {keep.qid + ".msg"}
    assert _raw(spool, keep.qid) == _record(keep, DATA)
    spool.remove(gone.qid)  # idempotent
    with pytest.raises(FileNotFoundError):
        spool.load(gone.qid)
    with pytest.raises(FileNotFoundError):
        spool.read_message(gone.qid)


def test_quarantine_moves_the_file(spool: Spool) -> None:
    envelope = _commit(spool)
    keep = _commit(spool)
    raw = _raw(spool, envelope.qid)
    spool.quarantine(envelope.qid + ".msg")
    assert _files(spool) == {keep.qid + ".msg"}
    assert os.listdir(spool.corrupt_dir) == [envelope.qid + ".msg"]
    assert (spool.corrupt_dir / (envelope.qid + ".msg")).read_bytes() == raw
    spool.quarantine(envelope.qid + ".msg")  # already gone: no error
    assert os.listdir(spool.corrupt_dir) == [envelope.qid + ".msg"]


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


# A commit makes two fsyncs: the new file (envelope + data), then the queue directory.
FSYNCS = pytest.mark.parametrize("nth", [1, 2], ids=["file-fsync", "dir-fsync"])


@FSYNCS
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


@FSYNCS
def test_commit_generic_os_error(spool: Spool, monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    _failing_fsync(monkeypatch, errno.EIO, nth)
    with pytest.raises(SpoolError) as info:
        spool.commit(make_envelope(size=len(DATA)), DATA)
    assert info.value.no_space is False
    assert _files(spool) == set()


@pytest.mark.parametrize(("err", "no_space"), [(errno.ENOSPC, True), (errno.EIO, False)])
def test_commit_write_error(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, err: int, no_space: bool
) -> None:
    real = os.write
    calls = {"n": 0}

    def write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # part of the file is already written
            raise OSError(err, os.strerror(err))
        return real(fd, bytes(data)[:10])

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(SpoolError) as info:
        spool.commit(make_envelope(size=len(DATA)), DATA)
    assert calls["n"] == 2
    assert info.value.no_space is no_space
    assert _files(spool) == set()


@pytest.mark.parametrize(("err", "no_space"), [(errno.ENOSPC, True), (errno.EIO, False)])
def test_commit_create_error(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, err: int, no_space: bool
) -> None:
    """No room for another directory entry or inode: refused before anything exists."""
    real = os.open

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(err, os.strerror(err))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    envelope = make_envelope(size=len(DATA))
    with pytest.raises(SpoolError) as info:
        spool.commit(envelope, DATA)
    assert info.value.no_space is no_space
    assert envelope.qid in str(info.value)
    assert _files(spool) == set()


@pytest.mark.parametrize(("err", "no_space"), [(errno.ENOSPC, True), (errno.EIO, False)])
def test_commit_link_error(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, err: int, no_space: bool
) -> None:
    def link(*args: Any, **kwargs: Any) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(SpoolError) as info:
        spool.commit(make_envelope(size=len(DATA)), DATA)
    assert info.value.no_space is no_space
    assert _files(spool) == set()


def test_failed_directory_fsync_takes_the_message_back(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file was already linked into place when the directory fsync failed: the
    client is not told "queued", so the file must not stay to be delivered anyway."""
    seen: list[set[str]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.path.samestat(os.fstat(fd), os.stat(spool.queue_dir)):
            seen.append(_files(spool))
            raise OSError(errno.EIO, "I/O error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    envelope = make_envelope(size=len(DATA))
    with pytest.raises(SpoolError) as info:
        spool.commit(envelope, DATA)
    assert info.value.no_space is False
    assert seen and seen[0] >= {envelope.qid + ".msg"}  # it was in place when the fsync ran
    assert _files(spool) == set()
    monkeypatch.undo()
    spool.commit(envelope, DATA)  # and the same queue ID can be used again
    assert _raw(spool, envelope.qid) == _record(envelope, DATA)


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
    assert _files(spool) == {envelope.qid + ".msg"}


@pytest.mark.parametrize("failing", ["fsync", "rename"])
def test_failed_update_keeps_the_old_file(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    envelope = _commit(spool)
    old = _raw(spool, envelope.qid)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    _deferred(envelope)
    with pytest.raises(OSError):
        spool.update(envelope)
    monkeypatch.undo()
    assert _raw(spool, envelope.qid) == old
    assert _files(spool) == {envelope.qid + ".msg"}


# --- durability order ---------------------------------------------------------------------


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
def test_commit_link_fsync_order(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Promise 1: the complete file (envelope + data) is linked into place (link, never
    rename: an existing name is never replaced), then the file and the directory are
    fsynced, all before commit returns."""
    events: list[tuple[str, str, int]] = []
    real_fsync, real_rename, real_link = os.fsync, os.rename, os.link
    queue = str(spool.queue_dir)

    def fsync(fd: int) -> None:
        # An O_TMPFILE descriptor keeps its "#inode (deleted)" /proc name after the
        # link: name the file by its inode.
        stat = os.fstat(fd)
        names = [p.name for p in spool.queue_dir.iterdir() if p.stat().st_ino == stat.st_ino]
        real_fsync(fd)
        events.append(
            ("fsync", names[0] if names else os.path.relpath(_fd_path(fd), queue), stat.st_size)
        )

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        real_rename(src, dst, *args, **kwargs)
        events.append(("rename", f"{src}->{dst}", 0))

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        real_link(src, dst, *args, **kwargs)
        events.append(("link", str(dst), os.stat(spool.queue_dir / dst).st_size))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "link", link)
    envelope = make_envelope(size=len(DATA))
    qid = envelope.qid
    spool.commit(envelope, DATA)
    done = list(events)
    files = _files(spool)
    monkeypatch.undo()

    size = len(_record(envelope, DATA))
    dir_size = os.stat(queue).st_size
    assert done == [
        ("link", f"{qid}.msg", size),
        ("fsync", f"{qid}.msg", size),
        ("fsync", ".", dir_size),
    ]
    assert files == {qid + ".msg"}  # no temp file when commit returns


def test_created_file_is_taken_back_when_sync_fails(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never acknowledged, never kept: an fsync error removes the new file."""
    envelope = make_envelope(size=len(DATA))
    new_file = spool.create(envelope, DATA)
    assert _files(spool) == {envelope.qid + ".msg"}  # complete, visible, not yet durable

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(SpoolError) as info:
        new_file.sync()
    monkeypatch.undo()
    assert "I/O error" in str(info.value)
    assert _files(spool) == set()


def test_discard_unlinks_without_waiting_for_the_disk(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    envelope = _commit(spool)
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    spool.discard(envelope.qid)
    spool.discard(envelope.qid)  # gone already: no error
    monkeypatch.undo()
    assert synced == []
    assert _files(spool) == set()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
@pytest.mark.parametrize("operation", ["update", "update-with-data", "remove"])
def test_update_and_remove_end_with_directory_fsync(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    envelope = _commit(spool)
    events: list[str] = []
    real_fsync, real_unlink, real_rename = os.fsync, os.unlink, os.rename

    def fsync(fd: int) -> None:
        is_dir = os.path.isdir(_fd_path(fd))
        size = "" if is_dir else f" {os.fstat(fd).st_size}"
        real_fsync(fd)
        events.append(f"fsync {os.path.basename(_fd_path(fd))}{size}")

    def unlink(name: Any, *args: Any, **kwargs: Any) -> None:
        real_unlink(name, *args, **kwargs)
        events.append(f"unlink {os.path.basename(name)}")

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        real_rename(src, dst, *args, **kwargs)
        events.append(f"rename {os.path.basename(src)}->{os.path.basename(dst)}")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "rename", rename)
    qid = envelope.qid
    if operation == "remove":
        spool.remove(qid)
        assert events == [f"unlink {qid}.msg", "fsync queue"]
    else:
        _deferred(envelope)
        if operation == "update":
            spool.update(envelope)
        else:
            spool.update(envelope, DATA)
        size = len(_record(envelope, DATA))
        assert events == [
            f"fsync {qid}.msg.tmp {size}",
            f"rename {qid}.msg.tmp->{qid}.msg",
            "fsync queue",
        ]
