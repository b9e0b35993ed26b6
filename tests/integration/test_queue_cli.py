"""``smtprelay queue ...`` and ``smtprelay trace`` against the real daemon, with and
without ``--json``, and the spool fallback when the daemon is stopped.

Delivery goes to a closed loopback port (the harness default): messages stay deferred.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smtprelay import ids
from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.integration.delivery_support import SENDER, make_message, submit
from tests.polling import wait_until

TOKEN = "queue-cli-token-0b7e4d"


@pytest.fixture
def relay(make_daemon: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    tokens = tmp_path / "http-tokens"
    tokens.write_text(f"# operators\n{TOKEN}\nsecond-token\n")
    return make_daemon(
        overrides={
            "http": {"listen": f"{LOOPBACK}:{free_port()}", "tokens_file": str(tokens)},
            "delivery": {"retry_schedule": ["1h"]},
        }
    )


def run(relay: Daemon, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    done = relay.cli(*args, input=input, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def ok(relay: Daemon, *args: str) -> str:
    done = run(relay, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def as_json(relay: Daemon, *args: str) -> Any:
    return json.loads(ok(relay, *args, "--json"))


def deferred(relay: Daemon, *rcpts: str) -> list[str]:
    """Queue one message per recipient and wait until each has been deferred once."""
    qids = [submit(relay, [rcpt], make_message(rcpt)) for rcpt in rcpts]

    def all_deferred() -> bool:
        return all(relay.envelope(q)["state"] == "deferred" for q in qids)

    wait_until(all_deferred, 20, lambda: f"deferred messages\n{relay.log()}")
    return qids


@pytest.mark.slow
def test_list_and_show(relay: Daemon) -> None:
    one, two = deferred(relay, "one@dest.test", "two@other.test")

    text = ok(relay, "queue", "list")
    assert text.splitlines()[0].startswith("-Queue ID-")
    for qid in (one, two):
        [line] = [line for line in text.splitlines() if line.startswith(qid)]
        assert line.split()[1].isdigit() and SENDER in line
    assert "one@dest.test" in text and "two@other.test" in text
    assert "('127.0.0.1', 9))" in text  # the last error, in parentheses
    assert text.rstrip().endswith("Kbytes in 2 Requests.")

    listing = as_json(relay, "queue", "list")
    assert listing["total"] == 2
    assert sorted(m["qid"] for m in listing["messages"]) == sorted([one, two])
    assert all(m["state"] == "deferred" and m["attempts"] == 1 for m in listing["messages"])
    assert [
        m["qid"] for m in as_json(relay, "queue", "list", "--domain", "dest.test")["messages"]
    ] == [one]
    assert as_json(relay, "queue", "list", "--state", "hold")["total"] == 0
    limited = as_json(relay, "queue", "list", "--limit", "1")
    assert [m["qid"] for m in limited["messages"]] == [min(one, two)]
    assert limited["total"] == 2
    assert run(relay, "queue", "list", "--limit", "0").returncode == 2
    assert ok(relay, "queue", "list", "--state", "hold") == "Mail queue is empty\n"
    assert run(relay, "queue", "list", "--state", "frozen").returncode == 2

    shown = ok(relay, "queue", "show", one)
    assert f"Queue ID:     {one}" in shown
    assert "Status:       deferred (in the queue)" in shown
    assert f"Sender:       <{SENDER}>" in shown
    assert "<one@dest.test>  pending, 1 attempt(s)" in shown
    assert "History:" in shown and "status=deferred" in shown
    assert "Headers:" in shown and "X-Tag: one@dest.test" in shown
    answer = as_json(relay, "queue", "show", one)
    assert answer["qid"] == one and answer["in_queue"] is True
    assert answer["envelope"]["recipients"][0]["address"] == "one@dest.test"
    assert [e["event"] for e in answer["events"]][:3] == ["client", "message-id", "queued"]

    unknown = ids.new_id()
    done = run(relay, "queue", "show", unknown)
    assert done.returncode == 1 and "404" in done.stderr and unknown in done.stderr
    assert run(relay, "queue", "show", "not-a-qid").returncode == 2


@pytest.mark.slow
def test_actions(relay: Daemon) -> None:
    held, flushed, bounced, deleted = deferred(
        relay, "held@dest.test", "flushed@dest.test", "bounced@dest.test", "deleted@dest.test"
    )

    assert ok(relay, "queue", "hold", held) == f"{held}: held\n"
    assert relay.envelope(held)["state"] == "hold"
    [line] = [line for line in ok(relay, "queue", "list").splitlines() if line.startswith(held)]
    assert line.startswith(f"{held}!")
    assert as_json(relay, "queue", "hold", held) == {"action": "hold", "results": {held: "held"}}
    flush_held = ok(relay, "queue", "flush", held)
    assert flush_held == f"{held}: on-hold (not flushed: release it first)\n"
    assert ok(relay, "queue", "release", held) == f"{held}: released\n"
    wait_until(lambda: relay.envelope(held)["state"] == "deferred", 20, relay.log)
    answer = as_json(relay, "queue", "release", held)
    assert answer == {"action": "release", "results": {held: "not-held"}}

    assert ok(relay, "queue", "flush", flushed) in (
        f"{flushed}: flushed\n",
        f"{flushed}: attempting (a delivery attempt is under way already)\n",
    )
    assert as_json(relay, "queue", "flush", flushed)["action"] == "flush"
    assert "message(s) scheduled for delivery now" in ok(relay, "queue", "flush")
    assert as_json(relay, "queue", "flush", "--all")["action"] == "flush"
    assert run(relay, "queue", "flush", "--all", flushed).returncode == 2

    assert ok(relay, "queue", "bounce", bounced) in (
        f"{bounced}: bounced\n",
        f"{bounced}: after-attempt (applied when the delivery attempt under way ends)\n",
    )
    wait_until(lambda: bounced not in relay.queued_ids(), 20, relay.log)
    assert "Returned to sender by the operator" in ok(relay, "trace", bounced)
    done = run(relay, "queue", "bounce", bounced, "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["results"] == {bounced: "not-found"}
    done = run(relay, "queue", "bounce", bounced)
    assert done.returncode == 1 and "not-found" in done.stdout

    assert as_json(relay, "queue", "delete", deleted) == {
        "action": "delete",
        "results": {deleted: "deleted"},
    }
    assert deleted not in relay.queued_ids()
    done = run(relay, "queue", "delete", deleted)
    assert done.returncode == 1
    assert done.stdout == f"{deleted}: not-found (no such message in the queue)\n"
    assert run(relay, "queue", "delete").returncode == 2

    # --all: no terminal here, so --yes is required.
    done = run(relay, "queue", "delete", "--all", input="y\n")
    assert done.returncode == 2 and "--yes" in done.stderr
    assert held in relay.queued_ids()
    remaining = relay.queued_ids()  # held, flushed and the bounce's notice
    assert len(remaining) == 3
    text = ok(relay, "queue", "delete", "--all", "--yes")
    assert sorted(text.splitlines()) == sorted(f"{q}: deleted" for q in remaining)
    wait_until(lambda: not relay.queued_ids(), 10, relay.log)
    assert ok(relay, "queue", "delete", "--all", "--yes").startswith("Mail queue is empty")


def test_trace(relay: Daemon) -> None:
    qid, other = deferred(relay, "traced@dest.test", "other@dest.test")
    text = ok(relay, "trace", qid)
    lines = text.splitlines()
    assert lines[0] == f"{qid}: deferred, from=<{SENDER}> to <traced@dest.test>"
    assert any("qmgr" in line and f"from=<{SENDER}>" in line for line in lines)
    assert any("to=<traced@dest.test>" in line and "status=deferred" in line for line in lines)
    assert f"{qid}: " not in "\n".join(lines[1:])  # the QID prefix is dropped
    answer = as_json(relay, "trace", qid)
    assert answer["qid"] == qid and answer["history_complete"] is True

    done = run(relay, "trace", "--rcpt", "Traced@dest.test")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{qid}: deferred") and other not in done.stdout
    assert "queued message(s)" in done.stderr
    [found] = as_json(relay, "trace", "--rcpt", "traced@dest.test")
    assert found["qid"] == qid
    done = run(relay, "trace", "--rcpt", "nobody@dest.test")
    assert done.returncode == 1 and "no queued message" in done.stderr
    assert run(relay, "trace").returncode == 2
    assert run(relay, "trace", ids.new_id()).returncode == 1


def test_a_wrong_token_or_no_tokens_file(relay: Daemon, tmp_path: Path) -> None:
    # The config file changes under the running daemon (no reload): the CLI reads the
    # new tokens file, the daemon keeps the old one.
    wrong = tmp_path / "wrong-tokens"
    wrong.write_text("wrong-token\n")
    relay.reconfigure({"http": {"tokens_file": str(wrong)}})
    done = run(relay, "queue", "list")
    assert done.returncode == 1 and "401" in done.stderr
    relay.reconfigure({"http": {"tokens_file": str(tmp_path / "missing")}})
    done = run(relay, "queue", "list")
    assert done.returncode == 2 and "tokens_file" in done.stderr


@pytest.mark.slow
def test_fallback_to_the_spool_when_the_daemon_is_stopped(relay: Daemon) -> None:
    held, deleted = deferred(relay, "held@dest.test", "deleted@dest.test")
    relay.stop()

    done = run(relay, "queue", "list")
    assert done.returncode == 0 and "not running" in done.stderr
    assert held in done.stdout and "Kbytes in 2 Requests." in done.stdout
    assert as_json(relay, "queue", "list")["total"] == 2
    shown = ok(relay, "queue", "show", held)
    assert "Status:       deferred" in shown and "X-Tag: held@dest.test" in shown
    assert as_json(relay, "queue", "show", held)["envelope"]["qid"] == held

    done = run(relay, "queue", "hold", held)
    assert done.returncode == 0 and "safe only while it stays stopped" in done.stderr
    assert done.stdout == f"{held}: held\n"
    assert relay.envelope(held)["state"] == "hold"
    assert ok(relay, "queue", "list").splitlines()[1].startswith(f"{held}!")
    assert as_json(relay, "queue", "release", held) == {
        "action": "release",
        "results": {held: "released"},
    }
    assert relay.envelope(held)["state"] == "active"
    assert ok(relay, "queue", "hold", held) == f"{held}: held\n"
    assert ok(relay, "queue", "delete", deleted) == f"{deleted}: deleted\n"
    assert relay.queued_ids() == [held]

    for args in (("queue", "flush"), ("queue", "bounce", held), ("trace", held)):
        done = run(relay, *args)
        assert done.returncode == 1, args
        assert "needs the running daemon" in done.stderr, args

    # The daemon, started again, keeps the message on hold.
    relay.start()
    assert as_json(relay, "queue", "list", "--state", "hold")["messages"][0]["qid"] == held
