"""smtprelay.queuecli: output formatting, the API address and paging, confirmation."""

from __future__ import annotations

from typing import Any

import pytest

from smtprelay import config
from smtprelay.queuecli import client, commands, errors
from smtprelay.queuecli import format as fmt

QID = "1K17TWEWEZ4Y1"


def item(qid: str = QID, **keys: Any) -> dict[str, Any]:
    return {
        "qid": qid,
        "state": "deferred",
        "arrival": 1_800_000_000.0,
        "size": 1834,
        "sender": "app@example.com",
        "recipients": ["bob@example.net"],
        "last_error": "450 4.2.1 Mailbox busy",
        **keys,
    }


def test_an_empty_queue() -> None:
    assert fmt.format_list([]) == "Mail queue is empty\n"


def test_a_listing_like_mailq() -> None:
    text = fmt.format_list(
        [
            item(),
            item(
                "1K17TWEWEZ4Y2",
                state="hold",
                sender="",
                size=3000,
                last_error=None,
                recipients=["a@x.test", "b@x.test"],
            ),
            item("1K17TWEWEZ4Y3", state="active", size=10),
        ]
    )
    lines = text.splitlines()
    assert lines[0].startswith("-Queue ID-")
    assert lines[1].startswith(f"{QID}      1834 ") and lines[1].endswith(" app@example.com")
    indent = lines[1].index("app@example.com")
    assert lines[2] == " " * indent + "(450 4.2.1 Mailbox busy)"
    assert lines[3] == " " * indent + "bob@example.net"
    assert lines[4] == ""
    assert lines[5].startswith("1K17TWEWEZ4Y2!") and lines[5].endswith(" MAILER-DAEMON")
    assert lines[6].strip() == "a@x.test" and lines[7].strip() == "b@x.test"
    assert lines[9].startswith("1K17TWEWEZ4Y3*")
    assert lines[-1] == "-- 5 Kbytes in 3 Requests."  # ceil(4844 / 1024)


def test_a_rate_limited_message_says_so() -> None:
    lines = fmt.format_list([item(state="rate-limited", last_error=None)]).splitlines()
    assert lines[2].strip() == "(rate-limited: waiting for its upstream's rate limit)"
    assert lines[3].strip() == "bob@example.net"


def test_one_request_is_singular() -> None:
    assert fmt.format_list([item(size=1)]).endswith("-- 1 Kbytes in 1 Request.\n")


def test_action_results_and_their_exit_status() -> None:
    answer = {"action": "hold", "results": {QID: "held", "1K17TWEWEZ4Y2": "not-found"}}
    assert fmt.format_results(answer) == (
        f"{QID}: held\n1K17TWEWEZ4Y2: not-found (no such message in the queue)\n"
    )
    assert fmt.results_failed(answer)
    assert not fmt.results_failed({"action": "hold", "results": {QID: "after-attempt"}})
    assert fmt.results_failed({"action": "hold", "results": {QID: "error: EIO"}})
    assert fmt.format_results({"action": "flush", "flushed": 3}) == (
        "flush: 3 message(s) scheduled for delivery now\n"
    )


def test_a_timeline_drops_the_qid_prefix() -> None:
    answer = {
        "qid": QID,
        "history_complete": False,
        "events_omitted": 2,
        "events": [
            {"time": 1_800_000_000.0, "service": "qmgr", "text": f"{QID}: from=<a@b>"},
            {"time": 1_800_000_001.5, "service": "smtp", "text": f"{QID}: to=<c@d>, status=sent"},
        ],
    }
    lines = fmt.timeline(answer).splitlines()
    assert lines[0].endswith("+0.000s qmgr      from=<a@b>")
    assert lines[1].endswith("+1.500s smtp      to=<c@d>, status=sent")
    assert lines[2] == "(history incomplete: 2 event(s) omitted from the middle)"


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("0.0.0.0:8025", "http://127.0.0.1:8025"),
        ("[::]:8025", "http://[::1]:8025"),
        ("[::1]:9000", "http://[::1]:9000"),
        ("192.0.2.1:80", "http://192.0.2.1:80"),
    ],
)
def test_the_api_address(listen: str, url: str) -> None:
    settings = config.Settings(http=config.HttpSettings.model_validate({"listen": listen}))
    assert client.base_url(settings) == url


def test_no_http_endpoint_is_a_configuration_error() -> None:
    settings = config.Settings(http=config.HttpSettings.model_validate({"listen": ""}))
    with pytest.raises(config.ConfigError, match="listen"):
        client.base_url(settings)
    with pytest.raises(config.ConfigError, match="tokens_file"):
        client.first_token(config.Settings())


def test_confirmation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert commands.confirm("?", yes=True, isatty=lambda: False)
    with pytest.raises(errors.QueueUsageError, match="--yes"):
        commands.confirm("?", yes=False, isatty=lambda: False)
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert commands.confirm("?", yes=False, isatty=lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "")
    assert not commands.confirm("?", yes=False, isatty=lambda: True)


class PagingDaemon:
    """Answers GET /queue as the daemon does: ``limit`` per page, ``next`` to go on."""

    def __init__(self, count: int) -> None:
        self.qids = [f"Q{n:05d}" for n in range(count)]
        self.paths: list[str] = []

    def call(self, method: str, path: str, body: Any = None) -> Any:
        from urllib.parse import parse_qs, urlsplit

        self.paths.append(path)
        query = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
        limit = int(query["limit"])
        after = query.get("after")
        rest = [q for q in self.qids if after is None or q > after]
        page = rest[:limit]
        return {
            "messages": [{"qid": q} for q in page],
            "total": len(self.qids),
            "next": page[-1] if len(rest) > limit else None,
        }


def test_the_listing_pages_through_the_whole_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "PAGE", 3)
    daemon = PagingDaemon(7)
    answer = client.fetch_queue(daemon, state="deferred")
    assert [m["qid"] for m in answer["messages"]] == daemon.qids
    assert answer["total"] == 7
    assert len(daemon.paths) == 3 and all("limit=3" in p for p in daemon.paths)
    assert all("state=deferred" in p for p in daemon.paths)
    assert "after=Q00002" in daemon.paths[1]
    daemon = PagingDaemon(7)
    answer = client.fetch_queue(daemon, limit=4)
    assert [m["qid"] for m in answer["messages"]] == daemon.qids[:4]
    assert daemon.paths[-1].endswith("limit=1&after=Q00002")
