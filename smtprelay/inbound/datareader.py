"""Reading the data of one DATA command: its end, its size, NUL bytes, and memory.

The reader asks the stream for chunks ending in ``.<CRLF>``; a chunk ends the data only
if the two bytes before that dot, in what was received so far, are CRLF (or the dot
starts the data). Looking back into the received bytes rather than the stream means the
terminator is found whatever way the chunks were cut, and ``<LF>.<LF>``, ``<CR>.<CR>``
or ``<LF>.<CR><LF>`` never end the data (SMTP smuggling).

What it keeps is bounded three ways, and whatever it refuses it stops keeping at once
(the rest is read and thrown away up to the terminator, so the session stays in step
with the client and can answer):

* size: RFC 1870 counts the message after dot-unstuffing. Every ``<CRLF>.`` in the
  stream (and a dot starting the data) loses its dot, so ``received - dots`` is the
  unstuffed size exactly when the line endings are CRLF; the intake rewrites a bare CR
  or LF to CRLF, which only adds bytes, so this count never exceeds what the intake
  will measure. Over ``max_message_size`` the data is refused (552) as soon as the
  count says so: a session keeps at most the limit plus one chunk (stuffing adds at
  most a third: ``..<CRLF>`` for ``.<CRLF>``).
* NUL bytes: refused (554 5.6.0). A next hop that strips NUL would see ``<CRLF>.<CRLF>``
  in ``<CRLF><NUL>.<CRLF>``: such a message never reaches one.
* memory across sessions: every chunk kept is taken from the process's
  :class:`DataBudget` first; when the budget cannot give it, the message is refused
  with ``452 4.3.1`` (as Postfix answers when its queue file system is full).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from smtprelay import replies
from smtprelay.replies import Reply

_END_OF_LINE_DOT = b".\r\n"
_LINE_START_DOT = b"\r\n."
# Below this, the budget floor; above it, room for four messages of the largest size.
DEFAULT_BUDGET_FLOOR = 256 * 1024 * 1024


class DataBudget:
    """Bytes of message data the DATA readers of this process hold, and their ceiling.

    One object is shared by every session of a process (it lives on the Intake). The
    ceiling follows ``max_message_size`` (which a reload may change): the larger of
    ``floor`` and four messages of the largest size.
    """

    def __init__(self, floor: int = DEFAULT_BUDGET_FLOOR) -> None:
        self.floor = floor
        self.held = 0
        self.peak = 0  # the most ever held at once (for tests and curious operators)

    def limit(self, max_message_size: int) -> int:
        return max(self.floor, 4 * max_message_size)

    def has_room(self, wanted: int, max_message_size: int) -> bool:
        return self.held + wanted <= self.limit(max_message_size)

    def take(self, amount: int, max_message_size: int) -> bool:
        if not self.has_room(amount, max_message_size):
            return False
        self.held += amount
        self.peak = max(self.peak, self.held)
        return True

    def give_back(self, amount: int) -> None:
        self.held -= amount


class DataReader:
    """Reads one message's data; :meth:`read` returns its bytes or the refusal.

    The bytes returned are everything between the 354 and the terminating ``.<CRLF>``
    (still dot-stuffed). They stay counted in the budget until :meth:`release`, which
    the caller calls once it no longer needs them (after the intake has them on disk).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        *,
        max_message_size: int,
        budget: DataBudget,
        on_chunk: Callable[[], None] = lambda: None,
    ) -> None:
        self._reader = reader
        self._max = max_message_size
        self._budget = budget
        self._on_chunk = on_chunk
        self.held = 0  # bytes of ``budget`` this reader holds
        self.received = 0
        self.dots = 0
        self.refusal: Reply | None = None

    async def read(self) -> bytes | Reply:
        buf = bytearray()
        last = b"\r\n"  # the last two bytes received; the data starts a line
        while True:
            try:
                chunk = await self._reader.readuntil(_END_OF_LINE_DOT)
            except asyncio.LimitOverrunError as e:
                chunk = await self._reader.readexactly(e.consumed)
            except asyncio.IncompleteReadError as e:
                raise ConnectionResetError("connection closed during DATA") from e
            self._on_chunk()
            self.received += len(chunk)
            self.dots += _line_start_dots(last, chunk)
            tail = (last + chunk[-5:])[-5:]
            last = tail[-2:]
            end = chunk.endswith(_END_OF_LINE_DOT) and tail[:2] == b"\r\n"
            if self.refusal is None:
                self.refusal = self._check(chunk, end)
                if self.refusal is None:
                    buf += chunk
                else:
                    buf = bytearray()
                    self.release()
            if end:
                if self.refusal is not None:
                    return self.refusal
                del buf[-3:]
                return bytes(buf)

    def _check(self, chunk: bytes, end: bool) -> Reply | None:
        # At the end the terminator's ".<CRLF>" (3 bytes, one of them a counted dot) is
        # not data; before it, the count is already a lower bound of the final size.
        unstuffed = self.received - self.dots - (2 if end else 0)
        if unstuffed > self._max:
            return replies.SIZE_EXCEEDED
        if b"\0" in chunk:
            return replies.NUL_IN_DATA
        if not self._budget.take(len(chunk), self._max):
            return replies.NO_SPACE
        self.held += len(chunk)
        return None

    @property
    def unstuffed_size(self) -> int:
        """The size after dot-unstuffing, once the data was read (exact for CRLF data)."""
        return self.received - self.dots - 2

    def release(self) -> None:
        self._budget.give_back(self.held)
        self.held = 0


def _line_start_dots(last: bytes, chunk: bytes) -> int:
    """How many ``<CRLF>.`` end inside ``chunk``, given the two bytes before it."""
    across = (chunk[:1] == b"." and last == b"\r\n") or (chunk[:2] == b"\n." and last[-1:] == b"\r")
    return chunk.count(_LINE_START_DOT) + across
