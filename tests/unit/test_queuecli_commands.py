"""smtprelay.queuecli.commands and client.act: the command line of ``queue``/``trace``,
queue IDs, exit statuses, and actions sent in batches."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from smtprelay import config, ids
from smtprelay.queuecli import client, commands
from smtprelay.queuecli.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    QueueFailure,
    QueueUsageError,
)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="smtprelay")
    commands.register(top.add_subparsers(), argparse.ArgumentParser(add_help=False))
    return top


def test_queue_ids_once_each_in_order() -> None:
    a, b = ids.new_id(), ids.new_id()
    assert commands.check_qids([b, a, b]) == [b, a]
    with pytest.raises(QueueUsageError, match=r"not a queue ID: x, \.\./etc"):
        commands.check_qids([a, "x", "../etc"])


def test_the_parser() -> None:
    args = parser().parse_args(["queue", "list", "--state", "hold", "--limit", "5", "--json"])
    assert (args.state, args.limit, args.json) == ("hold", 5, True)
    args = parser().parse_args(["queue", "bounce", "Q1", "Q2"])
    assert (args.action, args.qids) == ("bounce", ["Q1", "Q2"])
    args = parser().parse_args(["trace", "--rcpt", "bob@example.net"])
    assert (args.qid, args.rcpt) == (None, "bob@example.net")


@pytest.mark.parametrize(
    "argv",
    [
        ["queue", "list", "--limit", "0"],
        ["queue", "list", "--limit", "many"],
        ["queue", "list", "--state", "sleeping"],
        ["queue", "hold"],
        ["queue"],
    ],
)
def test_parser_refusals(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        parser().parse_args(argv)
    assert stop.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (QueueUsageError("give queue IDs or --all"), EXIT_USAGE),
        (QueueFailure("no message"), EXIT_FAILED),
        (KeyError("results"), EXIT_FAILED),
    ],
)
def test_failures_become_exit_statuses(
    error: Exception, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(args: argparse.Namespace, settings: config.Settings) -> int:
        raise error

    assert commands.guard(handler)(argparse.Namespace(), config.Settings()) == status
    assert capsys.readouterr().err.startswith("smtprelay: ")


def test_a_handler_that_succeeds_keeps_its_status() -> None:
    assert commands.guard(lambda a, s: EXIT_OK)(argparse.Namespace(), config.Settings()) == 0


class ActingDaemon:
    """Answers POST /queue/<action> as the daemon does, and records each body."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def call(self, method: str, path: str, body: Any = None) -> Any:
        self.calls.append((method, path, body))
        if path == "/queue/flush" and body is None:
            return {"action": "flush", "flushed": 4}
        return {"action": path.rsplit("/", 1)[1], "results": {qid: "held" for qid in body["qids"]}}


def test_actions_go_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "BATCH", 2)
    daemon = ActingDaemon()
    answer = client.act(daemon, "hold", ["Q1", "Q2", "Q3"])
    assert answer == {"action": "hold", "results": {"Q1": "held", "Q2": "held", "Q3": "held"}}
    assert [body for _, _, body in daemon.calls] == [{"qids": ["Q1", "Q2"]}, {"qids": ["Q3"]}]
    assert {path for _, path, _ in daemon.calls} == {"/queue/hold"}


def test_a_flush_of_everything_is_one_call() -> None:
    daemon = ActingDaemon()
    assert client.act(daemon, "flush", None) == {"action": "flush", "flushed": 4}
    assert daemon.calls == [("POST", "/queue/flush", None)]
