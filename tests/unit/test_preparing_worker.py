"""The preparing worker's side of a write (smtprelay.web.preparing): the files of a
request are fsynced in threads, then the queue directory once, and only then is the
request answered; a failed fsync takes back every file of the request and answers
WriteFailed for each (the main process refuses the request with 503)."""

from __future__ import annotations

import errno
import os
import pickle
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from smtprelay import config, ids
from smtprelay.spool import NewFile, Spool
from smtprelay.web import intake, preparing
from smtprelay.web.tokens import Token

CONFIG = Path(__file__).resolve().parents[2] / "conf" / "smtprelay.toml"
MESSAGE = {"from": "app@sender.test", "to": ["bob@dest.test"], "subject": "hi", "text": "hi"}
ORIGIN = intake.Origin(Token("t", frozenset({"send"})), "127.0.0.1", 1)


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """What each fsync was of (an inode: a new file's descriptor has no name of its
    own, it was made unnamed and linked), in order."""
    seen: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    yield seen


def _written(root: Path, count: int) -> tuple[Spool, list[preparing.Outcome], list[NewFile]]:
    jobs = [preparing.Job(MESSAGE, ("messages", n), ids.new_id()) for n in range(count)]
    blob = pickle.dumps(config.load(CONFIG))
    spool, outcomes, files = preparing._work(str(root), blob, ORIGIN, None, True, True, jobs)
    assert spool is not None
    return spool, outcomes, files


def _answer(spool: Spool, outcomes: list[preparing.Outcome], files: list[NewFile]) -> object:
    """The one answer a request's group gives once its files are synced in threads."""
    answers: list[tuple[int, object]] = []
    group = preparing._Durable(7, outcomes, spool, files, lambda s, a: answers.append((s, a)))
    with ThreadPoolExecutor(4) as pool:
        for file in files:
            pool.submit(group.sync, file)
    ((sequence, answer),) = answers
    assert sequence == 7
    return answer


def _sync(spool: Spool, outcomes: list[preparing.Outcome], files: list[NewFile]) -> list[object]:
    answer = _answer(spool, outcomes, files)
    assert isinstance(answer, list)
    return answer


def test_a_request_is_answered_after_its_files_and_then_the_directory_are_synced(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    spool, outcomes, files = _written(tmp_path, 3)
    assert [o.envelope.qid for o in outcomes if isinstance(o, intake.Prepared)] == [
        f.qid for f in files
    ]
    assert _sync(spool, outcomes, files) == outcomes
    inodes = {spool.path(f.qid).stat().st_ino for f in files}
    assert set(fsyncs[:3]) == inodes
    assert fsyncs[3:] == [spool.queue_dir.stat().st_ino]


@pytest.mark.parametrize("nth", [2, 4], ids=["a-file", "the-directory"])
def test_a_failed_fsync_takes_back_every_file_of_the_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    spool, outcomes, files = _written(tmp_path, 3)
    real, calls = os.fsync, [0]

    def fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] == nth:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    answer = _sync(spool, outcomes, files)
    assert len(answer) == 3
    assert all(isinstance(a, preparing.WriteFailed) and a.no_space for a in answer)
    assert os.listdir(spool.queue_dir) == []


def test_a_strict_request_with_a_refused_message_writes_nothing(tmp_path: Path) -> None:
    jobs = [
        preparing.Job(MESSAGE, ("messages", 0), ids.new_id()),
        preparing.Job({**MESSAGE, "to": ["not an address"]}, ("messages", 1), ids.new_id()),
    ]
    blob = pickle.dumps(config.load(CONFIG))
    spool, outcomes, files = preparing._work(str(tmp_path), blob, ORIGIN, None, True, True, jobs)
    assert spool is None and files == []
    assert isinstance(outcomes[1], preparing.Refused)
    assert not (tmp_path / "queue").exists() or os.listdir(tmp_path / "queue") == []


def test_a_fault_while_syncing_still_answers_the_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Threads of a pool drop what they raise: an unanswered request would hang its client.
    spool, outcomes, files = _written(tmp_path, 2)

    def broken() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(spool, "sync", broken)
    answer = _answer(spool, outcomes, files)
    assert isinstance(answer, RuntimeError) and "a bug" in str(answer)
