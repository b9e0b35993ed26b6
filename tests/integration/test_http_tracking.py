"""The HTTP API's tracking half against the real daemon: message status and listing,
cancel and reschedule, templates, named tokens and scopes, the OpenAPI document.

Clients: aiohttp's (:func:`call`) and curl. Mail goes by MX through the test DNS server
to aiosmtpd sinks on loopback ("dest.test" on MX1), or to a closed port (the default
smarthost of the test daemon) where it stays deferred.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from smtprelay import ids
from smtprelay.delivery.scheduler import Scheduler
from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.integration.delivery_support import MX1, make_message, submit, wait_removed
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures"]

TOKEN = "test-token-8c2b7e41a9"  # a bare token: every scope
BUSY = "450 4.2.1 Mailbox busy, try later"
PROBLEM = "application/problem+json"
# The queue operations of smtprelay.queueops that the scheduler implements (load,
# cancel, reschedule): the status of a queued message, cancel and PATCH need them.
needs_queue_ops = pytest.mark.skipif(
    not all(hasattr(Scheduler, name) for name in ("load", "cancel", "reschedule")),
    reason="the scheduler does not implement QueueOperations.load/cancel/reschedule yet",
)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def problem(self) -> bool:
        return self.headers.get("Content-Type", "").startswith(PROBLEM)


def call(
    relay: Daemon,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    raw: bytes | None = None,
    content_type: str | None = None,
) -> Answer:
    """One request with aiohttp's client; the body parsed as JSON when it is JSON."""

    async def go() -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data: bytes | None = raw
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if content_type is not None:
            headers["Content-Type"] = content_type
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(
                method, f"http://{http_address(relay)}{path}", data=data, headers=headers
            ) as response,
        ):
            payload = await response.read()
            kind = response.headers.get("Content-Type", "")
            parsed: Any = json.loads(payload) if "json" in kind else payload.decode()
            return Answer(response.status, dict(response.headers), parsed)

    return asyncio.run(go())


