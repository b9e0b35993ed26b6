"""The spool read and changed directly, for when the daemon is stopped.

``queue list`` and ``queue show`` read the envelopes; ``hold``, ``release`` and ``delete``
are the same per-message actions the scheduler runs (:mod:`smtprelay.spool.actions`),
applied here only because no daemon is there to apply them too. A message's headers are
always read from its file (the API does not serve them): the daemon replaces a file by a
rename, never rewrites it in place, so reading it beside a running daemon is safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from smtprelay import addresses, config
from smtprelay.envelope import Envelope
from smtprelay.queuecli.client import reason
from smtprelay.queuecli.errors import QueueFailure
from smtprelay.queueview import queue_item, spool_state
from smtprelay.spool import actions
from smtprelay.spool.store import Spool

# The actions the CLI may apply to the spool itself; bounce spools a notice through the
# delivery stage, and flush is a schedule only the daemon has.
OFFLINE_ACTIONS = ("hold", "release", "delete")


def open_spool(settings: config.Settings) -> Spool:
    root = Path(settings.spool.dir)
    if not (root / "queue").is_dir():  # do not create a spool (as root, say) here
        raise QueueFailure(f"[spool] dir {root}: no queue directory in it")
    return Spool(root)


def queued_ids(settings: config.Settings) -> list[str]:
    """Every queue ID in the spool, in order."""
    spool = open_spool(settings)
    try:
        return sorted(spool.ids())
    finally:
        spool.close()


def envelope_item(envelope: Envelope, now: float) -> dict[str, Any]:
    """As ``GET /queue`` shows it, read from the spool (the daemon is stopped)."""
    return queue_item(envelope, spool_state(envelope, now), now)


def _envelopes(spool: Spool) -> list[Envelope]:
    found = []
    for qid in sorted(spool.ids()):
        with contextlib.suppress(OSError, ValueError):  # gone, or not readable
            found.append(spool.load(qid))
    return found


def spool_list(settings: config.Settings, state: str | None, domain: str | None) -> dict[str, Any]:
    spool = open_spool(settings)
    try:
        now = time.time()
        items = [envelope_item(e, now) for e in _envelopes(spool)]
    finally:
        spool.close()
    if state:
        items = [i for i in items if i["state"] == state]
    if domain:
        wanted = domain.strip().rstrip(".").lower()
        items = [i for i in items if any(addresses.domain_of(a) == wanted for a in i["recipients"])]
    return {"messages": items, "total": len(items)}


def spool_show(settings: config.Settings, qid: str) -> tuple[dict[str, Any], str | None]:
    spool = open_spool(settings)
    try:
        try:
            envelope = spool.load(qid)
        except FileNotFoundError:
            raise QueueFailure(f"no message {qid} in the queue") from None
        except ValueError as e:
            raise QueueFailure(f"{qid}: cannot read the envelope: {e}") from None
    finally:
        spool.close()
    answer = {
        "qid": qid,
        "status": envelope.state.value,
        "in_queue": True,
        "envelope": json.loads(envelope.to_json()),
        "events": [],
        "history_complete": False,
        "events_omitted": 0,
    }
    return answer, read_headers(settings, qid)


def read_headers(settings: config.Settings, qid: str, limit: int = 64 * 1024) -> str | None:
    """The header section of a queued message, read from its spool file (read-only:
    the daemon replaces the file by a rename, never rewrites it in place)."""
    path = Path(settings.spool.dir) / "queue" / f"{qid}.msg"
    try:
        with open(path, "rb") as f:
            f.readline()  # the envelope
            lines = []
            size = 0
            for raw in f:
                if raw in (b"\r\n", b"\n") or size > limit:
                    break
                size += len(raw)
                lines.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
    except OSError:
        return None
    return "\n".join(lines) or None


def _give_back(spool: Spool, qid: str) -> None:
    """Run as root, a rewritten file goes back to the spool's owner (the daemon's user)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        st = os.stat(spool.queue_dir)
        with contextlib.suppress(OSError):
            os.chown(spool.path(qid), st.st_uid, st.st_gid)


def spool_action(settings: config.Settings, action: str, qids: Iterable[str]) -> dict[str, Any]:
    """hold, release or delete on the spool files, the daemon being stopped."""
    if action not in OFFLINE_ACTIONS:
        raise ValueError(f"not an action on the spool: {action}")
    spool = open_spool(settings)
    results: dict[str, str] = {}
    try:
        for qid in qids:
            try:
                if action == "hold":
                    change = actions.hold(spool, qid)
                elif action == "release":
                    change = actions.release(spool, qid, time.time())
                else:
                    change = actions.delete(spool, qid)
            except FileNotFoundError:  # removed between reading and rewriting it
                results[qid] = actions.NOT_FOUND.outcome.value
                continue
            except (OSError, ValueError) as e:
                results[qid] = f"error: {reason(e)}"
                continue
            if change.changed and change.envelope is not None:
                _give_back(spool, qid)
            results[qid] = change.outcome.value
    finally:
        spool.close()
    return {"action": action, "results": results}
