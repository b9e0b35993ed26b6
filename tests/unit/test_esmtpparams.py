"""The ESMTP parameter rules of MAIL and RCPT, and the reply for each fault."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay import replies
from smtprelay.inbound import address, esmtpparams
from smtprelay.replies import Reply

MAX = 1000


def mail(
    params: dict[str, str], sender: str = "a@example.com", *, extended: bool = True
) -> Reply | None:
    return esmtpparams.check_mail(params, sender, extended=extended, max_message_size=MAX)


@given(st.integers(min_value=0, max_value=10 * MAX))
def test_size_is_refused_exactly_over_the_maximum(size: int) -> None:
    expected = replies.SIZE_EXCEEDED if size > MAX else None
    assert mail({"SIZE": str(size)}) == expected
    assert esmtpparams.size_hint({"SIZE": str(size)}) == size


@pytest.mark.parametrize("size", ["", "-1", "1e3", "0x10", " 5", "五"])
def test_size_must_be_digits(size: str) -> None:
    assert mail({"SIZE": size}) == replies.BAD_PARAMETER


def test_size_hint_without_size_is_one() -> None:
    assert esmtpparams.size_hint({}) == 1
    assert esmtpparams.size_hint({"SIZE": ""}) == 1


@pytest.mark.parametrize("body", ["7BIT", "8BITMIME", "8bitmime", "7bit"])
def test_body_types(body: str) -> None:
    assert mail({"BODY": body}) is None


@pytest.mark.parametrize("body", ["BINARYMIME", "", "8BIT"])
def test_other_body_types_are_refused(body: str) -> None:
    assert mail({"BODY": body}) == replies.BAD_PARAMETER


def test_smtputf8_takes_no_value_and_is_needed_for_a_non_ascii_sender() -> None:
    assert mail({"SMTPUTF8": ""}, "jörg@example.com") is None
    assert mail({"SMTPUTF8": "yes"}) == replies.BAD_PARAMETER
    assert mail({}, "jörg@example.com") == replies.SMTPUTF8_NOT_ADVERTISED
    assert esmtpparams.utf8({"SMTPUTF8": ""})
    assert not esmtpparams.utf8({})


@given(
    st.dictionaries(
        st.from_regex(r"[A-Z][A-Z0-9-]{0,10}", fullmatch=True), st.just("1"), min_size=1, max_size=4
    )
)
def test_unknown_keywords(params: dict[str, str]) -> None:
    unknown = not params.keys() <= esmtpparams.MAIL_PARAMS
    assert (mail(params) == replies.UNKNOWN_PARAMETER) == unknown
    unknown = not params.keys() <= esmtpparams.RCPT_PARAMS
    assert (esmtpparams.check_rcpt(params) == replies.UNKNOWN_PARAMETER) == unknown


@given(st.sampled_from(sorted(esmtpparams.MAIL_PARAMS)))
def test_no_parameter_after_helo(keyword: str) -> None:
    assert mail({keyword: ""}, extended=False) == replies.BAD_PARAMETER
    assert mail({}, extended=False) is None


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"RET": "FULL", "ENVID": "abc+2Bdef"}, None),
        ({"RET": "hdrs"}, None),
        ({"RET": "NONE"}, replies.BAD_PARAMETER),
        ({"ENVID": "a b"}, replies.BAD_PARAMETER),
        ({"ENVID": "x" * 101}, replies.BAD_PARAMETER),
    ],
)
def test_dsn_mail_parameters(params: dict[str, str], expected: Reply | None) -> None:
    assert mail(params) == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, None),
        ({"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;bob@example.net"}, None),
        ({"NOTIFY": "never"}, None),
        ({"NOTIFY": "NEVER,SUCCESS"}, replies.BAD_PARAMETER),
        ({"NOTIFY": "DELAY,DELAY"}, replies.BAD_PARAMETER),
        ({"ORCPT": "bob@example.net"}, replies.BAD_PARAMETER),
        ({"ORCPT": "rfc822;"}, replies.BAD_PARAMETER),
        ({"XFOO": "1"}, replies.UNKNOWN_PARAMETER),
    ],
)
def test_rcpt_parameters(params: dict[str, str], expected: Reply | None) -> None:
    assert esmtpparams.check_rcpt(params) == expected


@pytest.mark.parametrize(
    ("argument", "utf8", "mail_reply", "rcpt_reply"),
    [
        ("<a@b.example> SIZE", False, None, None),
        ("<a@b.example> =x", False, replies.BAD_PARAMETER, replies.BAD_PARAMETER),
        ("<a b@c.example>", False, replies.BAD_SENDER_SYNTAX, replies.BAD_RECIPIENT_SYNTAX),
        ("<jörg@b.example>", False, replies.BAD_SENDER_SYNTAX, replies.SMTPUTF8_NOT_ADVERTISED),
    ],
)
def test_replies_to_what_the_parser_refuses(
    argument: str, utf8: bool, mail_reply: Reply | None, rcpt_reply: Reply | None
) -> None:
    try:
        address.parse(argument, allow_null=False, utf8=utf8)
    except address.PathError as e:
        assert esmtpparams.mail_path_reply(e) == mail_reply
        assert esmtpparams.rcpt_path_reply(e) == rcpt_reply
    else:
        assert mail_reply is None and rcpt_reply is None
