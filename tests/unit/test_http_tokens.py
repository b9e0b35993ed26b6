"""smtprelay.web.tokens: the bearer tokens file shared by the daemon and the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smtprelay.web.tokens import SCOPES, TokenFile, hash_secret, parse_tokens, usable_by_cli


def test_parse_skips_comments_and_blank_lines() -> None:
    text = "# ops team\n\n  tok-one  \n#tok-disabled\ntok-two\r\n"
    tokens = parse_tokens(text)
    assert [t.secret for t in tokens] == ["tok-one", "tok-two"]
    assert [t.name for t in tokens] == ["line-3", "line-5"]
    assert all(t.scopes == SCOPES and t.sender_domains is None for t in tokens)


def test_named_token_with_scopes_senders_and_a_hash(tmp_path: Path) -> None:
    digest = hash_secret("s3cret-erp")
    path = tmp_path / "tokens"
    path.write_text(
        f"erp {digest} scopes=send,read senders=Example.com,example.org\nops tok-ops scopes=admin\n"
    )
    tokens = TokenFile(path)
    erp = tokens.check("s3cret-erp")
    assert erp is not None and erp.name == "erp" and erp.hashed
    assert erp.allows("send") and erp.allows("read") and not erp.allows("admin")
    assert erp.may_send_from("EXAMPLE.COM") and not erp.may_send_from("example.net")
    assert tokens.check(digest) is None  # the hash itself is not a token
    ops = tokens.check("tok-ops")
    assert ops is not None and ops.scopes == {"admin"} and ops.may_send_from("any.where")
    # The CLI can use only a token written in clear that has scope admin.
    assert usable_by_cli(parse_tokens(path.read_text())) == ["tok-ops"]


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("app tok scopes=send,fly", "unknown scope fly"),
        ("app tok scopes=", "expected scopes=a,b"),
        ("app tok colour=blue", "unknown option 'colour'"),
        ("app sha256:abc", "64 lower-case hex digits"),
    ],
)
def test_a_malformed_line_is_named(line: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=f"line 2: .*{complaint}"):
        parse_tokens("# header\n" + line + "\n")


def test_check_and_reread_on_change(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("tok-one\n")
    tokens = TokenFile(path)
    assert tokens.check("tok-one") and not tokens.check("tok-two")
    assert not tokens.check("tok-on") and not tokens.check("")
    path.write_text("# revoked tok-one\ntok-two\n")
    os.utime(path, ns=(1, 1))  # a new mtime even within the same clock tick
    assert tokens.check("tok-two") and not tokens.check("tok-one")
    path.unlink()
    assert not tokens.check("tok-two")
    assert tokens.problem is not None and "cannot be read" in tokens.problem


def test_no_file_configured_accepts_nothing() -> None:
    tokens = TokenFile(None)
    assert not tokens.check("anything")
    assert tokens.problem == "no tokens are configured: set [http] tokens_file"


def test_missing_file_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        TokenFile(tmp_path / "absent")


def test_a_token_that_is_not_utf8_is_refused_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("tok-one\n")
    tokens = TokenFile(path)
    # aiohttp hands header bytes that are not UTF-8 over as surrogate escapes.
    presented = b"\xff\xfetok-one".decode("utf-8", "surrogateescape")
    assert not tokens.check(presented)
    assert tokens.check("tok-one")
