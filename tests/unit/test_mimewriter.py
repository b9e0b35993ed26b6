"""The fast MIME writer against EmailMessage: what the ``email`` package parses from
either is the same (headers, structure, parameters, decoded content), and the common
shapes are written by the fast writer, not left to EmailMessage."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from smtprelay.web import compose, mimewriter
from smtprelay.web.messagemodel import Attachment, Mailbox

# What a header or a name may hold after the model's checks (no control characters).
HEADER_TEXT = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=120
)
WORDS = st.lists(
    st.sampled_from(["Grüße", "aus", "Köln", "hello", "=?", "a", "x" * 70, "日本語", '"q"', "\\"]),
    min_size=1,
    max_size=12,
).map(" ".join)
NAMES = st.one_of(
    st.none(),
    st.sampled_from(["", "Ann", "Ann Ö", 'Zed "Q", Jr', "O'Brien", "Jörg Müller", "a.b"]),
    HEADER_TEXT,
)
BODIES = st.one_of(
    st.none(),
    st.text(max_size=400),
    st.sampled_from(["", "hello\n", "x" * 200, "line\r\n.\r\nend \n", "äöü " * 50, "日本" * 40]),
)
FILENAMES = st.one_of(
    st.sampled_from(["a.pdf", "Rechnung März.pdf", "x" * 200, 'q"uote.txt', " lead.txt"]),
    HEADER_TEXT,
)
ATTACHMENTS = st.lists(
    st.builds(
        Attachment,
        filename=FILENAMES,
        content_type=st.sampled_from(
            ["application/pdf", "text/plain", "image/PNG", "message/rfc822", "application/x-y"]
        ),
        content=st.binary(max_size=300),
        content_id=st.one_of(st.none(), st.sampled_from(["c1@x", "logo", "a b"])),
    ),
    max_size=3,
)


def boxes(names: list[str | None]) -> list[Mailbox]:
    return [Mailbox(email=f"user{i}@example.com", name=n) for i, n in enumerate(names)]


def parsed(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def shape(msg: EmailMessage) -> list[Any]:
    """What a reader of the message sees, except the header values (compared with the
    input instead, see below): the header names other than the MIME ones (in order),
    and per part its type, parameters, disposition, file name, Content-ID and decoded
    content."""
    out: list[Any] = [
        name.lower()
        for name in msg
        if name.lower() not in ("content-type", "content-transfer-encoding", "mime-version")
    ]
    for part in msg.walk():
        assert isinstance(part, EmailMessage)
        item: list[Any] = [
            part.get_content_type(),
            part.get_content_charset(),
            part.get_content_disposition(),
            part.get_filename(),
            part.get("Content-ID"),
        ]
        if not part.is_multipart():
            item.append(part.get_payload(decode=True))
            if part.get_content_maintype() == "text" and part.get_content_charset():
                item.append(part.get_content())
        out.append(item)
    return out


def both(**kw: Any) -> tuple[bytes | None, bytes]:
    content = compose.Content(kw.pop("subject"), kw.pop("text"), kw.pop("html"))
    fast = mimewriter.build(subject=content.subject, text=content.text, html=content.html, **kw)
    slow = compose.build_email(content=content, **kw)
    return fast, slow


@settings(max_examples=300, deadline=None)
@given(
    subject=st.one_of(st.none(), HEADER_TEXT, WORDS),
    sender_name=NAMES,
    to_names=st.lists(NAMES, min_size=1, max_size=6),
    cc_names=st.lists(NAMES, max_size=3),
    text=BODIES,
    html=BODIES,
    header=st.one_of(st.none(), HEADER_TEXT, WORDS),
    header_name=st.sampled_from(["X-Tag", "List-Unsubscribe", "X-Long-Header-Name-" + "y" * 40]),
    attachments=ATTACHMENTS,
)
@example(
    subject="bench 1",
    sender_name=None,
    to_names=[None],
    cc_names=[],
    text="The quick brown fox. " * 90,
    html=None,
    header=None,
    header_name="X-Tag",
    attachments=[],
)
def test_the_fast_writer_parses_as_email_message_does(
    subject: str | None,
    sender_name: str | None,
    to_names: list[str | None],
    cc_names: list[str | None],
    text: str | None,
    html: str | None,
    header: str | None,
    header_name: str,
    attachments: list[Attachment],
) -> None:
    fast, slow = both(
        sender=Mailbox(email="app@example.com", name=sender_name),
        to=boxes(to_names),
        cc=boxes(cc_names),
        reply_to=[],
        subject=subject,
        text=text,
        html=html,
        headers={} if header is None else {header_name: header},
        attachments=attachments,
        utf8=False,
    )
    if fast is None:
        return
    assert fast.isascii()
    assert all(len(line) <= 998 for line in fast.split(b"\r\n"))
    assert b"\n" not in fast.replace(b"\r\n", b"")
    assert fast.endswith(b"\r\n")
    assert shape(parsed(fast)) == shape(parsed(slow))
    # The header values are exactly what was asked for. (EmailMessage's folder does not
    # always manage that: it doubles or drops a space beside an encoded word, and
    # can encode the comma between two addresses, which merges them into one.)
    msg = parsed(fast)
    assert addresses(msg, "From") == [(sender_name or "", "app@example.com")]
    assert addresses(msg, "To") == expected(to_names)
    if cc_names:
        assert addresses(msg, "Cc") == expected(cc_names)
    if subject is not None:
        assert str(msg["Subject"]) == subject
    if header is not None:
        assert str(msg[header_name]) == header


def expected(names: list[str | None]) -> list[tuple[str, str]]:
    return [(box.name or "", box.email) for box in boxes(names)]


def addresses(msg: EmailMessage, name: str) -> list[tuple[str, str]]:
    return [(a.display_name, a.addr_spec) for a in msg[name].addresses]


COMMON: list[dict[str, str | None]] = [
    {"subject": "bench 1", "text": "x " * 900, "html": None},
    {"subject": "Grüße aus Köln", "text": "Hallo\nWelt", "html": "<p>Hallo</p>"},
    {"subject": "Ihre Rechnung", "text": None, "html": "<p>" + "ä" * 3000 + "</p>"},
    {"subject": "日本語の件名 " * 8, "text": "本文" * 100, "html": None},
]


def test_the_common_shapes_are_written_fast() -> None:
    files = [
        Attachment(filename="Rechnung März.pdf", content_type="application/pdf", content=b"%P"),
        Attachment(filename="logo.png", content_type="image/png", content=b"\x89", content_id="l"),
    ]
    for case in COMMON:
        for attachments in ([], files):
            for name in (None, "Ann", "Jörg Müller", 'Zed "Q", Jr'):
                fast, slow = both(
                    sender=Mailbox(email="app@example.com", name=name),
                    to=boxes(["Bob", None]),
                    cc=[],
                    reply_to=boxes(["Help Desk"]),
                    headers={"X-Campaign": "spring"},
                    attachments=attachments,
                    utf8=False,
                    **case,
                )
                assert fast is not None, (case, name)
                assert shape(parsed(fast)) == shape(parsed(slow))


def test_what_it_leaves_to_email_message() -> None:
    plain: dict[str, Any] = {
        "sender": Mailbox(email="app@example.com"),
        "to": boxes([None]),
        "cc": [],
        "reply_to": [],
        "subject": "s",
        "text": "t",
        "html": None,
        "headers": {},
        "attachments": [],
        "utf8": False,
    }
    assert mimewriter.build(**plain) is not None
    assert mimewriter.build(**{**plain, "utf8": True}) is None
    assert mimewriter.build(**{**plain, "headers": {"Message-ID": "<a@b>"}}) is None
    assert mimewriter.build(**{**plain, "subject": "two  spaces"}) is None
    assert mimewriter.build(**{**plain, "subject": "x" * 1000}) is None
    rfc822 = Attachment(filename="m.eml", content_type="message/rfc822", content=b"A: b\r\n\r\n")
    assert mimewriter.build(**{**plain, "attachments": [rfc822]}) is None
    long_name = Mailbox(email="app@example.com", name="Jörg " * 20)
    assert mimewriter.build(**{**plain, "sender": long_name}) is None
