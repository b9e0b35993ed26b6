"""The submission API's JSON model, its JSON Pointers and the MIME it builds: properties
(hypothesis) and the edge cases beside them."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from smtprelay.web import compose
from smtprelay.web.messagemodel import (
    Attachment,
    Mailbox,
    MessageIn,
    cross_checks,
    field_errors,
    pointer_of,
    xtext,
)

GOOD = st.sampled_from(["a@example.com", "b.c@sub.example.org", "ü@exämple.de"])
BAD = st.sampled_from(["", "no-at", "a@", "@b", "a b@c.d", "a@b..c", 5, None, ["x"]])


def errors_of(doc: dict[str, Any], prefix: tuple[str | int, ...] = ()) -> set[str]:
    try:
        MessageIn.model_validate(doc)
    except ValidationError as e:
        return {f.pointer for f in field_errors(e, doc, prefix)}
    return set()


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=8), GOOD, BAD)
def test_every_bad_recipient_is_named_by_its_index(
    shape: list[tuple[bool, bool]], good: str, bad: Any
) -> None:
    # Each recipient as a string or as {"email": ...}, good or bad.
    to: list[Any] = []
    wanted = set()
    for i, (ok, as_object) in enumerate(shape):
        value = good if ok else bad
        to.append({"email": value} if as_object else value)
        if not ok:
            wanted.add(f"/to/{i}/email" if as_object else f"/to/{i}")
    doc = {"from": good, "to": to, "text": "x"}
    assert errors_of(doc) == wanted
    assert errors_of(doc, ("messages", 3)) == {"/messages/3" + p for p in wanted}


@given(
    st.lists(
        st.sampled_from(
            ["subject", "text", "tags", "metadata", "colour", "send_at", "attachments", "headers"]
        ),
        unique=True,
    )
)
def test_errors_of_several_fields_are_all_reported(fields: list[str]) -> None:
    wrong: dict[str, Any] = {
        "subject": 1,
        "text": ["x"],
        "tags": "t",
        "metadata": {"a": 1},
        "colour": "blue",
        "send_at": "2030-01-01T00:00:00",
        "attachments": [{"filename": "f", "content": "%"}],
        "headers": {"X-A": 5},
    }
    where = {
        "subject": "/subject",
        "text": "/text",
        "tags": "/tags",
        "metadata": "/metadata/a",
        "colour": "/colour",
        "send_at": "/send_at",
        "attachments": "/attachments/0/content",
        "headers": "/headers/X-A",
    }
    doc = {"from": "a@b.example", "to": ["c@d.example"], "html": "x"}
    doc.update({f: wrong[f] for f in fields})
    assert errors_of(doc) == {where[f] for f in fields}


@given(
    st.lists(st.one_of(st.text(max_size=5), st.integers(0, 5)), max_size=6),
    st.recursive(
        st.one_of(st.none(), st.integers(), st.text(max_size=3)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=10,
    ),
)
def test_a_pointer_follows_the_document_as_far_as_it_goes(
    loc: list[str | int], document: Any
) -> None:
    result = pointer_of(tuple(loc), document)
    parts = [p.replace("~1", "/").replace("~0", "~") for p in result.split("/")[1:]]
    assert parts == [str(p) for p in loc[: len(parts)]]
    node = document
    for i, part in enumerate(loc[: len(parts)]):
        if isinstance(node, dict):
            if part not in node:
                assert i == len(parts) - 1  # a missing member: named, and the end
                break
            node = node[part]
        else:
            node = node[int(part)]


def test_cross_field_rules() -> None:
    doc: dict[str, Any] = {"raw": "eA==", "subject": "s", "attachments": [], "to": []}
    assert {e.pointer for e in cross_checks(doc)} == {"/subject", "/attachments", "/to"}
    doc = {"template": {"name": "t"}, "html": "h", "to": ["a@b.c"], "from": "a@b.c"}
    assert {e.pointer for e in cross_checks(doc)} == {"/html"}
    doc = {"to": ["a@b.c"], "variables": {}, "headers": {"Received": "x", "Bad Name": "y"}}
    assert {e.pointer for e in cross_checks(doc)} == {
        "/text",
        "/variables",
        "/headers/Received",
        "/headers/Bad Name",
        "/from",
    }


@pytest.mark.parametrize(
    "text", ["2030-01-01T09:00:00Z", "2030-01-01T09:00:00.5+01:00", "2030-01-01 09:00:00-05:30"]
)
def test_send_at_with_an_offset(text: str) -> None:
    model = MessageIn.model_validate(
        {"from": "a@b.c", "to": ["c@d.e"], "text": "x", "send_at": text}
    )
    assert model.send_at is not None and model.send_at.tzinfo is not None


def test_xtext_is_what_dsnparams_decodes() -> None:
    from smtprelay.dsnparams import xtext_decode

    for text in ["plain", "a+b=c", "batch 7", "ümlaut"]:
        assert xtext_decode(xtext(text)) == text


PRINTABLE = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=60
).filter(lambda s: " ".join(s.split()) == s)
# (Runs of white space in a header are folding white space: they may come back as one.)


@settings(max_examples=30, deadline=None)
@given(
    PRINTABLE,
    PRINTABLE,
    st.text(max_size=300),
    st.one_of(st.none(), st.text(max_size=200)),
    st.lists(st.tuples(PRINTABLE, st.binary(max_size=2000)), max_size=3),
    st.booleans(),
)
def test_mime_round_trip(
    subject: str, name: str, text: str, html: str | None, files: list[tuple[str, bytes]], utf8: bool
) -> None:
    sender = Mailbox(email="ü@exämple.de" if utf8 else "app@example.com", name=name)
    data = compose.build(
        sender=sender,
        to=[Mailbox(email="bob@example.net")],
        cc=[],
        reply_to=[],
        content=compose.Content(subject, text, html),
        headers={"X-Tag": "t"},
        attachments=[Attachment(filename=f, content=b) for f, b in files],
        utf8=utf8,
    )
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")
    if not utf8:
        assert data.isascii()
    # An SMTPUTF8 header is raw UTF-8: read as text, as an SMTPUTF8 receiver does.
    msg = email.message_from_string(data.decode("utf-8"), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert str(msg["Subject"]) == subject
    # The header registry decodes adjacent RFC 2047 words that split a run of text with
    # a space between them (a CPython parser quirk; RFC 2047 6.2 says the space goes):
    # where the name was folded into several words, it is compared without spaces.
    raw_from = email.message_from_string(data.decode("utf-8"), policy=email.policy.compat32)
    words = str(raw_from["From"]).count("=?")
    shown = msg["From"].addresses[0]
    if words > 1:
        assert shown.display_name.replace(" ", "") == name.replace(" ", "")
    else:
        assert shown.display_name == name
    assert shown.addr_spec == sender.email
    body = msg.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n").replace(
        "\r", "\n"
    ) + ("" if text.endswith(("\n", "\r")) else "\n")
    if html is not None:
        part = msg.get_body(("html",))
        assert part is not None
    found = [(a.get_filename(), a.get_content()) for a in msg.iter_attachments()]
    assert found == files
