"""``smtprelay sendmail`` / ``smtprelay-sendmail``: the sendmail command line, for cron and PHP.

Reads one message from standard input, completes it as sendmail does (recipients from
the headers with ``-t``, ``Bcc:`` removed, ``From:`` and ``Date:`` added when missing,
CRLF line endings) and submits it over SMTP to the daemon on this machine: through its
local submission socket (``[server] local_socket``, :mod:`smtprelay.inbound.local`),
which needs neither a trusted loopback nor a readable configuration file -- the default
``/run/smtprelay/submit.sock`` is used when the file cannot be read, so ``www-data`` and
cron users need no access to it; the daemon qualifies domainless addresses and adds the
``Message-ID:``. Only with ``local_socket = ""`` in a readable file does it connect to
the first ``[server] listen`` address instead (and then qualifies addresses itself).
Nothing is written anywhere else: the message is either acknowledged by the relay (which
means it is on disk, DESIGN.md promise 1) or the command exits non-zero and says why on
stderr.

Exit codes are sendmail's (``<sysexits.h>``), which cron, PHP's ``mail()`` and scripts
already understand:

====  ===============  =========================================================
0     EX_OK            the relay accepted the message for every recipient
64    EX_USAGE         bad command line, or no recipient at all
65    EX_DATAERR       the relay refused the message itself (5xx after DATA)
67    EX_NOUSER        the relay refused one or more recipients (5xx); the others,
                       if any, were accepted and the message goes to them
69    EX_UNAVAILABLE   the relay refused the session or the sender (5xx)
70    EX_SOFTWARE      internal error (a bug: the traceback is printed)
74    EX_IOERR         standard input could not be read
75    EX_TEMPFAIL      relay not reachable, timed out, connection lost, or any 4xx:
                       nothing was accepted, run the command again later
78    EX_CONFIG        the configuration file is invalid, or missing and the default
                       socket does not answer either
====  ===============  =========================================================

When the relay is down the command does not queue the message somewhere else: the spool
belongs to the daemon (its envelope records the client and the relay policy that
accepted it), so the command exits 75 and the failure is never silent: PHP's ``mail()``
returns false, scripts can keep the message and retry, cron logs the failed exit status.
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import ssl
import sys
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

# Not smtprelay.config: pydantic costs more CPU than all the rest of a run, and a caller
# who cannot read the configuration does not need it (imported in find_relay otherwise).
from smtprelay import defaults

if TYPE_CHECKING:
    from smtprelay import config

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78

CONNECT_TIMEOUT = 30.0
COMMAND_TIMEOUT = 300.0  # RFC 5321 4.5.3.2: 5 minutes for commands (and here the final dot)

USAGE = """\
usage: {prog} [-t] [-i] [-f SENDER] [-F FULL_NAME] [-C FILE] [-v] [--] [RECIPIENT ...]
Read a message from standard input and hand it to the local smtprelay daemon.
  -t            also send to the To:, Cc: and Bcc: addresses of the message (Bcc: is removed)
  -i, -oi       a line with a single "." does not end the message (read to end of input)
  -f, -r SENDER envelope sender (default: the login name, @[server] origin); "" or "<>" for none
  -F NAME       full name for the From: header, when the message has none
  -C, -c FILE   configuration file (default: $SMTPRELAY_CONFIG, else {default});
                if it cannot be read, the relay's socket {socket} is used
  -N NOTIFY     DSN: never, or a list of success,failure,delay
  -R RET        DSN: full or hdrs;   -V ENVID  DSN envelope identifier
  -v            show the SMTP dialogue on stderr
Accepted and ignored: -o<option> (e.g. -oem, -odi), -O option=value, -B type, -h hops,
-L label, -X file, -A c|m, -G, -U, -m, -n, -s, -bm.
Exit status: 0 sent, 64 usage, 65 message refused, 67 recipient refused,
69 sender or session refused, 75 relay unreachable or 4xx (try again later), 78 config.
"""


class UsageError(Exception):
    """The command line cannot be used (exit 64)."""


class Failure(Exception):
    """The message was not (completely) accepted; ``code`` is the exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- command line ------------------------------------------------------------------------

