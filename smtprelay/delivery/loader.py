"""The start-up load: read the queue the spool holds while the daemon already serves.

Before READY=1 the daemon only does what safety needs (:func:`spool.recovery.scan`:
partial writes removed, durably, and the names of the queued files taken; every
listener bound). The envelopes -- a million file reads and parses, minutes on a small
machine -- are read here afterwards, as Postfix's qmgr reads its incoming and deferred
queues while smtpd already accepts mail: ``CHUNK`` files at a time in a thread of the
load's own (behind the attempts' spool work in the scheduler's threads, a million
deferrals would hold it back for ever: the load of 1,000,000 did not end in 600 s), each
chunk then counted and scheduled on the event loop (a few milliseconds), so messages
are attempted as they are read and the loop is never held for long. ``Scheduler.loading``
says how many are still to be read (``/status``, ``GET /queue``, ``smtprelay queue``).

Why this is safe -- nothing is delivered twice, nothing is lost:

* Only the files named by the scan are read, and each once. Mail accepted after it has
  a new file, announced by the intake (``enqueue_new``), never read here.
* A message is attempted only when scheduled, and ``Scheduler`` schedules a QID at most
  once while it is queued or under attempt (``QID in Schedule``); every attempt of a message
  read here starts by reading its file again (the spool is the truth, never this
  loader's copy), so a file deleted, bounced or held meanwhile is seen as such.
* An operator action can reach a message before the loader does (release, hold,
  delete, bounce by QID): it reads and writes the file itself. If the loader's read of
  that message was earlier, ``restore(found_at_start=True)`` drops it because the
  ledger or the schedule knows the QID by then; a file removed before its read is
  skipped (``FileNotFoundError``), never quarantined.
* Adopting what a dead worker left (``Scheduler.adopt``) waits until the load is done.
* A crash or stop during the load loses nothing: the files are untouched until an
  attempt rewrites or removes them, and the next start scans them again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import ThreadPoolExecutor

from smtprelay import background
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.spool import Spool
from smtprelay.spool.recovery import Names, Recovered, check

# Files read per chunk, in a thread; counting and scheduling a chunk on the event loop
# then takes a few milliseconds.
CHUNK = 500
# Collections of the young generations before a full one, during the load: never.
NO_FULL_COLLECTION = 1 << 30

log = logging.getLogger("smtprelay.spool")


async def load(spool: Spool, names: Names, scheduler: Scheduler, result: Recovered) -> None:
    """Read, check and schedule every message ``names`` lists, then log the result."""
    scheduler.loading = len(names)
    scheduler.loaded.clear()
    # Garbage collection: a full collection walks every tracked object, and while a
    # large queue is loaded (and worked) one came every few seconds and held the event
    # loop 0.2-0.3 s (200,000 queued). What start-up made (modules, classes, settings)
    # lives as long as the process: frozen, out of the collector's sight. Full
    # collections wait until the load is done; then what it built is frozen too.
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], NO_FULL_COLLECTION)
    reader = ThreadPoolExecutor(
        1, thread_name_prefix="spool-load", initializer=background.lower_priority
    )
    loop = asyncio.get_running_loop()
    try:
        for chunk in names.chunks(CHUNK):
            envelopes = await loop.run_in_executor(reader, check, spool, chunk, result)
            for envelope in envelopes:
                scheduler.restore(envelope, found_at_start=True)
            scheduler.loading -= len(chunk)
    finally:
        reader.shutdown(wait=False)  # stopped mid-load: the chunk being read ends on its own
        names.drop()  # 14 MB with a million queued, held by start-up's results otherwise
        scheduler.loading = 0
        scheduler.ledger.loaded()
        scheduler.loaded.set()
        # The schedule and the ledger live as long as the daemon. No gc.collect() first:
        # that would be one long pause; the cyclic garbage of the load's last minutes
        # is frozen with them (a few MB at most, once), as gc.freeze's docs accept.
        gc.freeze()
        gc.set_threshold(*thresholds)
    log.info(
        "spool: %d queued message(s) loaded, %d quarantined", result.count, len(result.quarantined)
    )
