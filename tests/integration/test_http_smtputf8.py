"""An HTTP-submitted message to a non-ASCII address travels as SMTPUTF8 (RFC 6531) to a
sink that offers it, and arrives byte-correct: the UTF-8 address in the envelope and in
the header, as UTF-8 (no encoded word can hold an address), for a JSON-built message and
for a raw one, whose bytes arrive exactly as given after the relay's Received: header.
"""

from __future__ import annotations

import base64
import email
import email.policy
import http.client
import json
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.integration.delivery_support import MX1, wait_removed
from tests.integration.dns_server import TestDNSServer
from tests.integration.sinks import Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures"]

TOKEN = "utf8-token-52c9e07a1b"
RCPT = "jörg.müller@dest.test"


@pytest.fixture
def relay(
    dns: TestDNSServer, delivering_relay: Callable[..., Daemon], tmp_path: Path
) -> Callable[[dict[str, Any]], str]:
    """``submit(body)`` -> the queue ID of a message POSTed to a delivering relay."""
    dns.zone.mx("dest.test", 10, "mx1.dest.test")
    dns.zone.a("mx1.dest.test", MX1)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"app {TOKEN} scopes=send\n")
    port = free_port()
    daemon = delivering_relay(
        http={"listen": f"{LOOPBACK}:{port}", "tokens_file": str(tokens)},
    )

    def submit(body: dict[str, Any]) -> str:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        try:
            conn.request(
                "POST",
                "/v1/messages",
                body=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            answer = json.loads(response.read())
        finally:
            conn.close()
        assert response.status == 202, answer
        assert answer["recipients"] == [{"email": RCPT, "status": "queued"}]
        qid = str(answer["id"])
        assert "SMTPUTF8" in daemon.envelope(qid)["mail_params"]
        wait_removed(daemon, qid)
        return qid

    return submit


def arrived(sink: Sink, count: int) -> list[EmailMessage]:
    wait_until(lambda: len(sink.messages) >= count, timeout=20)
    parsed = []
    for m in sink.messages:
        # As text: a UTF-8 header is what SMTPUTF8 carries (from bytes, the email
        # package would keep its non-ASCII octets as surrogates).
        message = email.message_from_string(m.content.decode(), policy=email.policy.SMTPUTF8)
        assert isinstance(message, EmailMessage)
        parsed.append(message)
    return parsed


def test_a_json_message_to_a_utf8_address_arrives_over_smtputf8(
    relay: Callable[[dict[str, Any]], str], make_sink: Callable[..., Sink]
) -> None:
    sink = make_sink(MX1, name="mx1.dest.test", smtputf8=True)
    qid = relay(
        {
            "from": {"email": "app@sender.test", "name": "Zoë"},
            "to": [{"email": RCPT, "name": "Jörg Müller"}],
            "subject": "Grüße, Jörg",
            "text": "Hallo Jörg,\nalles gut? — ✓\n",
        }
    )
    (message,) = arrived(sink, 1)
    (got,) = sink.messages
    assert got.rcpt_tos == (RCPT,) and got.mail_from == "app@sender.test"
    header = got.content.split(b"\r\n\r\n", 1)[0]
    assert RCPT.encode() in header  # the address itself, in UTF-8: the SMTPUTF8 form
    assert message["To"].addresses[0].addr_spec == RCPT
    assert message["To"].addresses[0].display_name == "Jörg Müller"
    assert str(message["Subject"]) == "Grüße, Jörg"
    assert message["Message-ID"] == f"<{qid}@relay.test>"
    body = message.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == "Hallo Jörg,\nalles gut? — ✓\n"


def test_a_raw_utf8_message_arrives_byte_for_byte(
    relay: Callable[[dict[str, Any]], str], make_sink: Callable[..., Sink]
) -> None:
    sink = make_sink(MX1, name="mx1.dest.test", smtputf8=True)
    raw = (
        f"From: Zoë <app@sender.test>\r\nTo: Jörg <{RCPT}>\r\nSubject: Grüße\r\n"
        "Message-ID: <raw-1@sender.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        "\r\nÄpfel, Öl und Übermut ✓\r\n"
    ).encode()
    relay({"to": [RCPT], "raw": base64.b64encode(raw).decode()})
    arrived(sink, 1)
    (got,) = sink.messages
    assert got.rcpt_tos == (RCPT,)
    assert got.body().endswith(raw)  # after the relay's Received:, Date: is the sender's
