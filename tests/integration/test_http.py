"""The HTTP endpoint against the real daemon: tokens, /healthz, /metrics, /status,
/messages/{qid} and every queue operation.

Delivery goes by MX through the test DNS server to sinks on loopback: "dest.test" to a
scripted sink on MX1, "sender.test" (the senders' own domain, where notices go) to a
sink on MX2.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtprelay import ids
from smtprelay.web.connections import PER_ADDRESS
from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.debian_tools import fail2ban_regex, tool
from tests.integration.delivery_support import (
    MX1,
    MX2,
    SENDER,
    make_message,
    send,
    submit,
    wait_removed,
    wait_status,
)
from tests.integration.diskfull_fixtures import mounted_tmpfs
from tests.integration.http_support import TOKEN, Api, api_of, http_overrides, metric_samples
from tests.integration.sinks import Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures", "tests.integration.http_fixtures"]

HTTP_FILTER = Path(__file__).parents[2] / "conf" / "fail2ban" / "filter.d" / "smtprelay-http.conf"
BUSY = "450 4.2.1 Mailbox busy, try later"


# --- tokens --------------------------------------------------------------------------------


def test_every_endpoint_but_healthz_needs_a_token(
    make_daemon: Callable[..., Daemon], tokens_file: Path
) -> None:
    # Fourteen wrong tokens from one address: answered at once here (the delay is
    # tested in test_bad_tokens_are_logged_and_slowed_together_...).
    relay = make_daemon(
        overrides={"http": {**http_overrides(tokens_file), "bad_token_max_delay": "0"}}
    )
    api = api_of(relay)
    assert api.get("/healthz", token="") == (
        200,
        {
            "status": "ok",
            "checks": {"spool": "ok", "listeners": "ok", "event_loop": "ok", "delivery": "ok"},
        },
    )
    for method, path in [
        ("GET", "/status"),
        ("GET", "/metrics"),
        ("GET", "/queue"),
        ("GET", f"/messages/{ids.new_id()}"),
        ("POST", "/queue/flush"),
        ("POST", "/queue/delete"),
        ("GET", "/no-such-path"),
    ]:
        for token in ("", "wrong-token", TOKEN[:-1]):
            status, answer = api.call(method, path, token=token)
            assert status == 401, (method, path, token, answer)
            assert answer["error"]["code"] == "unauthorized"
            assert answer["error"]["message"]
    assert api.get("/status")[0] == 200
    status, answer = api.get("/no-such-path")
    assert (status, answer["error"]["code"]) == (404, "not_found")

    # A token added to the file works at once; a removed one stops working.
    tokens_file.write_text("new-token-0123456789\n")
    os.utime(tokens_file, ns=(1, 1))
    assert api.get("/status", token="new-token-0123456789")[0] == 200
    assert api.get("/status")[0] == 401


def test_sighup_applies_a_new_tokens_file_and_refuses_a_missing_one(
    make_daemon: Callable[..., Daemon], tokens_file: Path, tmp_path: Path
) -> None:
    relay = make_daemon(overrides={"http": http_overrides(tokens_file)})
    api = api_of(relay)
    relay.reconfigure({"http": {"tokens_file": str(tmp_path / "absent")}})
    line = relay.hup()
    assert "reload refused" in line and "[http] tokens_file" in line, line
    assert api.get("/status")[0] == 200  # the running configuration stays
    other = tmp_path / "other-tokens"
    other.write_text("other-token-0123456789\n")
    relay.reconfigure({"http": {"tokens_file": str(other)}})
    assert "configuration reloaded" in relay.hup()
    assert api.get("/status", token="other-token-0123456789")[0] == 200
    assert api.get("/status")[0] == 401


def test_without_a_tokens_file_only_healthz_answers(make_daemon: Callable[..., Daemon]) -> None:
    relay = make_daemon(overrides={"http": http_overrides("")})
    api = api_of(relay)
    assert api.get("/healthz")[0] == 200
    status, answer = api.get("/status", token="anything")
    assert status == 401
    assert answer["error"]["message"] == "no tokens are configured: set [http] tokens_file"


def test_a_busy_http_port_stops_start_up_naming_the_key(
    make_daemon: Callable[..., Daemon], tokens_file: Path
) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        relay = make_daemon(
            start=False,
            overrides={"http": {"listen": f"{LOOPBACK}:{port}", "tokens_file": str(tokens_file)}},
        )
        with pytest.raises(RuntimeError, match="exited 1"):
            relay.start()
    assert f"cannot start: [http] listen {LOOPBACK}:{port}: cannot listen" in relay.log()
    assert "Traceback" not in relay.log()


# --- /healthz --------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of our own: remounting it read-only is a real spool failure (the
    way ext4 reacts to I/O errors) that stops even root from writing, where a chmod
    would not (root ignores permissions)."""
    with mounted_tmpfs(tmp_path / "spoolfs", "8m") as mountpoint:
        yield mountpoint


