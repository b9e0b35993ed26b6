"""``smtprelay queue ...`` and ``smtprelay trace``: the operator's queue commands.

They talk to the running daemon through its HTTP API (``[http] listen``, with the first
token of ``[http] tokens_file``), so an action never races a delivery attempt. When the
daemon is not running (connection refused), ``queue list`` and ``queue show`` read the
spool, and ``hold``, ``release`` and ``delete`` change the spool files directly -- safe
only because no daemon is there to change them too; ``flush``, ``bounce`` and ``trace``
need the daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from smtprelay import config, ids
from smtprelay.envelope import Envelope, QueueState
from smtprelay.queueview import queue_item, spool_state
from smtprelay.spool.store import Spool
from smtprelay.web.tokens import read_tokens, usable_by_cli

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TIMEOUT = 30.0
BATCH = 10_000  # the API's most QIDs per request
PAGE = 1000  # messages per GET /queue request while listing the whole queue
STATES = ("active", "deferred", "hold", "scheduled")
# Outcomes of an operator action that mean it did not happen (exit 1).
FAILED_OUTCOMES = ("not-found",)
EXPLAINED = {
    "after-attempt": "after-attempt (applied when the delivery attempt under way ends)",
    "attempting": "attempting (a delivery attempt is under way already)",
    "on-hold": "on-hold (not flushed: release it first)",
    "not-held": "not-held (it was not on hold)",
    "not-found": "not-found (no such message in the queue)",
}


class QueueFailure(Exception):
    """The operation failed (exit 1); the message is printed as is."""


class UsageError(Exception):
    """Wrong use of a command (exit 2)."""


class DaemonDown(Exception):
    """Nothing listens on the HTTP port: the daemon is stopped."""


# --- the HTTP client -------------------------------------------------------------------------


def base_url(settings: config.Settings) -> str:
    """``http://HOST:PORT`` of ``[http] listen``; a wildcard address means loopback."""
    endpoint = settings.http.listen
    if endpoint is None:
        raise config.ConfigError(
            '[http] listen: "" turns the HTTP endpoint off; the queue commands need it')
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(endpoint.host,
                                                                      endpoint.host)
    return f"http://[{host}]:{endpoint.port}" if ":" in host else f"http://{host}:{endpoint.port}"


def first_token(settings: config.Settings) -> str:
    path = settings.http.tokens_file
    if not path:
        raise config.ConfigError("[http] tokens_file: not set; the queue commands need a token")
    try:
        tokens = usable_by_cli(read_tokens(Path(path)))
    except OSError as e:
        raise config.ConfigError(
            f"[http] tokens_file {path}: cannot read it: {e.strerror or e}") from None
    except ValueError as e:
        raise config.ConfigError(f"[http] tokens_file {path}: {e}") from None
    if not tokens:
        raise config.ConfigError(
            f"[http] tokens_file {path}: no token in it that the CLI can use "
            "(one written in clear, with scope admin)")
    return tokens[0]


