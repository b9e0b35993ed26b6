"""The mail log: one line per mail event, keyed by queue ID, in Postfix's maillog shape.

Operators and their tools (grep, pflogsumm, fail2ban) read these lines, so their shape is
a contract. Each event has one function here, and above it the parts every line of it
shares (program, text, event, level); nothing else formats mail events (so the module is
long by design: one short function per log event, in one place). Under systemd (journald
adds time and host) a line starts at ``smtprelay/<service>[pid]:``; elsewhere it starts
with an RFC 3339 timestamp and the host name, as Postfix's own log file does. ``[log]
format = "json"`` emits the same events as JSON objects.

Passwords and AUTH payloads are never passed to this module. Client data (HELO names,
addresses, command lines, user names) may hold any byte: the formatters write every
control character as ``\\ooo`` (as Postfix writes non-printable bytes), so no client can
forge, split or colour a log line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from logging import WARNING
from types import MappingProxyType

from smtprelay.replies import Reply

MAIL_LOGGER = "smtprelay.mail"
log = logging.getLogger(MAIL_LOGGER)


def attach(handler: logging.Handler) -> None:
    """Let ``handler`` see every mail-log event (the metrics and the event recorder
    read the log rather than being called from each stage)."""
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)  # see setup: every event is made


def detach(handler: logging.Handler) -> None:
    log.removeHandler(handler)


class Event(StrEnum):
    """The ``event`` field of every mail-log line: one vocabulary for the JSON log, the
    statistics and histories built from it (:mod:`smtprelay.stats`) and the tests, so a
    misspelt name fails where it is written instead of silently zeroing a metric."""

    AUTH_FAILED = "auth-failed"
    BARE_NEWLINE = "bare-newline"
    CANCELED = "canceled"
    CLIENT = "client"
    CONNECT = "connect"
    CONNECTION_LIMIT = "connection-limit"
    DATA_MEMORY_LIMIT = "data-memory-limit"
    DELIVERY = "delivery"
    DISCONNECT = "disconnect"
    DKIM_NOT_SIGNED = "dkim-not-signed"
    DKIM_SIGNED = "dkim-signed"
    FOLDED = "folded"
    HOLD = "hold"
    INTERNAL_ERROR = "internal-error"
    LEGACY_TLS = "legacy-tls"
    LOST_CONNECTION = "lost-connection"
    MESSAGE_ID = "message-id"
    NON_SMTP_COMMAND = "non-smtp-command"
    NOTICE = "notice"
    NOTICE_DISCARDED = "notice-discarded"
    PICKUP = "pickup"
    PROXY_REFUSED = "proxy-refused"
    QUEUED = "queued"
    REJECT = "reject"
    RELEASE = "release"
    REMOVED = "removed"
    ROUTED = "routed"
    SPOOL_ERROR = "spool-error"
    TIMEOUT = "timeout"
    TLS_FAILED = "tls-failed"
    TOO_MANY_COMMANDS = "too-many-commands"
    UPSTREAM_PAUSED = "upstream-paused"


def _emit(
    service: str, text: str, qid: str | None = None, level: int = logging.INFO, **fields: object
) -> None:
    if log.isEnabledFor(level):
        log.log(level, text, extra={"service": service, "qid": qid, "fields": fields})


_SHOWN_AS_IS: Mapping[str, object] = MappingProxyType({})

# The severity word a line starts with (after its queue ID), as Postfix's msg_warn() and
# msg_error() write it: the level of the line follows from its text.
_SEVERITY = re.compile(r"(?:\{\w+\}(?:: )?)?(warning|error): ")
_LEVELS = {"warning": logging.WARNING, "error": logging.ERROR}


@dataclass(slots=True)
class _Line:
    """The parts every line of one kind shares: the program that writes it (after
    ``smtprelay/``), its text, its ``event`` field and its level (by default WARNING for
    a text that starts with "warning: ", ERROR for "error: ", else INFO).

    ``text`` is filled in (str.format) with the line's fields, ``qid``, and ``host``
    (the client named as Postfix names it, made from the ``client_ip`` field). A caller
    passes ``shown`` where the text shows a value otherwise than its field (or shows a
    value that is no field); the fields then follow, in the order of the JSON line, and
    ``event`` comes last."""

    service: str
    text: str
    event: Event
    level: int = logging.NOTSET  # NOTSET: the one its text says

    def __post_init__(self) -> None:
        if self.level == logging.NOTSET:
            severity = _SEVERITY.match(self.text)
            self.level = _LEVELS[severity.group(1)] if severity else logging.INFO

    def __call__(
        self,
        qid: str | None = None,
        shown: Mapping[str, object] = _SHOWN_AS_IS,
        /,
        **fields: object,
    ) -> None:
        if not log.isEnabledFor(self.level):
            return
        values = {"qid": qid, **fields, **shown}
        if "client_ip" in fields:
            values["host"] = _host(str(fields["client_ip"]))
        fields["event"] = self.event
        text = self.text.format_map(values)
        log.log(self.level, text, extra={"service": self.service, "qid": qid, "fields": fields})


# The lines of each program (the name after "smtprelay/"), each declared above the
# function that writes it.
_smtpd = partial(_Line, "smtpd")
_http = partial(_Line, "http")  # the HTTP API's submissions (smtpd's lines for SMTP)
_pickup = partial(_Line, "pickup")
_cleanup = partial(_Line, "cleanup")
_qmgr = partial(_Line, "qmgr")
_smtp = partial(_Line, "smtp")
_bounce = partial(_Line, "bounce")
_postsuper = partial(_Line, "postsuper")


# The client "address" of a session on the local submission socket (inbound/local.py).
LOCAL_CLIENT = "local"


def _host(ip: str) -> str:
    if ip == LOCAL_CLIENT:
        return LOCAL_CLIENT  # no address, so nothing for fail2ban to ban
    # No reverse DNS for clients: Postfix prints "unknown" in the same place.
    return f"unknown[{ip}]"


def _prefix(qid: str | None) -> str:
    return f"{qid}: " if qid else ""


def _to(recipients: Sequence[str]) -> str:
    return "".join(f" to=<{recipient}>" for recipient in recipients)


_CONNECT = _smtpd("connect from {host}", event=Event.CONNECT)


def connect(ip: str) -> None:
    _CONNECT(client_ip=ip)


def disconnect(ip: str, counts: Mapping[str, int]) -> None:
    total = sum(counts.values())
    summary = " ".join(f"{cmd.lower()}={n}" for cmd, n in counts.items())
    text = f"disconnect from {_host(ip)} {summary} commands={total}".replace("  ", " ")
    _emit("smtpd", text, client_ip=ip, event=Event.DISCONNECT, commands=dict(counts))


_CLIENT = _smtpd("{qid}: client={host}{sasl}", event=Event.CLIENT)


def client(qid: str, ip: str, sasl_method: str | None, sasl_username: str | None) -> None:
    sasl = f", sasl_method={sasl_method}, sasl_username={sasl_username}" if sasl_username else ""
    fields = {"sasl_method": sasl_method, "sasl_username": sasl_username}
    _CLIENT(qid, {"sasl": sasl}, client_ip=ip, **fields)


_HTTP_CLIENT = _http("{qid}: client={host}, api_token={api_token}, via=http", event=Event.CLIENT)


def http_client(qid: str, ip: str, token: str) -> None:
    """The first line of a message submitted over the HTTP API, in the place of the
    SMTP ``client=`` line: ``QID: client=unknown[IP], api_token=NAME, via=http``."""
    _HTTP_CLIENT(qid, client_ip=ip, api_token=token, submitted_via="http")


_PICKUP = _pickup("{qid}: uid={uid} from=<{sender}>", event=Event.PICKUP)


def pickup(qid: str, uid: int | None, user: str | None, sender: str) -> None:
    """A local submission's first line, as Postfix's pickup writes it (the sender as the
    caller gave it, before it was qualified): ``QID: uid=33 from=<www-data>``."""
    shown = {"uid": uid if uid is not None else "unknown"}
    _PICKUP(qid, shown, client_ip=LOCAL_CLIENT, uid=uid, user=user, sender=sender)


_MESSAGE_ID = _cleanup("{qid}: message-id={message_id}", event=Event.MESSAGE_ID)


def message_id(qid: str, value: str) -> None:
    _MESSAGE_ID(qid, message_id=value)


_BARE_NEWLINE = _cleanup(
    "{qid}: warning: {count} bare CR or LF line ending(s) from {host} normalized to CRLF",
    event=Event.BARE_NEWLINE,
)


def normalized_line_endings(qid: str, ip: str, count: int) -> None:
    _BARE_NEWLINE(qid, client_ip=ip, count=count)


_QUEUED = _qmgr(
    "{qid}: from=<{sender}>, size={size}, nrcpt={nrcpt} (queue active)", event=Event.QUEUED
)


def queued(qid: str, sender: str, size: int, nrcpt: int) -> None:
    _QUEUED(qid, sender=sender, size=size, nrcpt=nrcpt)


_REJECT = _smtpd(
    "{qid}: reject: {command} from {host}: {code} {dsn} {reason}; from=<{sender}>{to} "
    "proto={proto}{helo}",
    event=Event.REJECT,
)


def reject(
    command: str,
    ip: str,
    reply: Reply,
    *,
    sender: str | None = None,
    recipient: str | None = None,
    helo: str | None = None,
    qid: str | None = None,
    proto: str = "ESMTP",
) -> None:
    """A refused command, as Postfix's ``NOQUEUE: reject: RCPT from host[ip]: 554 ...``."""
    shown = {
        "qid": qid or "NOQUEUE",
        "sender": sender or "",
        "to": _to([recipient] if recipient is not None else []),
        "proto": proto,
        "helo": f" helo=<{helo}>" if helo else "",
    }
    _REJECT(
        qid,
        shown,
        client_ip=ip,
        command=command,
        code=reply.code,
        dsn=reply.enhanced,
        reason=reply.text,
        sender=sender,
        recipient=recipient,
    )


