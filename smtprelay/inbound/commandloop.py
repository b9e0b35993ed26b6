"""The command loop of an SMTP session: how replies are written, and which commands run.

Between the connection below (:mod:`.connection`: PROXY header, TLS, timeouts, the slot)
and the SMTP verbs above (:mod:`.protocol`), this layer owns three things aiosmtpd would
otherwise do its own way:

* replies: one write per reply, and the replies of a pipelined batch (RFC 2920) in one
  write: a reply is held while the client has more complete command lines buffered, and
  written before the session could wait for anything (input, a password check, the
  disk). Held replies therefore never span an await that yields to the event loop.
* the command table: NOOP, RSET, VRFY, EXPN and HELP are counted (Postfix's junk
  commands) and the session is closed after ``junk_command_limit`` of them without a
  message accepted; unknown commands get ``502 5.5.2`` and close the session after
  ``unknown_command_limit``; HTTP and other non-SMTP lines close it at once, as
  Postfix's ``smtpd_forbidden_commands`` do. These, not aiosmtpd's own log lines, are
  what the log says about them.
* faults: an exception in a command is a ``451 4.3.0`` plus a log line, never
  aiosmtpd's ``500`` with the exception text (:class:`_Hooks`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from smtprelay import maillog, replies
from smtprelay.inbound.connection import Connection
from smtprelay.replies import Reply

log = logging.getLogger("smtprelay.inbound")

# Replies after which the connection closes: never held back.
_WRITE_NOW = ("221", "421")
# Held replies are written once they fill a TLS record (16 KiB) even if more commands
# are buffered: a client pipelining thousands of commands without reading the replies
# meets the transport's flow control (drain) as before, and memory stays bounded.
_HOLD_MAX = 16 * 1024
# Postfix's junk commands (smtpd_junk_command_limit), with aiosmtpd's EXPN and HELP.
_JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP"})
# Commands that wait for something other than the next command line (a TLS handshake, a
# password check), or write their reply themselves: the replies held so far go first.
_FLUSH_FIRST = frozenset({"STARTTLS", "AUTH"})
# Postfix's smtpd_forbidden_commands: HTTP/proxy requests and lines not starting with a
# letter are not SMTP; the client is told so and disconnected at once.
_NON_SMTP_COMMANDS = frozenset({"CONNECT", "GET", "POST"})


class CommandLoop(Connection):
    """aiosmtpd's command loop with the relay's reply writing and command table; the
    session above implements the verbs, :meth:`authenticate` and the transaction."""

    # As Postfix's smtpd_junk_command_limit: junk commands allowed per session (the
    # count starts again after each accepted message); the next one closes it.
    junk_command_limit = 100
    # Unknown commands answered with 502; the next one closes the session (aiosmtpd's
    # bogus-command budget, with an enhanced code and a log line of our own).
    unknown_command_limit = 5

    def __init__(self, **connection: Any) -> None:
        super().__init__(handler=_Hooks(self), **connection)
        self.junk_commands = 0
        self.unknown_commands = 0
        self._held: list[bytes] = []  # replies not written yet (see _send)
        self._held_size = 0
        self._smtp_methods = _Commands(self, self._smtp_methods)

    # --- what the session above provides ------------------------------------------

    async def authenticate(self, args: list[str]) -> str | None:
        """AUTH (called through aiosmtpd's smtp_AUTH): the final reply, or None when
        the exchange was aborted and already answered."""
        raise NotImplementedError

    def transaction_qid(self) -> str | None:
        """The QID of the transaction under way, for the log line of a fault."""
        return None

    def _set_rset_state(self) -> None:
        """aiosmtpd's reset (RSET, HELO/EHLO, STARTTLS), which ends the transaction too."""
        super()._set_rset_state()  # type: ignore[no-untyped-call]
        self.forget_transaction()

    def _reject_context(self) -> tuple[str | None, str | None]:
        """(sender, QID) of the transaction under way for a reject line; the QID only
        once it was logged (after the first accepted recipient)."""
        return None, None

    # --- replies ------------------------------------------------------------------

    async def push(self, status: str | bytes | Reply) -> None:
        if isinstance(status, bytes):  # only aiosmtpd's AUTH challenges are pre-encoded
            await self._send(status + b"\r\n")
            return
        text = replies.add_enhanced_code(str(status))
        await self._send(
            f"{text}\r\n".encode("utf-8", "surrogateescape"), now=text[:3] in _WRITE_NOW
        )
        if self.closing and not self.in_transaction():
            self.flush_replies()
            self.hang_up(replies.SHUTTING_DOWN)

    async def _push_raw(self, *lines: str) -> None:
        """Reply lines exactly as given (no enhanced code added), in one write."""
        await self._send("".join(f"{line}\r\n" for line in lines).encode())

    async def _send(self, data: bytes, *, now: bool = False) -> None:
        """Write ``data``, or hold it while the client has more command lines buffered.

        RFC 2920: the replies to a pipelined batch may go together. Like Postfix, hold a
        reply while another complete command line is already in the input buffer (its
        reply follows without waiting for the client) and write everything held as soon
        as the buffer has no complete line left, i.e. before the session would wait.
        Code paths that wait for anything else first call :meth:`flush_replies`.
        """
        self._held.append(data)
        self._held_size += len(data)
        if not now and self._held_size < _HOLD_MAX and b"\n" in self._reader._buffer:  # type: ignore[attr-defined]
            return
        self.flush_replies()
        await self._writer.drain()

    def flush_replies(self) -> None:
        """Write every held reply (one write for all of them)."""
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self._held_size = 0
        if not self._writer.transport.is_closing():
            self._writer.write(data)

    async def _close_with(self, reply: Reply) -> None:
        """Answer with a final reply after the held ones, close, and read no further."""
        self.flush_replies()
        self.hang_up(reply)
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()

    async def _reject(
        self,
        command: str,
        reply: Reply,
        *,
        sender: str | None = None,
        recipient: str | None = None,
    ) -> None:
        """Refuse a command and log it, keyed by the QID once one was logged for this
        transaction (after its first accepted recipient), else NOQUEUE, as Postfix does."""
        txn_sender, qid = self._reject_context()
        maillog.reject(
            command,
            self.ip,
            reply,
            sender=sender if sender is not None else txn_sender,
            recipient=recipient,
            helo=self.session.host_name if self.session else None,
            qid=qid,
            proto="ESMTP" if self.session and self.session.extended_smtp else "SMTP",
        )
        await self.push(reply)

    # --- junk and unknown commands -------------------------------------------------

    @property
    def hung_up(self) -> bool:
        transport = self.transport
        return transport is None or transport.is_closing()

    async def junk_command(
        self, command: str, method: Callable[[str | None], Awaitable[None]], arg: str | None
    ) -> None:
        self.counts[command.lower()] += 1
        self.junk_commands += 1
        if self.junk_commands > self.junk_command_limit:
            maillog.too_many_commands(self.ip, "junk commands", command)
            await self._close_with(replies.TOO_MANY_JUNK_COMMANDS)
            return
        await method(arg)

    async def unknown_command(self, command: str, arg: str | None) -> None:
        self.counts["unknown"] += 1
        if command in _NON_SMTP_COMMANDS or not ("A" <= command[:1] <= "Z"):
            text = command if arg is None else f"{command} {arg}"
            maillog.non_smtp_command(self.ip, text[:100])
            await self._close_with(replies.NON_SMTP_COMMAND)
            return
        self.unknown_commands += 1
        if self.unknown_commands > self.unknown_command_limit:
            maillog.too_many_commands(self.ip, "unrecognized commands", "UNKNOWN")
            await self._close_with(replies.TOO_MANY_UNKNOWN_COMMANDS)
            return
        await self.push(replies.UNKNOWN_COMMAND)


async def _ignore(arg: str | None) -> None:
    """What any command does once the session has hung up."""


class _Commands(dict[str, Any]):
    """aiosmtpd's command table (``smtp_*`` methods by verb), as aiosmtpd looks commands
    up in it: junk commands are counted before they run, and an unknown command gets
    the session's own answer instead of aiosmtpd's."""

    def __init__(self, session: CommandLoop, methods: dict[str, Any]) -> None:
        super().__init__(methods)
        self._session = session

    def get(self, command: str, default: Any = None) -> Any:
        session = self._session
        if session.hung_up:
            return _ignore
        method = super().get(command)
        if method is None:
            return functools.partial(session.unknown_command, command)
        # (update_wrapper keeps the method's attributes: aiosmtpd's HELP reads them)
        if command in _JUNK_COMMANDS:
            return functools.update_wrapper(
                functools.partial(session.junk_command, command, method), method
            )
        if command in _FLUSH_FIRST:
            return functools.update_wrapper(
                functools.partial(_flushed_first, session, method), method
            )
        return method


async def _flushed_first(
    session: CommandLoop, method: Callable[[str | None], Awaitable[None]], arg: str | None
) -> None:
    session.flush_replies()
    await method(arg)


class _Hooks:
    """aiosmtpd handler hooks: only AUTH, QUIT counting, and the fault reply."""

    def __init__(self, session: CommandLoop) -> None:
        self._session = session

    async def handle_AUTH(self, server: Any, session: Any, envelope: Any, args: list[str]) -> Any:
        status = await self._session.authenticate(args)
        return status

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> Any:
        self._session.counts["quit"] += 1
        return str(replies.BYE)

    async def handle_exception(self, error: Exception) -> str:
        session = self._session
        qid = session.transaction_qid()
        log.error("internal error in SMTP session from %s", session.ip, exc_info=error)
        maillog.internal_error(session.ip, f"{type(error).__name__} during {session.stage}", qid)
        session.forget_transaction()
        return str(replies.LOCAL_ERROR)
