"""The command: parse, find the relay, read, complete and submit the message, and say
on stderr why not with the matching exit status."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import BinaryIO

from smtprelay import defaults
from smtprelay.sendmail.args import USAGE, SendmailUsageError, parse_args
from smtprelay.sendmail.exits import (
    EX_IOERR,
    EX_NOUSER,
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
    SubmissionFailed,
)
from smtprelay.sendmail.message import identity, prepare, read_message
from smtprelay.sendmail.relay import find_relay
from smtprelay.sendmail.submit import submit


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
    except SendmailUsageError as e:
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
    except SubmissionFailed as e:
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
    except SubmissionFailed as e:
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


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """``smtprelay-sendmail`` (link it as /usr/sbin/sendmail); messages name the command
    as it was called, or ``prog``."""
    prog = prog or os.path.basename(sys.argv[0]) or "sendmail"
    sys.exit(run(sys.argv[1:] if argv is None else argv, prog=prog))