_HTTP_REJECT = _http(
    "NOQUEUE: reject: HTTP from {host}: {code} {reason}; from=<{sender}>{to} proto=HTTP "
    "api_token={api_token}",
    event=Event.REJECT,
)


def http_reject(
    ip: str,
    token: str,
    problem: Mapping[str, object],
    *,
    sender: str | None = None,
    recipients: Sequence[str] = (),
) -> None:
    """An HTTP submission refused by the relay's policy (403 sender, 413 size, 422 a
    recipient or limit), in the shape of :func:`reject` with ``HTTP`` as the command:
    ``NOQUEUE: reject: HTTP from unknown[IP]: 403 DETAIL; from=<a@b> to=<c@d> proto=HTTP
    api_token=NAME``. ``problem`` is the RFC 9457 body the client was answered."""
    _HTTP_REJECT(
        None,
        {"sender": sender or "", "to": _to(recipients)},
        client_ip=ip,
        command="HTTP",
        code=problem.get("status"),
        dsn=None,
        reason=str(problem.get("detail", "")),
        sender=sender,
        recipient=recipients[0] if len(recipients) == 1 else None,
        recipients=list(recipients),
        api_token=token,
        problem=dict(problem),
    )


_AUTH_FAILED = _smtpd(
    "warning: {host}: SASL {mechanism} authentication failed: authentication failure, "
    "sasl_username={sasl_username}",
    event=Event.AUTH_FAILED,
)


