"""HTTP submissions prepared in processes of their own (``[http] prepare_workers``).

Why processes: the main process's event loop serves HTTP *and* delivers, under one GIL,
so a JSON submission's own work -- validating it, applying the policy, building the
MIME message, creating and fsyncing its spool file -- took turns with delivery on one
core while the other core idled (SMTP sessions have the inbound workers for the same
reason). Here that work runs in a pool of processes: a batch is split among them, and
the main process keeps what needs its state: the bearer token, the Idempotency-Key,
the log lines and handing the messages to the queue.

A worker is given the message's JSON (as parsed), its queue ID (made by the main
process, whose IDs never collide with the inbound workers'), the settings and who
submits; it answers with the message prepared and its file durable, or with the
problem that refused it. The fsyncs are the worker's too, in its own threads (the
files of a request at once, then the queue directory once for them), so that it
prepares the next request meanwhile: done by the main process, their hand-offs to and
from its threads cost its event loop a third of its time per request. Messages
with a ``template`` are prepared by the main process, which holds the template store.
A request with an Idempotency-Key has its files written by the main process, after the
key's pending record (:mod:`smtprelay.web.idempotency`): a crash must never leave a
message on disk that no record names, or the client's retry would send it twice.

Each worker is ``python -m smtprelay.web.preparing`` with a socket pair to the main
process, whose event loop writes requests (pickled, length-prefixed) and reads the
answers itself. A worker that dies (killed, out of memory) fails the requests it was
serving with 503 and Retry-After, and the next request starts a new one; a worker
ends when its channel does, and dies with the main process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtprelay import children
from smtprelay.config import Settings
from smtprelay.errors import RelayError
from smtprelay.spool import SYNC_THREADS, NewFile, Spool, SpoolError
from smtprelay.web import intake
from smtprelay.web.problem import ApiProblem, unavailable

log = logging.getLogger("smtprelay.http")

# Seconds a client waits before retrying after a worker died under its request.
RETRY_AFTER = 1
# Seconds a stopping daemon waits for a worker to finish the request it is on.
CLOSE_GRACE = 5.0
# The channel's read buffer limit (asyncio flow control; a frame of any size is read).
CHANNEL_LIMIT = 1 << 20


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


class WorkerGone(RelayError):
    """A worker exited (or could not start) with requests of ours unanswered."""


class _Worker:
    """One worker process and its channel: requests go out as they come (the worker
    answers them in order), each answer resolves its request's future. The event loop
    reads and writes the channel itself: no thread between a request and its worker."""

    def __init__(self, process: asyncio.subprocess.Process, writer: asyncio.StreamWriter) -> None:
        self.process = process
        self.writer = writer
        self.pending: dict[int, asyncio.Future[list[Outcome]]] = {}
        self.sequence = 0
        self.alive = True
        self.reading: asyncio.Task[None] | None = None

    def call(self, args: tuple[Any, ...]) -> asyncio.Future[list[Outcome]]:
        self.sequence += 1
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self.pending[self.sequence] = future
        frame = pickle.dumps((self.sequence, args), pickle.HIGHEST_PROTOCOL)
        self.writer.write(len(frame).to_bytes(4, "big") + frame)
        return future

    async def read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(4), "big")
                sequence, answer = pickle.loads(await reader.readexactly(size))
                future = self.pending.pop(sequence, None)
                if future is None or future.done():
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker is gone: its requests fail below
        except Exception:
            # An answer that cannot be read: a fault of ours, told once; the channel's
            # place in the stream is lost, so the worker goes and the next one starts.
            log.exception("HTTP preparation worker pid %d: bad answer", self.process.pid)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        finally:
            self.alive = False
            self.writer.close()
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(WorkerGone("a message preparation worker stopped"))
            self.pending.clear()
            await self.process.wait()


class Preparers:
    """The workers, each started on first use; :meth:`prepare` answers each job in
    order."""

    def __init__(self, processes: int, spool: Spool) -> None:
        self.processes = processes
        self.spool = spool
        self.spool_root = str(spool.root)
        self._workers: list[_Worker | None] = [None] * processes
        self._starting: list[asyncio.Task[_Worker] | None] = [None] * processes
        self._turn = 0  # the first worker of the next request: each in turn
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
        args = (self.spool_root, self._blob(settings), origin, key, strict, write)
        share = -(-len(jobs) // self.processes)  # the fewest chunks the workers run at once
        chunks = [jobs[i : i + share] for i in range(0, len(jobs), share)]
        first, self._turn = self._turn, (self._turn + 1) % self.processes
        sent: list[asyncio.Future[list[Outcome]]] = []
        failed: BaseException | None = None
        try:
            for n, chunk in enumerate(chunks):
                worker = await self._worker((first + n) % self.processes)
                sent.append(worker.call((*args, chunk)))
        except WorkerGone as e:
            failed = e
        # Every chunk's answer, even after one failed: a worker still on its chunk
        # would write files after they were taken back below.
        answers = await asyncio.gather(*sent, return_exceptions=True)
        failed = failed or next((a for a in answers if isinstance(a, BaseException)), None)
        if failed is None:
            return [outcome for answer in answers if isinstance(answer, list) for outcome in answer]
        if write:  # nothing of this request was acknowledged: its files are taken back
            qids = [job.qid for job in jobs]
            await asyncio.get_running_loop().run_in_executor(None, intake.remove, self.spool, qids)
        if not isinstance(failed, WorkerGone):
            raise failed  # a fault of ours in a worker: 500, logged once
        log.warning("HTTP submission not prepared: %s", failed, extra={"service": "http"})
        raise unavailable(f"{failed}: try again", RETRY_AFTER)

    async def _worker(self, index: int) -> _Worker:
        """The worker at ``index``, started (again) if it is not running: a worker that
        died while idle costs no request."""
        worker = self._workers[index]
        if worker is not None and worker.alive:
            return worker
        starting = self._starting[index]
        if starting is None:  # one start per place, whoever asks first
            starting = asyncio.get_running_loop().create_task(self._spawn(index))
            self._starting[index] = starting
            starting.add_done_callback(lambda _: self._starting.__setitem__(index, None))
        return await asyncio.shield(starting)

    async def _spawn(self, index: int) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            argv = [str(theirs.fileno()), str(os.getpid())]
            process = await children.spawn(__name__, argv, [theirs.fileno()])
        except OSError as e:
            ours.close()
            raise WorkerGone(f"a message preparation worker cannot start: {e}") from None
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours, limit=CHANNEL_LIMIT)
        worker = _Worker(process, writer)
        worker.reading = asyncio.get_running_loop().create_task(worker.read(reader))
        self._workers[index] = worker
        log.info("HTTP preparation worker %d started, pid %d", index, process.pid)
        return worker

    def _blob(self, settings: Settings) -> bytes:
        """The settings pickled once per reload, not once per request."""
        if self._settings is None or self._settings[0] is not settings:
            self._settings = (settings, pickle.dumps(settings))
        return self._settings[1]

    async def close(self) -> None:
        """End the workers' channels (each exits once its request is answered) and wait
        for them; one still busy after CLOSE_GRACE s is killed, so a stop never hangs."""
        for worker in self._workers:
            if worker is None or worker.reading is None:
                continue
            worker.writer.close()
            try:
                async with asyncio.timeout(CLOSE_GRACE):
                    await asyncio.shield(worker.reading)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.reading
        self._workers = [None] * self.processes


# --- in the worker process ---------------------------------------------------------------


def main(argv: list[str]) -> int:
    """``python -m smtprelay.web.preparing CHANNEL_FD PARENT_PID``: answer requests
    until the channel ends."""
    channel_fd, parent = int(argv[0]), int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides on Ctrl-C
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # its settings come with each request
    if not children.die_with(parent):
        return 1
    # The channel ends with the daemon: an end of file after a stop; a reset, a broken
    # pipe or a frame cut short when it was killed mid-conversation. Either way this
    # worker's work is over, and nothing is left to say (its stderr is the daemon's log).
    with (
        socket.socket(fileno=channel_fd) as channel,
        channel.makefile("rb") as incoming,
        ThreadPoolExecutor(SYNC_THREADS, "fsync") as syncing,
        contextlib.suppress(ConnectionError, EOFError, pickle.UnpicklingError),
    ):
        reply = _Replies(channel)
        while header := incoming.read(4):
            sequence, args = pickle.loads(incoming.read(int.from_bytes(header, "big")))
            try:
                spool, outcomes, files = _work(*args)
            except Exception as e:  # a fault of ours: the request is answered 500, once
                reply(sequence, RuntimeError(f"message preparation failed: {e!r}"))
                continue
            if spool is None or not files:
                reply(sequence, outcomes)
                continue
            # Answered once its files and their names are durable, by the thread that
            # synced the last of them: meanwhile this thread prepares the next request.
            group = _Durable(sequence, outcomes, spool, files, reply)
            for file in files:
                syncing.submit(group.sync, file)
    return 0


class _Replies:
    """Answers to the main process, from whichever thread has one: whole frames."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._lock = threading.Lock()

    def __call__(self, sequence: int, answer: object) -> None:
        frame = pickle.dumps((sequence, answer), pickle.HIGHEST_PROTOCOL)
        with self._lock, contextlib.suppress(OSError):  # the daemon is gone: see main
            self._channel.sendall(len(frame).to_bytes(4, "big") + frame)