# getopt-style letters as sendmail (8.x) and Postfix's sendmail define them. A letter in
# _WITH_VALUE takes the rest of its word, or else the next word, as its value.
_WITH_VALUE = frozenset("ABCDFLMNOQRVXbcdefhopr")
_FLAGS = frozenset("tivGUmnsT")
_IGNORED_WITH_VALUE = frozenset("ABDLMQXdehp")  # accepted, meaningless here
_NOTIFY_WORDS = frozenset({"success", "failure", "delay"})


@dataclass
class Options:
    extract_recipients: bool = False  # -t
    ignore_dots: bool = False  # -i / -oi
    sender: str | None = None  # -f / -r; "" is the null sender <>
    full_name: str | None = None  # -F
    config: str | None = None  # -C / -c
    verbose: bool = False  # -v
    notify: str | None = None  # -N, upper case: "NEVER" or e.g. "SUCCESS,FAILURE"
    ret: str | None = None  # -R: "FULL" or "HDRS"
    envid: str | None = None  # -V
    recipients: list[str] = field(default_factory=list)  # addresses given as arguments
    show_help: bool = False


def parse_args(argv: Sequence[str]) -> Options:
    """Parse sendmail's command line. Options and recipients may be mixed; ``--`` ends
    the options. Raises :class:`UsageError`."""
    opts = Options()
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            for rest in words[i:]:
                opts.recipients += _argument_addresses(rest)
            break
        if word == "--help":
            opts.show_help = True
            continue
        if not word.startswith("-") or word == "-":
            if word != "-":  # a lone "-" (old sendmail: read standard input) is the default
                opts.recipients += _argument_addresses(word)
            continue
        j = 1
        while j < len(word):
            letter = word[j]
            if letter in _WITH_VALUE:
                value = word[j + 1 :]
                if not value:
                    if i >= len(words):
                        raise UsageError(f"option -{letter} needs a value")
                    value = words[i]
                    i += 1
                _apply_value(opts, letter, value)
                break
            if letter not in _FLAGS:
                if letter == "I":
                    raise UsageError("-I (newaliases) is not supported: smtprelay has no aliases")
                if letter == "q":
                    raise UsageError(
                        "-q (run the queue) is not supported: the relay "
                        "retries by itself; see smtprelay's queue commands"
                    )
                raise UsageError(f"unknown option -{letter}")
            if letter == "t":
                opts.extract_recipients = True
            elif letter == "i":
                opts.ignore_dots = True
            elif letter == "v":
                opts.verbose = True
            # G, U, m, n, s, T: accepted and ignored, as Postfix does.
            j += 1
    return opts


def _apply_value(opts: Options, letter: str, value: str) -> None:
    if letter in "fr":
        opts.sender = clean_sender(value)
    elif letter == "F":
        opts.full_name = value.strip()
    elif letter in "Cc":
        opts.config = value
    elif letter == "o":
        # -oi, -oem, -odi, -oL9 ...: only IgnoreDots matters here; the rest are ignored
        # as real sendmail ignores options that do not apply.
        if value == "i":
            opts.ignore_dots = True
    elif letter == "O":
        name, sep, setting = value.partition("=")
        if name.strip().lower() == "ignoredots":
            opts.ignore_dots = not sep or setting.strip().lower() not in ("f", "false", "no")
    elif letter == "b":
        if value != "m":
            raise UsageError(
                f"-b{value} is not supported: only -bm (read a message from "
                "standard input, the default) is"
            )
    elif letter == "N":
        words = {w.strip().lower() for w in value.split(",")}
        if words == {"never"}:
            opts.notify = "NEVER"
        elif words and words <= _NOTIFY_WORDS:
            opts.notify = ",".join(w.upper() for w in ("success", "failure", "delay") if w in words)
        else:
            raise UsageError(f"-N {value}: use never, or a list of success,failure,delay")
    elif letter == "R":
        if value.strip().lower() not in ("full", "hdrs"):
            raise UsageError(f"-R {value}: use full or hdrs")
        opts.ret = value.strip().upper()
    elif letter == "V":
        if not value or len(value) > 100 or not value.isascii() or not value.isprintable():
            raise UsageError(f"-V {value!r}: an envelope id is 1 to 100 printable ASCII characters")
        opts.envid = value
    else:
        assert letter in _IGNORED_WITH_VALUE, letter  # -B 8BITMIME, -h 17, -X file, ...


