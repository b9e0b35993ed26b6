"""Notices to senders: failed, delayed and (on request) relayed recipients become DSNs.

A notice is a new message from the null sender ``<>``, built by :mod:`smtprelay.bounce`,
spooled durably and delivered by the same pipeline as any other message. The rules keep
smtprelay from ever causing backscatter or a loop:

* one notice per message and event, covering every recipient concerned;
* RCPT ``NOTIFY=`` is honoured (default: FAILURE and DELAY); ``NEVER`` sends nothing;
* nothing is ever sent to the null sender; a message from ``<>`` that fails (usually a
  notice itself) is reported once to ``[bounce] postmaster`` if set, else only logged,
  and a report to the postmaster that fails is only logged;
* mail refused during the SMTP session never gets here: the client had its answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from smtprelay import bounce, ids, maillog
from smtprelay.config import BounceSettings
from smtprelay.dsnparams import notify_wants
from smtprelay.envelope import Client, Envelope, NoticeKind, Recipient, RecipientState
from smtprelay.spool import Spool, SpoolError

POSTMASTER_NOTICE = NoticeKind.POSTMASTER

log = logging.getLogger("smtprelay.bounce")


@dataclass(frozen=True, slots=True)
class Result:
    """What one attempt (or the end of a message's life) did to one recipient."""

    recipient: Recipient
    action: bounce.Action
    status: str
    diagnostic: str | None
    relay: str = "none"
    dsn_passed: bool = False


# A notice just made durable in the spool: its envelope and message, for the scheduler.
Spooled = tuple[Envelope, bytes]


@dataclass
class Notices:
    spool: Spool
    settings: BounceSettings
    hostname: str
    lifetime: float

    def apply(self, settings: BounceSettings) -> None:
        """Reloaded bounce settings, for the next notices."""
        self.settings = settings

    @property
    def from_address(self) -> str:
        return self.settings.sender or f"Mail Delivery System <MAILER-DAEMON@{self.hostname}>"

    async def after_attempt(
        self, envelope: Envelope, results: Sequence[Result], data: bytes | None, now: float
    ) -> list[Spooled]:
        """Spool what this attempt calls for and return it (the caller schedules it);
        may set ``envelope.delay_warned``."""
        spooled: list[Spooled] = []
        if not self.settings.enabled:
            return spooled
        # A canceled recipient is never reported on: the submitter withdrew it.
        results = [r for r in results if r.recipient.state is not RecipientState.CANCELED]
        failed = [r for r in results if r.action == "failed"]
        relayed = [
            r
            for r in results
            if r.action == "relayed"
            and not r.dsn_passed
            and notify_wants(r.recipient.params, "SUCCESS")
        ]
        if failed and not envelope.sender:
            spooled += await self._report_to_postmaster(envelope, failed, data, now)
            failed = []
        if not envelope.sender:
            return spooled
        wanted = [r for r in failed if notify_wants(r.recipient.params, "FAILURE")]
        if wanted:
            copy = [self.settings.notify_admin] if self.settings.notify_admin else []
            spooled += await self._send(envelope, wanted, data, now, NoticeKind.FAILURE, copy)
        if relayed:
            spooled += await self._send(envelope, relayed, data, now, NoticeKind.SUCCESS, [])
        spooled += await self._maybe_warn(envelope, data, now)
        return spooled

    async def _maybe_warn(
        self, envelope: Envelope, data: bytes | None, now: float
    ) -> list[Spooled]:
        delay = self.settings.delay_warning
        # A scheduled send is late from its send time on, not from its submission.
        start = max(envelope.arrival, envelope.send_at or envelope.arrival)
        if not delay or envelope.delay_warned or now - start < delay:
            return []
        pending = [r for r in envelope.recipients if r.state is RecipientState.PENDING]
        wanted = [
            Result(
                r, "delayed", _status(r.last_reply, "4.0.0"), r.last_reply, r.last_relay or "none"
            )
            for r in pending
            if notify_wants(r.params, "DELAY")
        ]
        if pending:
            envelope.delay_warned = True  # once per message, even if nobody wanted it
        if wanted:
            return await self._send(envelope, wanted, data, now, NoticeKind.DELAY, [])
        return []

    async def _report_to_postmaster(
        self, envelope: Envelope, failed: Sequence[Result], data: bytes | None, now: float
    ) -> list[Spooled]:
        if not self.settings.postmaster or envelope.notice == POSTMASTER_NOTICE:
            for result in failed:
                maillog.notice_discarded(envelope.qid, result.recipient.address)
            return []
        return await self._send(
            envelope, failed, data, now, POSTMASTER_NOTICE, [], to=self.settings.postmaster
        )

    async def _send(
        self,
        envelope: Envelope,
        results: Sequence[Result],
        data: bytes | None,
        now: float,
        kind: NoticeKind,
        copies: list[str],
        to: str | None = None,
    ) -> list[Spooled]:
        """Spool one notice (returned in a list: none when it could not be built).

        A notice that cannot be written (full disk) raises: the attempt is then not
        recorded and is made again later, so the sender is not left without one. A notice
        that cannot be built (a bug; retrying would not help) is logged and given up.
        """
        try:
            loop = asyncio.get_running_loop()
            if data is None:
                data = await loop.run_in_executor(None, self.spool.read_message, envelope.qid)
            recipient = to or envelope.sender
            ret = envelope.mail_params.get("RET", "").upper() or None
            qid = ids.new_id(now)
            message = bounce.build_dsn(
                original=data,
                envelope_sender=recipient,
                reporting_mta=self.hostname,
                arrival=envelope.arrival,
                recipients=[
                    _dsn_recipient(r, now, envelope.arrival + self.lifetime) for r in results
                ],
                from_address=self.from_address,
                now=now,
                envid=envelope.mail_params.get("ENVID"),
                ret="HDRS" if ret == "HDRS" else "FULL" if ret == "FULL" else None,
                max_original_bytes=self.settings.max_return_size,
                qid=envelope.qid,  # the ID the sender can quote and the operator can grep
            )
            params: dict[str, str] = {}
            if not message.split(b"\r\n\r\n", 1)[0].isascii():
                params["SMTPUTF8"] = ""
            if not message.isascii():
                params["BODY"] = "8BITMIME"
            notice = Envelope(
                qid=qid,
                sender="",
                recipients=[Recipient(a) for a in [recipient, *copies]],
                client=Client(ip="127.0.0.1", port=0, helo=self.hostname, protocol="local"),
                arrival=now,
                size=len(message),
                mail_params=params,
                next_attempt=now,
                notice=kind,
            )
            await loop.run_in_executor(None, self.spool.commit, notice, message)
            maillog.notice_sent(envelope.qid, kind, qid)
            maillog.queued(qid, "", len(message), len(notice.recipients))
            return [(notice, message)]
        except (SpoolError, OSError):
            raise
        except Exception:
            log.exception("%s: cannot create the %s notice", envelope.qid, kind)
            return []


def _dsn_recipient(result: Result, now: float, retry_until: float) -> bounce.DSNRecipient:
    host = result.relay.split("[", 1)[0] if result.relay != "none" else None
    return bounce.DSNRecipient(
        address=result.recipient.address,
        original=result.recipient.params.get("ORCPT"),
        action=result.action,
        status=result.status,
        diagnostic=result.diagnostic,
        remote_mta=host,
        last_attempt=now,
        will_retry_until=retry_until if result.action == "delayed" else None,
    )


def _status(reply: str | None, default: str) -> str:
    """The enhanced code of a stored reply ("451 4.4.1 ..."), or ``default``."""
    if reply:
        parts = reply.split()
        if len(parts) > 1 and parts[1].count(".") == 2:
            return parts[1]
    return default
