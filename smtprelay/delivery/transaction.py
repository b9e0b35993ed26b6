"""One mail transaction on a ready session: MAIL, RCPT, DATA, per-recipient outcomes.

Two paths, with the same accounting of replies: one command at a time, and RFC 2920
pipelining (pipelining.py) when the server offers it. Each RCPT reply is kept; the
reply to the final dot applies to every recipient the server accepted. A refusal of
MAIL FROM with 4xx, or a connection lost before MAIL was answered, moves the attempt to
the next hop (TryNextHop, or StaleConnection for a reused connection); after that a
broken conversation is a transient outcome for the recipients not yet answered.

The transport has its own DATA path: aiosmtplib's ``data()`` re-normalises line
endings with a regex over the whole message; spooled messages are CRLF-clean already,
so stuffing is one ``bytes.replace`` -- the difference is most of the CPU cost of a
large message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

from smtprelay.delivery import errors
from smtprelay.delivery.errors import (
    DeliveryError,
    LinkLost,
    StaleConnection,
    TryNextHop,
    remote_reply,
)
from smtprelay.delivery.outcome import RecipientOutcome
from smtprelay.delivery.pipelining import BatchReplies
from smtprelay.delivery.pool import Connection, Pool
from smtprelay.delivery.session import Timeouts
from smtprelay.replies import Reply

TOO_BIG = Reply(552, "5.3.4", "Message too big for the next hop")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Next hop does not support SMTPUTF8, required by this message")
NEEDS_8BITMIME = Reply(554, "5.6.3", "Next hop does not support 8-bit content (8BITMIME)")

_Each = Callable[..., list[RecipientOutcome]]


class Transaction:
    """One message on one connection; the connection goes back to ``pool`` if usable."""

    def __init__(self, conn: Connection, pool: Pool, timeouts: Timeouts) -> None:
        self.conn = conn
        self.pool = pool
        self.timeouts = timeouts

    async def run(
        self,
        sender: str,
        recipients: list[str],
        data: bytes,
        mail_params: dict[str, str],
        rcpt_params: dict[str, dict[str, str]],
        connect_time: float,
    ) -> list[RecipientOutcome]:
        conn = self.conn
        client, relay = conn.client, str(conn.hop)
        started = time.monotonic()
        dsn = client.supports_extension("dsn")

        def each(reply: Reply, rcpts: list[str] = recipients) -> list[RecipientOutcome]:
            spent = time.monotonic() - started
            passed = dsn and reply.code < 300
            return [RecipientOutcome(r, reply, relay, connect_time, spent, passed) for r in rcpts]

        options, refusal = _mail_options(client, data, mail_params)
        if refusal is not None:
            self.pool.checkin(conn)
            return each(refusal)
        protocol = client.protocol
        if (
            client.supports_extension("pipelining")
            and protocol is not None
            and protocol.transport is not None
        ):  # else: the lost connection shows below
            return await self._pipelined(
                sender, recipients, data, options, rcpt_params if dsn else {}, each
            )
        try:
            with errors.link_errors():
                response = await client.execute_command(
                    b"MAIL", b"FROM:<" + sender.encode() + b">", *options
                )
        except LinkLost as e:
            client.close()
            if conn.transactions:
                raise StaleConnection from None
            raise TryNextHop(DeliveryError(e.reply, relay)) from None
        accepted: list[str] = []
        outcomes: list[RecipientOutcome] = []
        try:
            with errors.link_errors():
                if response.code != 250:
                    return await self._mail_refused(response, each)
                for rcpt in recipients:
                    extra = _dsn_rcpt_options(rcpt_params.get(rcpt, {})) if dsn else []
                    response = await client.execute_command(
                        b"RCPT", b"TO:<" + rcpt.encode() + b">", *extra
                    )
                    if _rcpt_taken(rcpt, response, outcomes, each):
                        accepted.append(rcpt)
                if not accepted:
                    await self._reset_or_close()
                    return outcomes
                response = await self._send_data(data)
                reply = remote_reply(response.code, response.message)
                if response.code != 250:
                    await self._reset_or_close()
                    return outcomes + each(reply, accepted)
        except LinkLost as e:
            client.close()
            done = {o.address for o in outcomes}
            return outcomes + each(e.reply, [r for r in recipients if r not in done])
        conn.transactions += 1
        self.pool.checkin(conn)
        return outcomes + each(reply, accepted)

    async def _pipelined(
        self,
        sender: str,
        recipients: list[str],
        data: bytes,
        options: list[bytes],
        rcpt_params: dict[str, dict[str, str]],
        each: _Each,
    ) -> list[RecipientOutcome]:
        """RFC 2920: MAIL, every RCPT and DATA in one write, then their replies in order,
        then the message: two round trips instead of three plus one per recipient.
        Replies count exactly as in the one-command-at-a-time path."""
        conn = self.conn
        client, relay = conn.client, str(conn.hop)
        protocol = client.protocol
        assert protocol is not None and protocol.transport is not None
        # uvloop's transports do not subclass asyncio's, hence a cast and not an assert.
        transport = cast(asyncio.WriteTransport, protocol.transport)
        commands = [b" ".join([b"MAIL", b"FROM:<" + sender.encode() + b">", *options])]
        commands += [
            b" ".join(
                [
                    b"RCPT",
                    b"TO:<" + rcpt.encode() + b">",
                    *_dsn_rcpt_options(rcpt_params.get(rcpt, {})),
                ]
            )
            for rcpt in recipients
        ]
        commands.append(b"DATA")
        if any(b"\r" in c or b"\n" in c for c in commands):  # never re-targeted on output
            raise ValueError("command contains a line break")
        mail: aiosmtplib.SMTPResponse | None = None
        try:
            with errors.link_errors():
                async with BatchReplies(transport, self.timeouts.command) as batch:
                    transport.write(b"\r\n".join(commands) + b"\r\n")
                    mail = await batch.next()
                    rcpt_replies = [await batch.next() for _ in recipients]
                    go_ahead = await batch.next()
                    if go_ahead.code == 354 and (
                        mail.code != 250 or not any(r.code in (250, 251) for r in rcpt_replies)
                    ):
                        # A server that said 354 anyway gets an empty message (then RSET).
                        transport.write(b".\r\n")
                        await batch.next()
        except LinkLost as e:
            client.close()
            if mail is None and conn.transactions:
                raise StaleConnection from None
            if mail is None:
                raise TryNextHop(DeliveryError(e.reply, relay)) from None
            return each(e.reply)  # nothing was sent
        if mail.code != 250:
            return await self._mail_refused(mail, each)
        outcomes: list[RecipientOutcome] = []
        accepted = [
            rcpt
            for rcpt, response in zip(recipients, rcpt_replies, strict=True)
            if _rcpt_taken(rcpt, response, outcomes, each)
        ]
        if not accepted:
            await self._reset_or_close()
            return outcomes
        if go_ahead.code != 354:
            await self._reset_or_close()
            return outcomes + each(remote_reply(go_ahead.code, go_ahead.message), accepted)
        try:
            with errors.link_errors():
                response = await self._send_payload(protocol, data)
        except LinkLost as e:
            client.close()
            return outcomes + each(e.reply, accepted)
        reply = remote_reply(response.code, response.message)
        if response.code != 250:
            await self._reset_or_close()
            return outcomes + each(reply, accepted)
        conn.transactions += 1
        self.pool.checkin(conn)
        return outcomes + each(reply, accepted)

    async def _mail_refused(
        self, response: aiosmtplib.SMTPResponse, each: _Each
    ) -> list[RecipientOutcome]:
        """MAIL not accepted: the next hop for a 4xx, a failure of every recipient for 5xx."""
        reply = remote_reply(response.code, response.message)
        await self._reset_or_close()
        if reply.is_temporary:
            raise TryNextHop(DeliveryError(reply, str(self.conn.hop)))
        return each(reply)

    async def _send_payload(self, protocol: SMTPProtocol, data: bytes) -> aiosmtplib.SMTPResponse:
        # ``data`` is folded already: every line a fold made starts with a space or a tab,
        # so stuffing after folding sees each line that starts with "." as it is sent.
        payload = b"." + data if data.startswith(b".") else data
        payload = payload.replace(b"\r\n.", b"\r\n..")
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        protocol.write(payload + b".\r\n")
        # No await between the write and this call: the reply cannot be missed.
        response: aiosmtplib.SMTPResponse = await protocol.read_response(timeout=self.timeouts.data)
        return response

    async def _send_data(self, data: bytes) -> aiosmtplib.SMTPResponse:
        """DATA, the message dot-stuffed, the final dot; the 354 or the final reply."""
        client = self.conn.client
        response = await client.execute_command(b"DATA")
        if response.code != 354 or client.protocol is None:
            return response
        return await self._send_payload(client.protocol, data)

    async def _reset_or_close(self) -> None:
        client = self.conn.client
        try:
            with errors.link_errors():
                response = await client.rset()
        except LinkLost:
            client.close()
            return
        if response.code == 250:
            self.pool.checkin(self.conn)
        else:
            client.close()


def _mail_options(
    client: aiosmtplib.SMTP, data: bytes, params: dict[str, str]
) -> tuple[list[bytes], Reply | None]:
    options: list[bytes] = []
    if client.supports_extension("size"):
        limit = client.esmtp_extensions.get("size", "")
        if limit.isdigit() and 0 < int(limit) < len(data):
            return [], TOO_BIG.with_text(f"{TOO_BIG.text} (limit {limit} bytes)")
        options.append(f"SIZE={len(data)}".encode())
    if "SMTPUTF8" in params:
        if not client.supports_extension("smtputf8"):
            return [], NEEDS_SMTPUTF8
        options.append(b"SMTPUTF8")
    if client.supports_extension("dsn"):
        options += [f"{k}={params[k]}".encode() for k in ("RET", "ENVID") if k in params]
    if params.get("BODY", "").upper() == "8BITMIME" or not data.isascii():
        if client.supports_extension("8bitmime"):
            options.append(b"BODY=8BITMIME")
        elif not data.isascii():
            return [], NEEDS_8BITMIME
    return options, None


def _rcpt_taken(
    rcpt: str,
    response: aiosmtplib.SMTPResponse,
    outcomes: list[RecipientOutcome],
    each: _Each,
) -> bool:
    """True if the RCPT reply accepts ``rcpt``; else its outcome is added to ``outcomes``."""
    if response.code in (250, 251):
        return True
    outcomes += each(remote_reply(response.code, response.message), [rcpt])
    return False


def _dsn_rcpt_options(params: dict[str, str]) -> list[bytes]:
    return [f"{k}={params[k]}".encode() for k in ("NOTIFY", "ORCPT") if k in params]
