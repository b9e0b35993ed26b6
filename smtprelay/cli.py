"""Command line: parse, dispatch, exit codes (0 ok, 1 operation failed, 2 usage/config)."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from smtprelay import __version__, config, maillog, queuecli, tokencli, upstreamcli, usersfile
from smtprelay.cliactions import Actions
from smtprelay.dkimsign import keygen
from smtprelay.errors import RelayError
from smtprelay.tls import TLSError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("smtprelay")


class CommandFailed(RelayError):
    """The operation failed (exit 1); the message is printed as is."""


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "sendmail_argv", None) is not None:  # sendmail's own exit codes
        from smtprelay import sendmail

        sys.exit(
            sendmail.run(
                args.sendmail_argv, getattr(args, "config", None), prog="smtprelay sendmail"
            )
        )
    if not getattr(args, "handler", None):
        parser.print_usage(sys.stderr)
        sys.exit(EXIT_USAGE)
    try:
        # A command that needs no configuration (dkim keygen) works without the file.
        settings = (
            None
            if getattr(args, "standalone", False)
            else config.load(config.config_path(getattr(args, "config", None)))
        )
        code = args.handler(args, settings)
    except (
        CommandFailed,
        usersfile.UsersFileError,
        tokencli.TokenFileError,
        keygen.KeygenError,
        upstreamcli.UpstreamCommandError,
        TLSError,
        OSError,
    ) as e:
        # Before ConfigError, whose subclasses they are: a bad users file or certificate
        # is a failed operation (exit 1), a bad configuration file a usage error (exit 2).
        print(f"smtprelay: {e}", file=sys.stderr)
        code = EXIT_FAILED
    except config.ConfigError as e:
        print(f"smtprelay: configuration error: {e}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = EXIT_FAILED
    sys.exit(code)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"configuration file (default: $SMTPRELAY_CONFIG, else {config.DEFAULT_CONFIG_PATH})",
    )
    # -c may stand before or after the command; SUPPRESS keeps a later default from
    # overwriting an earlier value (so no set_defaults on the shared option).
    parser = argparse.ArgumentParser(prog="smtprelay", parents=[common])
    parser.add_argument("--version", action="version", version=f"smtprelay {__version__}")
    commands = parser.add_subparsers(metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the relay in the foreground")
    serve.set_defaults(handler=_serve)

    check = commands.add_parser(
        "check-config",
        parents=[common],
        help="validate and print the effective configuration "
        "(`smtprelay route` shows which upstream a sender or user takes)",
    )
    check.set_defaults(handler=_check_config)

    user = Actions(commands, common, "user", "manage SMTP AUTH users")
    add = user.add(
        "add",
        "add a user or change a password (read from the terminal, or one line of stdin)",
        _user_add,
    )
    add.add_argument("name")
    user.add("del", "remove a user", _user_del).add_argument("name")
    user.add("list", "list user names", _user_list)

    queuecli.register(commands, common)
    tokencli.register(commands, common)
    keygen.register(commands, common)
    upstreamcli.register(commands, common)

    # sendmail's flags (-oi, -fSENDER, -F NAME ...) are not argparse's: every word after
    # the command goes, unparsed, to smtprelay.sendmail (prefix_chars: no option here).
    sendmail = commands.add_parser(
        "sendmail",
        add_help=False,
        prefix_chars="\0",
        help="sendmail-compatible injection from stdin: [-t] [-i] [-f SENDER] [RCPT...]",
    )
    sendmail.add_argument("sendmail_argv", nargs=argparse.REMAINDER, metavar="ARGS")
    return parser


def _serve(args: argparse.Namespace, settings: config.Settings) -> int:
    from smtprelay import app  # the daemon's imports (uvloop, aiosmtpd) only where needed

    maillog.setup(settings.log.format, settings.log.level)
    try:
        app.run(settings, config.config_path(getattr(args, "config", None)))
    except app.StartupError as e:
        log.error("cannot start: %s", e)
        return EXIT_FAILED
    except app.DaemonFault as e:  # its traceback is in the log already
        log.error("stopped after a fault: %s", e)
        return EXIT_FAILED
    return EXIT_OK


def _check_config(args: argparse.Namespace, settings: config.Settings) -> int:
    print(config.effective(settings), end="")
    if settings.auth.users_file:
        users = usersfile.read_users(Path(settings.auth.users_file))
        print(f"# {len(users)} user(s) in {settings.auth.users_file}", file=sys.stderr)
    from smtprelay.dkimsign import keys  # reads every key file: a bad one is named

    for line in keys.describe(keys.load_keyring(settings.dkim).keys):
        print(f"# DKIM key {line}", file=sys.stderr)
    return EXIT_OK


def _users_path(settings: config.Settings) -> Path:
    if not settings.auth.users_file:
        raise config.ConfigError("[auth] users_file: not set; the users file location is needed")
    return Path(settings.auth.users_file)


def _user_add(args: argparse.Namespace, settings: config.Settings) -> int:
    path = _users_path(settings)
    usersfile.validate_name(args.name)
    users = usersfile.read_users(path)
    existed = args.name in users
    password = _read_password()
    if usersfile.password_truncated(password):
        print(
            f"smtprelay: note: only the first {usersfile.MAX_PASSWORD} bytes of the password "
            "count (bcrypt; htpasswd -B does the same)",
            file=sys.stderr,
        )
    users[args.name] = usersfile.hash_password(password)
    usersfile.write_users(path, users)
    print(f"user {args.name} {'updated' if existed else 'added'} in {path}")
    return EXIT_OK


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Password (again): "):
            raise CommandFailed("passwords do not match")
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if not first:
        raise CommandFailed("empty password refused")
    return first


def _user_del(args: argparse.Namespace, settings: config.Settings) -> int:
    path = _users_path(settings)
    users = usersfile.read_users(path)
    if users.pop(args.name, None) is None:
        raise CommandFailed(f"no user {args.name} in {path}")
    usersfile.write_users(path, users)
    print(f"user {args.name} removed from {path}")
    return EXIT_OK


def _user_list(args: argparse.Namespace, settings: config.Settings) -> int:
    for name in sorted(usersfile.read_users(_users_path(settings))):
        print(name)
    return EXIT_OK
