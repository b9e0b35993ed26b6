"""Decisions and hand-off for one accepted transaction: message bytes -> spool -> reply.

The protocol module speaks SMTP; this module decides what a complete transaction
becomes. It is the only place in the inbound stage that touches the spool, and it
answers ``250 ... queued as QID`` only after the message file is durable, i.e. after the
message and its envelope are written, linked into the queue and fsynced, and the
directory is fsynced.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from smtprelay import maillog, replies
from smtprelay.envelope import Client, Envelope, Recipient
from smtprelay.inbound import message
from smtprelay.inbound.auth import Authenticator
from smtprelay.inbound.datareader import DataBudget
from smtprelay.inbound.policy import Policy
from smtprelay.replies import Reply
from smtprelay.spool import Spool, SpoolError


@dataclass
class Transaction:
    """One MAIL .. DATA exchange; the queue ID is assigned at MAIL, as Postfix does."""

    qid: str
    sender: str
    mail_params: dict[str, str]
    recipients: list[Recipient] = field(default_factory=list)


@dataclass
class Intake:
    """What every inbound session shares: policy, credentials, spool."""

    hostname: str
    policy: Policy
    authenticator: Authenticator | None
    spool: Spool
    max_message_size: int
    # Told about each message once it is durable (the delivery stage listens here).
    on_queued: Callable[[Envelope, bytes], None] | None = None
    # Name the AUTH user in Received: ([auth] authenticated_header).
    authenticated_header: bool = False
    # Message data the sessions of this process hold in memory (all of them together).
    data_budget: DataBudget = field(default_factory=DataBudget)

    async def accept(self, txn: Transaction, client: Client, raw: bytes) -> Reply:
        body, bare = message.normalize(raw)
        if len(body) > self.max_message_size:
            maillog.reject(
                "END-OF-MESSAGE", client.ip, replies.SIZE_EXCEEDED, sender=txn.sender, qid=txn.qid
            )
            return replies.SIZE_EXCEEDED
        if bare:
            maillog.normalized_line_endings(txn.qid, client.ip, bare)
        facts = message.header_facts(body)
        now = time.time()
        trace = self.received(txn, client, now)
        data = trace + message.origin_headers(facts, txn.qid, self.hostname, now) + body
        envelope = Envelope(
            qid=txn.qid,
            sender=txn.sender,
            recipients=txn.recipients,
            client=client,
            arrival=now,
            size=len(data),
            mail_params=txn.mail_params,
            next_attempt=now,
            message_id=facts.message_id or f"<{txn.qid}@{self.hostname}>",
        )
        try:
            # The file is written here (page cache only); the thread only waits for the
            # disk: one hand-off per message, not one per system call.
            new_file = self.spool.create(envelope, data)
            commit = asyncio.get_running_loop().run_in_executor(None, new_file.sync)
            await asyncio.shield(commit)
        except SpoolError as e:
            maillog.spool_error(txn.qid, str(e))
            return replies.NO_SPACE if e.no_space else replies.LOCAL_ERROR
        except asyncio.CancelledError:
            # The client went away during the commit, which goes on in its thread. If it
            # succeeds the message exists: it must reach delivery even without a 250
            # (the client will send it again; a duplicate beats a message left behind).
            commit.add_done_callback(lambda done: self._committed_late(done, envelope, data))
            raise
        self._queued(envelope, data)
        return replies.queued(txn.qid)

    def received(self, txn: Transaction, client: Client, now: float) -> bytes:
        """The Received: header (a local submission writes its own)."""
        return message.received_header(
            helo=client.helo,
            ip=client.ip,
            hostname=self.hostname,
            protocol=client.protocol,
            qid=txn.qid,
            tls=client.tls,
            auth_user=client.auth_user if self.authenticated_header else None,
            recipients=[r.address for r in txn.recipients],
            now=now,
        )

    def _queued(self, envelope: Envelope, data: bytes) -> None:
        maillog.message_id(envelope.qid, envelope.message_id or "")
        maillog.queued(envelope.qid, envelope.sender, envelope.size, len(envelope.recipients))
        if self.on_queued is not None:
            self.on_queued(envelope, data)

    def _committed_late(self, done: asyncio.Future[None], envelope: Envelope, data: bytes) -> None:
        if not done.cancelled() and done.exception() is None:
            self._queued(envelope, data)