def remount(mountpoint: Path, mode: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,{mode}", str(mountpoint)], check=True, capture_output=True
    )


def test_healthz_turns_503_when_the_spool_is_not_writable(
    make_daemon: Callable[..., Daemon], tokens_file: Path, tmpfs: Path
) -> None:
    relay = make_daemon(
        overrides={"spool": {"dir": str(tmpfs / "spool")}, "http": http_overrides(tokens_file)}
    )
    api = api_of(relay)
    assert api.get("/healthz")[0] == 200
    remount(tmpfs, "ro")
    try:
        # A request is answered by the last probe that finished (each request starts
        # the next one): the failure shows in an answer that follows.
        def unhealthy() -> tuple[int, Any] | None:
            got = api.get("/healthz")
            return got if got[0] == 503 else None

        status, answer = wait_until(unhealthy, 10, "/healthz 503")
        assert status == 503, answer
        assert answer["status"] == "unhealthy"
        assert answer["error"]["code"] == "unhealthy"
        assert "Read-only file system" in answer["error"]["message"]
        assert "Read-only file system" in answer["checks"]["spool"]
        assert answer["checks"]["listeners"] == "ok"
        # What /healthz says is what a client meets: nothing can be accepted now.
        with smtplib.SMTP(LOOPBACK, relay.port, timeout=30) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail(SENDER, ["x@dest.test"], b"Subject: t\r\n\r\nx\r\n")
            assert refused.value.smtp_code == 451
    finally:
        remount(tmpfs, "rw")
    wait_until(lambda: api.get("/healthz")[0] == 200, 10, "/healthz 200 again")


# --- /metrics and /status ------------------------------------------------------------------


