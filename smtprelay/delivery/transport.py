"""The SMTP client side: deliver one message to one next hop, reusing connections.

Hops are tried in order; a hop that cannot be reached, greets with an error, fails
EHLO, TLS or AUTH, or refuses MAIL FROM temporarily, moves the attempt to the next
hop. Once a transaction is under way the results are per recipient: each RCPT reply is
kept, and the reply to the final dot applies to every recipient the server accepted.
Timeouts follow RFC 5321 section 4.5.3.2 (the wait after the final dot is 10 minutes).

This module is the small public face the scheduler uses; the parts are:
``pool.py`` (idle connections per hop), ``session.py`` (connect, EHLO, TLS, AUTH),
``transaction.py`` (MAIL/RCPT/DATA, one command at a time or pipelined) and
``errors.py`` (library errors -> the relay's transient/permanent outcomes).

A sender route's ``rewrite_from`` (rewrite.py) is applied first; then lines longer than
``line_length_limit`` are folded (linefold.py) once per delivery, before SIZE is
computed and before dot-stuffing, so both see the bytes that are sent. Then the message
is DKIM-signed (``smtprelay.dkimsign``): last, on the rewritten and folded bytes, so
that the signature covers exactly what goes out and verifies at the receiver.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from smtprelay import maillog
from smtprelay.config import DeliverySettings
from smtprelay.delivery import linefold
from smtprelay.delivery.errors import (
    CONNECTION_FAILED,
    DeliveryError,
    StaleConnection,
    TryNextHop,
)
from smtprelay.delivery.outcome import Hop, Parcel, RecipientOutcome
from smtprelay.delivery.pool import Pool
from smtprelay.delivery.rewrite import rewrite_from
from smtprelay.delivery.routes import Route
from smtprelay.delivery.session import Opener, Timeouts
from smtprelay.delivery.transaction import Transaction
from smtprelay.dkimsign import Signer
from smtprelay.replies import Reply

__all__ = ["Timeouts", "Transport"]

UNSAFE_ADDRESS = Reply(553, "5.1.3", "Address contains characters that cannot be sent safely")

_UNSAFE = ("\r", "\n", "\x00", "<", ">", " ")


@dataclass
class Transport:
    """``idle_timeout``, ``max_idle_per_hop``, ``helo_name``, ``ca_file`` and ``timeouts``
    are read once, when the transport is made; ``line_length_limit`` at each delivery."""

    helo_name: str
    ca_file: str = ""
    timeouts: Timeouts = field(default_factory=Timeouts)
    idle_timeout: float = 10.0
    max_idle_per_hop: int = 20
    line_length_limit: int = 998  # 0: lines are sent as they are
    # DKIM keys of the running configuration (replaced on reload by its owner, app.py).
    signer: Signer = field(default_factory=Signer)
    _pool: Pool = field(init=False)
    _opener: Opener = field(init=False)

    def __post_init__(self) -> None:
        self._pool = Pool(self.idle_timeout, self.max_idle_per_hop)
        self._opener = Opener(self.helo_name, self.ca_file, self.timeouts)

    def apply(self, settings: DeliverySettings) -> None:
        """Reloaded settings: only line folding changes without a restart."""
        self.line_length_limit = settings.line_length_limit

    @property
    def connections_opened(self) -> int:
        return self._opener.opened

    async def deliver(
        self, route: Route, hops: list[Hop], parcel: Parcel
    ) -> list[RecipientOutcome]:
        """Per-recipient outcomes; raises DeliveryError (temporary) if no hop would talk."""
        sender, recipients, data, qid = parcel.sender, parcel.recipients, parcel.data, parcel.qid
        unsafe = [r for r in [sender, *recipients] if any(c in r for c in _UNSAFE)]
        if unsafe:
            return [RecipientOutcome(r, UNSAFE_ADDRESS, "none") for r in recipients]
        # The bytes for this upstream: its identity first, then folding (and anything
        # that must see the final header, such as a signature, after both).
        sender, data = rewrite_from(route.rewrite, sender, data)
        folded = linefold.fold(data, self.line_length_limit)
        if folded.lines:
            maillog.folded_lines(qid, folded.lines, folded.longest, self.line_length_limit)
            data = folded.data
        # Every change to the bytes is made above this line: the signature is of what
        # is sent (signed once per message and content, see dkimsign.Signer).
        data = await self.signer.sign(data, qid)
        errors: list[DeliveryError] = []
        for hop in self._reuse_first(route, hops):
            for _ in range(2):  # a reused connection found closed gets one fresh try
                started = time.monotonic()
                try:
                    conn = await self._pool.checkout(
                        route, hop, functools.partial(self._opener.open, route, hop)
                    )
                except DeliveryError as e:
                    errors.append(e)
                    break
                connected = time.monotonic()
                try:
                    return await Transaction(conn, self._pool, self.timeouts).run(
                        sender,
                        recipients,
                        data,
                        parcel.mail_params,
                        parcel.rcpt_params,
                        connected - started,
                    )
                except TryNextHop as e:
                    errors.append(e.error)
                    break
                except StaleConnection:
                    continue
        last = errors[-1] if errors else DeliveryError(CONNECTION_FAILED)
        raise DeliveryError(last.reply, last.relay, unreachable=all(e.unreachable for e in errors))

    def _reuse_first(self, route: Route, hops: list[Hop]) -> list[Hop]:
        """Hops with an idle connection first: a live connection beats a new one."""
        warm = [h for h in hops if self._pool.has_idle(route, h)]
        return warm + [h for h in hops if h not in warm]

    async def close(self) -> None:
        await self._pool.close()