def auth_failed(ip: str, mechanism: str, username: str | None) -> None:
    """Postfix's line (smtpd_sasl_glue.c) to the letter, so that fail2ban's postfix filter
    (mode auth) matches too: the name the client tried, at most 100 characters, with
    anything unprintable as "?" (Postfix's printable()), "(unavailable)" if it sent none."""
    shown = "(unavailable)"
    if username is not None:
        shown = "".join(c if c.isprintable() else "?" for c in username[:100])
    _AUTH_FAILED(
        None, {"sasl_username": shown}, client_ip=ip, mechanism=mechanism, sasl_username=username
    )


_LOST_CONNECTION = _smtpd("lost connection after {after} from {host}", event=Event.LOST_CONNECTION)


def lost_connection(ip: str, after: str) -> None:
    _LOST_CONNECTION(client_ip=ip, after=after)


_CONNECTION_LIMIT = _smtpd(
    "warning: connection limit {limit} reached: refusing {host}",
    event=Event.CONNECTION_LIMIT,
)


def too_many_connections(ip: str, limit: int) -> None:
    _CONNECTION_LIMIT(client_ip=ip, limit=limit)


_TLS_FAILED = _smtpd(
    "warning: TLS handshake failed ({tls}) from {host}: {reason}", event=Event.TLS_FAILED
)


def tls_failed(ip: str, where: str, reason: str, kind: str) -> None:
    """A TLS handshake that did not complete (``where``: "implicit TLS" or "STARTTLS");
    ``kind`` is a short fixed word for the metric (protocol_version, timeout, ...)."""
    _TLS_FAILED(client_ip=ip, tls=where, reason=reason, kind=kind)