class Client:
    """Calls the daemon's API; raises DaemonDown or QueueFailure."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.base = base_url(settings)
        self._token: str | None = None
        # No proxy: the endpoint is local, whatever http_proxy says.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body: Any = None) -> Any:
        if self._token is None:
            self._token = first_token(self.settings)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=TIMEOUT) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            raise QueueFailure(_error_message(e)) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, ConnectionRefusedError):
                raise DaemonDown(f"nothing answers at {self.base} (connection refused)"
                                 ) from None
            raise QueueFailure(f"cannot reach the daemon at {self.base}: {_reason(e.reason)}"
                               ) from None
        except ConnectionRefusedError:
            raise DaemonDown(f"nothing answers at {self.base} (connection refused)") from None
        except (OSError, ValueError) as e:  # reset, timeout, malformed answer
            raise QueueFailure(f"the daemon at {self.base} did not answer: {_reason(e)}"
                               ) from None
        try:
            return json.loads(payload)
        except ValueError:
            raise QueueFailure(f"the daemon at {self.base} answered something that is not "
                               "JSON") from None


def _reason(error: object) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read())
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError, OSError):
        message = str(e.reason)
    if e.code == 401:
        return f"the daemon refused the token (401): {message}"
    return f"the daemon answered {e.code}: {message}"


# --- formatting ------------------------------------------------------------------------------


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
    lines = [f"{'-Queue ID-':<{width + 1}} {'--Size--':>8} {'----Arrival Time----':<20} "
             "-Sender/Recipient-------"]
    total = 0
    for m in messages:
        mark = {"hold": "!", "active": "*"}.get(m["state"], " ")
        size = int(m["size"])
        total += size
        lines.append(f"{m['qid']:<{width}}{mark} {size:>8} {_clock(m['arrival']):<20} "
                     f"{_sender(m['sender'])}")
        if m["state"] == "scheduled" and m.get("send_at"):
            lines.append(f"{indent}(scheduled for {_clock(m['send_at'])})")
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
        lines.append(f"Arrival:      {_stamp(envelope['arrival'])}")
        lines.append(f"Size:         {envelope['size']} bytes")
        lines.append(f"Sender:       <{envelope['sender']}>")
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
        if answer.get("in_queue") and envelope.get("state") != "hold" \
                and envelope.get("next_attempt"):
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
    events = answer.get("events") or []
    if events or not answer.get("in_queue"):
        lines.append("History:")
        lines += ["  " + line for line in timeline(answer).splitlines()]
    if headers:
        lines.append("Headers:")
        lines += ["  " + line for line in headers.splitlines()]
    return "\n".join(lines) + "\n"


def timeline(answer: dict[str, Any]) -> str:
    """The events of ``GET /messages/QID`` one a line: time, seconds since the first
    event, the service, and the log text without its ``QID:`` prefix."""
    qid = answer["qid"]
    events = answer.get("events") or []
    lines = []
    if not events:
        lines.append("(no events known: the daemon restarted since, or the history of "
                     "this message has expired)")
    start = events[0]["time"] if events else 0.0
    for event in events:
        text = str(event.get("text", ""))
        text = text.removeprefix(f"{qid}: ")
        service = event.get("service") or ""
        lines.append(f"{_stamp(event['time'])} {event['time'] - start:+9.3f}s "
                     f"{service:<9} {text}")
    if events and not answer.get("history_complete", True):
        omitted = answer.get("events_omitted") or 0
        why = (f"{omitted} event(s) omitted from the middle" if omitted else
               "events before the daemon's last start are missing")
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
    return "".join(f"{qid}: {EXPLAINED.get(outcome, outcome)}\n"
                   for qid, outcome in answer["results"].items())


def results_failed(answer: dict[str, Any]) -> bool:
    return any(outcome in FAILED_OUTCOMES or str(outcome).startswith("error")
               for outcome in answer.get("results", {}).values())


# --- the spool, when the daemon is stopped ---------------------------------------------------


def _spool(settings: config.Settings) -> Spool:
    root = Path(settings.spool.dir)
    if not (root / "queue").is_dir():  # do not create a spool (as root, say) here
        raise QueueFailure(f"[spool] dir {root}: no queue directory in it")
    return Spool(root)


def envelope_item(envelope: Envelope, now: float) -> dict[str, Any]:
    """As ``GET /queue`` shows it, read from the spool (the daemon is stopped)."""
    return queue_item(envelope, spool_state(envelope, now), now)


def _envelopes(spool: Spool) -> list[Envelope]:
    found = []
    for qid in sorted(spool.ids()):
        with contextlib.suppress(OSError, ValueError):  # gone, or not readable
            found.append(spool.load(qid))
    return found


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].rstrip(".").lower()


def spool_list(settings: config.Settings, state: str | None, domain: str | None
               ) -> dict[str, Any]:
    spool = _spool(settings)
    try:
        now = time.time()
        items = [envelope_item(e, now) for e in _envelopes(spool)]
    finally:
        spool.close()
    if state:
        items = [i for i in items if i["state"] == state]
    if domain:
        wanted = domain.strip().rstrip(".").lower()
        items = [i for i in items if any(_domain_of(a) == wanted for a in i["recipients"])]
    return {"messages": items, "total": len(items)}


def spool_show(settings: config.Settings, qid: str) -> tuple[dict[str, Any], str | None]:
    spool = _spool(settings)
    try:
        try:
            envelope = spool.load(qid)
        except FileNotFoundError:
            raise QueueFailure(f"no message {qid} in the queue") from None
        except ValueError as e:
            raise QueueFailure(f"{qid}: cannot read the envelope: {e}") from None
    finally:
        spool.close()
    answer = {
        "qid": qid, "status": envelope.state.value, "in_queue": True,
        "envelope": json.loads(envelope.to_json()), "events": [],
        "history_complete": False, "events_omitted": 0,
    }
    return answer, read_headers(settings, qid)


def read_headers(settings: config.Settings, qid: str, limit: int = 64 * 1024) -> str | None:
    """The header section of a queued message, read from its spool file (read-only:
    the daemon replaces the file by a rename, never rewrites it in place)."""
    path = Path(settings.spool.dir) / "queue" / f"{qid}.msg"
    try:
        with open(path, "rb") as f:
            f.readline()  # the envelope
            lines = []
            size = 0
            for raw in f:
                if raw in (b"\r\n", b"\n") or size > limit:
                    break
                size += len(raw)
                lines.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
    except OSError:
        return None
    return "\n".join(lines) or None


def _give_back(spool: Spool, qid: str) -> None:
    """Run as root, a rewritten file goes back to the spool's owner (the daemon's user)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        st = os.stat(spool.queue_dir)
        with contextlib.suppress(OSError):
            os.chown(spool.path(qid), st.st_uid, st.st_gid)


