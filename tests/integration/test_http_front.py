"""The HTTP front (``[http] workers``, smtprelay/web/front.py) against the real daemon:
what it serves itself, and every request it hands to the main process with its
connection -- pipelined after one it served, with a body split across reads, a bad
token, a template, an Idempotency-Key, a refusal, a batch -- answered as before and with the
client's real address. The front killed under load (no connection refused, every 202
delivered once) and a new tokens file taken on SIGHUP.

Who answered is visible in the queue ID: its last two characters are the tag of the
process that made it (smtprelay/ids.py); the front's is TAG_BASE + its index.
"""

from __future__ import annotations

import email
import email.policy
import http.client
import json
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smtprelay import ids
from smtprelay.web.front import TAG_BASE
from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.integration.delivery_support import MX1
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink
from tests.polling import wait_until

# http_fixtures: the zone (dest.test's MX is the sink on MX1)
pytest_plugins = ["tests.integration.delivery_fixtures", "tests.integration.http_fixtures"]

SEND = "front-send-token-2a9c41d7e0"
ALL = "front-all-token-70b3e58c16"
LIMITED = "front-limited-token-5d18fa03c2"
FRONT_TAG = ids.ALPHABET[TAG_BASE // 32] + ids.ALPHABET[TAG_BASE % 32]
MAIN_TAG = "00"


def message(seq: str, **fields: Any) -> dict[str, Any]:
    return {
        "from": "app@sender.test",
        "to": ["bob@dest.test"],
        "subject": f"front {seq}",
        "text": f"message {seq}\n",
        "headers": {"X-Seq": seq},
        **fields,
    }


def request(
    path: str,
    body: bytes,
    token: str = SEND,
    extra: str = "",
    method: str = "POST",
) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], Any]]:
    """``count`` responses read off one connection, in order (each has a Content-Length)."""
    buffer = b""
    answers: list[tuple[int, dict[str, str], Any]] = []
    sock.settimeout(30)
    while len(answers) < count:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            line, *fields = buffer[:end].decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
            length = int(headers["content-length"])
            if len(buffer) >= end + 4 + length:
                body = buffer[end + 4 : end + 4 + length]
                answers.append((int(line.split()[1]), headers, json.loads(body)))
                buffer = buffer[end + 4 + length :]
                continue
        data = sock.recv(65536)
        assert data, f"connection closed after {len(answers)} of {count} responses"
        buffer += data
    return answers


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"sender {SEND} scopes=send\n{ALL}\nlimited {LIMITED} senders=sender.test\n")
    return path


@pytest.fixture
def relay(
    zone: TestDNSServer, delivering_relay: Callable[..., Daemon], tokens: Path
) -> tuple[Daemon, int]:
    port = free_port()
    daemon = delivering_relay(
        http={"listen": f"{LOOPBACK}:{port}", "tokens_file": str(tokens), "workers": 1},
        relay={"allowed_recipient_domains": ["dest.test"]},
    )
    return daemon, port


def connect(port: int, source: str = LOOPBACK) -> socket.socket:
    return socket.create_connection((LOOPBACK, port), timeout=30, source_address=(source, 0))


def call(port: int, data: bytes, source: str = LOOPBACK) -> tuple[int, dict[str, str], Any]:
    with connect(port, source) as sock:
        sock.sendall(data)
        return read_responses(sock, 1)[0]


