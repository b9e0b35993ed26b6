"""Start-up scan: rebuild the queue from the spool alone.

What a crash can leave behind, and what happens to it:

* ``*.tmp`` -- a write that never finished (never acknowledged): removed.
* ``QID.msg`` whose envelope line does not parse, or whose data is not the size the
  envelope says -- moved to ``corrupt/`` and logged; never delivered as half a message.
* anything else -- left alone and logged.

It comes in two parts, so that a large queue does not hold up the start (as Postfix's
qmgr reads its queue while the rest of the system already runs):

* :func:`scan` -- one pass over ``queue/``'s names: partial writes removed (and the
  removal made durable), the names of the queued messages kept, sorted (queue IDs
  are time-ordered, so this is arrival order). This must be done before any new
  write can start, since a write in progress is a ``*.tmp`` too; it reads no file.
* :func:`check` -- read and check the envelopes of some of those names (blocking:
  called in a thread, a chunk at a time, by the start-up loader). A name whose file
  is gone was delivered or deleted meanwhile and is skipped.

:func:`recover` does both at once. Each good envelope goes to ``keep`` as soon as it is
read, so a million envelopes are never in memory at once; without ``keep`` they are
collected in :attr:`Recovered.envelopes`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from smtprelay import ids, safeio
from smtprelay.envelope import Envelope
from smtprelay.spool.store import SUFFIX, Spool

log = logging.getLogger("smtprelay.spool")


@dataclass
class Recovered:
    envelopes: list[Envelope] = field(default_factory=list)  # only without ``keep``
    count: int = 0  # good messages found
    removed_partial: int = 0
    quarantined: list[str] = field(default_factory=list)


class Names:
    """The queue IDs :func:`scan` found, sorted, in one string (a million QIDs are
    ~14 MB here; as a list of str objects they were ~90 MB, held until all are read)."""

    def __init__(self, qids: list[str]) -> None:
        qids.sort()
        self._blob = "".join(qids)
        self._width = ids.LENGTH
        self.count = len(qids)

    def __len__(self) -> int:
        return self.count

    def drop(self) -> None:
        """Read: the string is given back (the daemon keeps this object to the end)."""
        self._blob = ""

    def chunks(self, size: int) -> Iterator[list[str]]:
        step = size * self._width
        for start in range(0, len(self._blob), step):
            part = self._blob[start : start + step]
            yield [part[i : i + self._width] for i in range(0, len(part), self._width)]


def scan(spool: Spool, result: Recovered) -> Names:
    """Remove partial writes (durably) and return the queue IDs of every message file.
    Files whose name is not a queue ID are quarantined here (no read needed)."""
    qids: list[str] = []
    odd: list[str] = []
    with os.scandir(spool.queue_dir) as entries:
        for entry in entries:
            name = entry.name
            if name.endswith(safeio.TMP_SUFFIX):
                os.unlink(entry.path)
                result.removed_partial += 1
            elif name.endswith(SUFFIX):
                qid = name[: -len(SUFFIX)]
                if ids.is_valid(qid):
                    qids.append(qid)
                else:
                    odd.append(name)
            else:
                log.warning("spool: ignoring unexpected file queue/%s", name)
    for name in sorted(odd):
        log.warning(
            "%s: spool file quarantined to corrupt/: file name is not a queue ID",
            name.removesuffix(SUFFIX),
        )
        spool.quarantine(name)
        result.quarantined.append(name.removesuffix(SUFFIX))
    if result.removed_partial:
        spool.sync()
    return Names(qids)


def check(spool: Spool, qids: list[str], result: Recovered) -> list[Envelope]:
    """The good envelopes among ``qids`` (blocking); bad files quarantined, counted in
    ``result``; files that are gone skipped."""
    good: list[Envelope] = []
    for qid in qids:
        problem = _check(spool, qid, result, good.append)
        if problem:
            log.warning("%s: spool file quarantined to corrupt/: %s", qid, problem)
            spool.quarantine(qid + SUFFIX)
            result.quarantined.append(qid)
    return good


def recover(spool: Spool, keep: Callable[[Envelope], None] | None = None) -> Recovered:
    """:func:`scan` and :func:`check` of everything, in this thread."""
    result = Recovered()
    if keep is None:
        keep = result.envelopes.append
    for chunk in scan(spool, result).chunks(1024):
        for envelope in check(spool, chunk, result):
            keep(envelope)
    return result


def _check(
    spool: Spool, qid: str, result: Recovered, keep: Callable[[Envelope], None]
) -> str | None:
    try:
        envelope, size = spool.read_both(qid)
    except FileNotFoundError:
        return None  # delivered or deleted since the scan
    except (OSError, ValueError) as e:
        return f"unreadable envelope ({e})"
    if envelope.qid != qid:
        return f"envelope names another queue ID {envelope.qid}"
    if size != envelope.size:
        return f"message data is {size} bytes, envelope says {envelope.size}"
    result.count += 1
    keep(envelope)
    return None