def spool_action(settings: config.Settings, action: str, qids: Iterable[str]
                 ) -> dict[str, Any]:
    """hold, release or delete on the spool files, the daemon being stopped."""
    spool = _spool(settings)
    results: dict[str, str] = {}
    try:
        for qid in qids:
            try:
                results[qid] = _spool_one(spool, action, qid)
            except FileNotFoundError:
                results[qid] = "not-found"
            except (OSError, ValueError) as e:
                results[qid] = f"error: {_reason(e)}"
    finally:
        spool.close()
    return {"action": action, "results": results}


def _spool_one(spool: Spool, action: str, qid: str) -> str:
    if action == "delete":
        if not spool.path(qid).exists():
            return "not-found"
        spool.remove(qid)
        return "deleted"
    envelope = spool.load(qid)
    if action == "hold":
        if envelope.state is QueueState.HOLD:
            return "held"
        envelope.state = QueueState.HOLD
    else:
        if envelope.state is not QueueState.HOLD:
            return "not-held"
        envelope.state = QueueState.ACTIVE
        envelope.next_attempt = time.time()
    spool.update(envelope)
    _give_back(spool, qid)
    return "held" if action == "hold" else "released"


# --- the commands ----------------------------------------------------------------------------


def _down_note(reason: str) -> None:
    print(f"smtprelay: the daemon is not running ({reason}); reading the spool directly",
          file=sys.stderr)


def _need_daemon(what: str, reason: str) -> QueueFailure:
    return QueueFailure(f"{what} needs the running daemon: {reason}; start it "
                        "(systemctl start smtprelay) and try again")


def _check_qids(qids: Iterable[str]) -> list[str]:
    qids = list(dict.fromkeys(qids))
    bad = [q for q in qids if not ids.is_valid(q)]
    if bad:
        raise UsageError(f"not a queue ID: {', '.join(bad)}")
    return qids


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def fetch_queue(client: Client, state: str | None = None, domain: str | None = None,
                limit: int | None = None) -> dict[str, Any]:
    """``GET /queue`` page after page (each request bounded, so a large queue never
    holds up the daemon), up to ``limit`` messages (None: all of them)."""
    base = {k: v for k, v in (("state", state), ("domain", domain)) if v}
    messages: list[dict[str, Any]] = []
    after: str | None = None
    total = loading = 0
    while limit is None or len(messages) < limit:
        want = PAGE if limit is None else min(PAGE, limit - len(messages))
        query = {**base, "limit": str(want), **({"after": after} if after else {})}
        page = client.call("GET", "/queue?" + urllib.parse.urlencode(query))
        if after is None:
            total = int(page["total"])
            loading = int(page.get("loading", 0))
        messages += page["messages"]
        after = page.get("next")
        if not after:
            break
    return {"messages": messages, "total": total, "loading": loading}


