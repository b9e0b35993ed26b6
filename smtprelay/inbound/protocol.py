"""One SMTP session: the verbs of aiosmtpd's state machine, done the relay's way.

aiosmtpd parses the command loop, STARTTLS and the AUTH exchange; :mod:`.commandloop`
writes the replies (one write per pipelined batch) and keeps the junk and unknown
command limits. This subclass implements what a relay must get exactly right:

* EHLO/HELO: the capabilities offered (AUTH only once it may be used).
* AUTH: the credentials decoded by :mod:`.sasl`, checked by :mod:`.auth`.
* MAIL / RCPT: strict path parsing (CR, LF, NUL refused; :mod:`.address`), ESMTP
  parameters (:mod:`.esmtpparams`), relay policy (:mod:`.policy`), and a reply code with
  an enhanced status code for every outcome, logged as Postfix logs its rejects.
* DATA: read in large chunks rather than line by line; only ``<CRLF>.<CRLF>`` ends the
  data (``<LF>.<LF>``, ``<CR>.<CR>`` and ``<LF>.<CR><LF>`` never do); size, NUL bytes and
  the process's memory budget are enforced while reading (:mod:`.datareader`); the
  complete transaction goes to the intake (:mod:`.handler`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Callable

from smtprelay import ids, maillog, replies
from smtprelay.envelope import Client, Recipient
from smtprelay.inbound import address, esmtpparams, proxyheader
from smtprelay.inbound.connection import Connection
from smtprelay.inbound.datareader import DataReader
from smtprelay.inbound.greeting import Greeting
from smtprelay.inbound.greeting import _valid_utf8 as _valid_utf8  # named here by tests
from smtprelay.inbound.handler import Intake, Transaction
from smtprelay.inbound.proxyheader import Network
from smtprelay.replies import Reply

log = logging.getLogger("smtprelay.inbound")

# How much of the stream the reader buffers: large, so DATA is read in a few big chunks.
_READ_LIMIT = 256 * 1024


class Session(Greeting):
    """An inbound SMTP session (see the module's description)."""

    line_length_limit = _READ_LIMIT

    def __init__(
        self,
        intake: Intake,
        *,
        hostname: str,
        max_message_size: int,
        timeout: float,
        allow_plaintext_auth: bool,
        plaintext_networks: tuple[Network, ...] = (),
        tls_context: ssl.SSLContext,
        implicit_tls: bool,
        handshake_timeout: float,
        min_tls_version: str,
        proxy_from: tuple[Network, ...],
        on_close: Callable[[Connection], None],
    ) -> None:
        self.plaintext_networks = plaintext_networks  # before aiosmtpd sets the flag below
        super().__init__(
            intake,
            max_message_size=max_message_size,
            tls_context=tls_context,
            implicit_tls=implicit_tls,
            handshake_timeout=handshake_timeout,
            min_tls_version=min_tls_version,
            proxy_from=proxy_from,
            on_close=on_close,
            data_size_limit=max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="ESMTP smtprelay",
            timeout=timeout,
            # On the implicit-TLS port the whole connection is encrypted already.
            auth_require_tls=not (allow_plaintext_auth or implicit_tls),
            loop=asyncio.get_running_loop(),
        )
        self.command_size_limits = collections.defaultdict(
            lambda: 512, {"MAIL": 1024, "RCPT": 1024}
        )
        self.txn: Transaction | None = None

    # aiosmtpd reads this at AUTH (538 5.7.11 without TLS) and the EHLO offer reads it:
    # ``[auth] plaintext_networks`` lifts the rule for clients there, once the client's
    # address is known (after a PROXY header, the real client's).
    @property
    def _auth_require_tls(self) -> bool:
        return self._tls_for_auth and not (
            self.plaintext_networks and proxyheader.allowed(self.ip, self.plaintext_networks)
        )

    @_auth_require_tls.setter
    def _auth_require_tls(self, value: bool) -> None:
        self._tls_for_auth = value

    # --- what the connection below needs to know ------------------------------------

    def in_transaction(self) -> bool:
        return self.txn is not None

    def forget_transaction(self) -> None:
        self.txn = None

    def transaction_qid(self) -> str | None:
        return self.txn.qid if self.txn else None

    def _reject_context(self) -> tuple[str | None, str | None]:
        txn = self.txn
        if txn is None:
            return None, None
        return txn.sender, txn.qid if txn.recipients else None

    # --- MAIL / RCPT --------------------------------------------------------------

    async def _open_transaction(self, count: str, stage: str) -> Transaction | None:
        """RCPT's and DATA's common start: count the command, then the open transaction,
        or None once the client has been told why there is none (no HELO, no MAIL)."""
        self.counts[count] += 1
        self.stage = stage
        if await self.check_helo_needed():
            return None
        if self.txn is None:
            await self.push(replies.NEED_MAIL)
        return self.txn

    async def _path_argument(self, keyword: str, arg: str | None, usage: str) -> str | None:
        """What follows ``FROM:`` or ``TO:``; None once the syntax reply (``usage``) went."""
        argument = self._strip_command_keyword(keyword, arg or "")
        if argument is None:
            await self.push(replies.syntax(usage))
        return argument

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.counts["mail"] += 1
        self.stage = "MAIL"
        if await self.check_helo_needed():
            return
        if self.txn is not None:
            await self.push(replies.NESTED_MAIL)
            return
        argument = await self._path_argument("FROM:", arg, "MAIL FROM:<address>")
        if argument is None:
            return
        try:
            parsed = address.parse(argument, allow_null=True, utf8=True)
        except address.PathError as e:
            await self._reject("MAIL", esmtpparams.mail_path_reply(e))
            return
        assert self.session is not None
        reply = esmtpparams.check_mail(
            parsed.params,
            parsed.address,
            extended=bool(self.session.extended_smtp),
            max_message_size=self.max_message_size,
        )
        if reply is None:
            reply = self.intake.policy.check_sender(parsed.address)
            if reply is not None:  # policy refusals name the address, as Postfix does
                reply = reply.with_text(f"<{parsed.address}>: {reply.text}")
        if reply is not None:
            await self._reject("MAIL", reply, sender=parsed.address)
            return
        self.txn = Transaction(ids.new_id(), parsed.address, parsed.params)
        await self.push(replies.SENDER_OK)

    async def smtp_RCPT(self, arg: str | None) -> None:
        txn = await self._open_transaction("rcpt", "RCPT")
        if txn is None:
            return
        argument = await self._path_argument("TO:", arg, "RCPT TO:<address>")
        if argument is None:
            return
        try:
            parsed = address.parse(
                argument, allow_null=False, utf8=esmtpparams.utf8(txn.mail_params)
            )
        except address.PathError as e:
            await self._reject(
                "RCPT", esmtpparams.rcpt_path_reply(e), recipient=argument.strip(" <>")[:100]
            )
            return
        bad = esmtpparams.check_rcpt(parsed.params)
        if bad is not None:
            await self._reject("RCPT", bad, recipient=parsed.address)
            return
        assert self.session is not None
        may_relay = bool(self.session.authenticated) or self.intake.policy.is_trusted(self.ip)
        reply = self.intake.policy.check_recipient(
            parsed.address, may_relay=may_relay, count=len(txn.recipients)
        )
        if reply is not None:
            if reply.code >= 500:  # policy refusals name the address, as Postfix does
                reply = reply.with_text(f"<{parsed.address}>: {reply.text}")
            await self._reject("RCPT", reply, recipient=parsed.address)
            return
        if not txn.recipients:
            self.log_client(txn)
        txn.recipients.append(Recipient(parsed.address, params=parsed.params))
        await self.push(replies.RECIPIENT_OK)

    def log_client(self, txn: Transaction) -> None:
        """The transaction's first line under its QID (a local submission logs its own)."""
        maillog.client(txn.qid, self.ip, self.auth_method, self.auth_user)

    # --- DATA ---------------------------------------------------------------------

    async def smtp_DATA(self, arg: str | None) -> None:
        txn = await self._open_transaction("data", "DATA")
        if txn is None:
            return
        if not txn.recipients:
            await self.push(replies.NEED_RCPT)
            return
        if arg:
            await self.push(replies.syntax("DATA"))
            return
        budget = self.intake.data_budget
        if not budget.has_room(esmtpparams.size_hint(txn.mail_params), self.max_message_size):
            # Nothing to read into: say so before the client sends the data.
            maillog.data_memory_exhausted(self.ip, budget.limit(self.max_message_size), txn.qid)
            await self._reject("DATA", replies.NO_SPACE)
            return
        await self.push(replies.START_DATA)
        reader = DataReader(
            self._reader,
            max_message_size=self.max_message_size,
            budget=budget,
            on_chunk=self._reset_timeout,
        )
        try:
            raw = await self._read_data(reader)
            self.stage = "END-OF-MESSAGE"
            if isinstance(raw, Reply):
                reply = raw
                if reply == replies.NO_SPACE:
                    maillog.data_memory_exhausted(
                        self.ip, budget.limit(self.max_message_size), txn.qid
                    )
                maillog.reject("END-OF-MESSAGE", self.ip, reply, sender=txn.sender, qid=txn.qid)
            else:
                reply = await self.intake.accept(txn, self._client(), raw)
                if reply.code == 250:  # as Postfix: junk is counted between messages
                    self.junk_commands = 0
        finally:
            reader.release()
            self.txn = None
        await self.push(reply)

    async def _read_data(self, reader: DataReader) -> bytes | Reply:
        """The data up to ``<CRLF>.<CRLF>`` (still dot-stuffed, without ``.<CRLF>``), or
        the reply refusing it (too large, NUL bytes, no memory): see :mod:`.datareader`."""
        self.flush_replies()  # the 354, even if the client sent data before it
        return await reader.read()

    def _client(self) -> Client:
        assert self.session is not None
        helo = self.session.host_name or ""
        smtputf8 = self.txn is not None and esmtpparams.utf8(self.txn.mail_params)
        protocol = ("UTF8SMTP" if smtputf8 else "ESMTP") if self.session.extended_smtp else "SMTP"
        if self.encrypted and self.session.extended_smtp:
            protocol += "S"
        if self.auth_user and self.session.extended_smtp:
            protocol += "A"
        return Client(
            ip=self.ip,
            port=self._peer[1] if self._peer else 0,
            helo=helo,
            auth_user=self.auth_user,
            auth_method=self.auth_method,
            tls=self.tls_description(),
            protocol=protocol,
        )
