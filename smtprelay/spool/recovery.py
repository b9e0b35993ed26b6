"""Start-up scan: rebuild the queue from the spool alone.

What a crash can leave behind, and what happens to it:

* ``*.tmp`` -- a write that never finished (never acknowledged): removed.
* ``QID.msg`` whose envelope line does not parse, or whose data is not the size the
  envelope says -- moved to ``corrupt/`` and logged; never delivered as half a message.
* anything else -- left alone and logged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from smtprelay import ids, safeio
from smtprelay.envelope import Envelope
from smtprelay.spool.store import SUFFIX, Spool

log = logging.getLogger("smtprelay.spool")


@dataclass
class Recovered:
    envelopes: list[Envelope] = field(default_factory=list)
    removed_partial: int = 0
    quarantined: list[str] = field(default_factory=list)


def recover(spool: Spool) -> Recovered:
    result = Recovered()
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
        problem = _check(spool, qid, result)
        if problem:
            log.warning("%s: spool file quarantined to corrupt/: %s", qid, problem)
            spool.quarantine(name)
            result.quarantined.append(qid)
    if result.removed_partial:
        spool.sync()
    return result


def _check(spool: Spool, qid: str, result: Recovered) -> str | None:
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
    result.envelopes.append(envelope)
    return None
