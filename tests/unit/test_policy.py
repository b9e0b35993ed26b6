"""smtprelay.inbound.policy: who may relay, which domains, how many recipients."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay import config, replies
from smtprelay.inbound.policy import Policy


def make_policy(max_recipients: int = 100, **relay: Any) -> Policy:
    return Policy(config.parse({"relay": relay}).relay, max_recipients)


# --- trusted networks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "trusted"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped, as a dual-stack socket reports it
        ("::ffff:7f00:1", True),
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("2001:db8:0:1::5", True),
        ("fe80::1%eth0", False),
        ("192.0.2.1", False),
        ("::ffff:192.0.2.1", False),
        ("::2", False),
        ("2001:db9::1", False),
        ("11.0.0.0", False),
        ("unknown", False),
        ("", False),
        ("127.0.0.1:25", False),
    ],
)
def test_trusted_networks(ip: str, trusted: bool) -> None:
    policy = make_policy(trusted_networks=["127.0.0.0/8", "::1/128", "10.0.0.0/8", "2001:db8::/32"])
    assert policy.is_trusted(ip) is trusted


def test_default_trusts_loopback_only() -> None:
    policy = Policy(config.parse({}).relay, 100)
    assert policy.is_trusted("127.0.0.1")
    assert policy.is_trusted("::1")
    assert policy.is_trusted("::ffff:127.0.0.1")
    assert not policy.is_trusted("192.168.1.1")
    assert not policy.is_trusted("::ffff:192.168.1.1")


def test_empty_trusted_networks_trusts_nobody() -> None:
    policy = make_policy(trusted_networks=[])
    assert not policy.is_trusted("127.0.0.1")
    assert not policy.is_trusted("::1")


@given(st.ip_addresses(v=4))
def test_mapped_address_same_answer_as_ipv4(ip: object) -> None:
    policy = make_policy(trusted_networks=["10.0.0.0/8", "192.0.2.0/24", "127.0.0.0/8"])
    assert policy.is_trusted(f"::ffff:{ip}") == policy.is_trusted(str(ip))


# --- relay decision -------------------------------------------------------------------------


def test_relay_denied_without_auth_or_trust() -> None:
    policy = make_policy()
    reply = policy.check_recipient("x@example.org", may_relay=False, count=0)
    assert reply == replies.RELAY_DENIED
    assert reply is not None and reply.code in (550, 554) and reply.enhanced == "5.7.1"
    assert "Relay access denied" in reply.text


def test_relay_denied_even_for_allowed_domains() -> None:
    policy = make_policy(allowed_recipient_domains=["example.org"])
    assert policy.check_recipient("x@example.org", may_relay=False, count=0) == (
        replies.RELAY_DENIED
    )


def test_relay_allowed() -> None:
    assert make_policy().check_recipient("x@example.org", may_relay=True, count=0) is None


# --- allow-lists ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("a@example.com", True),
        ("a@EXAMPLE.com", True),
        ("a@example.com.", True),
        ("a@mail.example.com", False),  # "example.com" is exact only
        ("a@example.org", False),
        ("a@sub.example.org", True),  # ".example.org" covers subdomains
        ("a@deep.sub.example.org", True),
        ("a@badexample.org", False),
        ("a@example.org.evil.test", False),
        ("a@notexample.com", False),
        ('"x@example.com"@evil.test', False),
    ],
)
def test_sender_domain_allow_list(address: str, allowed: bool) -> None:
    policy = make_policy(allowed_sender_domains=["example.com", ".example.org"])
    reply = policy.check_sender(address)
    if allowed:
        assert reply is None
    else:
        assert reply == replies.SENDER_DOMAIN_DENIED
        assert reply is not None and reply.code // 100 == 5 and reply.enhanced == "5.7.1"


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("a@example.com", True),
        ("a@mail.example.com", False),
        ("a@sub.example.org", True),
        ("a@example.org", False),
        ("a@badexample.org", False),
        ("a@[192.0.2.1]", False),
    ],
)
def test_recipient_domain_allow_list(address: str, allowed: bool) -> None:
    policy = make_policy(allowed_recipient_domains=["example.com", ".example.org"])
    reply = policy.check_recipient(address, may_relay=True, count=0)
    assert reply == (None if allowed else replies.RECIPIENT_DOMAIN_DENIED)


def test_allow_lists_empty_allow_everything() -> None:
    policy = make_policy()
    assert policy.check_sender("a@anything.example") is None
    assert policy.check_recipient("a@anything.example", may_relay=True, count=0) is None


def test_null_sender_allowed_with_sender_allow_list() -> None:
    policy = make_policy(allowed_sender_domains=["example.com"])
    assert policy.check_sender("") is None


# --- recipient count ------------------------------------------------------------------------


def test_recipient_count_limit() -> None:
    policy = make_policy(max_recipients=3)
    for count in range(3):
        assert policy.check_recipient("a@example.org", may_relay=True, count=count) is None
    for count in (3, 4, 1000):
        reply = policy.check_recipient("a@example.org", may_relay=True, count=count)
        assert reply == replies.TOO_MANY_RECIPIENTS
        assert reply is not None and reply.code == 452 and reply.enhanced == "4.5.3"


@given(st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=100))
def test_recipient_limit_property(limit: int, count: int) -> None:
    reply = make_policy(max_recipients=limit).check_recipient(
        "a@b.example", may_relay=True, count=count
    )
    assert (reply is None) == (count < limit)