class _Durable:
    """One request's new files, fsynced in threads at once (the journal commits them
    together); the thread of the last one syncs the queue directory, once for the
    group, and answers. A failure takes back every file of the group (none was
    acknowledged) and answers WriteFailed for each: the request is refused with 503."""

    def __init__(
        self,
        sequence: int,
        outcomes: list[Outcome],
        spool: Spool,
        files: list[NewFile],
        reply: Callable[[int, object], None],
    ) -> None:
        self._sequence = sequence
        self._outcomes = outcomes
        self._spool = spool
        self._files = files
        self._reply = reply
        self._lock = threading.Lock()
        self._left = len(files)
        self._failed: WriteFailed | None = None

    def sync(self, file: NewFile) -> None:
        failed = None
        try:
            file.sync_file()
        except SpoolError as e:
            failed = WriteFailed(str(e), e.no_space)
        except Exception as e:  # never a request left unanswered: its client would hang
            failed = WriteFailed(f"cannot sync {file.qid}: {e!r}", False)
        with self._lock:
            self._failed = self._failed or failed
            self._left -= 1
            if self._left:
                return
        try:
            answer: object = self._finish()
        except Exception as e:  # a fault of ours: the request is answered 500, once
            answer = RuntimeError(f"message preparation failed: {e!r}")
        self._reply(self._sequence, answer)

    def _finish(self) -> list[Outcome]:
        """The last file is synced: the directory once, then the answer."""
        spool = self._spool
        if self._failed is None:
            try:
                spool.sync()
            except OSError as e:
                reason = f"cannot sync the queue directory: {e.strerror}"
                self._failed = WriteFailed(reason, intake.no_space_left(e))
        if self._failed is None:
            return self._outcomes
        for each in self._files:
            with contextlib.suppress(OSError):  # taken back as far as the disk lets us
                spool.discard(each.qid)
        return [self._failed] * len(self._outcomes)


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
) -> tuple[Spool | None, list[Outcome], list[NewFile]]:
    """Every job's outcome; with ``write``, the spool and the new files of those
    prepared, complete but not yet durable (the caller syncs them before the answer)."""
    settings = _settings_of(blob)
    outcomes = [prepare_job(job, settings, origin, key) for job in jobs]
    if not write or (strict and any(not isinstance(o, intake.Prepared) for o in outcomes)):
        return None, outcomes, []
    spool = _spools.get(root)
    if spool is None:
        spool = _spools[root] = Spool(Path(root))
    files: list[NewFile] = []
    for outcome in outcomes:
        if not isinstance(outcome, intake.Prepared):
            continue
        try:
            qid = outcome.envelope.qid
            files.append(spool.create_encoded(qid, outcome.encoded, outcome.data))
        except SpoolError as e:
            for file in files:  # none of the group will be acknowledged
                file.close()
                spool.discard(file.qid)
            return None, [WriteFailed(str(e), e.no_space)] * len(outcomes), []
    return spool, outcomes, files


def _settings_of(blob: bytes) -> Settings:
    global _settings_seen
    if _settings_seen is None or _settings_seen[0] != blob:
        _settings_seen = (blob, pickle.loads(blob))
    return _settings_seen[1]


def prepare_job(job: Job, settings: Settings, origin: intake.Origin, key: str | None) -> Outcome:
    """One message validated and built (not written), or why not (see :class:`Refused`);
    also the HTTP front's (:mod:`smtprelay.web.front`)."""
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


if __name__ == "__main__":
    # Run as the module by its name, not as __main__: the answers' classes are pickled
    # by module name, and the main process knows them as smtprelay.web.preparing's.
    from smtprelay.web import preparing

    sys.exit(preparing.main(sys.argv[1:]))
