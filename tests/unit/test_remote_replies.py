"""How remote replies and connection failures become Replies (errors.remote_reply)."""

from __future__ import annotations

import aiosmtplib

from smtprelay.delivery import errors
from smtprelay.replies import Reply


def test_enhanced_code_is_taken_from_the_remote_text() -> None:
    assert errors.remote_reply(550, "5.1.1 <x@y>: no such user") == Reply(
        550, "5.1.1", "<x@y>: no such user"
    )


def test_missing_or_inconsistent_enhanced_code_gets_the_class_default() -> None:
    assert errors.remote_reply(451, "try again later") == Reply(451, "4.0.0", "try again later")
    # A 5.x.x code on a 4xx reply contradicts the basic code: the basic code wins.
    assert errors.remote_reply(450, "5.7.1 denied").enhanced == "4.0.0"
    assert errors.remote_reply(250, "Ok") == Reply(250, "2.0.0", "Ok")


def test_timeouts_and_lost_connections_are_temporary() -> None:
    timed_out = errors.transport_reply(aiosmtplib.SMTPReadTimeoutError("slow"))
    lost = errors.transport_reply(aiosmtplib.SMTPServerDisconnected("gone"))
    assert timed_out.is_temporary and timed_out.enhanced == "4.4.2"
    assert lost.is_temporary and "gone" in lost.text
