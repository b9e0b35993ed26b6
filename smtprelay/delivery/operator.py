"""Operator actions on the queue (the HTTP queue API and the message API): flush, hold,
release, delete, bounce, listing; cancel and reschedule (``delivery/cancel.py``) run
on the same lock.

They are serialized among themselves. A message under attempt is never touched: hold,
delete and bounce of such a message are applied when its attempt ends (the answer says
``after-attempt``), so a delivery under way is never torn in half; a cancel marks it
durably and the attempt concludes it (``delivery/attempt.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from smtprelay import ids, maillog
from smtprelay.delivery import cancel
from smtprelay.delivery.notices import Result
from smtprelay.envelope import Envelope, QueueState, RecipientState
from smtprelay.queueops import Outcome, QueueEntry, RecipientCancel
from smtprelay.queueview import due_time
from smtprelay.replies import Reply
from smtprelay.spool import SpoolError, actions
from smtprelay.tasks import detach

if TYPE_CHECKING:
    from smtprelay.delivery.scheduler import Scheduler

OPERATOR_BOUNCE = Reply(550, "5.0.0", "Returned to sender by the operator")

log = logging.getLogger("smtprelay.delivery")


_P = ParamSpec("_P")
_T = TypeVar("_T")


def forwarded(
    action: Callable[Concatenate[Operator, _P], Awaitable[_T]],
) -> Callable[Concatenate[Scheduler, _P], Coroutine[Any, Any, _T]]:
    """``action`` as a method of the Scheduler, the facade others see: run by its
    operator (the same parameters, documentation and result)."""

    @functools.wraps(action)
    async def on_scheduler(scheduler: Scheduler, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await action(scheduler.operator, *args, **kwargs)

    return on_scheduler


class Operator:
    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler
        self.lock = asyncio.Lock()
        self.later: set[asyncio.Task[None]] = set()  # actions waiting for an attempt

    async def settled(self) -> None:
        """Wait for the actions waiting for an attempt to end (tests, stop)."""
        while self.later:
            await asyncio.gather(*self.later, return_exceptions=True)

    # --- operator actions (the HTTP queue API) ---------------------------------------------
    #
    # Each returns {qid: outcome}: a queueops.Outcome value (AFTER_ATTEMPT: under attempt
    # now, applied when the attempt ends unless the message is gone by then), or
    # "error: ..." when the spool could not be read or written.

    async def flush(self, qids: Iterable[str] | None = None) -> dict[str, str]:
        """Attempt now. ``None``: every waiting message (held ones stay held). Marks of
        unreachable destinations are forgotten: the operator asks for a real try."""
        schedule, destinations = self.s.schedule, self.s.destinations
        async with self.lock:
            destinations.forget_marks()
            now = self.s.clock()
            if qids is None:
                schedule.due.update(dict.fromkeys(destinations.parked_qids, now))
                destinations.parked_qids.clear()
                destinations.parked.clear()
                # A scheduled send keeps its time: a flush never sends it early.
                waiting = {
                    qid: due
                    for qid, due in schedule.due.items()
                    if self.s.ledger.state(qid) == "scheduled"
                }
                results = {qid: Outcome.FLUSHED.value for qid in schedule.due if qid not in waiting}
                schedule.replace({qid: waiting.get(qid, now) for qid in schedule.due})
                return results
            results = {}
            for qid in qids:
                if qid in self.s.schedule.due and self.s.ledger.state(qid) == "scheduled":
                    results[qid] = Outcome.SCHEDULED.value
                elif qid in self.s.schedule.due or qid in self.s.destinations.parked_qids:
                    self.s.destinations.parked_qids.discard(qid)
                    self.s.schedule.push(qid, now)
                    results[qid] = Outcome.FLUSHED.value
                elif qid in self.s.active:
                    results[qid] = Outcome.ATTEMPTING.value
                else:
                    results[qid] = await self._unscheduled_state(qid)
            schedule.compact()
            return results

    async def hold(self, qids: Iterable[str]) -> dict[str, str]:
        """Put on hold: kept in the spool (state ``hold``, durably), never attempted until
        released, also after a restart."""
        return await self._each(qids, self._hold)

    async def release(self, qids: Iterable[str]) -> dict[str, str]:
        """Take off hold and attempt now."""
        return await self._each(qids, self._release)

    async def delete(self, qids: Iterable[str]) -> dict[str, str]:
        """Remove from the spool without a notice; logged ``QID: removed (deleted by
        operator)``."""
        return await self._each(qids, self._delete)

    async def bounce(self, qids: Iterable[str]) -> dict[str, str]:
        """Fail every pending recipient (550 5.0.0) and send the sender a failure notice."""
        return await self._each(qids, self._bounce)

    async def listing(
        self,
        after: str | None,
        limit: int,
        state: str | None = None,
        domain: str | None = None,
    ) -> tuple[list[QueueEntry], str | None]:
        """Up to ``limit`` queued messages after QID ``after``, oldest first, filtered
        by state and by a pending recipient's domain, and the ``after`` of the next page
        (None on the last). Reads only the envelopes of the messages listed."""
        chosen = [qid for qid, _ in self.s.ledger.page(after, limit + 1, state, domain)]
        following = chosen[limit - 1] if len(chosen) > limit else None
        envelopes = await asyncio.get_running_loop().run_in_executor(
            None, self._read_envelopes, chosen[:limit]
        )
        shown = self.s.ledger.state
        return [
            QueueEntry(
                e,
                e.qid in self.s.active,
                shown(e.qid) == "scheduled",
                rate_limited=shown(e.qid) == "rate-limited",
            )
            for e in envelopes
        ], following

    def _read_envelopes(self, qids: list[str]) -> list[Envelope]:
        envelopes = []
        for qid in qids:
            try:
                envelopes.append(self.s.spool.load(qid))
            except (OSError, ValueError):  # gone meanwhile, or being rewritten
                continue
        return envelopes

    async def _each(
        self, qids: Iterable[str], action: Callable[[str], Awaitable[str]]
    ) -> dict[str, str]:
        results: dict[str, str] = {}
        async with self.lock:
            for qid in qids:
                if not ids.is_valid(qid):
                    results[qid] = Outcome.NOT_FOUND.value
                elif qid in self.s.active:
                    detach(
                        self._after_attempt(qid, action),
                        self.later,
                        f"{qid}: operator action after the attempt",
                    )
                    results[qid] = Outcome.AFTER_ATTEMPT.value
                else:
                    results[qid] = await self._guarded(qid, action)
        return results

    async def _after_attempt(self, qid: str, action: Callable[[str], Awaitable[str]]) -> None:
        while (attempt := self.s.active.get(qid)) is not None:
            await asyncio.wait([attempt])
            await asyncio.sleep(0)  # let the attempt's done callbacks run first
        async with self.lock:
            if qid in self.s.active:  # started again in between: wait once more
                detach(
                    self._after_attempt(qid, action),
                    self.later,
                    f"{qid}: operator action after the attempt",
                )
                return
            outcome = await self._guarded(qid, action)
        log.info("%s: operator action after the attempt under way: %s", qid, outcome)

    async def _guarded(self, qid: str, action: Callable[[str], Awaitable[str]]) -> str:
        try:
            return await action(qid)
        except (OSError, ValueError, SpoolError) as e:
            log.error("%s: operator action failed: %s", qid, e)
            return f"error: {getattr(e, 'strerror', None) or e}"

    def _unschedule(self, qid: str) -> float | None:
        """Take a waiting message out of the schedule; its due time, to put it back."""
        due = self.s.schedule.due.pop(qid, None)
        self.s.ratelimits.forget(qid)  # let in by a rate limiter, now taken out
        if qid in self.s.destinations.parked_qids:
            self.s.destinations.parked_qids.discard(qid)
            due = self.s.clock()
        self.s.schedule.forget(qid)
        self.s.schedule.take_fresh(qid)
        return due

    async def _unscheduled_state(self, qid: str) -> str:
        try:
            envelope = await self.s.io(self.s.spool.load, qid)
        except FileNotFoundError:
            self.s.ledger.remove(qid)
            return Outcome.NOT_FOUND.value
        except (OSError, ValueError) as e:
            return f"error: {e}"
        held = envelope.state is QueueState.HOLD
        return Outcome.ON_HOLD.value if held else Outcome.NOT_FOUND.value

    @contextlib.contextmanager
    def out_of_schedule(self, qid: str) -> Iterator[None]:
        """Take a message out of the schedule while an operator action works on it, and
        put it back if the action fails part-way: a failure must not strand it."""
        due = self._unschedule(qid)
        try:
            yield
        except BaseException:
            if due is not None:
                self.s.enqueue(qid, due)
            raise

    # hold, release and delete change the file through spool.actions (the same code the
    # offline CLI runs); the schedule, the ledger and the mail log are the scheduler's.

    async def _hold(self, qid: str) -> str:
        with self.out_of_schedule(qid):
            change = await self.s.io(actions.hold, self.s.spool, qid)
            if change.envelope is None:
                self.s.ledger.remove(qid)
                return change.outcome.value
            if change.changed:
                maillog.held(qid)
            self.s.ledger.note(change.envelope)
        return change.outcome.value

    async def _release(self, qid: str) -> str:
        if qid in self.s.schedule:
            return Outcome.NOT_HELD.value
        change = await self.s.io(actions.release, self.s.spool, qid, self.s.clock())
        envelope = change.envelope
        if envelope is None:
            self.s.ledger.remove(qid)
        elif not change.changed:
            self.s.restore(envelope)  # on disk but unknown: count and schedule it
        else:
            self.s.ledger.note(envelope)
            maillog.released(qid)
            self.s.enqueue(qid, due_time(envelope))  # a scheduled send still waits
        return change.outcome.value

    async def _delete(self, qid: str) -> str:
        with self.out_of_schedule(qid):
            change = await self.s.io(actions.delete, self.s.spool, qid)
            self.s.ledger.remove(qid)
        if change.changed:
            maillog.deleted(qid)
        return change.outcome.value

    async def _bounce(self, qid: str) -> str:
        with self.out_of_schedule(qid):
            try:
                envelope = await self.s.io(self.s.spool.load, qid)
            except FileNotFoundError:
                self.s.ledger.remove(qid)
                return Outcome.NOT_FOUND.value
            await self._bounce_now(envelope)
        return Outcome.BOUNCED.value

    async def _bounce_now(self, envelope: Envelope) -> None:
        qid = envelope.qid
        now = self.s.clock()
        reply = OPERATOR_BOUNCE
        results: list[Result] = []
        for recipient in envelope.recipients:
            if recipient.state is RecipientState.PENDING:
                recipient.state = RecipientState.FAILED
                recipient.last_reply = str(reply)
                results.append(Result(recipient, "failed", reply.enhanced, str(reply)))
                maillog.bounced_unsent(qid, recipient.address, now - envelope.arrival, reply)
        await self.s.notify(envelope, results, None, now)
        await self.s.io(self.s.spool.remove, qid)
        self.s.ledger.remove(qid)
        maillog.removed(qid)

    # --- cancel and reschedule (the HTTP API) ------------------------------------------

    async def load(self, qid: str) -> Envelope | None:
        """The envelope as the spool holds it now; None when the message is not queued."""
        if not ids.is_valid(qid):
            return None
        try:
            return await self.s.io(self.s.spool.load, qid)
        except FileNotFoundError:
            return None

    async def cancel(self, qid: str, by: str) -> list[RecipientCancel] | None:
        return await cancel.cancel(self, qid, by)

    async def reschedule(self, qid: str, send_at: float) -> str:
        return await cancel.reschedule(self, qid, send_at)