def curl(relay: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    args = [
        "curl",
        "-sS",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        "-H",
        f"Authorization: Bearer {TOKEN}",
    ]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    done = subprocess.run(
        [*args, f"http://{http_address(relay)}{path}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    text, _, code = done.stdout.rpartition("\n")
    return int(code), json.loads(text)


def http_address(relay: Daemon) -> str:
    return str(relay.sections["http"]["listen"])


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "http-tokens"
    path.write_text(f"# operators\n{TOKEN}\n")
    return path


def http_keys(tokens_file: Path) -> dict[str, Any]:
    return {
        "listen": f"{LOOPBACK}:{free_port()}",
        "tokens_file": str(tokens_file),
        "bad_token_max_delay": "0",
    }


@pytest.fixture
def relay(make_daemon: Callable[..., Daemon], tokens_file: Path) -> Daemon:
    """Delivery to a closed port: every message stays queued, deferred."""
    return make_daemon(overrides={"http": http_keys(tokens_file)})


@pytest.fixture
def mx_relay(
    dns: TestDNSServer, delivering_relay: Callable[..., Daemon], tokens_file: Path
) -> Callable[..., Daemon]:
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)

    def start(**delivery: Any) -> Daemon:
        return delivering_relay(delivery=delivery, http=http_keys(tokens_file))

    return start


# --- templates -------------------------------------------------------------------------------


def test_templates_are_kept_across_a_restart_and_errors_name_the_line(relay: Daemon) -> None:
    first = {
        "subject": "Welcome {{ name }}",
        "text": "Hello {{ name }}\n",
        "html": "<p>Hello {{ name }}</p>",
    }
    assert curl(relay, "PUT", "/v1/templates/welcome", first) == (
        201,
        {"name": "welcome", "version": 1},
    )
    second = {**first, "text": "Hello {{ name }},\nyour order {{ order }}\n"}
    answer = call(relay, "PUT", "/v1/templates/welcome", second)
    assert (answer.status, answer.body) == (201, {"name": "welcome", "version": 2})
    assert answer.headers["Location"] == "/v1/templates/welcome?version=2"

    # A syntax error: 422 naming the field and its line, nothing stored.
    broken = call(
        relay,
        "PUT",
        "/v1/templates/broken",
        {"subject": "ok", "text": "one\ntwo {% if %}\n", "colour": "blue"},
    )
    assert broken.status == 422 and broken.problem
    assert [e["pointer"] for e in broken.body["errors"]] == ["/colour"]
    broken = call(
        relay, "PUT", "/v1/templates/broken", {"subject": "ok", "text": "one\ntwo {% if %}\n"}
    )
    assert broken.status == 422 and broken.problem
    assert broken.body["errors"][0]["pointer"] == "/text"
    assert "line 2" in broken.body["errors"][0]["detail"]
    assert broken.body["lines"] == [{"part": "text", "line": 2}]

    # Render: the parts, html escaped; an undefined variable names its line.
    rendered = call(
        relay, "POST", "/v1/templates/welcome/render", {"variables": {"name": "<Ann>", "order": 7}}
    )
    assert (rendered.status, rendered.body) == (
        200,
        {
            "name": "welcome",
            "version": 2,
            "subject": "Welcome <Ann>",
            "text": "Hello <Ann>,\nyour order 7\n",
            "html": "<p>Hello &lt;Ann&gt;</p>",
        },
    )
    failed = call(relay, "POST", "/v1/templates/welcome/render", {"variables": {"name": "A"}})
    assert failed.status == 422 and failed.problem
    assert (failed.body["part"], failed.body["line"]) == ("text", 2)
    assert "'order' is undefined" in failed.body["detail"]

    relay.stop()
    relay.start()
    assert (relay.spool / "templates" / "welcome" / "2.json").exists()
    latest = call(relay, "GET", "/v1/templates/welcome")
    assert latest.status == 200
    assert {k: latest.body[k] for k in ("version", *second)} == {"version": 2, **second}
    assert call(relay, "GET", "/v1/templates/welcome?version=1").body["text"] == first["text"]
    listed = call(relay, "GET", "/v1/templates").body["templates"]
    assert [(t["name"], t["version"]) for t in listed] == [("welcome", 2)]

    assert call(relay, "DELETE", "/v1/templates/welcome").body == {
        "name": "welcome",
        "deleted_versions": 2,
    }
    gone = call(relay, "GET", "/v1/templates/welcome")
    assert gone.status == 404 and gone.problem and gone.body["status"] == 404
    assert call(relay, "POST", "/v1/templates/welcome/render", {"variables": {}}).status == 404
    assert "Traceback" not in relay.log()


# --- tokens, scopes, OpenAPI -----------------------------------------------------------------


def test_named_tokens_scopes_401_and_the_openapi_document(relay: Daemon, tokens_file: Path) -> None:
    added = relay.cli("token", "add", "reader", "--scopes", "read")
    secret = added.stdout.strip()
    assert secret and "reader sha256:" in tokens_file.read_text()
    wait_until(
        lambda: call(relay, "GET", "/v1/messages", token=secret).status == 200,
        10,
        "the new token to be picked up",
    )

    refused = call(relay, "GET", "/v1/templates", token=secret)
    assert refused.status == 403 and refused.problem
    assert refused.body["detail"] == "token reader lacks scope templates"
    qid = ids.new_id()
    assert call(relay, "POST", f"/v1/messages/{qid}/cancel", token=secret).status == 403
    for token in (None, "not-a-token-at-all"):
        answer = call(relay, "GET", "/v1/messages", token=token)
        assert answer.status == 401 and answer.problem, answer
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert answer.body["type"].endswith("/unauthorized")
    # Scope read reaches the older status paths, not the queue operations.
    assert call(relay, "GET", "/status", token=secret).status == 200
    assert call(relay, "POST", "/queue/flush", token=secret).status == 403

    document = call(relay, "GET", "/v1/openapi.json", token=None)
    assert document.status == 200
    validate(document.body)
    assert "/v1/messages/{id}/cancel" in document.body["paths"]

    assert relay.cli("token", "remove", "reader").returncode == 0
    wait_until(
        lambda: call(relay, "GET", "/v1/messages", token=secret).status == 401,
        10,
        "the removed token to stop working",
    )


# --- listing ---------------------------------------------------------------------------------


def test_smtp_messages_are_listed_newest_first_by_pages(relay: Daemon) -> None:
    older = submit(relay, ["one@dest.test"], make_message("list-1"))
    newer = submit(relay, ["two@dest.test", "three@dest.test"], make_message("list-2"))
    page = call(relay, "GET", "/v1/messages?limit=1")
    assert page.status == 200
    [item] = page.body["messages"]
    assert item["id"] == newer and item["submitted_via"] == "smtp"
    assert item["status"] in ("queued", "sending", "deferred")
    assert [r["email"] for r in item["recipients"]] == ["two@dest.test", "three@dest.test"]
    assert item["tags"] == [] and item["metadata"] == {} and item["size"] > 0
    assert item["created_at"].endswith("Z")
    cursor = page.body["next_cursor"]
    rest = call(relay, "GET", f"/v1/messages?limit=1&cursor={cursor}")
    assert [m["id"] for m in rest.body["messages"]] == [older]
    assert rest.body["next_cursor"] is None
    assert call(relay, "GET", "/v1/messages?status=delivered").body["messages"] == []
    assert call(relay, "GET", "/v1/messages?tag=nothing").body["messages"] == []
    bad = call(relay, "GET", "/v1/messages?status=lost&limit=0&cursor=zz&colour=1")
    assert bad.status == 422 and bad.problem
    assert sorted(e["pointer"] for e in bad.body["errors"]) == [
        "/colour",
        "/cursor",
        "/limit",
        "/status",
    ]


def test_patch_refuses_a_bad_time_naming_send_at(relay: Daemon) -> None:
    qid = ids.new_id()
    for value in ("2030-01-01T10:00:00", "tomorrow", 12, "2030-02-30T10:00:00Z"):
        answer = call(relay, "PATCH", f"/v1/messages/{qid}", {"send_at": value})
        assert answer.status == 422 and answer.problem, (value, answer)
        assert [e["pointer"] for e in answer.body["errors"]] == ["/send_at"]
    answer = call(relay, "PATCH", f"/v1/messages/{qid}", {"sendat": "2030-01-01T10:00:00Z"})
    assert sorted(e["pointer"] for e in answer.body["errors"]) == ["/send_at", "/sendat"]
    wrong = call(
        relay,
        "PATCH",
        f"/v1/messages/{qid}",
        raw=b"send_at=now",
        content_type="application/x-www-form-urlencoded",
    )
    assert wrong.status == 415 and wrong.problem
    broken = call(relay, "PATCH", f"/v1/messages/{qid}", raw=b"{", content_type="application/json")
    assert broken.status == 400 and broken.problem


# --- status and cancel (through the scheduler's QueueOperations) ----------------------------


@needs_queue_ops
def test_status_of_an_smtp_message_deferred_then_delivered(
    mx_relay: Callable[..., Daemon], make_sink: Callable[..., Sink]
) -> None:
    rcpt = "later@dest.test"
    sink = make_sink(MX1, name="mx1.dest.test")
    sink.rcpt_reply(rcpt, BUSY)
    relay = mx_relay(retry_schedule=["10m"])
    qid = submit(relay, [rcpt], make_message("status"))

    def deferred() -> bool:
        answer = call(relay, "GET", f"/v1/messages/{qid}")
        return answer.status == 200 and answer.body["status"] == "deferred"

    wait_until(deferred, 20, "the first attempt to be deferred")
    shown = call(relay, "GET", f"/v1/messages/{qid}").body
    assert shown["submitted_via"] == "smtp" and shown["id"] == qid
    [recipient] = shown["recipients"]
    assert recipient["status"] == "deferred" and recipient["attempts"] == 1
    assert recipient["last_reply"] == {
        "code": 450,
        "enhanced": "4.2.1",
        "text": "Mailbox busy, try later",
        "host": "mx1.dest.test",
    }
    assert recipient["next_attempt_at"] > shown["created_at"]

    sink.rcpt_reply(rcpt, None)
    assert call(relay, "POST", "/queue/flush", {"qids": [qid]}).status == 200
    wait_removed(relay, qid)
    done = call(relay, "GET", f"/v1/messages/{qid}").body
    assert done["status"] == "delivered"
    [recipient] = done["recipients"]
    assert recipient["status"] == "delivered" and recipient["attempts"] == 2
    assert recipient["last_reply"]["code"] == 250 and "delivered_at" in recipient
    assert call(relay, "GET", f"/messages/{qid}").status == 200  # the older path stays
    unknown = call(relay, "GET", f"/v1/messages/{ids.new_id()}")
    assert unknown.status == 404 and unknown.problem
    assert call(relay, "GET", "/v1/messages?status=delivered").body["messages"][0]["id"] == qid
    # Nothing left to cancel once delivered.
    late = call(relay, "POST", f"/v1/messages/{qid}/cancel")
    assert late.status == 409 and late.problem
    assert late.body["recipients"] == [{"email": rcpt, "result": "too_late", "status": "delivered"}]


@needs_queue_ops
def test_cancel_a_message_for_a_dead_host_then_cancel_again(relay: Daemon) -> None:
    rcpts = ["a@dest.test", "b@dest.test"]
    qid = submit(relay, rcpts, make_message("cancel"))
    # Once its first attempt failed (no attempt in flight: each recipient is canceled
    # at once, not "pending").
    wait_until(
        lambda: call(relay, "GET", f"/v1/messages/{qid}").body["status"] == "deferred",
        20,
        "the first attempt to be deferred",
    )
    first = call(relay, "POST", f"/v1/messages/{qid}/cancel")
    assert first.status == 200, first
    assert first.body == {
        "id": qid,
        "recipients": [{"email": r, "result": "canceled"} for r in rcpts],
    }
    wait_until(lambda: qid not in relay.queued_ids(), 20, "the canceled message to go")
    again = call(relay, "POST", f"/v1/messages/{qid}/cancel")
    assert (again.status, again.body) == (200, first.body)
    shown = call(relay, "GET", f"/v1/messages/{qid}").body
    assert shown["status"] == "canceled"
    assert [r["status"] for r in shown["recipients"]] == ["canceled", "canceled"]
    assert f"{qid}: canceled by api token line-2" in relay.log()
    assert call(relay, "POST", f"/v1/messages/{ids.new_id()}/cancel").status == 404
    # A message that is not scheduled cannot be moved.
    other = submit(relay, ["c@dest.test"], make_message("not-scheduled"))
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    moved = call(relay, "PATCH", f"/v1/messages/{other}", {"send_at": tomorrow.isoformat()})
    assert moved.status == 409 and moved.problem
