"""smtprelay.inbound.address: MAIL FROM / RCPT TO paths and ESMTP parameters."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from smtprelay.inbound.address import PathError, domain_of, parse, parse_params

# --- generators of valid RFC 5321 mailboxes ---------------------------------------------

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
LETDIG = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

atoms = st.text(alphabet=ATEXT, min_size=1, max_size=10)
dot_atoms = st.lists(atoms, min_size=1, max_size=4).map(".".join)


def _quoted(*, space: bool) -> st.SearchStrategy[str]:
    # qtextSMTP is %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP is "\" %d32-126.
    # '>' is left out here; it has its own test below.
    qtext = [
        chr(c)
        for c in [32, 33, *range(35, 92), *range(93, 127)]
        if chr(c) != ">" and (space or c != 32)
    ]
    pair_chars = [chr(c) for c in range(32, 127) if chr(c) != ">" and (space or c != 32)]
    piece = st.one_of(st.sampled_from(qtext), st.sampled_from(pair_chars).map(lambda c: "\\" + c))
    return st.lists(piece, max_size=12).map(lambda p: '"' + "".join(p) + '"')


labels = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
literals = st.one_of(
    st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip}]"),
    st.just("[IPv6:::1]"),
    st.just("[192.0.2.1]"),
)
domains = st.one_of(hostnames, literals)


def mailboxes(*, space_in_quotes: bool = True) -> st.SearchStrategy[str]:
    local = st.one_of(dot_atoms, _quoted(space=space_in_quotes))
    return st.builds(lambda lp, d: f"{lp}@{d}", local, domains)


keywords = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,8}", fullmatch=True)
values = st.text(
    alphabet=[chr(c) for c in range(0x21, 0x7F) if chr(c) != "="], min_size=1, max_size=10
)
param_dicts = st.dictionaries(keywords.map(str.upper), st.one_of(st.just(""), values), max_size=4)


def _render(params: dict[str, str], lower: bool) -> str:
    words = []
    for key, value in params.items():
        key = key.lower() if lower else key
        words.append(f"{key}={value}" if value else key)
    return " ".join(words)


# --- valid paths parse to themselves ----------------------------------------------------


@given(mailboxes())
def test_bracketed_mailbox_parses_to_itself(address: str) -> None:
    for argument in (f"<{address}>", f" <{address}>", f"<{address}> "):
        parsed = parse(argument, allow_null=False, utf8=False)
        assert parsed.address == address
        assert parsed.params == {}


@given(mailboxes(space_in_quotes=False))
def test_unbracketed_mailbox_parses_to_itself(address: str) -> None:
    """The legacy form without <> (lenient). A space ends the path in that form, so
    quoted local parts with spaces are only generated for the bracketed form."""
    parsed = parse(address, allow_null=False, utf8=False)
    assert parsed.address == address
    assert parsed.params == {}


@given(mailboxes(space_in_quotes=False), param_dicts, st.booleans())
def test_mailbox_with_parameters(address: str, params: dict[str, str], lower: bool) -> None:
    rendered = _render(params, lower)
    for argument in (f"<{address}> {rendered}", f"{address} {rendered}"):
        parsed = parse(argument, allow_null=False, utf8=False)
        assert parsed.address == address
        assert parsed.params == params


@given(mailboxes())
def test_mailbox_parses_the_same_with_utf8(address: str) -> None:
    assert parse(f"<{address}>", allow_null=False, utf8=True).address == address


def test_known_good_examples() -> None:
    for address in [
        "user@example.com",
        "first.last+tag@sub.example.co.uk",
        '"john doe"@example.com',
        '"a\\"b"@example.com',
        '"a@b"@example.com',
        "user@[192.0.2.1]",
        "user@[IPv6:::1]",
        "user@[IPv6:2001:db8::1]",
        "x@a-b.example",
        "postmaster@localhost",
    ]:
        assert parse(f"<{address}>", allow_null=False, utf8=False).address == address


def test_quoted_local_part_may_contain_angle_bracket() -> None:
    """RFC 5321 qtextSMTP includes '>' (%d62); the unbracketed form already accepts it,
    and so does a '<' in the same place."""
    assert parse('"a<b"@example.com', allow_null=False, utf8=False).address == ('"a<b"@example.com')
    assert parse('<"a<b"@example.com>', allow_null=False, utf8=False).address == (
        '"a<b"@example.com'
    )
    assert parse('"a>b"@example.com', allow_null=False, utf8=False).address == ('"a>b"@example.com')
    assert parse('<"a>b"@example.com>', allow_null=False, utf8=False).address == (
        '"a>b"@example.com'
    )


@pytest.mark.parametrize(
    "bad",
    [
        "<@example.com>",
        "<user@>",
        "<user>",
        "<user@-example.com>",
        "<user@example-.com>",
        "<user@exa_mple.com>",
        "<a..b@example.com>",
        "<.a@example.com>",
        "<a.@example.com>",
        "<us er@example.com>",
        "<user@exam ple.com>",
        "<user@[300.1.1.1]>",
        "<user@[IPv6:zz::1]>",
        "<user@[192.0.2.1>",
        "<user@example.com",
        "<user@example.com>x",
        "<user@example.com>SIZE=1",
        "<<user@example.com>>",
        "<user@example.com> <other@example.com>",
        "user@example.com>",
        '<"unterminated@example.com>',
        '<"a"b"@example.com>',
        "<user@@example.com>",
        "<a@b@example.com>",
        "<" + "a" * 330 + "@example.com>",
        "<a@" + "b." * 130 + "com>",
    ],
)
def test_malformed_paths_rejected(bad: str) -> None:
    with pytest.raises(PathError):
        parse(bad, allow_null=True, utf8=True)


# --- CR, LF, NUL are never accepted ------------------------------------------------------


@given(
    mailboxes(),
    param_dicts,
    st.sampled_from(["\r", "\n", "\x00", "\r\n"]),
    st.integers(min_value=0),
    st.booleans(),
)
def test_cr_lf_nul_anywhere_rejected(
    address: str, params: dict[str, str], bad: str, where: int, utf8: bool
) -> None:
    argument = f"<{address}> {_render(params, False)}"
    where %= len(argument) + 1
    argument = argument[:where] + bad + argument[where:]
    with pytest.raises(PathError):
        parse(argument, allow_null=True, utf8=utf8)


def test_null_with_smuggled_newline_rejected() -> None:
    for argument in ("<>\r\nRCPT TO:<x@example.com>", "<\n>", "\x00<>"):
        with pytest.raises(PathError):
            parse(argument, allow_null=True, utf8=False)


# --- non-ASCII needs SMTPUTF8 ------------------------------------------------------------

non_ascii = st.characters(min_codepoint=0x80, exclude_categories=["Cs"])


@given(atoms, non_ascii, atoms, hostnames, st.booleans())
def test_non_ascii_local_part_needs_smtputf8(
    left: str, char: str, right: str, domain: str, bracket: bool
) -> None:
    address = f"{left}{char}{right}@{domain}"
    argument = f"<{address}>" if bracket else address
    assume(" " not in argument)
    with pytest.raises(PathError) as info:
        parse(argument, allow_null=False, utf8=False)
    assert info.value.non_ascii is True
    assert parse(argument, allow_null=False, utf8=True).address == address


@given(
    dot_atoms,
    st.text(
        alphabet=st.characters(
            min_codepoint=0x80, exclude_categories=["Cs", "Zs", "Zl", "Zp", "Cc"]
        ),
        min_size=1,
        max_size=5,
    ),
    hostnames,
)
def test_non_ascii_domain_needs_smtputf8(local: str, label: str, domain: str) -> None:
    address = f"{local}@{label}.{domain}"
    with pytest.raises(PathError) as info:
        parse(f"<{address}>", allow_null=False, utf8=False)
    assert info.value.non_ascii is True
    assert parse(f"<{address}>", allow_null=False, utf8=True).address == address


def test_non_ascii_examples() -> None:
    for address in [
        "j\u00f6rg@example.com",
        "user@b\u00fccher.example",
        "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a",
    ]:
        with pytest.raises(PathError) as info:
            parse(f"<{address}>", allow_null=False, utf8=False)
        assert info.value.non_ascii
        assert parse(f"<{address}>", allow_null=False, utf8=True).address == address


def test_plain_malformed_is_not_flagged_non_ascii() -> None:
    with pytest.raises(PathError) as info:
        parse("<a..b@example.com>", allow_null=False, utf8=False)
    assert info.value.non_ascii is False


# --- null path and source routes ----------------------------------------------------------


def test_null_path_only_when_allowed() -> None:
    assert parse("<>", allow_null=True, utf8=False).address == ""
    assert parse("<> SIZE=100", allow_null=True, utf8=False) == ("", {"SIZE": "100"})
    with pytest.raises(PathError):
        parse("<>", allow_null=False, utf8=False)
    with pytest.raises(PathError):
        parse("<> SIZE=100", allow_null=False, utf8=False)


@pytest.mark.parametrize(
    ("argument", "address"),
    [
        ("<@a,@b:user@c>", "user@c"),
        ("<@relay.example:user@example.com>", "user@example.com"),
        ("<@a.example,@b.example,@c.example:x@d.example> SIZE=5", "x@d.example"),
    ],
)
def test_source_route_dropped(argument: str, address: str) -> None:
    assert parse(argument, allow_null=False, utf8=False).address == address


def test_source_route_to_nothing_is_not_null() -> None:
    with pytest.raises(PathError):
        parse("<@a,@b:>", allow_null=True, utf8=False)


# --- parameters ---------------------------------------------------------------------------


def test_params_upper_case_dict() -> None:
    parsed = parse("<a@example.com> SIZE=100 BODY=8BITMIME SMTPUTF8", allow_null=False, utf8=True)
    assert parsed.params == {"SIZE": "100", "BODY": "8BITMIME", "SMTPUTF8": ""}
    assert parse_params("size=100 body=8bitmime smtputf8") == {
        "SIZE": "100",
        "BODY": "8bitmime",
        "SMTPUTF8": "",
    }
    assert parse_params("  SIZE=1   BODY=7BIT  ") == {"SIZE": "1", "BODY": "7BIT"}
    assert parse_params("") == {}


@pytest.mark.parametrize(
    "bad",
    [
        "SIZE=1 SIZE=2",
        "size=1 SIZE=2",
        "SMTPUTF8 smtputf8",
        "=x",
        "A=",
        "-A=1",
        "A=b=c",
        "A_B=1",
        "SIZE=\x7f",
        "K\u00e9Y=1",
    ],
)
def test_bad_params_raise(bad: str) -> None:
    with pytest.raises(PathError):
        parse_params(bad)
    with pytest.raises(PathError):
        parse(f"<a@example.com> {bad}", allow_null=False, utf8=False)


@given(param_dicts, st.booleans())
def test_params_round_trip(params: dict[str, str], lower: bool) -> None:
    assert parse_params(_render(params, lower)) == params


# --- domain_of ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("a@Example.COM", "example.com"),
        ('"x@y"@b.example.', "b.example"),
        ("a@[192.0.2.1]", "[192.0.2.1]"),
    ],
)
def test_domain_of(address: str, domain: str) -> None:
    assert domain_of(address) == domain


@pytest.mark.parametrize(
    "argument", ["<caf\udce9@example.com>", "<user@caf\udce9.example>", "<\ud83d@example.com>"]
)
def test_invalid_utf8_rejected_even_with_smtputf8(argument: str) -> None:
    """aiosmtpd decodes command arguments as UTF-8 with surrogateescape, so bytes that
    are not UTF-8 arrive as lone surrogates (b'caf\\xe9' -> 'caf\\udce9'). RFC 6531
    allows UTF-8 only; such a path must be refused at RCPT/MAIL time, not accepted and
    then fail to be stored."""
    with pytest.raises(PathError):
        parse(argument, allow_null=False, utf8=True)