def _bad_address(address: str) -> bool:
    return not address or any(c.isspace() or c in "<>" or _control(c) for c in address)


def _control(c: str) -> bool:
    return ord(c) < 32 or ord(c) == 127


def clean_sender(value: str) -> str:
    """``-f`` accepts ``addr``, ``<addr>``, ``Name <addr>``, and ``""`` / ``<>`` for none."""
    text = value.strip()
    if any(_control(c) for c in text):  # CR, LF, NUL: never into an SMTP command
        raise UsageError(f"-f {value!r}: not an address")
    if text in ("", "<>"):
        return ""
    if "<" in text:
        text = getaddresses([text])[0][1]
    if _bad_address(text):
        raise UsageError(f"-f {value!r}: not an address")
    return text


def _argument_addresses(word: str) -> list[str]:
    """One argument: an address, or a list such as ``"a@x, Bob <b@y>"`` as sendmail reads."""
    found = [address for _, address in getaddresses([word]) if address]
    if not found or any(_control(c) for c in word) or any(_bad_address(a) for a in found):
        raise UsageError(f"{word!r}: not a recipient address")
    return found


# --- the message -------------------------------------------------------------------------


def read_message(stream: BinaryIO, ignore_dots: bool) -> bytes:
    """Standard input up to its end or, without ``-i``, up to a line holding only ``.``
    (which is not part of the message). Dots are not unstuffed (as Postfix does)."""
    if ignore_dots:
        return stream.read()
    lines: list[bytes] = []
    for line in stream:
        if line in (b".\n", b".\r\n", b"."):
            break
        lines.append(line)
    return b"".join(lines)


_EOL = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
_RECIPIENT_FIELDS = ("to", "cc", "bcc")
_RESENT_FIELDS = ("resent-to", "resent-cc", "resent-bcc")


@dataclass(frozen=True)
class Identity:
    """Who runs the command: login name, full name, and the domain for addresses without
    one (``[server] origin``), None when the relay qualifies them (the local socket)."""

    login: str
    full_name: str
    hostname: str | None

    def qualify(self, address: str) -> str:
        """``root`` -> ``root@hostname``, as sendmail appends its own domain."""
        if "@" in address or self.hostname is None:
            return address
        return f"{address}@{self.hostname}"


@dataclass(frozen=True)
class Prepared:
    sender: str  # "" for <>
    recipients: tuple[str, ...]
    data: bytes  # CRLF line endings, ends with CRLF, not dot-stuffed


def _field_name(field_lines: list[bytes]) -> str:
    match = _FIELD_NAME.match(field_lines[0])
    assert match is not None
    return match.group(1).decode("ascii").lower()


def _field_value(field_lines: list[bytes]) -> str:
    unfolded = b"".join(field_lines)
    return unfolded.split(b":", 1)[1].decode("utf-8", "replace")


