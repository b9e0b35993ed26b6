"""smtprelay.cli, run as the operator runs it: ``python -m smtprelay ...`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import bcrypt
import pytest

from smtprelay.inbound.auth import read_users

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"


def smtprelay(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "SMTPRELAY_CONFIG"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "smtprelay", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=full_env,
        timeout=60,
    )


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "smtprelay.toml"
    path.write_text(
        f'[server]\nhostname = "relay.test"\ntimeout = "45s"\nlisten = ["[::1]:2526"]\n'
        f'[auth]\nusers_file = "{tmp_path / "users"}"\n'
        f'[spool]\ndir = "{tmp_path / "spool"}"\n'
    )
    return path


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- check-config -----------------------------------------------------------------------


def test_check_config_prints_toml(conf: Path) -> None:
    result = smtprelay("check-config", "-c", str(conf))
    assert result.returncode == 0, result.stderr
    printed = tomllib.loads(result.stdout)
    assert printed["server"]["hostname"] == "relay.test"
    assert printed["server"]["timeout"] == "45s"
    assert printed["server"]["listen"] == ["[::1]:2526"]
    assert printed["tls"]["min_version"] == "TLSv1.2"
    assert set(printed) >= {"server", "tls", "auth", "relay", "spool", "log"}


def test_check_config_from_environment(conf: Path) -> None:
    result = smtprelay("check-config", env={"SMTPRELAY_CONFIG": str(conf)})
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout)["server"]["hostname"] == "relay.test"


def test_config_option_before_the_command(conf: Path, tmp_path: Path) -> None:
    """`smtprelay -c FILE COMMAND` is accepted by the parser (it is in the top-level
    --help), so it must use FILE -- not silently fall back to $SMTPRELAY_CONFIG or
    /etc/smtprelay/smtprelay.toml."""
    other = tmp_path / "other.toml"
    other.write_text('[server]\nhostname = "from-env.test"\n')
    result = smtprelay("-c", str(conf), "check-config", env={"SMTPRELAY_CONFIG": str(other)})
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout)["server"]["hostname"] == "relay.test"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\ntimeout = "5x"\n', "[server] timeout"),
        ("[server]\nfoo = 1\n", "[server] foo"),
        ("[bogus]\n", "[bogus]"),
        ('[relay]\ntrusted_networks = ["10.0.0.0/33"]\n', "[relay] trusted_networks"),
        ('[tls]\nmin_version = "SSLv3"\n', "[tls] min_version"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_config_exit_2_one_line(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = smtprelay("check-config", "-c", str(path))
    assert result.returncode == 2
    line = _one_line_error(result)
    assert key in line
    assert result.stdout == ""


def test_missing_config_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = smtprelay("check-config", "-c", str(missing))
    assert result.returncode == 2
    line = _one_line_error(result)
    assert str(missing) in line


def test_no_command_is_usage_error() -> None:
    result = smtprelay()
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


# --- users -------------------------------------------------------------------------------


def test_user_add_list_del(conf: Path, tmp_path: Path) -> None:
    users_file = tmp_path / "users"
    added = smtprelay("user", "add", "app1", "-c", str(conf), stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert "added" in added.stdout and "app1" in added.stdout
    hashed = read_users(users_file)["app1"]
    assert bcrypt.checkpw(PASSWORD.encode(), hashed)
    assert PASSWORD not in users_file.read_text()
    assert PASSWORD not in added.stdout + added.stderr

    listed = smtprelay("user", "list", "-c", str(conf))
    assert listed.returncode == 0
    assert listed.stdout.split() == ["app1"]

    changed = smtprelay("user", "add", "app1", "-c", str(conf), stdin="other-pw\r\n")
    assert changed.returncode == 0, changed.stderr
    assert "updated" in changed.stdout
    assert bcrypt.checkpw(b"other-pw", read_users(users_file)["app1"])

    removed = smtprelay("user", "del", "app1", "-c", str(conf))
    assert removed.returncode == 0, removed.stderr
    assert read_users(users_file) == {}
    assert smtprelay("user", "list", "-c", str(conf)).stdout == ""


def test_user_add_long_password(conf: Path, tmp_path: Path) -> None:
    """bcrypt uses 72 bytes; like htpasswd -B, the hash is of the first 72, with a note."""
    long = ("0123456789" * 10)[:100]
    added = smtprelay("user", "add", "app1", "-c", str(conf), stdin=long + "\n")
    assert added.returncode == 0, added.stderr
    assert "Traceback" not in added.stderr
    assert (
        added.stderr == "smtprelay: note: only the first 72 bytes of the password count "
        "(bcrypt; htpasswd -B does the same)\n"
    )
    hashed = read_users(tmp_path / "users")["app1"]
    assert bcrypt.checkpw(long[:72].encode(), hashed)
    assert not bcrypt.checkpw(long[:71].encode(), hashed)
    short = smtprelay("user", "add", "app2", "-c", str(conf), stdin=long[:72] + "\n")
    assert short.returncode == 0 and short.stderr == ""


def test_user_add_keeps_other_users(conf: Path, tmp_path: Path) -> None:
    users_file = tmp_path / "users"
    users_file.write_text("zed:" + bcrypt.hashpw(b"z", bcrypt.gensalt(4)).decode() + "\n")
    result = smtprelay("user", "add", "amy", "-c", str(conf), stdin="pw\n")
    assert result.returncode == 0, result.stderr
    assert sorted(read_users(users_file)) == ["amy", "zed"]
    assert smtprelay("user", "list", "-c", str(conf)).stdout.split() == ["amy", "zed"]


def test_user_del_unknown_exit_1(conf: Path) -> None:
    result = smtprelay("user", "del", "ghost", "-c", str(conf))
    assert result.returncode == 1
    assert "ghost" in _one_line_error(result)


def test_user_add_without_users_file_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nhostname = "relay.test"\n')
    result = smtprelay("user", "add", "app1", "-c", str(path), stdin="pw\n")
    assert result.returncode == 2
    assert "[auth] users_file" in _one_line_error(result)


def test_user_add_empty_password_refused(conf: Path, tmp_path: Path) -> None:
    result = smtprelay("user", "add", "app1", "-c", str(conf), stdin="\n")
    assert result.returncode == 1
    _one_line_error(result)
    assert read_users(tmp_path / "users") == {}


def test_user_add_invalid_name(conf: Path, tmp_path: Path) -> None:
    result = smtprelay("user", "add", "bad:name", "-c", str(conf), stdin="pw\n")
    assert result.returncode != 0
    _one_line_error(result)
    assert read_users(tmp_path / "users") == {}


def test_password_is_never_taken_from_argv(conf: Path, tmp_path: Path) -> None:
    result = smtprelay("user", "add", "app1", PASSWORD, "-c", str(conf), stdin="")
    assert result.returncode == 2  # usage error: no such positional argument
    assert not (tmp_path / "users").exists() or read_users(tmp_path / "users") == {}


def test_user_list_broken_users_file_exit_1(conf: Path, tmp_path: Path) -> None:
    (tmp_path / "users").write_text("garbage line\n")
    result = smtprelay("user", "list", "-c", str(conf))
    assert result.returncode == 1
    assert "line 1" in _one_line_error(result)


def test_user_add_non_ascii_name_never_tracebacks(conf: Path, tmp_path: Path) -> None:
    """validate_name() accepts any non-space name, SASL user names are UTF-8 (RFC 4616);
    either the user is stored, or the command refuses the name in one line."""
    result = smtprelay("user", "add", "j\u00f6rg", "-c", str(conf), stdin="pw\n")
    if result.returncode == 0:
        assert "j\u00f6rg" in read_users(tmp_path / "users")
    else:
        assert result.returncode in (1, 2)
        _one_line_error(result)
