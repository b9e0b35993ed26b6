"""The API's answers for a person: a mailq-like listing, one message, a timeline, the
outcomes of an action. Pure functions of the JSON (and the local time zone)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

# Outcomes of an operator action that mean it did not happen (exit 1).
FAILED_OUTCOMES = ("not-found",)
EXPLAINED = {
    "after-attempt": "after-attempt (applied when the delivery attempt under way ends)",
    "attempting": "attempting (a delivery attempt is under way already)",
    "on-hold": "on-hold (not flushed: release it first)",
    "not-held": "not-held (it was not on hold)",
    "not-found": "not-found (no such message in the queue)",
}


def _clock(ts: float, fmt: str = "%a %b %d %H:%M:%S") -> str:
    return time.strftime(fmt, time.localtime(ts))


def _stamp(ts: float) -> str:
    """``2026-11-27 09:15:02.113`` in local time."""
    return f"{_clock(ts, '%Y-%m-%d %H:%M:%S')}.{int(ts * 1000) % 1000:03d}"


def _sender(sender: str) -> str:
    return sender or "MAILER-DAEMON"


def format_list(messages: Sequence[dict[str, Any]]) -> str:
    """A listing like Postfix's ``postqueue -p`` (mailq): ``*`` marks a message being
    attempted or new (active), ``!`` one on hold; the reason in parentheses is the last
    error of its pending recipients."""
    if not messages:
        return "Mail queue is empty\n"
    width = max(10, *(len(m["qid"]) for m in messages))
    indent = " " * (width + 1 + 1 + 8 + 1 + 20 + 1)
    lines = [
        f"{'-Queue ID-':<{width + 1}} {'--Size--':>8} {'----Arrival Time----':<20} "
        "-Sender/Recipient-------"
    ]
    total = 0
    for m in messages:
        mark = {"hold": "!", "active": "*"}.get(m["state"], " ")
        size = int(m["size"])
        total += size
        lines.append(
            f"{m['qid']:<{width}}{mark} {size:>8} {_clock(m['arrival']):<20} {_sender(m['sender'])}"
        )
        if m["state"] == "scheduled" and m.get("send_at"):
            lines.append(f"{indent}(scheduled for {_clock(m['send_at'])})")
        if m["state"] == "rate-limited":
            lines.append(f"{indent}(rate-limited: waiting for its upstream's rate limit)")
        if m.get("last_error"):
            lines.append(f"{indent}({m['last_error']})")
        lines += [f"{indent}{address}" for address in m["recipients"]]
        lines.append("")
    count = len(messages)
    kbytes = math.ceil(total / 1024)
    lines.append(f"-- {kbytes} Kbytes in {count} Request{'' if count == 1 else 's'}.")
    return "\n".join(lines) + "\n"


def format_show(answer: dict[str, Any], headers: str | None = None) -> str:
    """``GET /messages/QID`` (or the same read from the spool) for a person."""
    qid = answer["qid"]
    where = "in the queue" if answer.get("in_queue") else "no longer queued"
    lines = [f"Queue ID:     {qid}", f"Status:       {answer.get('status')} ({where})"]
    envelope = answer.get("envelope")
    if envelope:
        lines += _envelope_lines(envelope, bool(answer.get("in_queue")))
    events = answer.get("events") or []
    if events or not answer.get("in_queue"):
        lines.append("History:")
        lines += ["  " + line for line in timeline(answer).splitlines()]
    if headers:
        lines.append("Headers:")
        lines += ["  " + line for line in headers.splitlines()]
    return "\n".join(lines) + "\n"


def _envelope_lines(envelope: dict[str, Any], in_queue: bool) -> list[str]:
    lines = [
        f"Arrival:      {_stamp(envelope['arrival'])}",
        f"Size:         {envelope['size']} bytes",
        f"Sender:       <{envelope['sender']}>",
    ]
    if envelope.get("message_id"):
        lines.append(f"Message-ID:   {envelope['message_id']}")
    client = envelope.get("client") or {}
    if client:
        ip, port = client.get("ip"), client.get("port")
        who = f"{client.get('helo')} [{ip}]:{port}"
        if client.get("auth_user"):
            who += f", auth {client['auth_user']} ({client.get('auth_method')})"
        who += f", {client['tls']}" if client.get("tls") else ", no TLS"
        lines.append(f"Client:       {who}")
    if envelope.get("notice"):
        lines.append(f"Notice:       {envelope['notice']} (a DSN made here)")
    attempts = f"Attempts:     {envelope.get('attempts', 0)}"
    if in_queue and envelope.get("state") != "hold" and envelope.get("next_attempt"):
        attempts += f", next {_stamp(envelope['next_attempt'])}"
    lines.append(attempts)
    lines.append("Recipients:")
    for r in envelope.get("recipients", []):
        line = f"  <{r['address']}>  {r.get('state')}"
        if r.get("attempts"):
            line += f", {r['attempts']} attempt(s)"
        lines.append(line)
        if r.get("last_reply"):
            relay = f" from {r['last_relay']}" if r.get("last_relay") else ""
            lines.append(f"      last reply{relay}: {r['last_reply']}")
    return lines


def timeline(answer: dict[str, Any]) -> str:
    """The events of ``GET /messages/QID`` one a line: time, seconds since the first
    event, the service, and the log text without its ``QID:`` prefix."""
    qid = answer["qid"]
    events = answer.get("events") or []
    lines = []
    if not events:
        lines.append(
            "(no events known: the daemon restarted since, or the history of "
            "this message has expired)"
        )
    start = events[0]["time"] if events else 0.0
    for event in events:
        text = str(event.get("text", ""))
        text = text.removeprefix(f"{qid}: ")
        service = event.get("service") or ""
        lines.append(f"{_stamp(event['time'])} {event['time'] - start:+9.3f}s {service:<9} {text}")
    if events and not answer.get("history_complete", True):
        omitted = answer.get("events_omitted") or 0
        why = (
            f"{omitted} event(s) omitted from the middle"
            if omitted
            else "events before the daemon's last start are missing"
        )
        lines.append(f"(history incomplete: {why})")
    return "\n".join(lines) + "\n"


def format_trace(answer: dict[str, Any]) -> str:
    envelope = answer.get("envelope") or {}
    head = f"{answer['qid']}: {answer.get('status')}"
    if envelope:
        rcpts = ", ".join(f"<{r['address']}>" for r in envelope.get("recipients", []))
        head += f", from=<{envelope.get('sender', '')}> to {rcpts}"
    return head + "\n" + timeline(answer)


def format_results(answer: dict[str, Any]) -> str:
    action = answer.get("action", "")
    if "results" not in answer:  # flush of everything
        count = answer.get("flushed", 0)
        return f"{action}: {count} message(s) scheduled for delivery now\n"
    return "".join(
        f"{qid}: {EXPLAINED.get(outcome, outcome)}\n" for qid, outcome in answer["results"].items()
    )


def results_failed(answer: dict[str, Any]) -> bool:
    return any(
        outcome in FAILED_OUTCOMES or str(outcome).startswith("error")
        for outcome in answer.get("results", {}).values()
    )