def get(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {ALL}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def seqs_delivered(sink: Sink) -> Counter[str]:
    seen: Counter[str] = Counter()
    for m in sink.messages:
        parsed = email.message_from_bytes(m.content, policy=email.policy.default)
        seen[str(parsed["X-Seq"])] += 1
    return seen


def test_the_front_answers_a_submission_whose_status_is_readable_at_once(
    relay: tuple[Daemon, int], make_sink: Callable[..., Sink]
) -> None:
    sink = make_sink(MX1, name="mx1.dest.test")
    daemon, port = relay
    status, headers, answer = call(port, request("/v1/messages", json.dumps(message("1")).encode()))
    assert status == 202, answer
    qid = answer["id"]
    assert qid.endswith(FRONT_TAG), f"{qid} was not made by the front"
    assert headers["location"] == f"/v1/messages/{qid}"
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert answer["recipients"] == [{"email": "bob@dest.test", "status": "queued"}]
    # The main process knew the message before the client had its 202.
    status, tracked = get(port, f"/v1/messages/{qid}")
    assert status == 200, tracked
    assert tracked["submitted_via"] == "http"
    wait_until(lambda: seqs_delivered(sink) == Counter({"1": 1}), 20)
    log = daemon.log()
    assert re.search(rf"{qid}: from=<app@sender.test>", log), log
    # A batch goes to the main process (and its preparing workers), with the connection.
    batch = {"messages": [message("2"), message("3")]}
    status, headers, answer = call(port, request("/v1/messages/batch", json.dumps(batch).encode()))
    assert status == 202, answer
    assert [m["id"][-2:] for m in answer["messages"]] == [MAIN_TAG, MAIN_TAG]
    wait_until(lambda: seqs_delivered(sink) == Counter({"1": 1, "2": 1, "3": 1}), 20)


def test_pipelined_requests_are_answered_in_order_by_front_and_main_process(
    relay: tuple[Daemon, int], make_sink: Callable[..., Sink]
) -> None:
    sink = make_sink(MX1, name="mx1.dest.test")
    _, port = relay
    invalid = message("bad", to=[])
    with connect(port) as sock:
        sock.sendall(
            request("/v1/messages", json.dumps(message("p1")).encode())
            + request("/v1/messages", json.dumps(invalid).encode())
            + request("/v1/messages", json.dumps(message("p2")).encode())
        )
        (s1, _, a1), (s2, h2, a2), (s3, _, a3) = read_responses(sock, 3)
        assert s1 == 202 and a1["id"].endswith(FRONT_TAG), a1
        assert s2 == 422 and h2["content-type"].startswith("application/problem+json"), a2
        assert {e["pointer"] for e in a2["errors"]} == {"/to"}, a2
        # After a hand-off the connection is the main process's, for good.
        assert s3 == 202 and a3["id"].endswith(MAIN_TAG), a3
        # ... and it keeps serving on it.
        sock.sendall(request("/v1/messages", json.dumps(message("p3")).encode()))
        (s4, _, a4) = read_responses(sock, 1)[0]
        assert s4 == 202 and a4["id"].endswith(MAIN_TAG), a4
    wait_until(lambda: seqs_delivered(sink) == Counter({"p1": 1, "p2": 1, "p3": 1}), 20)


def test_a_keyed_request_split_across_reads_is_handed_off_whole_and_replayed(
    relay: tuple[Daemon, int], make_sink: Callable[..., Sink]
) -> None:
    sink = make_sink(MX1, name="mx1.dest.test")
    _, port = relay
    data = request(
        "/v1/messages", json.dumps(message("k")).encode(), extra="Idempotency-Key: split-1\r\n"
    )
    head_end = data.index(b"\r\n\r\n") + 4
    with connect(port) as sock:
        sock.sendall(data[: head_end + 7])  # the head and 7 bytes of the body
        time.sleep(0.3)
        sock.sendall(data[head_end + 7 :])
        status, _, first = read_responses(sock, 1)[0]
    assert status == 202 and first["id"].endswith(MAIN_TAG), first
    status, headers, again = call(port, data)
    assert status == 202 and headers["idempotent-replayed"] == "true", again
    assert again == first
    wait_until(lambda: seqs_delivered(sink) == Counter({"k": 1}), 20)
    time.sleep(1)
    assert seqs_delivered(sink) == Counter({"k": 1})


def test_refusals_come_from_the_main_process_with_the_clients_address(
    relay: tuple[Daemon, int],
) -> None:
    daemon, port = relay
    body = json.dumps(message("x")).encode()
    status, headers, answer = call(port, request("/v1/messages", body, token="wrong-token"))
    assert status == 401 and headers["www-authenticate"].startswith("Bearer"), answer
    # Allowed by its token's scope, refused for its sender domain: logged with the
    # address of the client, which connected to the front.
    other = json.dumps(message("y", **{"from": "app@elsewhere.test"})).encode()
    status, _, answer = call(port, request("/v1/messages", other, token=LIMITED), "127.0.0.9")
    assert status == 403, answer
    wait_until(lambda: "127.0.0.9" in daemon.log(), 10, daemon.log)
    # A template lives in the main process: the request goes there with its body.
    put = json.dumps({"subject": "Hi {{ name }}", "text": "Hello {{ name }}\n"}).encode()
    status, _, stored = call(port, request("/v1/templates/hello", put, ALL, method="PUT"))
    assert status == 201, stored
    templated = message("t", template={"name": "hello"}, variables={"name": "Ann"})
    del templated["subject"], templated["text"]
    status, _, answer = call(port, request("/v1/messages", json.dumps(templated).encode()))
    assert status == 202 and answer["id"].endswith(MAIN_TAG), answer


def front_pids(daemon: Daemon) -> list[int]:
    return [int(p) for p in re.findall(r"HTTP front 0 started, pid (\d+)", daemon.log())]


def test_a_front_killed_under_load_loses_no_acknowledged_message_and_is_replaced(
    relay: tuple[Daemon, int], make_sink: Callable[..., Sink]
) -> None:
    sink = make_sink(MX1, name="mx1.dest.test")
    daemon, port = relay
    [first] = front_pids(daemon)
    acked: list[str] = []
    failed: list[tuple[str, BaseException]] = []
    lock = threading.Lock()
    clients, per_client, kill_after = 6, 60, 60
    killed = threading.Event()

    def client(n: int) -> None:
        for i in range(per_client):
            seq = f"{n}.{i}"
            try:
                status, _, answer = call(
                    port, request("/v1/messages", json.dumps(message(seq)).encode())
                )
            except (OSError, AssertionError) as e:  # a connection the killed front held
                with lock:
                    failed.append((seq, e))
                continue
            assert status == 202, answer
            with lock:
                acked.append(seq)
                if len(acked) == kill_after and not killed.is_set():
                    killed.set()
                    os.kill(first, signal.SIGKILL)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert killed.is_set()
    assert not [e for _, e in failed if isinstance(e, ConnectionRefusedError)], failed
    assert len(failed) <= clients, failed  # at most the one in flight per client
    wait_until(lambda: len(front_pids(daemon)) == 2, 20, daemon.log)
    assert f"HTTP front 0 (pid {first}) exited with signal SIGKILL" in daemon.log()
    # Every acknowledged message once; one in flight at the kill at most once.
    wait_until(lambda: set(acked) <= set(seqs_delivered(sink)), 60, daemon.log)
    delivered = seqs_delivered(sink)
    assert max(delivered.values()) == 1, delivered
    assert set(delivered) <= set(acked) | {seq for seq, _ in failed}
    status, _, answer = call(port, request("/v1/messages", json.dumps(message("after")).encode()))
    assert status == 202 and answer["id"].endswith(FRONT_TAG), answer


def test_sighup_gives_the_front_the_new_tokens_file(
    relay: tuple[Daemon, int], tokens: Path
) -> None:
    daemon, port = relay
    body = json.dumps(message("h")).encode()
    status, _, answer = call(port, request("/v1/messages", body, token="new-token-19f0c3d8a2"))
    assert status == 401, answer
    tokens.write_text(tokens.read_text() + "newcomer new-token-19f0c3d8a2 scopes=send\n")
    daemon.hup()

    def served() -> bool:
        status, _, answer = call(port, request("/v1/messages", body, token="new-token-19f0c3d8a2"))
        return status == 202 and bool(answer["id"].endswith(FRONT_TAG))

    wait_until(served, 10, daemon.log)


def test_connections_closed_by_clients_give_their_slots_back(relay: tuple[Daemon, int]) -> None:
    """More connections from one address than it may hold open at once (64), each
    closed by the client: after a request, before one, half-way through a head, or
    with a reset; then a request is still served by the front."""
    _, port = relay
    body = json.dumps(message("slots")).encode()
    for n in range(40):
        status, _, answer = call(port, request("/v1/messages", body))
        assert status == 202, (n, answer)
        with connect(port):
            pass
        with connect(port) as sock:
            sock.sendall(b"POST /v1/mess")
        with connect(port) as sock:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    status, _, answer = call(port, request("/v1/messages", body))
    assert status == 202 and answer["id"].endswith(FRONT_TAG), answer


def test_with_two_fronts_one_killed_the_other_serves_and_healthz_says_so(
    zone: TestDNSServer, delivering_relay: Callable[..., Daemon], tokens: Path
) -> None:
    port = free_port()
    daemon = delivering_relay(
        http={"listen": f"{LOOPBACK}:{port}", "tokens_file": str(tokens), "workers": 2},
        relay={"allowed_recipient_domains": ["dest.test"]},
    )
    pids = [int(p) for p in re.findall(r"HTTP front 1 started, pid (\d+)", daemon.log())]
    assert len(pids) == 1, daemon.log()
    os.kill(pids[0], signal.SIGKILL)

    def healthz() -> tuple[int, Any]:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def unhealthy() -> Any:
        status, answer = healthz()
        return answer if status == 503 else None

    answer = wait_until(unhealthy, 10, daemon.log)
    assert "an HTTP front is starting again" in json.dumps(answer), answer
    wait_until(lambda: healthz()[0] == 200, 10, daemon.log)
    # The second front's tag is the first's plus one.
    second = ids.ALPHABET[(TAG_BASE + 1) // 32] + ids.ALPHABET[(TAG_BASE + 1) % 32]
    made: set[str] = set()
    for n in range(40):
        body = json.dumps(message(f"two.{n}")).encode()
        status, _, sent = call(port, request("/v1/messages", body))
        assert status == 202, sent
        made.add(sent["id"][-2:])
    assert made <= {FRONT_TAG, second}, made
