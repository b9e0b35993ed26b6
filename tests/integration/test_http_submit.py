"""POST /v1/messages and /v1/messages/batch against the real daemon, delivering through
the test DNS server to real aiosmtpd sinks: every error status with its pointers, the
MIME that arrives, batches, Idempotency-Key (also across a restart and a kill -9), and
503 when the spool cannot be written.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.integration.delivery_support import MX1, wait_removed
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures", "tests.integration.diskfull_fixtures"]

SEND = "send-token-4b1d9e2c70"
ALL = "all-token-9f03c6aa18"
LIMITED = "limited-token-1c7e55d0b2"
READ = "read-token-83e1aa40f6"


class Client:
    """http.client, one connection per call: (status, headers, JSON body or text)."""

    def __init__(self, port: int, token: str = SEND) -> None:
        self.port = port
        self.token = token

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        sent = {"Content-Type": content_type, **(headers or {})}
        sent["Authorization"] = f"Bearer {token or self.token}"
        data = raw if raw is not None else json.dumps(body).encode()
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
        try:
            conn.request("POST", path, body=data, headers=sent)
            response = conn.getresponse()
            payload = response.read()
            got = {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()
        kind = got.get("content-type", "")
        if "json" in kind:
            return response.status, got, json.loads(payload)
        return response.status, got, payload.decode()


def pointers(answer: dict[str, Any]) -> set[str]:
    return {e["pointer"] for e in answer.get("errors", [])}


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(
        f"sender {SEND} scopes=send\n"
        f"{ALL}\n"
        f"limited {LIMITED} scopes=send senders=sender.test\n"
        f"reader {READ} scopes=read\n"
    )
    return path


@pytest.fixture
def zone(dns: TestDNSServer) -> TestDNSServer:
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    return dns


@pytest.fixture
def relay(
    zone: TestDNSServer, delivering_relay: Callable[..., Daemon], tokens: Path
) -> Callable[..., tuple[Daemon, Client]]:
    def start(spool_dir: str | None = None, **http: Any) -> tuple[Daemon, Client]:
        port = free_port()
        spool = {"spool": {"dir": spool_dir}} if spool_dir else {}
        daemon = delivering_relay(
            **spool,
            http={"listen": f"{LOOPBACK}:{port}", "tokens_file": str(tokens), **http},
            relay={"allowed_recipient_domains": ["dest.test", "other.test"]},
            server={"max_message_size": 200_000},
        )
        return daemon, Client(port)

    return start


def delivered(sink: Sink, count: int = 1) -> list[EmailMessage]:
    wait_until(lambda: len(sink.messages) >= count, timeout=20)
    found = []
    for m in sink.messages:
        parsed = email.message_from_bytes(m.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        found.append(parsed)
    return found


def test_a_json_message_arrives_as_mime_with_bcc_hidden(
    relay: Callable[..., tuple[Daemon, Client]], make_sink: Callable[..., Sink]
) -> None:
    sink = make_sink(MX1, name="mx1.dest.test")
    daemon, api = relay()
    pdf = bytes(range(256)) * 40
    status, headers, answer = api.post(
        "/v1/messages",
        {
            "from": {"email": "app@sender.test", "name": "Zoë Ünicode"},
            "to": ["bob@dest.test"],
            "cc": [{"email": "carol@dest.test", "name": "Carol"}],
            "bcc": ["hidden@dest.test"],
            "reply_to": "support@sender.test",
            "subject": "Grüße — €100 invoice",
            "text": "Hallo Bob,\nanbei die Rechnung über 100 €.\n",
            "html": "<p>Hallo <b>Bob</b></p>",
            "headers": {"X-Campaign": "q4"},
            "attachments": [
                {
                    "filename": "Rechnung-März.pdf",
                    "content_type": "application/pdf",
                    "content": base64.b64encode(pdf).decode(),
                }
            ],
            "tags": ["invoice"],
            "metadata": {"customer": "42"},
        },
    )
    assert status == 202, answer
    qid = answer["id"]
    assert headers["location"] == f"/v1/messages/{qid}"
    assert answer["status"] == "queued"
    assert [r["email"] for r in answer["recipients"]] == [
        "bob@dest.test",
        "carol@dest.test",
        "hidden@dest.test",
    ]
    wait_removed(daemon, qid)
    (msg,) = delivered(sink)
    (got,) = sink.messages
    assert sorted(got.rcpt_tos) == ["bob@dest.test", "carol@dest.test", "hidden@dest.test"]
    assert got.mail_from == "app@sender.test"
    assert "Bcc" not in msg and b"hidden@dest.test" not in got.content.split(b"\r\n\r\n")[0]
    assert str(msg["Subject"]) == "Grüße — €100 invoice"
    assert msg["From"].addresses[0].display_name == "Zoë Ünicode"
    assert msg["Message-ID"] == f"<{qid}@relay.test>"
    assert msg["Date"] is not None and msg["X-Campaign"] == "q4"
    assert msg["Received"].startswith("from api-token-sender (unknown [127.0.0.1])")
    assert f"with HTTP id {qid}" in " ".join(msg["Received"].split())
    assert msg.get_content_type() == "multipart/mixed"
    body = msg.get_body(("plain",))
    assert body is not None and body["Content-Transfer-Encoding"] == "quoted-printable"
    text = body.get_content().replace("\r\n", "\n")
    assert text == "Hallo Bob,\nanbei die Rechnung über 100 €.\n"
    html = msg.get_body(("html",))
    assert html is not None and "<b>Bob</b>" in html.get_content()
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_filename() == "Rechnung-März.pdf"
    assert attachment.get_content() == pdf
    assert all(len(line) <= 998 for line in got.content.split(b"\r\n"))
    assert f"{qid}: client=unknown[127.0.0.1], api_token=sender, via=http" in daemon.log()
    assert f"{qid}: from=<app@sender.test>" in daemon.log()


def test_every_invalid_field_is_named_at_once(relay: Callable[..., tuple[Daemon, Client]]) -> None:
    daemon, api = relay()
    status, headers, answer = api.post(
        "/v1/messages",
        {
            "from": "not an address",
            "to": ["bob@dest.test", {"email": "x@"}, "eve@elsewhere.test"],
            "subject": 5,
            "text": "hi",
            "headers": {"Bcc": "a@b.test", "Received": "x", "X-Ok": "fine"},
            "attachments": [{"filename": "a.bin", "content": "%%% not base64"}],
            "send_at": "2030-01-01T09:00:00",
            "dsn": {"notify": ["never", "failure"], "ret": "everything"},
            "colour": "blue",
        },
    )
    assert status == 422, answer
    assert headers["content-type"].startswith("application/problem+json")
    assert answer["status"] == 422 and answer["type"].endswith("/invalid-fields")
    assert pointers(answer) == {
        "/from",
        "/to/1/email",
        "/subject",
        "/headers/Bcc",
        "/headers/Received",
        "/attachments/0/content",
        "/send_at",
        "/dsn/notify",
        "/dsn/ret",
        "/colour",
    }
    # The recipient domain policy is applied once the fields are valid: per recipient.
    status, _, answer = api.post(
        "/v1/messages",
        {
            "from": "app@sender.test",
            "to": ["bob@dest.test", "eve@elsewhere.test"],
            "bcc": ["mallory@evil.test"],
            "text": "hi",
            "send_at": (datetime.now(UTC) + timedelta(days=90)).isoformat(),
        },
    )
    assert status == 422
    assert pointers(answer) == {"/to/1", "/bcc/0", "/send_at"}
    assert daemon.queued_ids() == []


def test_a_lone_surrogate_is_a_field_error_not_a_500(
    relay: Callable[..., tuple[Daemon, Client]],
) -> None:
    # JSON's \u escapes can name half a surrogate pair, which no UTF-8 message can carry.
    daemon, api = relay()
    message = {"from": "app@sender.test", "to": ["bob@dest.test"], "text": "hi"}
    status, headers, answer = api.post(
        "/v1/messages",
        {**message, "subject": "\ud800", "headers": {"X-Tag": "a\udfffb"}, "tags": ["\ud83d"]},
    )
    assert status == 422, answer
    assert headers["content-type"].startswith("application/problem+json")
    assert pointers(answer) == {"/subject", "/headers/X-Tag", "/tags/0"}
    assert "surrogate" in answer["errors"][0]["detail"]
    # A member name: the pointer names it (\u-escaped in the answer).
    status, _, answer = api.post("/v1/messages", {**message, "\ud800": "x"})
    assert status == 422 and pointers(answer) == {"/\ud800"}
    batch = {"messages": [message, {**message, "subject": "\udc00"}], "validation": "permissive"}
    status, _, answer = api.post("/v1/messages/batch", batch)
    assert status == 202, answer
    assert [m["status"] for m in answer["messages"]] == ["queued", "rejected"]
    assert answer["messages"][1]["errors"][0]["pointer"] == "/messages/1/subject"
    status, _, answer = api.post("/v1/messages/batch", {**batch, "validation": "strict"})
    assert status == 422 and pointers(answer) == {"/messages/1/subject"}
    status, _, answer = api.post(
        "/v1/messages/batch", {"messages": [message], "defaults": {"subject": "\ud800"}}
    )
    assert status == 422 and pointers(answer) == {"/defaults/subject"}
    assert len(daemon.queued_ids()) <= 1  # only the permissive batch's good message
    assert "Traceback" not in daemon.log()


def test_status_codes_of_the_request_itself(relay: Callable[..., tuple[Daemon, Client]]) -> None:
    daemon, api = relay()
    message = {"from": "app@sender.test", "to": ["bob@dest.test"], "text": "hi"}
    status, _, answer = api.post("/v1/messages", raw=b"{not json")
    assert (status, answer["title"]) == (400, "Malformed JSON")
    status, _, answer = api.post("/v1/messages", raw=b"[1, 2]")
    assert status == 422 and pointers(answer) == {""}
    status, _, answer = api.post("/v1/messages", message, content_type="text/plain")
    assert status == 415 and answer["type"].endswith("/unsupported-media-type")
    big = {**message, "text": "x" * 300_000}
    status, _, answer = api.post("/v1/messages", big)
    assert status == 413 and "max_message_size" in answer["detail"]
    status, _, answer = api.post("/v1/messages", raw=b" " * 400_000)
    assert status == 413
    status, _, answer = api.post("/v1/messages", message, token=READ)
    assert status == 403 and "lacks scope send" in answer["detail"]
    status, _, answer = api.post("/v1/messages", message, token=LIMITED)
    assert status == 202, answer
    status, _, answer = api.post(
        "/v1/messages", {**message, "from": "app@other.test"}, token=LIMITED
    )
    assert status == 403 and "other.test" in answer["detail"]
    status, _, answer = api.post(
        "/v1/messages",
        {
            "from": "app@sender.test",
            "to": ["bob@dest.test"],
            "template": {"name": "no-such-template"},
            "variables": {"a": 1},
        },
    )
    assert status == 404 and "no-such-template" in answer["detail"]
    status, headers, answer = api.post("/v1/messages", message, token="wrong-token-123")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert len(daemon.queued_ids()) <= 1


def test_raw_and_rfc822_forms_and_a_scheduled_send(
    relay: Callable[..., tuple[Daemon, Client]], make_sink: Callable[..., Sink]
) -> None:
    sink = make_sink(MX1, name="mx1.dest.test")
    daemon, api = relay()
    raw = b"From: App <app@sender.test>\nTo: bob@dest.test\nSubject: raw one\n\nbody 1\n"
    status, _, answer = api.post(
        "/v1/messages",
        {
            "raw": base64.b64encode(raw).decode(),
            "to": ["bob@dest.test"],
            "dsn": {"notify": ["failure", "delay"], "ret": "hdrs", "envid": "batch 7"},
        },
    )
    assert status == 202, answer
    first = answer["id"]
    envelope = json.loads(daemon.message_file(first).read_bytes().split(b"\n", 1)[0])
    assert envelope["sender"] == "app@sender.test"
    assert envelope["mail_params"] == {"RET": "HDRS", "ENVID": "batch+207"}
    assert envelope["recipients"][0]["params"] == {"NOTIFY": "FAILURE,DELAY"}
    assert envelope["submission"]["via"] == "http"
    status, _, answer = api.post(
        "/v1/messages?mail_from=bounces@sender.test&rcpt=carol@dest.test",
        raw=b"Subject: rfc822 one\r\n\r\nbody 2\r\n",
        content_type="message/rfc822",
    )
    assert status == 202, answer
    status, _, answer = api.post(
        "/v1/messages",
        {"raw": base64.b64encode(raw).decode(), "subject": "x", "to": ["bob@dest.test"]},
    )
    assert status == 422 and pointers(answer) == {"/subject"}
    later = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    status, _, answer = api.post(
        "/v1/messages",
        {
            "from": "app@sender.test",
            "to": ["dave@dest.test"],
            "text": "later",
            "send_at": later.isoformat(),
        },
    )
    assert status == 202 and answer["status"] == "scheduled", answer
    assert answer["send_at"] == later.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert answer["recipients"] == [{"email": "dave@dest.test", "status": "scheduled"}]
    scheduled = json.loads(daemon.message_file(answer["id"]).read_bytes().split(b"\n", 1)[0])
    assert scheduled["send_at"] == later.timestamp()
    messages = delivered(sink, 2)
    subjects = sorted(str(m["Subject"]) for m in messages)
    assert subjects == ["raw one", "rfc822 one"]
    by_subject = {str(m["Subject"]): (m, s) for m, s in zip(messages, sink.messages, strict=True)}
    assert by_subject["rfc822 one"][1].mail_from == "bounces@sender.test"
    assert by_subject["raw one"][0].get_content().strip() == "body 1"
    assert daemon.message_file(answer["id"]).exists()  # not before its time


def test_batches_strict_and_permissive(
    relay: Callable[..., tuple[Daemon, Client]], make_sink: Callable[..., Sink]
) -> None:
    sink = make_sink(MX1, name="mx1.dest.test")
    daemon, api = relay(batch_max=5)
    defaults = {"from": "app@sender.test", "subject": "batch", "tags": ["b"]}
    good = [{"to": [f"user{i}@dest.test"], "text": f"message {i}"} for i in range(4)]
    bad = [*good[:3], {"to": ["x@"], "text": "bad"}]
    status, _, answer = api.post("/v1/messages/batch", {"messages": bad, "defaults": defaults})
    assert status == 422 and pointers(answer) == {"/messages/3/to/0"}
    assert daemon.queued_ids() == []
    status, _, answer = api.post(
        "/v1/messages/batch", {"messages": bad, "defaults": defaults, "validation": "permissive"}
    )
    assert status == 202, answer
    assert [m["status"] for m in answer["messages"]] == ["queued"] * 3 + ["rejected"]
    assert [m["index"] for m in answer["messages"]] == [0, 1, 2, 3]
    assert answer["messages"][3]["errors"][0]["pointer"] == "/messages/3/to/0"
    status, _, answer = api.post(
        "/v1/messages/batch",
        {"messages": bad[3:], "defaults": defaults, "validation": "permissive"},
    )
    assert status == 422
    status, _, answer = api.post("/v1/messages/batch", {"messages": good * 2})
    assert status == 422 and "batch_max" in answer["errors"][0]["detail"]
    status, _, answer = api.post("/v1/messages/batch", {"messages": good, "defaults": defaults})
    assert status == 202 and [m["index"] for m in answer["messages"]] == [0, 1, 2, 3]
    messages = delivered(sink, 7)
    assert {str(m["Subject"]) for m in messages} == {"batch"}
    assert sorted(s.rcpt_tos[0] for s in sink.messages) == sorted(
        [f"user{i}@dest.test" for i in range(3)] + [f"user{i}@dest.test" for i in range(4)]
    )


def test_idempotency_replays_refuses_a_different_body_and_survives_a_restart(
    relay: Callable[..., tuple[Daemon, Client]],
) -> None:
    daemon, api = relay()
    message = {"from": "app@sender.test", "to": ["bob@dest.test"], "text": "once"}
    key = {"Idempotency-Key": '"order-1234"'}
    status, headers, first = api.post("/v1/messages", message, headers=key)
    assert status == 202 and "idempotent-replayed" not in headers
    status, headers, again = api.post("/v1/messages", message, headers=key)
    assert (status, again, headers["idempotent-replayed"]) == (202, first, "true")
    assert headers["location"] == f"/v1/messages/{first['id']}"
    status, _, answer = api.post("/v1/messages", {**message, "text": "twice"}, headers=key)
    assert status == 422 and "different" in answer["detail"]
    # Another token's key of the same name is another key.
    status, _, other = api.post("/v1/messages", message, headers=key, token=ALL)
    assert status == 202 and other["id"] != first["id"]
    daemon.stop()
    daemon.start()
    status, headers, after = api.post("/v1/messages", message, headers=key)
    assert (status, after, headers["idempotent-replayed"]) == (202, first, "true")
    assert len(daemon.queued_ids()) == 2
    daemon.kill()  # kill -9: the record was durable before the reply
    daemon.start()
    status, _, after = api.post("/v1/messages", message, headers=key)
    assert (status, after) == (202, first)
    assert len(daemon.queued_ids()) == 2


def test_a_full_disk_is_503_with_retry_after_and_nothing_queued(
    relay: Callable[..., tuple[Daemon, Client]], tiny_fs: Path
) -> None:
    daemon, api = relay(spool_dir=str(tiny_fs / "spool"))
    message = {"from": "app@sender.test", "to": ["bob@dest.test"], "text": "x" * 50_000}
    filler = tiny_fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the 2 MB file system up
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    status, headers, answer = api.post("/v1/messages", message)
    assert status == 503, answer
    assert headers["retry-after"].isdigit() and "disk full" in answer["detail"]
    assert answer["type"].endswith("/unavailable")
    assert daemon.queued_ids() == []
    filler.unlink()
    status, _, answer = api.post("/v1/messages", message)
    assert status == 202, answer
    assert "Traceback" not in daemon.log()


def test_a_second_request_while_the_first_is_in_flight_is_409(
    relay: Callable[..., tuple[Daemon, Client]],
) -> None:
    daemon, api = relay()
    body = json.dumps({"from": "app@sender.test", "to": ["bob@dest.test"], "text": "hi"})
    data = body.encode()
    # The first request's body is still arriving (half of it sent) when the second comes.
    with socket.create_connection((LOOPBACK, api.port), timeout=30) as first:
        first.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\n"
            + f"Authorization: Bearer {SEND}\r\nContent-Type: application/json\r\n".encode()
            + f"Idempotency-Key: k-77\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data[:10]
        )
        # The key is taken once the first request's header is read (the pause only
        # lets the daemon read it before the second request arrives).
        time.sleep(0.3)
        status, _, answer = api.post("/v1/messages", raw=data, headers={"Idempotency-Key": "k-77"})
        assert status == 409 and answer["type"].endswith("/idempotency-in-flight")
        first.sendall(data[10:])
        reply = first.makefile("rb").read1(65536)
    assert reply.startswith(b"HTTP/1.1 202"), reply
    first_id = json.loads(reply.split(b"\r\n\r\n", 1)[1])["id"]
    status, headers, answer = api.post(
        "/v1/messages", raw=data, headers={"Idempotency-Key": "k-77"}
    )
    assert (status, answer["id"], headers["idempotent-replayed"]) == (202, first_id, "true")
    assert first_id in daemon.queued_ids() or f"{first_id}: removed" in daemon.log()
    assert daemon.log().count("api_token=sender") == 1


def test_curl_posts_json_and_gets_problem_json(
    relay: Callable[..., tuple[Daemon, Client]], tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    daemon, api = relay()
    body = tmp_path / "m.json"
    body.write_text(
        json.dumps(
            {
                "from": "app@sender.test",
                "to": ["bob@dest.test"],
                "subject": "curl",
                "text": "from a shell",
            }
        )
    )

    def curl(*args: str) -> tuple[int, str]:
        done = subprocess.run(
            [
                "curl",
                "-sS",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "-H",
                f"Authorization: Bearer {SEND}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        text, _, code = done.stdout.rpartition("\n")
        return int(code), text

    url = f"http://{LOOPBACK}:{api.port}/v1/messages"
    code, text = curl("--json", f"@{body}", url)
    assert code == 202, text
    assert json.loads(text)["status"] == "queued"
    code, text = curl("-H", "Content-Type: application/json", "--data-binary", '{"to": []}', url)
    assert code == 422
    assert {e["pointer"] for e in json.loads(text)["errors"]} == {"/to", "/text", "/from"}
    assert len(daemon.queued_ids()) == 1