def prepare(raw: bytes, opts: Options, me: Identity) -> Prepared:
    """Split headers and body, find recipients, remove Bcc, add the missing origin fields.

    Raises :class:`Failure` (64) when there is no recipient at all, or (65) for an
    unusable address in a recipient header.
    """
    lines = _EOL.split(raw)
    if lines and lines[-1] == b"":
        lines.pop()  # the split after the last line ending
    if lines and lines[0].startswith(b"From "):
        lines.pop(0)  # an mbox "From sender date" line is not a header (sendmail drops it)
    fields: list[list[bytes]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1].append(line)
        elif _FIELD_NAME.match(line):
            fields.append([line])
        else:
            break
        i += 1
    if i < len(lines) and lines[i] == b"":
        i += 1  # the empty line that ends the headers; added below when missing
    body = lines[i:]

    names = [_field_name(f) for f in fields]
    recipients = [me.qualify(a) for a in opts.recipients]
    if opts.extract_recipients:
        wanted = _RESENT_FIELDS if any(n in _RESENT_FIELDS for n in names) else _RECIPIENT_FIELDS
        for name, field_lines in zip(names, fields, strict=True):
            if name not in wanted:
                continue
            for _, address in getaddresses([_field_value(field_lines)]):
                if not address:
                    continue  # a group such as "undisclosed-recipients:;"
                if _bad_address(address):
                    raise Failure(EX_DATAERR, f"{name.title()}: {address!r} is not an address")
                recipients.append(me.qualify(address))
    unique: dict[str, str] = {}
    for address in recipients:
        unique.setdefault(address.lower(), address)
    if not unique:
        where = "on the command line" + (
            " or in To:, Cc:, Bcc:"
            if opts.extract_recipients
            else " (use -t to take them from the headers)"
        )
        raise Failure(EX_USAGE, f"no recipient {where}; message not sent")

    sender = (
        me.qualify(opts.sender)
        if opts.sender
        else ("" if opts.sender == "" else me.qualify(me.login))
    )
    out = [f for n, f in zip(names, fields, strict=True) if n not in ("bcc", "resent-bcc")]
    if "from" not in names:
        address = sender or me.qualify(me.login)
        name = me.full_name if opts.full_name is None else opts.full_name
        out.append([b"From: " + _mailbox(name, address).encode()])
    if "date" not in names:
        out.append([b"Date: " + formatdate(localtime=True).encode()])
    if "message-id" not in names and me.hostname is not None:  # else the relay adds it
        out.append([b"Message-ID: " + make_msgid(domain=me.hostname).encode()])
    data = b"".join(line + b"\r\n" for f in out for line in f)
    data += b"\r\n" + b"".join(line + b"\r\n" for line in body)
    return Prepared(sender, tuple(unique.values()), data)


def _mailbox(name: str, address: str) -> str:
    """``"Full Name" <addr>`` with the name quoted or RFC 2047-encoded as needed."""
    if not name:
        return address
    try:
        return formataddr((name, address))
    except UnicodeEncodeError:  # an SMTPUTF8 address: encode only the name
        display = formataddr((name, "x@x"))[: -len(" <x@x>")]
        return f"{display} <{address}>"


def identity(hostname: str | None) -> Identity:
    """Login name and full name (``$NAME``, else the GECOS field, as sendmail does)."""
    login, gecos = "", ""
    try:
        import pwd

        entry = pwd.getpwuid(os.getuid())
        login, gecos = entry.pw_name, entry.pw_gecos
    except (ImportError, KeyError):
        pass
    login = login or os.environ.get("LOGNAME") or os.environ.get("USER") or f"uid{os.getuid()}"
    full_name = os.environ.get("NAME")
    if full_name is None:
        full_name = gecos.split(",")[0].replace("&", login.capitalize())
    return Identity(login, full_name.strip(), hostname)


# --- SMTP submission ---------------------------------------------------------------------


