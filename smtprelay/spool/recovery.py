"""Start-up scan: rebuild the queue from the spool alone.

What a crash can leave behind, and what happens to it:

* ``*.tmp`` -- a write that never finished: removed.
* ``QID.eml`` without ``QID.json`` -- data of a message that was never acknowledged
  (the envelope is the commit marker): removed.
* ``QID.json`` that does not parse, or whose data is missing or of the wrong size --
  moved to ``corrupt/`` and logged; never delivered as half a message.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from smtprelay import ids, safeio
from smtprelay.envelope import Envelope
from smtprelay.spool.store import DATA_SUFFIX, ENVELOPE_SUFFIX, Spool

log = logging.getLogger("smtprelay.spool")


@dataclass
class Recovered:
    envelopes: list[Envelope] = field(default_factory=list)
    removed_partial: int = 0
    quarantined: list[str] = field(default_factory=list)


def recover(spool: Spool) -> Recovered:
    result = Recovered()
    data_sizes: dict[str, int] = {}
    envelope_ids: list[str] = []
    with os.scandir(spool.queue_dir) as entries:
        for entry in entries:
            name = entry.name
            if name.endswith(safeio.TMP_SUFFIX):
                os.unlink(entry.path)
                result.removed_partial += 1
            elif name.endswith(DATA_SUFFIX):
                data_sizes[name.removesuffix(DATA_SUFFIX)] = entry.stat().st_size
            elif name.endswith(ENVELOPE_SUFFIX):
                envelope_ids.append(name.removesuffix(ENVELOPE_SUFFIX))
            else:
                log.warning("spool: ignoring unexpected file queue/%s", name)

    for qid in sorted(envelope_ids):
        problem = _check(spool, qid, data_sizes.get(qid), result)
        if problem:
            log.warning("%s: spool record quarantined to corrupt/: %s", qid, problem)
            spool.quarantine(qid)
            result.quarantined.append(qid)
        data_sizes.pop(qid, None)

    for qid in data_sizes:
        os.unlink(spool.queue_dir / (qid + DATA_SUFFIX))
        result.removed_partial += 1
    if result.removed_partial:
        spool.sync()
    return result


def _check(spool: Spool, qid: str, data_size: int | None, result: Recovered) -> str | None:
    if not ids.is_valid(qid):
        return "file name is not a queue ID"
    try:
        envelope = spool.load(qid)
    except (OSError, ValueError) as e:
        return f"unreadable envelope ({e})"
    if envelope.qid != qid:
        return f"envelope names another queue ID {envelope.qid}"
    if data_size is None:
        return "message data missing"
    if data_size != envelope.size:
        return f"message data is {data_size} bytes, envelope says {envelope.size}"
    result.envelopes.append(envelope)
    return None
