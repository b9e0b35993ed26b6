"""smtprelay.sendmail.relay and submit without a relay: where the message goes, replies
for a person, and the ENVID's xtext."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay import defaults
from smtprelay.dsnparams import xtext_decode, xtext_encode
from smtprelay.sendmail.exits import EX_CONFIG, SubmissionFailed
from smtprelay.sendmail.relay import find_relay, is_temporary, reply_text


def test_an_unreadable_configuration_means_the_default_socket(tmp_path: Path) -> None:
    relay = find_relay(tmp_path / "missing.toml")
    assert relay.socket == defaults.DEFAULT_LOCAL_SOCKET and relay.settings is None
    assert relay.unreadable is not None and "No such file" in relay.unreadable
    assert relay.max_recipients == defaults.DEFAULT_MAX_RECIPIENTS


def test_a_readable_configuration_names_socket_or_listeners(tmp_path: Path) -> None:
    path = tmp_path / "smtprelay.toml"
    path.write_text('[server]\nlocal_socket = "/tmp/x.sock"\nmax_recipients = 7\n')
    relay = find_relay(path)
    assert (relay.socket, relay.unreadable, relay.max_recipients) == ("/tmp/x.sock", None, 7)
    path.write_text('[server]\nlocal_socket = ""\n')
    relay = find_relay(path)
    assert relay.socket is None and relay.settings is not None


def test_an_invalid_configuration_is_exit_78(tmp_path: Path) -> None:
    path = tmp_path / "smtprelay.toml"
    path.write_text("[server]\nmax_recipients = -1\n")
    with pytest.raises(SubmissionFailed, match=r"configuration error: .*max_recipients") as error:
        find_relay(path)
    assert error.value.code == EX_CONFIG


def test_replies_on_one_line() -> None:
    assert reply_text(550, b"5.1.1 no such user\nsecond line") == (
        "550 5.1.1 no such user; second line"
    )
    assert reply_text(421, "") == "421"
    assert is_temporary(451) and is_temporary(-1) and not is_temporary(554)


def test_xtext_encoding() -> None:
    assert xtext_encode("id+1=x y") == "id+2B1+3Dx+20y"


@given(st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=127)))
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert encoded.isascii() and " " not in encoded
    assert xtext_decode(encoded) == text
