"""One SMTP session: aiosmtpd's state machine with the relay's own MAIL, RCPT and DATA.

aiosmtpd parses the command loop, STARTTLS and the AUTH exchange. This subclass
replaces what a relay must get exactly right:

* MAIL / RCPT: strict path parsing (CR, LF, NUL refused), ESMTP parameters, relay
  policy, and a reply code with an enhanced status code for every outcome.
* DATA: read in large chunks rather than line by line; only ``<CRLF>.<CRLF>`` ends the
  data (``<LF>.<LF>``, ``<CR>.<CR>`` and ``<LF>.<CR><LF>`` never do); size is enforced while
  reading without buffering an oversized message.
* every reply carries an enhanced status code (RFC 2034), and an internal fault is a
  ``451 4.3.0`` plus a log line, never aiosmtpd's ``500`` with the exception text.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import logging
import ssl
from base64 import b64decode
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import MISSING

from smtprelay import ids, maillog, replies
from smtprelay.envelope import Client, Recipient
from smtprelay.inbound import address, dsnparams
from smtprelay.inbound.connection import Connection
from smtprelay.inbound.handler import Intake, Transaction
from smtprelay.inbound.proxyheader import Network
from smtprelay.replies import Reply

log = logging.getLogger("smtprelay.inbound")

_END_OF_LINE_DOT = b".\r\n"
_TERMINATOR = b"\r\n.\r\n"
# How much of the stream the reader buffers: large, so DATA is read in a few big chunks.
_READ_LIMIT = 256 * 1024
_MAIL_PARAMS = {"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID"}
_RCPT_PARAMS = {"NOTIFY", "ORCPT"}


class Session(Connection):
    line_length_limit = _READ_LIMIT

    def __init__(
        self,
        intake: Intake,
        *,
        hostname: str,
        max_message_size: int,
        timeout: float,
        allow_plaintext_auth: bool,
        tls_context: ssl.SSLContext,
        implicit_tls: bool,
        handshake_timeout: float,
        min_tls_version: str,
        proxy_from: tuple[Network, ...],
        on_close: Callable[[Connection], None],
    ) -> None:
        super().__init__(
            tls_context=tls_context,
            implicit_tls=implicit_tls,
            handshake_timeout=handshake_timeout,
            min_tls_version=min_tls_version,
            proxy_from=proxy_from,
            on_close=on_close,
            handler=_Hooks(self),
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
        self.intake = intake
        self.max_message_size = max_message_size
        self.command_size_limits = collections.defaultdict(
            lambda: 512, {"MAIL": 1024, "RCPT": 1024}
        )
        self.txn: Transaction | None = None
        self.auth_user: str | None = None
        self.auth_method: str | None = None

    # --- what the connection below needs to know ------------------------------------

    def in_transaction(self) -> bool:
        return self.txn is not None

    def forget_transaction(self) -> None:
        self.txn = None

    def after_starttls(self) -> None:
        self.auth_user = self.auth_method = None

    def _set_rset_state(self) -> None:
        super()._set_rset_state()  # type: ignore[no-untyped-call]
        self.txn = None

    @property
    def encrypted(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    def tls_description(self) -> str | None:
        if not self.encrypted or self.transport is None:
            return None
        obj = self.transport.get_extra_info("ssl_object")
        if obj is None:
            return None
        cipher = obj.cipher()
        bits = f" ({cipher[2]}/{cipher[2]} bits)" if cipher else ""
        return f"{obj.version()} with cipher {cipher[0] if cipher else 'unknown'}{bits}"

    # --- replies ------------------------------------------------------------------

    async def push(self, status: str | bytes | Reply) -> None:
        if isinstance(status, bytes):  # only aiosmtpd's AUTH challenges are pre-encoded
            await super().push(status)
            return
        await super().push(replies.add_enhanced_code(str(status)))
        if self.closing and self.txn is None:
            self.hang_up(replies.SHUTTING_DOWN)

    async def _push_raw(self, line: str) -> None:
        await super().push(line)

    async def _reject(
        self, command: str, reply: Reply, *, sender: str | None = None,
        recipient: str | None = None,
    ) -> None:
        """Refuse a command and log it, keyed by the QID once one was logged for this
        transaction (after its first accepted recipient), else NOQUEUE, as Postfix does."""
        txn = self.txn
        maillog.reject(
            command,
            self.ip,
            reply,
            sender=sender if sender is not None else txn.sender if txn else None,
            recipient=recipient,
            helo=self.session.host_name if self.session else None,
            qid=txn.qid if txn and txn.recipients else None,
            proto="ESMTP" if self.session and self.session.extended_smtp else "SMTP",
        )
        await self.push(reply)

    # --- greeting -----------------------------------------------------------------

    async def smtp_HELO(self, hostname: str) -> None:
        await self._greet(hostname, extended=False)

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._greet(hostname, extended=True)

    async def _greet(self, hostname: str | None, *, extended: bool) -> None:
        verb = "EHLO" if extended else "HELO"
        self.counts[verb.lower()] += 1
        self.stage = verb
        if not hostname:
            await self.push(f"501 5.5.4 Syntax: {verb} hostname")
            return
        if (any(c in hostname for c in address.FORBIDDEN) or " " in hostname.strip()
                or not _valid_utf8(hostname)):
            await self._reject(verb, replies.BAD_HELO)
            return
        assert self.session is not None
        self._set_rset_state()
        self.session.extended_smtp = extended
        self.session.host_name = hostname
        if not extended:
            await self._push_raw(f"250 {self.hostname}")
            return
        lines = [
            self.hostname,
            "PIPELINING",
            f"SIZE {self.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "DSN",
        ]
        if self.tls_context and not self._tls_protocol:
            lines.append("STARTTLS")
        if self._auth_offered():
            lines.append("AUTH PLAIN LOGIN")
        for line in lines[:-1]:
            await self._push_raw(f"250-{line}")
        await self._push_raw(f"250 {lines[-1]}")

    def _auth_offered(self) -> bool:
        authenticator = self.intake.authenticator
        if authenticator is None:
            return False
        try:
            authenticator.refresh()
        except Exception:
            log.exception("users file unreadable; AUTH not offered")
            return False
        return authenticator.has_users and (self.encrypted or not self._auth_require_tls)

    # --- AUTH (called through aiosmtpd's smtp_AUTH, which checks TLS and state) -------

    async def authenticate(self, args: list[str]) -> str | None:
        self.counts["auth"] += 1
        self.stage = "AUTH"
        authenticator = self.intake.authenticator
        if authenticator is None or not self._auth_offered():
            return str(replies.AUTH_UNAVAILABLE)
        mechanism = args[0].upper()
        credentials = await self._read_credentials(mechanism, args[1] if len(args) > 1 else None)
        if credentials is None:
            return None  # the exchange was aborted and already answered
        if isinstance(credentials, Reply):
            return str(credentials)
        username, password = credentials
        if await authenticator.verify(self.ip, username, password):
            assert self.session is not None
            self.session.authenticated = True
            self.auth_user, self.auth_method = username, mechanism
            return str(replies.AUTH_OK)
        # verify() has already waited out this client's penalty for failing before.
        maillog.auth_failed(self.ip, mechanism, username)
        return str(replies.AUTH_FAILED)

    async def _read_credentials(
        self, mechanism: str, initial: str | None
    ) -> tuple[str, bytes] | Reply | None:
        bad_base64 = Reply(501, "5.5.2", "Cannot decode base64")
        if mechanism == "PLAIN":
            if initial is None:
                blob = await self.challenge_auth("")
                if blob is MISSING:
                    return None
            else:
                try:
                    blob = b64decode(initial, validate=True) if initial != "=" else b""
                except binascii.Error:
                    return bad_base64
            parts = blob.split(b"\0")
            if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
                return Reply(501, "5.5.2", "Malformed PLAIN credentials")
            user_bytes, password = parts[1], parts[2]
        else:  # LOGIN; aiosmtpd has already refused mechanisms we do not implement
            if initial is None:
                user_blob = await self.challenge_auth("Username:")
                if user_blob is MISSING:
                    return None
            else:
                try:
                    user_blob = b64decode(initial, validate=True)
                except binascii.Error:
                    return bad_base64
            password_blob = await self.challenge_auth("Password:")
            if password_blob is MISSING:
                return None
            user_bytes, password = user_blob, password_blob
        try:
            return user_bytes.decode("utf-8"), password
        except UnicodeDecodeError:
            return replies.AUTH_FAILED

    # --- MAIL / RCPT --------------------------------------------------------------

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.counts["mail"] += 1
        self.stage = "MAIL"
        if await self.check_helo_needed():
            return
        if self.txn is not None:
            await self.push(replies.NESTED_MAIL)
            return
        argument = self._strip_command_keyword("FROM:", arg or "")
        if argument is None:
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        try:
            parsed = address.parse(argument, allow_null=True, utf8=True)
        except address.ParameterError:
            await self._reject("MAIL", replies.BAD_PARAMETER)
            return
        except address.PathError:
            await self._reject("MAIL", replies.BAD_SENDER_SYNTAX)
            return
        reply = self._check_mail_params(parsed)
        if reply is None:
            reply = self.intake.policy.check_sender(parsed.address)
            if reply is not None:  # policy refusals name the address, as Postfix does
                reply = reply.with_text(f"<{parsed.address}>: {reply.text}")
        if reply is not None:
            await self._reject("MAIL", reply, sender=parsed.address)
            return
        self.txn = Transaction(ids.new_id(), parsed.address, parsed.params)
        await self.push(replies.SENDER_OK)

    def _check_mail_params(self, parsed: address.ParsedArgument) -> Reply | None:
        params = parsed.params
        assert self.session is not None
        if params and not self.session.extended_smtp:
            return replies.BAD_PARAMETER
        if not params.keys() <= _MAIL_PARAMS:
            return replies.UNKNOWN_PARAMETER
        size = params.get("SIZE")
        if size is not None:
            if not size.isdigit():
                return replies.BAD_PARAMETER
            if int(size) > self.max_message_size:
                return replies.SIZE_EXCEEDED
        if params.get("BODY", "7BIT").upper() not in ("7BIT", "8BITMIME"):
            return replies.BAD_PARAMETER
        if params.get("SMTPUTF8", "") != "":
            return replies.BAD_PARAMETER
        if "SMTPUTF8" not in params and not parsed.address.isascii():
            return replies.SMTPUTF8_NOT_ADVERTISED
        if not dsnparams.mail_params_ok(params):
            return replies.BAD_PARAMETER
        return None

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.counts["rcpt"] += 1
        self.stage = "RCPT"
        if await self.check_helo_needed():
            return
        txn = self.txn
        if txn is None:
            await self.push(replies.NEED_MAIL)
            return
        argument = self._strip_command_keyword("TO:", arg or "")
        if argument is None:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        try:
            parsed = address.parse(argument, allow_null=False, utf8="SMTPUTF8" in txn.mail_params)
        except address.PathError as e:
            bad = (replies.BAD_PARAMETER if isinstance(e, address.ParameterError)
                   else replies.SMTPUTF8_NOT_ADVERTISED if e.non_ascii
                   else replies.BAD_RECIPIENT_SYNTAX)
            await self._reject("RCPT", bad, recipient=argument.strip(" <>")[:100])
            return
        if not parsed.params.keys() <= _RCPT_PARAMS:
            await self._reject("RCPT", replies.UNKNOWN_PARAMETER, recipient=parsed.address)
            return
        if not dsnparams.rcpt_params_ok(parsed.params):
            await self._reject("RCPT", replies.BAD_PARAMETER, recipient=parsed.address)
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
        self.counts["data"] += 1
        self.stage = "DATA"
        if await self.check_helo_needed():
            return
        txn = self.txn
        if txn is None:
            await self.push(replies.NEED_MAIL)
            return
        if not txn.recipients:
            await self.push(replies.NEED_RCPT)
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            raw = await self._read_data()
            self.stage = "END-OF-MESSAGE"
            if raw is None:
                reply = replies.SIZE_EXCEEDED
                maillog.reject("END-OF-MESSAGE", self.ip, reply, sender=txn.sender, qid=txn.qid)
            else:
                reply = await self.intake.accept(txn, self._client(), raw)
        finally:
            self.txn = None
        await self.push(reply)

    async def _read_data(self) -> bytes | None:
        """Everything up to ``<CRLF>.<CRLF>`` (exclusive of ``.<CRLF>``), None if too large.

        The exact size check (RFC 1870: after dot-unstuffing) is the intake's; this cap
        only bounds memory, at twice the limit because stuffing can at most double it.

        The reader is asked for chunks ending in ``.<CRLF>``; a chunk ends the data only
        if the two bytes before that dot, in what was received so far, are CRLF (or the
        dot starts the data). Looking back into the collected bytes rather than the stream
        means the terminator is found whatever way the chunks were cut.
        """
        reader = self._reader
        limit = 2 * self.max_message_size + len(_TERMINATOR)
        buf = bytearray()
        received = 0
        overflow = False
        tail = b""  # last bytes seen, kept while discarding an oversized message
        while True:
            try:
                chunk = await reader.readuntil(_END_OF_LINE_DOT)
            except asyncio.LimitOverrunError as e:
                chunk = await reader.readexactly(e.consumed)
            except asyncio.IncompleteReadError as e:
                raise ConnectionResetError("connection closed during DATA") from e
            self._reset_timeout()
            received += len(chunk)
            if not overflow and received > limit:
                overflow = True
                tail = bytes(buf[-4:])
                buf.clear()
            if overflow:
                tail = (tail + chunk)[-5:]
                if chunk.endswith(_END_OF_LINE_DOT) and (
                    tail.endswith(_TERMINATOR) or received == len(_END_OF_LINE_DOT)
                ):
                    return None
                continue
            buf += chunk
            if chunk.endswith(_END_OF_LINE_DOT) and (
                len(buf) == 3 or buf[-5:-3] == b"\r\n"
            ):
                del buf[-3:]
                return bytes(buf)

    def _client(self) -> Client:
        assert self.session is not None
        helo = self.session.host_name or ""
        smtputf8 = self.txn is not None and "SMTPUTF8" in self.txn.mail_params
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


def _valid_utf8(text: str) -> bool:
    """False for text holding bytes that were not UTF-8 (decoded as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Hooks:
    """aiosmtpd handler hooks: only AUTH, QUIT/RSET counting, and the fault reply."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def handle_AUTH(self, server: Any, session: Any, envelope: Any, args: list[str]) -> Any:
        status = await self._session.authenticate(args)
        return status

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> Any:
        self._session.counts["rset"] += 1
        return MISSING

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> Any:
        self._session.counts["quit"] += 1
        return "221 2.0.0 Bye"

    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> Any:
        self._session.counts["noop"] += 1
        return MISSING

    async def handle_exception(self, error: Exception) -> str:
        session = self._session
        qid = session.txn.qid if session.txn else None
        log.error("internal error in SMTP session from %s", session.ip, exc_info=error)
        maillog.internal_error(session.ip, f"{type(error).__name__} during {session.stage}", qid)
        session.txn = None
        return str(replies.LOCAL_ERROR)
