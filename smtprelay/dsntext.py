"""Part 1 of a delivery status notification: the explanation a person reads (what
happened to which recipient, what the remote server said, how long the relay keeps
trying), wrapped at 76 characters, quoted-printable when it is not ASCII.
:mod:`smtprelay.bounce` composes the whole notice.
"""

from __future__ import annotations

import quopri
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from smtprelay.dsnfields import CRLF as _CRLF
from smtprelay.dsnfields import date as _date
from smtprelay.dsnfields import field as _field
from smtprelay.dsnfields import one_line as _one_line

if TYPE_CHECKING:  # bounce.py imports this module; these are only its types
    from smtprelay.bounce import Action, Returned, Row


_INTRO: Final = {
    "failed": (
        "Your message could not be delivered to the recipients below. The failure is "
        "permanent, so the relay has stopped trying."
    ),
    "delayed": (
        "Your message has not been delivered yet to the recipients below. This is only "
        "a warning: the relay is still trying, and you do not need to send the message "
        "again. If it still cannot deliver it by the time given, you will get another "
        "notice."
    ),
    "delivered": "Your message was delivered to the recipients below.",
    "relayed": (
        "Your message was passed on to the mail systems of the recipients below. Those "
        "systems do not send delivery reports, so this may be the last notice you get."
    ),
    "expanded": (
        "Your message was delivered to the mailing lists or aliases below, which pass "
        "it on to their own members."
    ),
}
_HEADING: Final = {
    "failed": "Could not be delivered:",
    "delayed": "Not delivered yet, still trying:",
    "delivered": "Delivered:",
    "relayed": "Passed on:",
    "expanded": "Delivered to a list or alias:",
}
_ORDER: Final[tuple[Action, ...]] = ("failed", "delayed", "delivered", "relayed", "expanded")


def text_part(
    rows: Sequence[Row],
    host: str,
    arrival: float,
    now: float,
    qid: str | None,
    returned: Returned,
) -> bytes:
    lines = [f"This is the mail system at {host}.", ""]
    present = [a for a in _ORDER if any(row.rcpt.action == a for row in rows)]
    for action in present:
        lines += [_INTRO[action], ""]
    lines.append(f"The message was received on {_date(arrival)}.")
    if qid is not None:
        lines.append(f"Its queue ID at {host} is {_one_line(qid)}.")
    lines.append("")
    for action in present:
        lines += [_HEADING[action], ""]
        for row in (row for row in rows if row.rcpt.action == action):
            lines += _explain(row, now)
    if returned.whole:
        lines.append("The original message is attached.")
    elif returned.oversized:
        lines.append(
            f"The original message was {returned.size} bytes, more than the "
            f"{returned.limit} bytes this notice may carry, so only its header is "
            "attached."
        )
    else:
        lines.append("The header of the original message is attached.")
    text = "".join(line + "\r\n" for line in _wrap(lines))
    head = [
        _field("Content-Description", "Notification"),
        _field("Content-Type", "text/plain; charset=utf-8"),
    ]
    if text.isascii():
        return b"".join(head) + _CRLF + text.encode("ascii")
    # Quoted-printable keeps the notice readable by any hop, 8BITMIME or not.
    head.append(_field("Content-Transfer-Encoding", "quoted-printable"))
    encoded = quopri.encodestring(text.encode("utf-8", "replace").replace(_CRLF, b"\n"))
    return b"".join(head) + _CRLF + encoded.replace(b"\n", _CRLF)


def _explain(row: Row, now: float) -> list[str]:
    r = row.rcpt
    lines = [f"  <{row.final}>"]
    if row.orcpt is not None and row.orcpt[1].lower() != row.final.lower():
        lines.append(f"    (you addressed it to <{row.orcpt[1]}>)")
    if row.diagnostic is not None:
        who = f"The mail server {row.remote_mta}" if row.remote_mta else "The relay"
        lines += [f"    {who} said:", f"      {row.diagnostic}"]
    elif row.remote_mta is not None:
        lines.append(f"    Mail server: {row.remote_mta} (status {r.status})")
    else:
        lines.append(f"    Status: {r.status}")
    if r.action == "delayed" and r.will_retry_until is not None:
        until = _date(r.will_retry_until)
        left = _duration(r.will_retry_until - now)
        lines.append(f"    The relay will keep trying until {until} ({left} from now).")
    lines.append("")
    return lines


def _wrap(lines: Sequence[str]) -> list[str]:
    """Lines longer than 76 characters wrapped, continuing at their own indentation."""
    out: list[str] = []
    for line in lines:
        if len(line) <= 76:
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip(" "))]
        wrapped = textwrap.wrap(line, width=76, subsequent_indent=indent, break_on_hyphens=False)
        out += wrapped or [""]
    return out


def _duration(seconds: float) -> str:
    """A rough human length of time: "about 4 days", "3 hours", "25 minutes"."""
    seconds = max(0.0, seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size)
            return f"about {count} {unit}{'s' if count != 1 else ''}"
    return "less than a minute"