def _local_host(host: str) -> str:
    """A wildcard listen address is reached through loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {'; '.join(text.splitlines())}".strip()


def _is_temporary(code: int) -> bool:
    return code < 500  # 4xx, and an unreadable reply (-1): a protocol error, try again


@dataclass(frozen=True)
class Relay:
    """Where the message goes: the daemon's local socket, or (``socket`` None) the
    ``[server] listen`` addresses of ``settings``."""

    socket: str | None
    settings: config.Settings | None
    # Why the configuration was not read (the default socket is tried instead).
    unreadable: str | None = None

    @property
    def max_recipients(self) -> int:
        if self.settings is None:
            return defaults.DEFAULT_MAX_RECIPIENTS
        return self.settings.server.max_recipients


class _UnixSMTP(smtplib.SMTP):
    """smtplib on a Unix stream socket (the daemon's local submission socket)."""

    def __init__(self, path: str) -> None:
        self.path = path
        # The name in EHLO: the session is local, no name lookup is worth its delay.
        super().__init__(local_hostname="localhost", timeout=CONNECT_TIMEOUT)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        return sock


def connect(relay: Relay, verbose: bool) -> tuple[smtplib.SMTP, str]:
    if relay.socket is not None:
        return connect_socket(relay, verbose)
    assert relay.settings is not None
    return connect_tcp(relay.settings, verbose)


def connect_socket(relay: Relay, verbose: bool) -> tuple[smtplib.SMTP, str]:
    path = relay.socket
    assert path is not None
    smtp = _UnixSMTP(path)
    smtp.set_debuglevel(1 if verbose else 0)
    try:
        code, greeting = smtp.connect(path)
    except OSError as e:
        smtp.close()
        reason = f"the relay is not reachable at {path} ({e.strerror or e})"
        if relay.unreadable is None:
            raise Failure(EX_TEMPFAIL, reason) from None
        # No configuration to read and no daemon at the default socket. Installed (the
        # file exists, it is just not ours to read): the daemon is down, try again later.
        # Not installed, or the wrong -C: a configuration error.
        code = EX_CONFIG if "No such file" in relay.unreadable else EX_TEMPFAIL
        raise Failure(code, f"configuration error: {relay.unreadable}, and {reason}") from None
    _check_greeting(smtp, code, greeting, path)
    return smtp, path


def _check_greeting(smtp: smtplib.SMTP, code: int, greeting: bytes, where: str) -> None:
    if code != 220:
        smtp.close()
        reply = _reply(code, greeting)
        if _is_temporary(code):
            raise Failure(EX_TEMPFAIL, f"relay at {where} is not accepting mail: {reply}")
        raise Failure(EX_UNAVAILABLE, f"relay at {where} refused the session: {reply}")
    if smtp.sock is not None:
        smtp.sock.settimeout(COMMAND_TIMEOUT)


def connect_tcp(settings: config.Settings, verbose: bool) -> tuple[smtplib.SMTP, str]:
    """The first ``[server] listen`` address that answers (then the implicit TLS ones)."""
    hostname = settings.server.hostname
    candidates = [(e, False) for e in settings.server.listen]
    candidates += [(e, True) for e in settings.server.listen_implicit_tls]
    if not candidates:
        raise Failure(EX_CONFIG, "[server] listen: no address to hand the message to")
    errors: list[str] = []
    for endpoint, implicit_tls in candidates:
        host = _local_host(endpoint.host)
        where = f"[{host}]:{endpoint.port}" if ":" in host else f"{host}:{endpoint.port}"
        smtp: smtplib.SMTP
        if implicit_tls:
            # The daemon on this machine, often with a self-signed certificate: the
            # connection is local, TLS here only because that listener requires it.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            smtp = smtplib.SMTP_SSL(
                local_hostname=hostname, timeout=CONNECT_TIMEOUT, context=context
            )
        else:
            smtp = smtplib.SMTP(local_hostname=hostname, timeout=CONNECT_TIMEOUT)
        smtp.set_debuglevel(1 if verbose else 0)
        try:
            code, greeting = smtp.connect(host, endpoint.port)
        except OSError as e:
            smtp.close()
            errors.append(f"{where}: {e.strerror or e}")
            continue
        _check_greeting(smtp, code, greeting, where)
        return smtp, where
    raise Failure(EX_TEMPFAIL, "the relay is not reachable (" + "; ".join(errors) + ")")


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def submit(prepared: Prepared, opts: Options, relay: Relay) -> list[str]:
    """Hand the message to the relay. Returns the refused recipients' replies (the
    message went to the others); raises :class:`Failure` when nothing more was accepted."""
    smtp, where = connect(relay, opts.verbose)
    accepted: list[str] = []
    refused: list[str] = []
    in_data = False
    try:
        code, reply = smtp.ehlo()
        if code != 250:
            code, reply = smtp.helo()
            if code != 250:
                raise Failure(
                    EX_TEMPFAIL if _is_temporary(code) else EX_UNAVAILABLE,
                    f"relay at {where} refused HELO: {_reply(code, reply)}",
                )
        mail_params, rcpt_params = _parameters(smtp, prepared, opts)
        # More recipients than the relay takes in one transaction: several transactions.
        for chunk in _chunks(prepared.recipients, relay.max_recipients):
            code, reply = smtp.docmd("MAIL", f"FROM:<{prepared.sender}>{mail_params}")
            if code != 250:
                text = f"sender <{prepared.sender}> refused: {_reply(code, reply)}"
                raise Failure(EX_TEMPFAIL if _is_temporary(code) else EX_UNAVAILABLE, text)
            taken: list[str] = []
            deferred: list[str] = []
            for rcpt in chunk:
                code, reply = smtp.docmd("RCPT", f"TO:<{rcpt}>{rcpt_params}")
                if 200 <= code < 300:
                    taken.append(rcpt)
                elif _is_temporary(code):
                    deferred.append(f"<{rcpt}>: {_reply(code, reply)}")
                else:
                    refused.append(f"<{rcpt}>: {_reply(code, reply)}")
            if deferred or not taken:
                smtp.rset()
                if deferred:  # all or nothing: a retry must not duplicate the message
                    raise Failure(EX_TEMPFAIL, "recipient deferred: " + "; ".join(deferred))
                continue
            in_data = True
            final: bytes | str
            try:
                code, final = smtp.data(prepared.data)
            except smtplib.SMTPDataError as e:
                code, final = e.smtp_code, e.smtp_error
            in_data = False
            if code != 250:
                text = f"message refused: {_reply(code, final)}"
                raise Failure(EX_TEMPFAIL if _is_temporary(code) else EX_DATAERR, text)
            accepted += taken
    except Failure as e:
        if accepted:
            e.args = (f"{e}; already accepted for {len(accepted)} recipient(s)",)
        raise
    except (smtplib.SMTPException, OSError) as e:
        doubt = " during DATA: the relay may or may not have queued the message" if in_data else ""
        raise Failure(
            EX_TEMPFAIL, f"connection to the relay at {where} lost{doubt} ({e})"
        ) from None
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()
    if not accepted:
        raise Failure(EX_NOUSER, "all recipients refused: " + "; ".join(refused))
    return refused


