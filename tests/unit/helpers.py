"""Small builders shared by the unit tests."""

from __future__ import annotations

from typing import Any

from smtprelay import ids
from smtprelay.envelope import Client, Envelope, Recipient


def make_envelope(qid: str | None = None, *, size: int = 0, **overrides: Any) -> Envelope:
    fields: dict[str, Any] = dict(
        qid=qid or ids.new_id(),
        sender="app@example.com",
        recipients=[Recipient("bob@example.net"), Recipient("carol@example.org")],
        client=Client(ip="192.0.2.5", port=40000, helo="client.example"),
        arrival=1_700_000_000.25,
        size=size,
        mail_params={"SIZE": str(size)},
    )
    fields.update(overrides)
    return Envelope(**fields)
