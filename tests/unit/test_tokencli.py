"""``smtprelay token add|list|remove``, run as the operator runs it (a subprocess)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from smtprelay.web.tokens import TokenFile

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "smtprelay.toml"
    path.write_text(
        f'[http]\ntokens_file = "{tmp_path / "tokens"}"\n[spool]\ndir = "{tmp_path / "spool"}"\n'
    )
    (tmp_path / "tokens").write_text("# operators\nops-token-0123456789\n")
    return path


def token(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMTPRELAY_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "smtprelay", "-c", str(conf), "token", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


def test_add_prints_the_secret_once_and_stores_only_its_hash(conf: Path) -> None:
    path = conf.parent / "tokens"
    added = token(conf, "add", "erp", "--scopes", "send,read", "--senders", "Example.com")
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    assert len(secret) >= 40 and "secret" in added.stderr
    text = path.read_text()
    assert text.startswith("# operators\nops-token-0123456789\nerp sha256:")
    assert secret not in text
    assert text.rstrip().endswith("scopes=send,read senders=example.com")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    found = TokenFile(path).check(secret)
    assert found is not None and found.name == "erp" and found.scopes == {"send", "read"}

    again = token(conf, "add", "erp", "--scopes", "read")
    assert again.returncode == 1 and "a token named erp exists" in again.stderr
    bad = token(conf, "add", "app", "--scopes", "send,fly")
    assert bad.returncode == 1 and "unknown scope fly" in bad.stderr

    listed = token(conf, "list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == [
        "line-2\tscopes=admin,cancel,read,send,templates\tsenders=any\tclear",
        "erp\tscopes=read,send\tsenders=example.com\thashed",
    ]
    assert secret not in listed.stdout and "ops-token" not in listed.stdout

    removed = token(conf, "remove", "erp")
    assert removed.returncode == 0
    assert path.read_text() == "# operators\nops-token-0123456789\n"
    assert TokenFile(path).check(secret) is None
    missing = token(conf, "remove", "erp")
    assert missing.returncode == 1 and "no token named erp" in missing.stderr


def test_without_a_tokens_file_the_key_is_named(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'[spool]\ndir = "{tmp_path}"\n')
    answer = token(conf, "list")
    assert answer.returncode == 2 and "[http] tokens_file" in answer.stderr
