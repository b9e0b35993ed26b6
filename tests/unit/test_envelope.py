"""smtprelay.envelope: the JSON spool record round-trips and refuses malformed input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay.envelope import (
    FORMAT_VERSION,
    Client,
    Envelope,
    QueueState,
    Recipient,
    RecipientState,
)
from smtprelay.inbound import protocol
from tests.unit.helpers import make_envelope

texts = st.text(max_size=30)
finite = st.floats(allow_nan=False, allow_infinity=False)
params = st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9-]{0,8}", fullmatch=True), texts, max_size=4)

recipients = st.builds(
    Recipient,
    address=texts,
    state=st.sampled_from(RecipientState),
    params=params,
    attempts=st.integers(min_value=0, max_value=10**6),
    last_reply=st.none() | texts,
)
clients = st.builds(
    Client,
    ip=st.ip_addresses().map(str),
    port=st.integers(min_value=0, max_value=65535),
    helo=texts,
    auth_user=st.none() | texts,
    auth_method=st.none() | st.sampled_from(["PLAIN", "LOGIN"]),
    tls=st.none() | texts,
    protocol=st.sampled_from(["SMTP", "ESMTP", "ESMTPS", "ESMTPSA", "UTF8SMTPSA"]),
)
envelopes = st.builds(
    Envelope,
    qid=st.from_regex(r"[0-9A-HJKMNP-TV-Z]{13}", fullmatch=True),
    sender=texts,
    recipients=st.lists(recipients, min_size=1, max_size=5),
    client=clients,
    arrival=finite,
    size=st.integers(min_value=0, max_value=2**53),
    mail_params=params,
    state=st.sampled_from(QueueState),
    next_attempt=finite,
    attempts=st.integers(min_value=0, max_value=10**6),
    message_id=st.none() | texts,
)


@given(envelopes)
def test_json_round_trip(envelope: Envelope) -> None:
    raw = envelope.to_json()
    assert isinstance(raw, bytes)
    back = Envelope.from_json(raw)
    assert back == envelope
    assert isinstance(back.state, QueueState)
    assert all(isinstance(r.state, RecipientState) for r in back.recipients)
    assert isinstance(back.client, Client)


def test_json_is_human_readable_and_versioned() -> None:
    envelope = make_envelope(size=10, sender="j\u00f6rg@example.com")
    raw = envelope.to_json()
    record = json.loads(raw)
    assert record["version"] == FORMAT_VERSION
    assert record["sender"] == "j\u00f6rg@example.com"
    assert "j\u00f6rg".encode() in raw  # UTF-8, not \u escapes: grep-able


def test_json_is_one_line_whatever_the_fields_hold() -> None:
    """The spool keeps the envelope as the first line of a queue file: its JSON never
    contains a raw newline, even when text fields do."""
    envelope = make_envelope(size=10, message_id="<a\nb\r\u2028@example.com>")
    envelope.recipients[0].last_reply = "451-first\n451 second\r\n"
    raw = envelope.to_json()
    assert b"\n" not in raw and b"\r" not in raw
    assert Envelope.from_json(raw) == envelope
    assert Envelope.from_json(raw + b"\n") == envelope  # as read back with readline()


def test_smtputf8_property() -> None:
    assert make_envelope(mail_params={"SMTPUTF8": ""}).smtputf8
    assert not make_envelope(mail_params={"BODY": "8BITMIME"}).smtputf8


def test_helo_that_is_not_utf8_never_reaches_an_envelope() -> None:
    """aiosmtpd hands over command arguments that are not valid UTF-8 with surrogate
    escapes ('caf\\udce9' for b'caf\\xe9'). Such text cannot be stored, so the session
    refuses it at HELO/EHLO (501 5.5.2) and an envelope never holds it; valid UTF-8 is
    stored as is."""
    assert not protocol._valid_utf8("caf\udce9")
    assert protocol._valid_utf8("café.example")
    envelope = make_envelope(client=Client(ip="192.0.2.5", port=1, helo="café.example"))
    assert Envelope.from_json(envelope.to_json()).client.helo == "café.example"


def _record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(make_envelope(size=42).to_json())
    record.update(changes)
    return record


def _rejects(record: Any) -> None:
    raw = record if isinstance(record, bytes) else json.dumps(record).encode()
    with pytest.raises(ValueError):
        Envelope.from_json(raw)


@pytest.mark.parametrize("key", ["qid", "sender", "recipients", "client", "arrival", "size"])
def test_missing_key_rejected(key: str) -> None:
    record = _record()
    del record[key]
    _rejects(record)


@pytest.mark.parametrize("key", ["version", "state", "attempts", "mail_params"])
def test_keys_with_defaults_may_be_missing(key: str) -> None:
    """Records written before a key existed still load: the key takes its default."""
    record = _record()
    del record[key]
    assert Envelope.from_json(json.dumps(record).encode()).qid == record["qid"]


@pytest.mark.parametrize("key", ["address"])
def test_missing_recipient_key_rejected(key: str) -> None:
    record = _record()
    del record["recipients"][0][key]
    _rejects(record)


@pytest.mark.parametrize("key", ["ip", "port", "helo"])
def test_missing_client_key_rejected(key: str) -> None:
    record = _record()
    del record["client"][key]
    _rejects(record)


@pytest.mark.parametrize("version", [0, 2, "1", None, 1.5])
def test_wrong_version_rejected(version: object) -> None:
    _rejects(_record(version=version))


def test_no_recipients_rejected() -> None:
    with pytest.raises(ValueError, match="no recipients"):
        Envelope.from_json(json.dumps(_record(recipients=[])).encode())


@pytest.mark.parametrize("state", ["frozen", "", None, 1, "ACTIVE"])
def test_bad_queue_state_rejected(state: object) -> None:
    _rejects(_record(state=state))


def test_bad_recipient_state_rejected() -> None:
    record = _record()
    record["recipients"][0]["state"] = "lost"
    _rejects(record)


def test_unknown_keys_are_ignored() -> None:
    """A record written by a newer release (extra keys) is still read, not quarantined."""
    record = _record(surprise=1)
    record["client"]["surprise"] = 1
    record["recipients"][0]["surprise"] = 1
    envelope = Envelope.from_json(json.dumps(record).encode())
    del record["surprise"], record["client"]["surprise"], record["recipients"][0]["surprise"]
    assert envelope == Envelope.from_json(json.dumps(record).encode())


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"null",
        b"[]",
        b"42",
        b'"text"',
        b"\xff\xfe",
        b"{}",
        b'{"version": 1}',
        b'{"version": 1, "recipients": "bob@example.net"}',
        b'{"version": 1, "recipients": [null]}',
    ],
)
def test_garbage_rejected(raw: bytes) -> None:
    _rejects(raw)


@pytest.mark.parametrize(
    "changes",
    [
        {"size": "42"},
        {"arrival": "yesterday"},
        {"mail_params": ["SIZE", "42"]},
    ],
)
def test_wrong_types_rejected(changes: dict[str, Any]) -> None:
    """A record whose fields have the wrong JSON type is malformed too: later stages do
    arithmetic on size and times and must not meet a string there."""
    _rejects(_record(**changes))
