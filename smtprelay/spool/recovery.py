"""Start-up scan: rebuild the queue from the spool alone.

What a crash can leave behind, and what happens to it:

* ``*.tmp`` -- a write that never finished (never acknowledged): removed.
* ``QID.msg`` whose envelope line does not parse, or whose data is not the size the
  envelope says -- moved to ``corrupt/`` and logged; never delivered as half a message.
* anything else -- left alone and logged.

Each good envelope goes to ``keep`` as soon as it is read (the scheduler counts and
schedules it), so a queue of a million messages is never a million envelopes in memory
at once; without ``keep`` they are collected in :attr:`Recovered.envelopes`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
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


def recover(spool: Spool, keep: Callable[[Envelope], None] | None = None) -> Recovered:
    result = Recovered()
    if keep is None:
        keep = result.envelopes.append
    names: list[str] = []
    with os.scandir(spool.queue_dir) as entries:
        for entry in entries:
            if entry.name.endswith(safeio.TMP_SUFFIX):
                os.unlink(entry.path)
                result.removed_partial += 1
            elif entry.name.endswith(SUFFIX):
                names.append(entry.name)
            else:
                log.warning("spool: ignoring unexpected file queue/%s", entry.name)
    for name in sorted(names):
        qid = name.removesuffix(SUFFIX)
        problem = _check(spool, qid, result, keep)
        if problem:
            log.warning("%s: spool file quarantined to corrupt/: %s", qid, problem)
            spool.quarantine(name)
            result.quarantined.append(qid)
    if result.removed_partial:
        spool.sync()
    return result


def _check(
    spool: Spool, qid: str, result: Recovered, keep: Callable[[Envelope], None]
) -> str | None:
    if not ids.is_valid(qid):
        return "file name is not a queue ID"
    try:
        envelope, size = spool.read_both(qid)
    except (OSError, ValueError) as e:
        return f"unreadable envelope ({e})"
    if envelope.qid != qid:
        return f"envelope names another queue ID {envelope.qid}"
    if size != envelope.size:
        return f"message data is {size} bytes, envelope says {envelope.size}"
    result.count += 1
    keep(envelope)
    return None