_LEGACY_TLS = _smtpd("warning: legacy TLS ({tls}) from {host}: {version}", event=Event.LEGACY_TLS)


def legacy_tls(ip: str, where: str, version: str) -> None:
    """A session encrypted with TLS 1.0 or 1.1 (RFC 8996 deprecates them): counted in
    /metrics, and logged so that the devices still needing them can be found."""
    _LEGACY_TLS(client_ip=ip, tls=where, version=version)


_PROXY_REFUSED = _smtpd(
    "warning: PROXY protocol: {reason}: closing connection from {host}",
    event=Event.PROXY_REFUSED,
)


def proxy_refused(ip: str, reason: str) -> None:
    """A connection closed before the greeting: it came from an address not allowed to
    send a PROXY header, or sent none that was valid ([server] proxy_protocol)."""
    _PROXY_REFUSED(client_ip=ip, reason=reason)


_NON_SMTP_COMMAND = _smtpd(
    "warning: non-SMTP command from {host}: {command}", event=Event.NON_SMTP_COMMAND
)


def non_smtp_command(ip: str, line: str) -> None:
    """An HTTP request or other non-SMTP line (the session is closed), as Postfix logs it."""
    _NON_SMTP_COMMAND(client_ip=ip, command=line)


_TOO_MANY_COMMANDS = _smtpd(
    "too many {kind} after {after} from {host}", event=Event.TOO_MANY_COMMANDS
)


def too_many_commands(ip: str, what: str, after: str) -> None:
    """The session was closed for junk or unknown commands (Postfix: "too many errors")."""
    _TOO_MANY_COMMANDS(client_ip=ip, after=after, kind=what)


_DATA_MEMORY_LIMIT = _smtpd(
    "{prefix}warning: message data memory limit of {limit} bytes reached: refusing message "
    "from {host}",
    event=Event.DATA_MEMORY_LIMIT,
)


def data_memory_exhausted(ip: str, limit: int, qid: str | None) -> None:
    _DATA_MEMORY_LIMIT(qid, {"prefix": _prefix(qid)}, client_ip=ip, limit=limit)


_TIMEOUT = _smtpd("timeout after {after} from {host}", event=Event.TIMEOUT)


def timeout(ip: str, after: str) -> None:
    _TIMEOUT(client_ip=ip, after=after)


_INTERNAL_ERROR = _smtpd("{prefix}error: {what} (client {host})", event=Event.INTERNAL_ERROR)


def internal_error(ip: str, what: str, qid: str | None = None) -> None:
    _INTERNAL_ERROR(qid, {"prefix": _prefix(qid), "what": what}, client_ip=ip)


_SPOOL_ERROR = _cleanup("{qid}: warning: {what}", event=Event.SPOOL_ERROR)


def spool_error(qid: str, what: str) -> None:
    _SPOOL_ERROR(qid, {"what": what})


_DELIVERY = _smtp(
    "{qid}: to=<{recipient}>, relay={relay}, delay={delay}, delays={delays}, dsn={dsn}, "
    "status={status} ({code} {dsn} {reason})",
    event=Event.DELIVERY,
)


def delivery(
    qid: str,
    recipient: str,
    relay: str,
    delay: float,
    delays: tuple[float, float, float, float],
    reply: Reply,
    status: str,
) -> None:
    """``QID: to=<r>, relay=..., delay=, delays=a/b/c/d, dsn=, status=sent (250 ...)``."""
    shown = {"delay": _short(delay), "delays": "/".join(_short(d) for d in delays)}
    _DELIVERY(
        qid,
        shown,
        recipient=recipient,
        relay=relay,
        delay=delay,
        dsn=reply.enhanced,
        code=reply.code,
        status=status,
        reason=reply.text,
    )


def bounced_unsent(qid: str, recipient: str, delay: float, reply: Reply) -> None:
    """A recipient failed without an attempt (expired, or bounced by the operator):
    no relay and no time spent in any stage of a delivery."""
    delivery(qid, recipient, "none", delay, (0.0, 0.0, 0.0, 0.0), reply, "bounced")


_FOLDED = _smtp(
    "{qid}: warning: folded {count} line(s) longer than {limit} octets (longest {longest}) "
    "for delivery",
    event=Event.FOLDED,
)


