"""``smtprelay queue list|show|flush|hold|release|delete|bounce`` and ``smtprelay trace``:
the argparse commands, each asking the daemon first and the spool when it is stopped."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

from smtprelay import config, ids
from smtprelay.cliactions import Actions
from smtprelay.queuecli import offline
from smtprelay.queuecli.client import Client, act, fetch_queue
from smtprelay.queuecli.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    DaemonDown,
    QueueFailure,
    QueueUsageError,
)
from smtprelay.queuecli.format import (
    format_list,
    format_results,
    format_show,
    format_trace,
    results_failed,
)

STATES = ("active", "deferred", "hold", "scheduled", "rate-limited")
Handler = Callable[[argparse.Namespace, config.Settings], int]


def _down_note(reason: str) -> None:
    print(
        f"smtprelay: the daemon is not running ({reason}); reading the spool directly",
        file=sys.stderr,
    )


def _need_daemon(what: str, reason: str) -> QueueFailure:
    return QueueFailure(
        f"{what} needs the running daemon: {reason}; start it "
        "(systemctl start smtprelay) and try again"
    )


def check_qids(qids: Iterable[str]) -> list[str]:
    """The queue IDs once each, in the order given; QueueUsageError naming any malformed."""
    qids = list(dict.fromkeys(qids))
    bad = [q for q in qids if not ids.is_valid(q)]
    if bad:
        raise QueueUsageError(f"not a queue ID: {', '.join(bad)}")
    return qids


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def cmd_list(args: argparse.Namespace, settings: config.Settings) -> int:
    try:
        answer = fetch_queue(Client(settings), args.state, args.domain, args.limit)
    except DaemonDown as e:
        _down_note(str(e))
        answer = offline.spool_list(settings, args.state, args.domain)
        if args.limit is not None:
            answer["messages"] = answer["messages"][: args.limit]
    _loading_note(answer)
    if args.json:
        _print_json(answer)
    else:
        print(format_list(answer["messages"]), end="")
    return EXIT_OK


def _loading_note(answer: dict[str, Any]) -> None:
    """The daemon has just started and not read every queued message yet: the listing
    is short by that many (Postfix's mailq shows only what qmgr has seen, too)."""
    if answer.get("loading"):
        print(
            f"smtprelay: the daemon is still loading the queue after its start: "
            f"{answer['loading']} queued message(s) not listed yet",
            file=sys.stderr,
        )


def cmd_show(args: argparse.Namespace, settings: config.Settings) -> int:
    qid = check_qids([args.qid])[0]
    try:
        answer = Client(settings).call("GET", f"/messages/{qid}")
        headers = offline.read_headers(settings, qid) if answer.get("in_queue") else None
    except DaemonDown as e:
        _down_note(str(e))
        answer, headers = offline.spool_show(settings, qid)
    if args.json:
        _print_json(answer)
    else:
        print(format_show(answer, headers), end="")
    return EXIT_OK


def _act(
    args: argparse.Namespace, settings: config.Settings, action: str, qids: list[str] | None
) -> int:
    """POST /queue/<action>; ``qids`` None only for a flush of everything."""
    try:
        answer = act(Client(settings), action, qids)
    except DaemonDown as e:
        if action not in offline.OFFLINE_ACTIONS:
            raise _need_daemon(f"queue {action}", str(e)) from None
        assert qids is not None
        print(
            f"smtprelay: the daemon is not running ({e}): acting on the spool files "
            "directly, which is safe only while it stays stopped",
            file=sys.stderr,
        )
        answer = offline.spool_action(settings, action, qids)
    if args.json:
        _print_json(answer)
    else:
        print(format_results(answer), end="")
    return EXIT_FAILED if results_failed(answer) else EXIT_OK


def cmd_flush(args: argparse.Namespace, settings: config.Settings) -> int:
    if args.all and args.qids:
        raise QueueUsageError("give queue IDs or --all, not both")
    return _act(args, settings, "flush", check_qids(args.qids) if args.qids else None)


def cmd_action(args: argparse.Namespace, settings: config.Settings) -> int:
    return _act(args, settings, args.action, check_qids(args.qids))


def cmd_delete(args: argparse.Namespace, settings: config.Settings) -> int:
    if args.all == bool(args.qids):
        raise QueueUsageError("give queue IDs or --all")
    if not args.all:
        return _act(args, settings, "delete", check_qids(args.qids))
    try:
        qids = [m["qid"] for m in fetch_queue(Client(settings))["messages"]]
    except DaemonDown:
        qids = offline.queued_ids(settings)
    if not qids:
        print("Mail queue is empty: nothing to delete")
        return EXIT_OK
    if not confirm(f"Delete all {len(qids)} queued messages? [y/N] ", args.yes):
        print("nothing deleted", file=sys.stderr)
        return EXIT_FAILED
    return _act(args, settings, "delete", qids)


def confirm(question: str, yes: bool, isatty: Callable[[], bool] | None = None) -> bool:
    """``--yes``, or a "y" on the terminal; without a terminal, refuse (QueueUsageError)."""
    if yes:
        return True
    if not (isatty or sys.stdin.isatty)():
        raise QueueUsageError("no terminal to confirm on: add --yes to delete every message")
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_trace(args: argparse.Namespace, settings: config.Settings) -> int:
    if bool(args.qid) == bool(args.rcpt):
        raise QueueUsageError("give a queue ID or --rcpt ADDRESS")
    client = Client(settings)
    try:
        if args.qid:
            qids = check_qids([args.qid])
        else:
            wanted = args.rcpt.strip().strip("<>").lower()
            listing = fetch_queue(client)
            qids = [
                m["qid"]
                for m in listing["messages"]
                if any(a.lower() == wanted for a in m["recipients"])
            ]
            print(
                f"smtprelay: the HTTP API keeps histories by queue ID only: searched the "
                f"{listing['total']} queued message(s) for <{wanted}>, not the "
                "messages that already left the queue",
                file=sys.stderr,
            )
            if not qids:
                raise QueueFailure(f"no queued message has the pending recipient <{wanted}>")
        answers = [client.call("GET", f"/messages/{qid}") for qid in qids]
    except DaemonDown as e:
        raise _need_daemon("trace", str(e)) from None
    if args.json:
        _print_json(answers[0] if args.qid else answers)
    else:
        print("\n".join(format_trace(a) for a in answers), end="")
    return EXIT_OK


def guard(handler: Handler) -> Handler:
    """The handler with its failures as exit statuses and one line on stderr."""

    def run(args: argparse.Namespace, settings: config.Settings) -> int:
        try:
            return handler(args, settings)
        except QueueUsageError as e:
            print(f"smtprelay: {e}", file=sys.stderr)
            return EXIT_USAGE
        except QueueFailure as e:
            print(f"smtprelay: {e}", file=sys.stderr)
            return EXIT_FAILED
        except (KeyError, TypeError) as e:  # an answer not shaped as expected
            print(f"smtprelay: unexpected answer from the daemon: {e!r}", file=sys.stderr)
            return EXIT_FAILED

    return run


def positive(text: str) -> int:
    """An argparse type: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``queue ...`` and ``trace`` to the command parser."""
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the API's JSON")
    parents = [common, as_json]

    queue = Actions(commands, common, "queue", "list and act on the queue", parents=[as_json])
    listing = queue.add("list", "queued messages, like mailq", guard(cmd_list))
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--domain", metavar="D", help="with a pending recipient in D")
    listing.add_argument(
        "--limit",
        metavar="N",
        type=positive,
        help="only the N oldest (default: all, fetched 1000 at a time)",
    )
    show = queue.add(
        "show", "envelope, recipients, history and headers of a message", guard(cmd_show)
    )
    show.add_argument("qid", metavar="QID")
    flush = queue.add("flush", "attempt now: these messages, or every one", guard(cmd_flush))
    for name, text in (
        ("hold", "put on hold: never attempted until released"),
        ("release", "take off hold and attempt now"),
        ("bounce", "return to the sender now, with a failure notice"),
    ):
        sub = queue.add(name, text, guard(cmd_action), action=name)
        sub.add_argument("qids", nargs="+", metavar="QID")
    delete = queue.add(
        "delete", "remove without a notice: these messages, or --all", guard(cmd_delete)
    )
    for action, every in (
        (flush, "every waiting message (default)"),
        (delete, "every queued message (asks first)"),
    ):
        action.add_argument("qids", nargs="*", metavar="QID")
        action.add_argument("--all", action="store_true", help=every)
    delete.add_argument("--yes", action="store_true", help="do not ask (for --all)")

    trace = commands.add_parser(
        "trace", parents=parents, help="a message's history as a timeline (QID or --rcpt)"
    )
    trace.add_argument("qid", nargs="?", metavar="QID")
    trace.add_argument("--rcpt", metavar="ADDR", help="queued messages for this recipient")
    trace.set_defaults(handler=guard(cmd_trace))