def _loading_note(answer: dict[str, Any]) -> None:
    """The daemon has just started and not read every queued message yet: the listing
    is short by that many (Postfix's mailq shows only what qmgr has seen, too)."""
    if answer.get("loading"):
        print(f"smtprelay: the daemon is still loading the queue after its start: "
              f"{answer['loading']} queued message(s) not listed yet", file=sys.stderr)


def cmd_list(args: argparse.Namespace, settings: config.Settings) -> int:
    try:
        answer = fetch_queue(Client(settings), args.state, args.domain, args.limit)
    except DaemonDown as e:
        _down_note(str(e))
        answer = spool_list(settings, args.state, args.domain)
        if args.limit is not None:
            answer["messages"] = answer["messages"][:args.limit]
    _loading_note(answer)
    if args.json:
        _print_json(answer)
    else:
        print(format_list(answer["messages"]), end="")
    return EXIT_OK


def cmd_show(args: argparse.Namespace, settings: config.Settings) -> int:
    qid = _check_qids([args.qid])[0]
    try:
        answer = Client(settings).call("GET", f"/messages/{qid}")
        headers = read_headers(settings, qid) if answer.get("in_queue") else None
    except DaemonDown as e:
        _down_note(str(e))
        answer, headers = spool_show(settings, qid)
    if args.json:
        _print_json(answer)
    else:
        print(format_show(answer, headers), end="")
    return EXIT_OK


def _act(args: argparse.Namespace, settings: config.Settings, action: str,
         qids: list[str] | None) -> int:
    """POST /queue/<action>; ``qids`` None only for a flush of everything."""
    client = Client(settings)
    try:
        if qids is None:
            answer = client.call("POST", "/queue/flush")
        else:
            answer = {"action": action, "results": {}}
            for i in range(0, len(qids), BATCH):
                part = client.call("POST", f"/queue/{action}", {"qids": qids[i:i + BATCH]})
                answer["results"].update(part.get("results", {}))
    except DaemonDown as e:
        if action in ("flush", "bounce"):
            raise _need_daemon(f"queue {action}", str(e)) from None
        assert qids is not None
        print(f"smtprelay: the daemon is not running ({e}): acting on the spool files "
              "directly, which is safe only while it stays stopped", file=sys.stderr)
        answer = spool_action(settings, action, qids)
    if args.json:
        _print_json(answer)
    else:
        print(format_results(answer), end="")
    return EXIT_FAILED if results_failed(answer) else EXIT_OK


def cmd_flush(args: argparse.Namespace, settings: config.Settings) -> int:
    if args.all and args.qids:
        raise UsageError("give queue IDs or --all, not both")
    return _act(args, settings, "flush", _check_qids(args.qids) if args.qids else None)


def cmd_action(args: argparse.Namespace, settings: config.Settings) -> int:
    return _act(args, settings, args.action, _check_qids(args.qids))


def cmd_delete(args: argparse.Namespace, settings: config.Settings) -> int:
    if args.all == bool(args.qids):
        raise UsageError("give queue IDs or --all")
    if not args.all:
        return _act(args, settings, "delete", _check_qids(args.qids))
    try:
        qids = [m["qid"] for m in fetch_queue(Client(settings))["messages"]]
    except DaemonDown:
        spool = _spool(settings)
        try:
            qids = sorted(spool.ids())
        finally:
            spool.close()
    if not qids:
        print("Mail queue is empty: nothing to delete")
        return EXIT_OK
    if not confirm(f"Delete all {len(qids)} queued messages? [y/N] ", args.yes):
        print("nothing deleted", file=sys.stderr)
        return EXIT_FAILED
    return _act(args, settings, "delete", qids)


