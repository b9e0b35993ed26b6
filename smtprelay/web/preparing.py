"""HTTP submissions prepared in processes of their own (``[http] prepare_workers``).

Why processes: the main process's event loop serves HTTP *and* delivers, under one GIL,
so a JSON submission's own work -- validating it, applying the policy, building the
MIME message, creating and fsyncing its spool file -- took turns with delivery on one
core while the other core idled (SMTP sessions have the inbound workers for the same
reason). Here that work runs in a pool of processes: a batch is split among them, and
the main process keeps what needs its state or only waits on the disk: the bearer
token, the Idempotency-Key, the fsyncs of the group's files and of the directory (in
its threads), the log lines and handing the messages to the queue.

A worker is given the message's JSON (as parsed), its queue ID (made by the main
process, whose IDs never collide with the inbound workers'), the settings and who
submits; it answers with the message prepared and its file written (the main process
fsyncs the group's files and directory), or with the problem that refused it. Messages
with a ``template`` are prepared by the main process, which holds the template store.
A request with an Idempotency-Key has its files written by the main process, after the
key's pending record (:mod:`smtprelay.web.idempotency`): a crash must never leave a
message on disk that no record names, or the client's retry would send it twice.

A worker that dies (killed, out of memory) fails the requests it was serving with 503
and Retry-After, and the next request gets a new pool; workers die with the main
process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import pickle
import signal
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtprelay.config import Settings
from smtprelay.errors import RelayError
from smtprelay.spool import Spool, SpoolError
from smtprelay.web import intake
from smtprelay.web.problem import ApiProblem, unavailable

PR_SET_PDEATHSIG = 1
# Seconds a client waits before retrying after a worker died under its request.
RETRY_AFTER = 1


@dataclass(frozen=True, slots=True)
class Job:
    """One message to prepare: its JSON (``defaults`` merged), where it sits in the
    request (``prefix`` of its JSON Pointers) and its queue ID."""

    doc: Any
    prefix: tuple[str | int, ...]
    qid: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A message not prepared. ``policy``: a well-formed message the relay's policy
    refused (logged as a rejection, as SMTP's are), with its sender and recipients;
    otherwise the request itself was wrong (not logged: a client's bug)."""

    problem: ApiProblem
    policy: bool = False
    sender: str | None = None
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WriteFailed:
    """The message's file could not be written (nothing of it is left)."""

    reason: str
    no_space: bool


Outcome = intake.Prepared | Refused | WriteFailed


class Preparers:
    """The pool, started on first use; :meth:`prepare` answers each job in order."""

    def __init__(self, processes: int, spool: Spool) -> None:
        self.processes = processes
        self.spool = spool
        self.spool_root = str(spool.root)
        self._pool: ProcessPoolExecutor | None = None
        self._settings: tuple[Settings, bytes] | None = None

    async def prepare(
        self,
        jobs: list[Job],
        settings: Settings,
        origin: intake.Origin,
        key: str | None,
        strict: bool,
        write: bool,
    ) -> list[Outcome]:
        """Every job's outcome, in order; ``write``: with its file written (not synced).
        ``strict``: a worker that refuses one of its jobs writes none of them (the
        caller takes back what other workers wrote)."""
        blob = self._blob(settings)
        share = -(-len(jobs) // self.processes)  # the fewest chunks the pool runs at once
        chunks = [jobs[i : i + share] for i in range(0, len(jobs), share)]
        args = (self.spool_root, blob, origin, key, strict, write)
        loop = asyncio.get_running_loop()
        try:
            calls = [loop.run_in_executor(self._running(), _work, *args, c) for c in chunks]
        except BrokenExecutor:
            # A worker died while the pool was idle: nothing of this request ran yet.
            self._pool = None
            calls = [loop.run_in_executor(self._running(), _work, *args, c) for c in chunks]
        try:
            answers = await asyncio.gather(*calls)
        except BrokenExecutor:
            # A worker died under this request (the pool stops the others): what they
            # wrote was never acknowledged, so it is taken back.
            self._pool = None
            if write:
                qids = [job.qid for job in jobs]
                await loop.run_in_executor(None, intake.remove, self.spool, qids)
            raise unavailable(
                "a message preparation worker stopped: try again", RETRY_AFTER
            ) from None
        return [outcome for answer in answers for outcome in answer]

    def _running(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the main process runs threads, which a fork would copy mid-step.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self.processes, mp_context=context, initializer=_die_with, initargs=(os.getpid(),)
            )
        return self._pool

    def _blob(self, settings: Settings) -> bytes:
        """The settings pickled once per reload, not once per request."""
        if self._settings is None or self._settings[0] is not settings:
            self._settings = (settings, pickle.dumps(settings))
        return self._settings[1]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class PreparerError(RelayError):
    """A worker process could not start (it died with its parent already gone)."""


def _die_with(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides on Ctrl-C
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        raise PreparerError("the daemon exited while this worker started")


# --- in the worker process ---------------------------------------------------------------

_spools: dict[str, Spool] = {}
_settings_seen: tuple[bytes, Settings] | None = None


def _work(
    root: str,
    blob: bytes,
    origin: intake.Origin,
    key: str | None,
    strict: bool,
    write: bool,
    jobs: list[Job],
) -> list[Outcome]:
    settings = _settings_of(blob)
    outcomes = [_prepare(job, settings, origin, key) for job in jobs]
    if not write or (strict and any(not isinstance(o, intake.Prepared) for o in outcomes)):
        return outcomes
    spool = _spools.get(root)
    if spool is None:
        spool = _spools[root] = Spool(Path(root))
    return [_write(spool, o) if isinstance(o, intake.Prepared) else o for o in outcomes]


def _settings_of(blob: bytes) -> Settings:
    global _settings_seen
    if _settings_seen is None or _settings_seen[0] != blob:
        _settings_seen = (blob, pickle.loads(blob))
    return _settings_seen[1]


def _prepare(job: Job, settings: Settings, origin: intake.Origin, key: str | None) -> Outcome:
    try:
        model = intake.validate(job.doc, job.prefix)
    except ApiProblem as p:
        return Refused(p)
    try:
        return intake.prepare(model, settings, origin, _no_templates, job.prefix, key, job.qid)
    except ApiProblem as p:
        sender, recipients = intake.parties(model)
        return Refused(p, p.status < 500, sender, tuple(recipients))


def _no_templates(*_: object) -> Any:
    raise AssertionError("messages with a template are prepared by the main process")


def _write(spool: Spool, item: intake.Prepared) -> Outcome:
    """The message's file, complete; the main process fsyncs it with the group: a
    worker waiting for each fsync in turn took one request at a time."""
    try:
        spool.create_encoded(item.envelope.qid, item.encoded, item.data).close()
    except (OSError, SpoolError) as e:
        return WriteFailed(str(e), intake.no_space_left(e))
    return item
