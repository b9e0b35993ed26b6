"""smtprelay.web.tokens: the bearer tokens file shared by the daemon and the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smtprelay.web.tokens import TokenFile, parse_tokens


def test_parse_skips_comments_and_blank_lines() -> None:
    text = "# ops team\n\n  tok-one  \n#tok-disabled\ntok-two\r\n"
    assert parse_tokens(text) == ["tok-one", "tok-two"]


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