def confirm(question: str, yes: bool, isatty: Callable[[], bool] | None = None) -> bool:
    """``--yes``, or a "y" on the terminal; without a terminal, refuse (UsageError)."""
    if yes:
        return True
    if not (isatty or sys.stdin.isatty)():
        raise UsageError("no terminal to confirm on: add --yes to delete every message")
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_trace(args: argparse.Namespace, settings: config.Settings) -> int:
    if bool(args.qid) == bool(args.rcpt):
        raise UsageError("give a queue ID or --rcpt ADDRESS")
    client = Client(settings)
    try:
        if args.qid:
            qids = _check_qids([args.qid])
        else:
            wanted = args.rcpt.strip().strip("<>").lower()
            listing = fetch_queue(client)
            qids = [m["qid"] for m in listing["messages"]
                    if any(a.lower() == wanted for a in m["recipients"])]
            print(f"smtprelay: the HTTP API keeps histories by queue ID only: searched the "
                  f"{listing['total']} queued message(s) for <{wanted}>, not the "
                  "messages that already left the queue", file=sys.stderr)
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


def _guard(handler: Callable[[argparse.Namespace, config.Settings], int]
           ) -> Callable[[argparse.Namespace, config.Settings], int]:
    def run(args: argparse.Namespace, settings: config.Settings) -> int:
        try:
            return handler(args, settings)
        except UsageError as e:
            print(f"smtprelay: {e}", file=sys.stderr)
            return EXIT_USAGE
        except QueueFailure as e:
            print(f"smtprelay: {e}", file=sys.stderr)
            return EXIT_FAILED
        except (KeyError, TypeError) as e:  # an answer not shaped as expected
            print(f"smtprelay: unexpected answer from the daemon: {e!r}", file=sys.stderr)
            return EXIT_FAILED

    return run


def _positive(text: str) -> int:
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

    queue = commands.add_parser("queue", parents=[common], help="list and act on the queue")
    actions = queue.add_subparsers(metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=parents, help="queued messages, like mailq")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--domain", metavar="D", help="with a pending recipient in D")
    listing.add_argument("--limit", metavar="N", type=_positive,
                         help="only the N oldest (default: all, fetched 1000 at a time)")
    listing.set_defaults(handler=_guard(cmd_list))
    show = actions.add_parser("show", parents=parents,
                              help="envelope, recipients, history and headers of a message")
    show.add_argument("qid", metavar="QID")
    show.set_defaults(handler=_guard(cmd_show))
    flush = actions.add_parser("flush", parents=parents,
                               help="attempt now: these messages, or every one")
    flush.add_argument("qids", nargs="*", metavar="QID")
    flush.add_argument("--all", action="store_true", help="every waiting message (default)")
    flush.set_defaults(handler=_guard(cmd_flush))
    for name, text in (("hold", "put on hold: never attempted until released"),
                       ("release", "take off hold and attempt now"),
                       ("bounce", "return to the sender now, with a failure notice")):
        sub = actions.add_parser(name, parents=parents, help=text)
        sub.add_argument("qids", nargs="+", metavar="QID")
        sub.set_defaults(handler=_guard(cmd_action), action=name)
    delete = actions.add_parser("delete", parents=parents,
                                help="remove without a notice: these messages, or --all")
    delete.add_argument("qids", nargs="*", metavar="QID")
    delete.add_argument("--all", action="store_true", help="every queued message (asks first)")
    delete.add_argument("--yes", action="store_true", help="do not ask (for --all)")
    delete.set_defaults(handler=_guard(cmd_delete))

    trace = commands.add_parser("trace", parents=parents,
                                help="a message's history as a timeline (QID or --rcpt)")
    trace.add_argument("qid", nargs="?", metavar="QID")
    trace.add_argument("--rcpt", metavar="ADDR", help="queued messages for this recipient")
    trace.set_defaults(handler=_guard(cmd_trace))
