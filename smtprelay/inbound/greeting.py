"""Who the client is: HELO/EHLO (the capabilities offered), TLS, and AUTH.

The layer of the session between the command loop (:mod:`.commandloop`) and the mail
transaction (:mod:`.protocol`): it answers the greeting, says what TLS protects the
session, and runs AUTH. aiosmtpd's ``smtp_AUTH`` checks TLS and state and calls
:meth:`Greeting.authenticate`; the credentials are decoded by :mod:`.sasl` and checked by
:class:`smtprelay.inbound.auth.Authenticator` (slowed down per client after failures).
AUTH is offered only once it may be used: users exist, and the session is encrypted or
``allow_plaintext`` is set.
"""

from __future__ import annotations

import logging
from typing import Any

from aiosmtpd.smtp import MISSING

from smtprelay import maillog, replies
from smtprelay.inbound import address, sasl
from smtprelay.inbound.commandloop import CommandLoop
from smtprelay.inbound.handler import Intake
from smtprelay.replies import Reply

log = logging.getLogger("smtprelay.inbound")


class Greeting(CommandLoop):
    def __init__(self, intake: Intake, *, max_message_size: int, **connection: Any) -> None:
        super().__init__(**connection)
        self.intake = intake
        self.max_message_size = max_message_size
        self.auth_user: str | None = None
        self.auth_method: str | None = None

    def after_starttls(self) -> None:
        self.auth_user = self.auth_method = None

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
            await self.push(replies.syntax(f"{verb} hostname"))
            return
        if (
            any(c in hostname for c in address.FORBIDDEN)
            or " " in hostname.strip()
            or not _valid_utf8(hostname)
        ):
            await self._reject(verb, replies.BAD_HELO)
            return
        assert self.session is not None
        self._set_rset_state()
        self.session.extended_smtp = extended
        self.session.host_name = hostname
        if not extended:
            await self._push_raw(replies.helo(self.hostname))
            return
        await self._push_raw(
            *replies.ehlo(
                self.hostname,
                max_message_size=self.max_message_size,
                starttls=bool(self.tls_context and not self._tls_protocol),
                auth=self._auth_offered(),
            )
        )

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
        initial = args[1] if len(args) > 1 else None
        credentials = await sasl.read_credentials(mechanism, initial, self._challenge)
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

    async def _challenge(self, prompt: str) -> bytes | None:
        """One SASL challenge through aiosmtpd (which answers an abort or bad base64
        itself): the client's decoded answer, or None."""
        answer = await self.challenge_auth(prompt)
        return None if answer is MISSING else answer


def _valid_utf8(text: str) -> bool:
    """False for text holding bytes that were not UTF-8 (decoded as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