def folded_lines(qid: str, count: int, longest: int, limit: int) -> None:
    """``QID: warning: folded N line(s) longer than 998 octets (longest L) for delivery``."""
    _FOLDED(qid, count=count, longest=longest, limit=limit)


_DKIM_SIGNED = _smtp(
    "{qid}: DKIM-Signature field added (s={selector}, d={domain})", event=Event.DKIM_SIGNED
)


def dkim_signed(qid: str, selector: str, domain: str, algorithm: str) -> None:
    """``QID: DKIM-Signature field added (s=SELECTOR, d=DOMAIN)``, as OpenDKIM says it."""
    _DKIM_SIGNED(qid, selector=selector, domain=domain, algorithm=algorithm)


_DKIM_NOT_SIGNED = _smtp("{qid}: warning: DKIM: {reason}", event=Event.DKIM_NOT_SIGNED)


def dkim_not_signed(qid: str, reason: str) -> None:
    """``QID: warning: DKIM: not signed for DOMAIN: REASON``; the message goes out."""
    _DKIM_NOT_SIGNED(qid, {"reason": escape(reason)}, reason=reason)


_ROUTED = _qmgr(
    "{qid}: {route}: upstream={upstream} from=<{sender}>{rewritten}", event=Event.ROUTED
)


def routed(qid: str, route: str, upstream: str, sender: str, rewritten: str | None) -> None:
    """``QID: sender route auth_user=scanner: upstream=[smtp.example:587] as scanner@...
    from=<orig>`` (+ `` rewritten to <new>``): which upstream a sender route chose."""
    shown = {"rewritten": f" rewritten to <{rewritten}>" if rewritten is not None else ""}
    _ROUTED(qid, shown, route=route, upstream=upstream, sender=sender, rewritten=rewritten)


_NOTICE_WORDS = {
    "failure": "sender non-delivery notification",
    "delay": "sender delay notification",
    "success": "sender delivery status notification",
    "postmaster": "postmaster non-delivery notification",
}


_UPSTREAM_PAUSED = _qmgr(
    "warning: upstream {upstream} paused for {seconds}s after: {reply} "
    "(slow-down rule {rule}: {source})",
    event=Event.UPSTREAM_PAUSED,
)


def upstream_paused(upstream: str, seconds: float, reply: Reply, rule: int, source: str) -> None:
    """``warning: upstream KEY paused for 30s after: REPLY (slow-down rule N: SOURCE)``:
    a "slow down" reply paused every delivery to that upstream (delivery/ratelimits.py)."""
    shown = {"seconds": _short(seconds), "reply": escape(str(reply)), "source": source}
    _UPSTREAM_PAUSED(
        None,
        shown,
        upstream=upstream,
        seconds=seconds,
        dsn=reply.enhanced,
        reply=str(reply),
        rule=rule,
    )


_NOTICE = _bounce("{qid}: {kind}: {notice_qid}", event=Event.NOTICE)


def notice_sent(qid: str, kind: str, notice_qid: str) -> None:
    """``QID: sender non-delivery notification: NEWQID``, as Postfix's bounce daemon."""
    _NOTICE(qid, {"kind": _NOTICE_WORDS[kind]}, kind=kind, notice_qid=notice_qid)


_NOTICE_DISCARDED = _bounce(
    "{qid}: undeliverable notice to=<{recipient}> discarded (no postmaster set, or it was "
    "the postmaster's)",
    event=Event.NOTICE_DISCARDED,
    level=WARNING,
)


def notice_discarded(qid: str, recipient: str) -> None:
    _NOTICE_DISCARDED(qid, recipient=recipient)


_REMOVED = _qmgr("{qid}: removed", event=Event.REMOVED)


def removed(qid: str) -> None:
    _REMOVED(qid)


# Operator actions (HTTP queue operations), logged by "postsuper" as Postfix's are.
_DELETED = _postsuper("{qid}: removed (deleted by operator)", event=Event.REMOVED)


def deleted(qid: str) -> None:
    """The operator deleted a message: its end, like ``removed`` (no notice is sent)."""
    _DELETED(qid, reason="deleted by operator")


_CANCELED = _postsuper("{qid}: canceled by {by}", event=Event.CANCELED)


def canceled(qid: str, by: str, recipients: Sequence[str]) -> None:
    """The submitter withdrew the message's pending recipients (no notice is sent)."""
    _CANCELED(qid, by=by, recipients=list(recipients))


_HOLD = _postsuper("{qid}: placed on hold", event=Event.HOLD)