def _parameters(smtp: smtplib.SMTP, prepared: Prepared, opts: Options) -> tuple[str, str]:
    """ESMTP parameters for MAIL and RCPT, each only where the relay offers it."""
    mail: list[str] = []
    rcpt: list[str] = []
    if smtp.has_extn("size"):
        mail.append(f"SIZE={len(prepared.data)}")
    if smtp.has_extn("8bitmime") and not prepared.data.isascii():
        mail.append("BODY=8BITMIME")
    addresses = (prepared.sender, *prepared.recipients)
    if not all(a.isascii() for a in addresses):
        if not smtp.has_extn("smtputf8"):
            raise Failure(
                EX_DATAERR, "a non-ASCII address needs SMTPUTF8, which the relay does not offer"
            )
        mail.append("SMTPUTF8")
        smtp.command_encoding = "utf-8"
    if smtp.has_extn("dsn"):
        if opts.ret:
            mail.append(f"RET={opts.ret}")
        if opts.envid:
            mail.append(f"ENVID={_xtext(opts.envid)}")
        if opts.notify:
            rcpt.append(f"NOTIFY={opts.notify}")
    return "".join(" " + p for p in mail), "".join(" " + p for p in rcpt)


def _xtext(text: str) -> str:
    """RFC 3461 4: ``+`` ``=`` and anything outside ``!``..``~`` as ``+XX``."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in text)


def find_relay(path: Path) -> Relay:
    """The configured local socket; the default one when the file cannot be read (a
    ``0640 root:smtprelay`` file and a ``www-data`` caller); the ``[server] listen``
    addresses when it sets ``local_socket = ""``. Failure (78) if the file is invalid."""
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        return Relay(defaults.DEFAULT_LOCAL_SOCKET, None, f"{path}: {e.strerror or e}")
    from smtprelay import config  # only now: see the import of defaults

    try:
        settings = config.load(path)
    except config.ConfigError as e:
        raise Failure(EX_CONFIG, f"configuration error: {e}") from None
    return Relay(settings.server.local_socket or None, settings)


# --- entry points ------------------------------------------------------------------------


def run(
    argv: Sequence[str],
    config_file: str | None = None,
    *,
    stdin: BinaryIO | None = None,
    prog: str = "sendmail",
) -> int:
    """The whole command; returns the exit status. ``config_file`` is a ``-c`` given
    before the command (``smtprelay -c FILE sendmail``); ``-C``/``-c`` in ``argv`` wins."""
    try:
        opts = parse_args(argv)
    except UsageError as e:
        print(f"{prog}: {e}\n" + USAGE.splitlines()[0].format(prog=prog), file=sys.stderr)
        return EX_USAGE
    if opts.show_help:
        print(
            USAGE.format(
                prog=prog,
                default=defaults.DEFAULT_CONFIG_PATH,
                socket=defaults.DEFAULT_LOCAL_SOCKET,
            ),
            end="",
        )
        return EX_OK
    try:
        relay = find_relay(defaults.config_path(opts.config or config_file))
    except Failure as e:
        print(f"{prog}: {e}; message not sent", file=sys.stderr)
        return e.code
    try:
        raw = read_message(stdin or sys.stdin.buffer, opts.ignore_dots)
    except OSError as e:
        print(f"{prog}: cannot read the message from standard input: {e}", file=sys.stderr)
        return EX_IOERR
    try:
        # Over the socket the relay qualifies addresses; over TCP this command does.
        domain = None
        if relay.socket is None and relay.settings is not None:
            domain = relay.settings.server.origin_domain
        prepared = prepare(raw, opts, identity(domain))
        refused = submit(prepared, opts, relay)
    except Failure as e:
        retry = " (exit 75: try again later)" if e.code == EX_TEMPFAIL else ""
        print(f"{prog}: message not sent: {e}{retry}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; message not sent", file=sys.stderr)
        return EX_TEMPFAIL
    except Exception:
        traceback.print_exc()
        print(f"{prog}: internal error; message not sent", file=sys.stderr)
        return EX_SOFTWARE
    if refused:
        print(
            f"{prog}: recipient(s) refused, the message was sent to the others: "
            + "; ".join(refused),
            file=sys.stderr,
        )
        return EX_NOUSER
    return EX_OK


def main(argv: Sequence[str] | None = None) -> None:
    """``smtprelay-sendmail`` (link it as /usr/sbin/sendmail)."""
    prog = os.path.basename(sys.argv[0]) or "sendmail"
    sys.exit(run(sys.argv[1:] if argv is None else argv, prog=prog))


if __name__ == "__main__":  # python3 -m smtprelay.sendmail, for a PHP sendmail_path
    main()
