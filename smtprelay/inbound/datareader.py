"""Reading the data of one DATA command: its end, its size, NUL bytes, and memory.

The reader asks the stream for chunks ending in ``.<CRLF>``; a chunk ends the data only
if the two bytes before that dot, in what was received so far, are CRLF (or the dot
starts the data). Looking back into the received bytes rather than the stream means the
terminator is found whatever way the chunks were cut, and ``<LF>.<LF>``, ``<CR>.<CR>``
or ``<LF>.<CR><LF>`` never end the data (SMTP smuggling).

What it keeps is bounded two ways, and once it refuses a message it keeps nothing more
(the rest is read and thrown away up to the terminator, so the session stays in step
with the client and can answer):

* size: RFC 1870 counts the message after dot-unstuffing. Every ``<CRLF>.`` (and a dot
  starting the data) loses its dot, so ``bytes - dots`` is the unstuffed size exactly
  when the line endings are CRLF; the intake rewrites a bare CR or LF to CRLF, which only
  adds bytes, so the count never exceeds what the intake will measure. Over
  ``max_message_size`` the data is refused (552) as soon as the count says so: a session
  keeps at most the limit, the dots stuffed into it and one chunk.
* memory across sessions: what it keeps is taken from the process's :class:`DataBudget`
  first; when the budget cannot give it, the message is refused with ``452 4.3.1`` (as
  Postfix answers when its queue file system is full).

A message holding a NUL byte is refused (554 5.6.0): a next hop that strips NUL would
see ``<CRLF>.<CRLF>`` in ``<CRLF><NUL>.<CRLF>``, so such a message never reaches one.
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
# A reader takes budget in steps (one per chunk would cost more than reading it).
_BUDGET_STEP = 64 * 1024


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

    Clients send many small chunks (every line that ends in a dot is one), so the work
    per chunk is kept to what the old line-blind reader did: the budget is taken in steps
    of up to 64 KiB, dots are counted only once the bytes received pass the limit (below
    it the unstuffed size cannot be over), and NUL is looked for once, at the end.
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

    async def read(self) -> bytes | Reply:
        limit = self._max
        buf = bytearray()
        dots = -1  # <CRLF>. in buf (and a dot starting it), counted once buf passes the limit
        while True:
            chunk = await self._chunk()
            buf += chunk
            end = chunk.endswith(_END_OF_LINE_DOT) and (len(buf) == 3 or buf[-5:-3] == b"\r\n")
            if len(buf) > limit:
                # More bytes than the limit, but dot-stuffing may account for the excess.
                dots = _dots(buf, 0) if dots < 0 else dots + _dots(buf, len(buf) - len(chunk))
                # At the end, the terminator's ".<CRLF>" (one of the dots) is not data.
                if len(buf) - dots - (2 if end else 0) > limit:
                    return await self._discard(replies.SIZE_EXCEEDED, buf, end)
            if len(buf) > self.held and not self._take(len(buf) - self.held):
                return await self._discard(replies.NO_SPACE, buf, end)
            if end:
                del buf[-3:]
                if b"\0" in buf:
                    self.release()
                    return replies.NUL_IN_DATA
                return bytes(buf)

    async def _chunk(self) -> bytes:
        try:
            chunk = await self._reader.readuntil(_END_OF_LINE_DOT)
        except asyncio.LimitOverrunError as e:
            chunk = await self._reader.readexactly(e.consumed)
        except asyncio.IncompleteReadError as e:
            raise ConnectionResetError("connection closed during DATA") from e
        self._on_chunk()
        return chunk

    def _take(self, needed: int) -> bool:
        wanted = max(needed, min(_BUDGET_STEP, self._max - self.held))
        if not self._budget.take(wanted, self._max):
            return False
        self.held += wanted
        return True

    async def _discard(self, refusal: Reply, buf: bytearray, end: bool) -> Reply:
        """Drop what was kept, read up to the terminator, and return ``refusal``."""
        self.release()
        tail = (b"\r\n" + bytes(buf[-4:]))[-4:]  # the data starts a line
        del buf[:]
        while not end:
            chunk = await self._chunk()
            tail = (tail + chunk[-5:])[-5:]
            end = chunk.endswith(_END_OF_LINE_DOT) and tail[:2] == b"\r\n"
        return refusal

    def release(self) -> None:
        self._budget.give_back(self.held)
        self.held = 0


def unstuffed_size(data: bytes) -> int:
    """The size of ``data`` (as :meth:`DataReader.read` returns it) after dot-unstuffing:
    every ``<CRLF>.`` and a dot starting the data lose their dot (exact for CRLF data;
    the intake's rewriting of bare CR or LF only adds bytes)."""
    return len(data) - _dots(data, 0)


def _dots(data: bytes | bytearray, start: int) -> int:
    """How many line-starting dots ``data`` has at ``start`` or after."""
    leading = start == 0 and data[:1] == b"."
    return data.count(_LINE_START_DOT, max(0, start - 2)) + leading