def held(qid: str) -> None:
    _HOLD(qid)


_RELEASE = _postsuper("{qid}: released from hold", event=Event.RELEASE)


def released(qid: str) -> None:
    _RELEASE(qid)


def _short(seconds: float) -> str:
    # Postfix prints delays with two significant digits below 1 s, e.g. 0.01, 0.2, 4.2.
    if seconds < 0.1:
        return f"{seconds:.2f}".rstrip("0").rstrip(".") or "0"
    return f"{seconds:.1f}".rstrip("0").rstrip(".") if seconds < 10 else f"{seconds:.0f}"


# --- formatting -------------------------------------------------------------------------

_PID = os.getpid()

# C0 and C1 controls, DEL, line/paragraph separators, and the lone surrogates that stand
# for bytes which were not UTF-8 (surrogateescape): nothing a terminal or a log parser
# may see raw.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\udc80-\udcff]")


def _octal(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code >= 0xDC80:  # a byte that was not UTF-8, decoded with surrogateescape
        code -= 0xDC00
    return f"\\{code:03o}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control character written as ``\\ooo`` (ESC -> ``\\033``)."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_octal, text)


class _Base(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self.hostname = socket.gethostname().split(".")[0]

    @staticmethod
    def service(record: logging.LogRecord) -> str:
        return getattr(record, "service", None) or "main"


class TextFormatter(_Base):
    def __init__(self, *, under_journald: bool) -> None:
        super().__init__()
        self.under_journald = under_journald

    def format(self, record: logging.LogRecord) -> str:
        text = escape(record.getMessage())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if not hasattr(record, "fields") and record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        line = f"smtprelay/{self.service(record)}[{_PID}]: {text}"
        if self.under_journald:
            return line
        return f"{_rfc3339(record.created)} {self.hostname} {line}"


class JsonFormatter(_Base):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "time": _rfc3339(record.created),
            "host": self.hostname,
            "program": f"smtprelay/{self.service(record)}",
            "pid": _PID,
            "level": record.levelname.lower(),
        }
        qid = getattr(record, "qid", None)
        if qid:
            obj["qid"] = qid
        fields = getattr(record, "fields", {})
        obj.update(
            {k: escape(v) if isinstance(v, str) else v for k, v in fields.items() if v is not None}
        )
        obj["message"] = escape(record.getMessage())
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


def _rfc3339(ts: float) -> str:
    local = time.localtime(ts)
    offset = local.tm_gmtoff
    sign = "+" if offset >= 0 else "-"
    hh, mm = divmod(abs(offset) // 60, 60)
    millis = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{millis:03d}{sign}{hh:02d}:{mm:02d}"


def setup(fmt: str, level: str) -> None:
    """Route all logging to stderr in the chosen format (journald reads it under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else TextFormatter(under_journald=under_journald)
    )
    handler.setLevel(level.upper())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Mail events are always made, whatever [log] level says: the statistics and the
    # message history (smtprelay.stats) listen to every one. The level filters what
    # reaches stderr (the handler above), not what happens.
    log.setLevel(logging.DEBUG)
    # Several records per message: skip what no line here prints (the caller's source
    # position found by walking the stack, thread and process names) -- a quarter of
    # the cost of a record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiosmtpd logs every command at INFO and client mistakes (unknown commands, aborted
    # AUTH) at WARNING under "mail.log", naming the client as a Python tuple; our own
    # events replace all of them. What it logs at ERROR (its own faults) still shows,
    # with the client named as ours are.
    aiosmtpd = logging.getLogger("mail.log")
    aiosmtpd.setLevel(logging.ERROR)
    if not any(isinstance(f, _PeerNames) for f in aiosmtpd.filters):
        aiosmtpd.addFilter(_PeerNames())
    # Its PROXY protocol parser warns with the client's bytes under "mail.debug"; a bad
    # header is our own line (proxy_refused), escaped.
    logging.getLogger("mail.debug").setLevel(logging.ERROR)


class _PeerNames(logging.Filter):
    """aiosmtpd's ``('1.2.3.4', 5678)`` peer arguments, written as ``unknown[1.2.3.4]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(
                _Name(_host(str(a[0]))) if isinstance(a, tuple) and len(a) >= 2 else a for a in args
            )
        return True


class _Name(str):
    """A client name that aiosmtpd's ``%r`` prints without quotes."""

    def __repr__(self) -> str:
        return str(self)
