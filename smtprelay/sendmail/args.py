"""sendmail's command line: getopt-style letters as sendmail (8.x) and Postfix's sendmail
define them, options and recipients mixed, ``--`` ending the options."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses

from smtprelay.errors import RelayError

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


class SendmailUsageError(RelayError):
    """The command line cannot be used (exit 64)."""


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
    the options. Raises :class:`SendmailUsageError`."""
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
                        raise SendmailUsageError(f"option -{letter} needs a value")
                    value = words[i]
                    i += 1
                _apply_value(opts, letter, value)
                break
            if letter not in _FLAGS:
                if letter == "I":
                    raise SendmailUsageError(
                        "-I (newaliases) is not supported: smtprelay has no aliases"
                    )
                if letter == "q":
                    raise SendmailUsageError(
                        "-q (run the queue) is not supported: the relay "
                        "retries by itself; see smtprelay's queue commands"
                    )
                raise SendmailUsageError(f"unknown option -{letter}")
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
            raise SendmailUsageError(
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
            raise SendmailUsageError(f"-N {value}: use never, or a list of success,failure,delay")
    elif letter == "R":
        if value.strip().lower() not in ("full", "hdrs"):
            raise SendmailUsageError(f"-R {value}: use full or hdrs")
        opts.ret = value.strip().upper()
    elif letter == "V":
        if not value or len(value) > 100 or not value.isascii() or not value.isprintable():
            raise SendmailUsageError(
                f"-V {value!r}: an envelope id is 1 to 100 printable ASCII characters"
            )
        opts.envid = value
    else:
        assert letter in _IGNORED_WITH_VALUE, letter  # -B 8BITMIME, -h 17, -X file, ...


def bad_address(address: str) -> bool:
    return not address or any(c.isspace() or c in "<>" or is_control(c) for c in address)


def is_control(c: str) -> bool:
    return ord(c) < 32 or ord(c) == 127


def clean_sender(value: str) -> str:
    """``-f`` accepts ``addr``, ``<addr>``, ``Name <addr>``, and ``""`` / ``<>`` for none."""
    text = value.strip()
    if any(is_control(c) for c in text):  # CR, LF, NUL: never into an SMTP command
        raise SendmailUsageError(f"-f {value!r}: not an address")
    if text in ("", "<>"):
        return ""
    if "<" in text:
        text = getaddresses([text])[0][1]
    if bad_address(text):
        raise SendmailUsageError(f"-f {value!r}: not an address")
    return text


def _argument_addresses(word: str) -> list[str]:
    """One argument: an address, or a list such as ``"a@x, Bob <b@y>"`` as sendmail reads."""
    found = [address for _, address in getaddresses([word]) if address]
    if not found or any(is_control(c) for c in word) or any(bad_address(a) for a in found):
        raise SendmailUsageError(f"{word!r}: not a recipient address")
    return found