def test_metrics_parse_and_count_what_was_sent(
    relay_with_api: Callable[..., tuple[Daemon, Api]], make_sink: Callable[..., Sink]
) -> None:
    sink = make_sink(MX1, name="mx1.dest.test")
    relay, api = relay_with_api()
    count = 5
    qids = [submit(relay, [f"user{n}@dest.test"], make_message(n)) for n in range(count)]
    with smtplib.SMTP(LOOPBACK, relay.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail(SENDER)
        code, _ = client.rcpt("not an address")
        assert code == 501
    for qid in qids:
        wait_removed(relay, qid)
    assert len(sink.messages) == count

    status, text = api.get("/metrics")
    assert status == 200
    found = metric_samples(text)
    assert found[("smtprelay_messages_received_total", ())] == count
    assert found[("smtprelay_deliveries_total", (("status", "sent"),))] == count
    assert found[("smtprelay_deliveries_total", (("status", "deferred"),))] == 0
    assert found[("smtprelay_deliveries_total", (("status", "bounced"),))] == 0
    assert found[("smtprelay_delivery_seconds_count", (("status", "sent"),))] == count
    assert (
        found[("smtprelay_delivery_seconds_bucket", (("le", "+Inf"), ("status", "sent")))] == count
    )
    assert found[("smtprelay_delivery_replies_total", (("class", "2xx"),))] == count
    assert found[("smtprelay_smtpd_rejects_total", (("class", "5xx"), ("command", "RCPT")))] == 1
    assert found[("smtprelay_smtpd_connections_total", ())] == count + 1
    for state in ("active", "deferred", "hold"):
        assert found[("smtprelay_queue_messages", (("state", state),))] == 0

    answer = api.ok("GET", "/status")
    assert answer["counters"] == {
        "received": count,
        "delivered": count,
        "deferred": 0,
        "bounced": 0,
        "rejected": 1,
        "deleted": 0,
        "canceled": 0,
        "notices": 0,
        "auth_failed": 0,
        "tls_failed": 0,
        "connections": count + 1,
    }
    assert answer["queue"] == {
        "active": 0,
        "deferred": 0,
        "hold": 0,
        "scheduled": 0,
        "rate-limited": 0,
        "total": 0,
        "loading": 0,
        "oldest_age_s": 0.0,
        "attempting": 0,
    }
    assert answer["upstreams"] == []  # no rate limits, no pauses
    assert answer["uptime_s"] > 0 and answer["version"]
    smtp = [item for item in answer["listeners"] if item["protocol"] == "smtp"]
    assert {
        "protocol": "smtp",
        "address": f"{LOOPBACK}:{relay.port}",
        "tls": "starttls",
        "serving": True,
    } in smtp
    assert answer["connections"] == 0


def test_status_shows_the_queue_and_the_biggest_backlogs(
    make_daemon: Callable[..., Daemon], tokens_file: Path
) -> None:
    # The harness default: delivery to a closed port, so everything stays deferred.
    relay = make_daemon(overrides={"http": http_overrides(tokens_file)})
    api = api_of(relay)
    for n in range(3):
        submit(relay, [f"a{n}@big.test", f"b{n}@big.test"], make_message(n))
    qid = submit(relay, ["x@small.test"], make_message("small"))
    wait_status(relay, qid, "x@small.test", "deferred")
    answer = api.ok("GET", "/status?top=1")
    assert answer["queue"]["total"] == 4
    assert answer["queue"]["deferred"] + answer["queue"]["active"] == 4
    assert answer["queue"]["oldest_age_s"] > 0
    assert answer["destinations"] == [{"domain": "big.test", "recipients": 6, "messages": 3}]
    assert api.get("/status?top=x")[0] == 400


# --- /messages/{qid} -------------------------------------------------------------------------


def test_message_history_shows_a_deferral_then_the_delivery(
    relay_with_api: Callable[..., tuple[Daemon, Api]],
    make_sink: Callable[..., Sink],
) -> None:
    rcpt = "later@dest.test"
    sink = make_sink(MX1, name="mx1.dest.test")
    sink.rcpt_reply(rcpt, BUSY, times=1)
    relay, api = relay_with_api()  # retries after 1 s
    relay.cli("user", "add", "app1", input="secret-pw\n")
    context = ssl.create_default_context(cafile=str(relay.ca_file))
    with smtplib.SMTP(LOOPBACK, relay.port, local_hostname="client.test", timeout=30) as c:
        c.starttls(context=context)
        wait_until(lambda: _login(c), 10, "the users file to be picked up")
        qid = send(c, [rcpt], make_message("history"))
    wait_removed(relay, qid)

    answer = api.ok("GET", f"/messages/{qid}")
    assert answer["qid"] == qid
    assert answer["status"] == "delivered"
    assert answer["in_queue"] is False
    assert answer["history_complete"] is True
    envelope = answer["envelope"]
    assert envelope["sender"] == SENDER
    assert envelope["client"]["auth_user"] == "app1"
    assert envelope["client"]["auth_method"] == "PLAIN"
    assert envelope["client"]["tls"].startswith("TLSv1.")
    # The envelope as accepted, brought up to date from the log: no stale "active",
    # "attempts: 0" or "last_reply: null" once the message was delivered.
    assert envelope["state"] == "delivered"
    assert envelope["next_attempt"] is None
    assert envelope["attempts"] == 2
    assert envelope["recipients"] == [
        {
            "address": rcpt,
            "state": "delivered",
            "params": {},
            "attempts": 2,
            "last_reply": "250 2.0.0 Ok: queued by sink",
            "last_relay": f"mx1.dest.test[{MX1}]:{sink.port}",
        }
    ]
    events = answer["events"]
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["client", "message-id", "queued"]
    assert kinds[-1] == "removed"
    assert events[0]["sasl_username"] == "app1"
    attempts = [e for e in events if e["event"] == "delivery"]
    assert [(a["status"], a["code"], a["dsn"]) for a in attempts] == [
        ("deferred", 450, "4.2.1"),
        ("sent", 250, "2.0.0"),
    ]
    assert attempts[0]["reason"] == "Mailbox busy, try later"
    assert attempts[1]["reason"] == "Ok: queued by sink"
    for attempt in attempts:
        assert attempt["relay"] == f"mx1.dest.test[{MX1}]:{sink.port}"
        assert attempt["text"].startswith(f"{qid}: to=<{rcpt}>")
    assert attempts[0]["time"] < attempts[1]["time"]

    assert api.get(f"/messages/{ids.new_id()}")[0] == 404
    assert api.get("/messages/..%2Fetc")[0] == 404


def _login(client: smtplib.SMTP) -> bool:
    try:
        client.ehlo()
        client.login("app1", "secret-pw")
    except smtplib.SMTPException:
        return False
    return True


# --- queue operations ------------------------------------------------------------------------


def test_queue_operations_on_a_running_daemon(
    relay_with_api: Callable[..., tuple[Daemon, Api]],
    make_sink: Callable[..., Sink],
) -> None:
    """hold keeps a message from being delivered, release delivers it; delete removes
    it (logged); flush retries a deferred message at once; bounce sends the sender a
    DSN. Every message is deferred once first (450), then waits an hour."""
    sink = make_sink(MX1, name="mx1.dest.test")
    mailbox = make_sink(MX2, name="mx.sender.test")
    names = ("held", "flushed", "deleted", "bounced")
    rcpts = {name: f"{name}@dest.test" for name in names}
    for rcpt in rcpts.values():
        sink.rcpt_reply(rcpt, BUSY, times=1)
    relay, api = relay_with_api(retry_schedule=["1h"])
    qids = {name: submit(relay, [rcpt], make_message(name)) for name, rcpt in rcpts.items()}
    for name, qid in qids.items():
        wait_status(relay, qid, rcpts[name], "deferred")

    # The deferral is logged just before the envelope is rewritten as deferred: poll.
    def all_deferred() -> dict[str, Any] | None:
        listing: dict[str, Any] = api.ok("GET", "/queue?state=deferred")
        found = sorted(m["qid"] for m in listing["messages"])
        return listing if found == sorted(qids.values()) else None

    listing = wait_until(all_deferred, 10, lambda: f"all of {sorted(qids.values())} deferred")
    first = listing["messages"][0]
    assert first["last_error"] == BUSY and first["attempts"] == 1
    assert first["sender"] == SENDER
    assert api.ok("GET", "/queue?domain=dest.test")["total"] == 4
    assert api.ok("GET", "/queue?domain=elsewhere.test")["total"] == 0
    assert api.get("/queue?state=frozen")[0] == 400

    # delete: gone from the spool, and the log says the operator did it.
    qid = qids["deleted"]
    assert api.ok("POST", "/queue/delete", {"qids": [qid]}) == {
        "action": "delete",
        "results": {qid: "deleted"},
    }
    assert qid not in relay.queued_ids()
    assert relay.proc is not None
    assert (
        f"smtprelay/postsuper[{relay.proc.pid}]: {qid}: removed (deleted by operator)"
        in relay.log()
    )
    assert api.ok("GET", f"/messages/{qid}")["status"] == "deleted"
    assert api.ok("POST", "/queue/delete", {"qids": [qid]})["results"] == {qid: "not-found"}

    # bounce: the sender gets a failure notice naming the operator.
    qid = qids["bounced"]
    assert api.ok("POST", "/queue/bounce", {"qids": [qid]})["results"] == {qid: "bounced"}
    wait_until(lambda: mailbox.messages, 20, lambda: f"a DSN at the sender\n{relay.log()}")
    [notice] = mailbox.messages
    assert notice.mail_from == "<>" and notice.rcpt_tos == (SENDER,)
    report = email.message_from_bytes(notice.content, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert "Returned to sender by the operator" in notice.content.decode(errors="replace")
    assert qid not in relay.queued_ids()
    assert [
        e["status"] for e in api.ok("GET", f"/messages/{qid}")["events"] if e["event"] == "delivery"
    ] == ["deferred", "bounced"]

    # hold: stays in the spool, untouched by a flush of everything.
    qid = qids["held"]
    assert api.ok("POST", "/queue/hold", {"qids": [qid]})["results"] == {qid: "held"}
    assert relay.envelope(qid)["state"] == "hold"
    assert [m["qid"] for m in api.ok("GET", "/queue?state=hold")["messages"]] == [qid]

    # flush one: the deferred message is retried now, not in an hour.
    qid = qids["flushed"]
    assert api.ok("POST", "/queue/flush", {"qids": [qid]})["results"] == {qid: "flushed"}
    wait_removed(relay, qid)
    assert len(sink.delivered_to(rcpts["flushed"])) == 1

    assert api.ok("POST", "/queue/flush") == {"action": "flush", "flushed": 0}
    held = qids["held"]
    assert api.ok("POST", "/queue/flush", {"qids": [held]})["results"] == {held: "on-hold"}
    time.sleep(1.0)  # a flushed message is tried at once: give it the chance to go wrong
    assert sink.rcpt_attempts[rcpts["held"]] == 1  # never tried again while held
    assert sink.delivered_to(rcpts["held"]) == []

    # release: attempted at once, delivered.
    assert api.ok("POST", "/queue/release", {"qids": [held]})["results"] == {held: "released"}
    wait_removed(relay, held)
    assert len(sink.delivered_to(rcpts["held"])) == 1
    assert f"{held}: released from hold" in relay.log()
    assert relay.queued_ids() == []
    assert api.ok("GET", "/status")["counters"]["deleted"] == 1
    assert "Traceback" not in relay.log()


def test_queue_operations_refuse_malformed_requests(
    make_daemon: Callable[..., Daemon], tokens_file: Path
) -> None:
    relay = make_daemon(overrides={"http": http_overrides(tokens_file)})
    api = api_of(relay)
    malformed: list[tuple[Any, bytes | None]] = [
        (None, None),
        ({}, None),
        ({"qids": []}, None),
        ({"qids": "1K17TWEWEZ4Y1"}, None),
        ({"qids": ["../../etc/passwd"]}, None),
        ({"qids": [ids.new_id()], "force": True}, None),
        (None, b"{not json"),
    ]
    for body, raw in malformed:
        status, answer = api.call("POST", "/queue/hold", body, raw=raw)
        assert status == 400, (body, raw, answer)
        assert answer["error"]["code"] == "bad_request"
    status, answer = api.call("GET", "/queue/hold")
    assert (status, answer["error"]["code"]) == (405, "method_not_allowed")
    missing = ids.new_id()
    for action in ("hold", "release", "delete", "bounce", "flush"):
        assert api.ok("POST", f"/queue/{action}", {"qids": [missing]})["results"] == {
            missing: "not-found"
        }


# --- hostile and malformed requests ----------------------------------------------------------


def raw_request(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is on a new connection; (status, headers, body) of the answer."""
    with socket.create_connection((LOOPBACK, port), timeout=30) as s:
        # Answered and closed before reading it all: the answer is still there. (No
        # half-close: aiohttp drops the connection on EOF, a delayed 401 with it.)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def request_bytes(
    method: str, path: str, *, token: bytes | None = None, body: bytes = b"", extra: bytes = b""
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n".encode()
    if token is not None:
        head += b"Authorization: Bearer " + token + b"\r\n"
    if body:
        head += b"Content-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n".encode() + extra
    return head + b"\r\n" + body


def test_malformed_requests_get_a_4xx_and_one_log_line_each(
    make_daemon: Callable[..., Daemon], tokens_file: Path
) -> None:
    relay = make_daemon(overrides={"http": http_overrides(tokens_file)})
    # The spool is loaded after READY=1; its line must not land among the ones counted.
    wait_until(lambda: "queued message(s) loaded" in relay.log(), 10, "the spool load line")
    port = api_of(relay).port
    token = TOKEN.encode()
    deep = b"[" * 100_000 + b"]" * 100_000
    cases: list[tuple[str, bytes, set[int], str]] = [
        (
            "non-UTF-8 token",
            request_bytes("GET", "/status", token=b"\xff\xfe\x80tok"),
            {401},
            "bad bearer token (GET /status; 1 recent failure",
        ),
        (
            "100,000-deep JSON",
            request_bytes("POST", "/queue/hold", token=token, body=deep),
            {400},
            "HTTP POST /queue/hold: 400 the body is nested too deeply",
        ),
        (
            "body over 1 MiB",
            request_bytes("POST", "/queue/hold", token=token, body=b" " * (1024 * 1024 + 1)),
            {413},
            "HTTP POST /queue/hold: 413 the body is larger than 1048576 bytes",
        ),
        (
            "oversized header",
            request_bytes(
                "GET", "/status", token=token, extra=b"X-Big: " + b"a" * 20_000 + b"\r\n"
            ),
            {400, 431},
            "malformed HTTP request (400 Got more than 8190 bytes",
        ),
        (
            "garbage request line",
            b"GARBAGE\r\n\r\n",
            {400},
            "malformed HTTP request (400 Invalid method",
        ),
        (
            "control bytes in the request line",
            b"GET /a\x1b[2J\x00 HTTP/1.1\r\n\r\n",
            {400},
            "malformed HTTP request (400 ",
        ),
        (
            "TLS to the plain port",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(60),
            {400},
            "malformed HTTP request (400 ",
        ),
        ("not HTTP/1.x", b"GET / HTTP/9.9\r\n\r\n", {400}, "malformed HTTP request (400 "),
    ]
    for name, data, statuses, expected in cases:
        before = len(relay.log())
        status, headers, body = raw_request(port, data)
        assert status in statuses, (name, status, body[:200])
        if status in (401, 400, 413) and headers.get("content-type", "").startswith(
            "application/json"
        ):
            error = json.loads(body)["error"]
            assert set(error) == {"code", "message"}, (name, error)
        if status == 401:
            assert headers["www-authenticate"].startswith("Bearer"), name
            assert json.loads(body)["error"]["code"] == "unauthorized"
        new = relay.log()[before:].splitlines()
        assert len(new) == 1, (name, new)
        assert expected in new[0], (name, new[0])
        assert f"unknown[{LOOPBACK}]" in new[0], (name, new[0])
        assert "\x1b" not in new[0] and "\x00" not in new[0], (name, new[0])
    log = relay.log()
    assert "Traceback" not in log and "error:" not in log, log
    assert "\\x1b" in log  # the control bytes were written escaped
    assert api_of(relay).get("/status")[0] == 200  # and the endpoint still serves


def test_bad_tokens_are_logged_and_slowed_together_and_valid_ones_are_not(
    make_daemon: Callable[..., Daemon], tokens_file: Path
) -> None:
    relay = make_daemon(overrides={"http": http_overrides(tokens_file)})
    api = api_of(relay)
    assert api.get("/status", token="")[0] == 401  # no token at all: no guess, no line
    assert "bad bearer token" not in relay.log()

    # Four wrong guesses at once from one address: they share its failure count, so
    # their delays grow one after the other (0.5, 1, 2 and 4 s).
    answers: dict[int, tuple[int, Any]] = {}
    finished: list[int] = []

    def guess(n: int) -> None:
        answers[n] = api.get("/status", token=f"guess-{n}")
        finished.append(n)

    guesses = [threading.Thread(target=guess, args=(n,)) for n in range(4)]
    for thread in guesses:
        thread.start()
    wait_until(lambda: relay.log().count("bad bearer token") == 4, 30, "four log lines")
    lines = [line for line in relay.log().splitlines() if "bad bearer token" in line]
    assert sorted(
        re.findall(r"; (\d+) recent failures?, answered after ([\d.]+)s", "\n".join(lines))
    ) == [("1", "0.5"), ("2", "1"), ("3", "2"), ("4", "4")], lines
    for line in lines:
        assert re.search(
            r"smtprelay/http\[\d+\]: warning: unknown\[127\.0\.0\.1\]: "
            r"bad bearer token \(GET /status;",
            line,
        ), line
    # Meanwhile a valid token from the same address is served at once: before the
    # guess that waits 4 s has its answer.
    assert api.get("/status")[0] == 200
    assert len(finished) < 4
    for thread in guesses:
        thread.join(timeout=60)
    assert sorted(answers) == [0, 1, 2, 3]
    for status, answer in answers.values():
        assert (status, answer["error"]["code"]) == (401, "unauthorized")
    assert "Traceback" not in relay.log()


def test_fail2ban_filter_matches_wrong_tokens_and_in_aggressive_mode_malformed_requests(
    make_daemon: Callable[..., Daemon], tokens_file: Path
) -> None:
    tool("fail2ban-regex", "fail2ban")
    relay = make_daemon(
        overrides={"http": {**http_overrides(tokens_file), "bad_token_max_delay": "0"}}
    )
    api = api_of(relay)
    for n in range(3):
        assert api.get("/status", token=f"guess-{n}")[0] == 401
    assert api.get("/status")[0] == 200
    assert api.get("/no-such-path")[0] == 404  # a valid token's mistake: never matched
    assert raw_request(api.port, b"GARBAGE\r\n\r\n")[0] == 400
    assert relay.stop() == 0

    hosts, counts, report = fail2ban_regex(relay.log_path, str(HTTP_FILTER))
    assert hosts == [LOOPBACK] * 3 and counts["matched"] == 3, report
    hosts, counts, report = fail2ban_regex(relay.log_path, f"{HTTP_FILTER}[mode=aggressive]")
    assert hosts == [LOOPBACK] * 4 and counts["matched"] == 4, report
    assert "HTTP GET /no-such-path: 404" in report.split("Missed line(s):", 1)[1], report


def test_one_address_cannot_hold_every_http_connection(
    make_daemon: Callable[..., Daemon], tokens_file: Path
) -> None:
    relay = make_daemon(overrides={"http": http_overrides(tokens_file)})
    api = api_of(relay)
    held = [socket.create_connection((LOOPBACK, api.port), timeout=30) for _ in range(PER_ADDRESS)]
    try:
        # The connections were accepted in order: the next one is over the bound and
        # answered at once, before it sends anything.
        status, headers, body = raw_request(api.port, b"")
        assert (status, headers["retry-after"]) == (503, "1")
        assert json.loads(body)["error"]["code"] == "busy"
        refused = [line for line in relay.log().splitlines() if "connection refused" in line]
        assert len(refused) == 1, refused
        assert (
            f"unknown[{LOOPBACK}]: HTTP connection refused: {PER_ADDRESS} open from "
            "this address" in refused[0]
        )
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: api.get("/status")[0] == 200, 30, "a slot after the others closed")
    assert "Traceback" not in relay.log()
