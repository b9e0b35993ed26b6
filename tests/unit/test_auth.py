"""smtprelay.inbound.auth: the users file and credential checks."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.inbound import auth
from smtprelay.inbound.auth import Authenticator, UsersFileError, read_users, write_users

IP = "192.0.2.9"


def fast_hash(password: str) -> bytes:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


# --- the users file --------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("htpasswd") is None, reason="htpasswd (apache2-utils) missing")
def test_read_users_parses_htpasswd_output(tmp_path: Path) -> None:
    out = subprocess.run(
        ["htpasswd", "-nbB", "-C", "4", "app1", "s3cret pw"],
        check=True, capture_output=True, text=True,
    ).stdout
    path = tmp_path / "users"
    path.write_text("# made by htpasswd\n" + out)
    users = read_users(path)
    assert list(users) == ["app1"]
    assert users["app1"].startswith(b"$2y$04$")

    async def check() -> tuple[bool, bool]:
        a = Authenticator(path)
        return await a.verify(IP, "app1", b"s3cret pw"), await a.verify(IP, "app1", b"wrong")

    assert run(check()) == (True, False)


def test_read_users_comments_blanks_and_crlf(tmp_path: Path) -> None:
    a, b = fast_hash("a"), fast_hash("b")
    path = tmp_path / "users"
    path.write_bytes(b"# users\r\n\r\n  alice:" + a + b"  \r\n#bob:x\r\nbob:" + b + b"\r\n")
    assert read_users(path) == {"alice": a, "bob": b}


def test_read_users_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_users(tmp_path / "nope") == {}


@pytest.mark.parametrize(
    ("line", "number"),
    [
        ("alice", 3),
        ("alice:", 3),
        ("alice:plaintext-password", 3),
        (":$2b$04$" + "a" * 53, 3),
        ("al ice:$2b$04$" + "a" * 53, 3),
        ("alice:$2b$04$" + "a" * 52, 3),
        ("alice:$1$md5$crypt", 3),
        ("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", 3),
    ],
)
def test_malformed_line_names_line_number(tmp_path: Path, line: str, number: int) -> None:
    path = tmp_path / "users"
    good = "bob:" + fast_hash("x").decode()
    path.write_text(f"# header\n{good}\n{line}\n{good}\n")
    with pytest.raises(UsersFileError) as info:
        read_users(path)
    assert f"line {number}" in str(info.value)
    assert str(path) in str(info.value)
    assert "plaintext-password" not in str(info.value)  # never echo the secret part


def test_read_users_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"\xff\xfe:x\n")
    with pytest.raises(UsersFileError):
        read_users(path)


user_names = st.text(
    alphabet=st.characters(exclude_categories=["Cs", "Zs", "Zl", "Zp", "Cc"],
                           exclude_characters=":"),
    min_size=1, max_size=12,
).filter(lambda n: not n.startswith("#") and not any(c.isspace() for c in n))
fake_hashes = st.builds(
    lambda v, cost, rest: f"$2{v}${cost:02d}${rest}".encode(),
    st.sampled_from("aby"), st.integers(4, 31),
    st.text(alphabet="./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            min_size=53, max_size=53),
)


@settings(max_examples=50)
@given(st.dictionaries(user_names, fake_hashes, max_size=5))
def test_write_read_round_trip(users: dict[str, bytes]) -> None:
    """Every name validate_name() accepts can be stored and read back."""
    for name in users:
        auth.validate_name(name)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "sub" / "users"
        write_users(path, users)
        assert read_users(path) == users
        assert not [n for n in os.listdir(path.parent) if n.endswith(".tmp")]


def test_write_users_ascii_round_trip(tmp_path: Path) -> None:
    users = {"app1": fast_hash("a"), "app-2@example.com": fast_hash("b")}
    write_users(tmp_path / "users", users)
    assert read_users(tmp_path / "users") == users


@pytest.mark.parametrize("bad", ["", "a b", "a:b", "#a", "a\tb", "a\nb"])
def test_validate_name_rejects(bad: str) -> None:
    with pytest.raises(UsersFileError):
        auth.validate_name(bad)


def test_hash_password_is_bcrypt() -> None:
    hashed = auth.hash_password("pw")
    assert hashed.startswith((b"$2b$", b"$2a$", b"$2y$"))
    assert bcrypt.checkpw(b"pw", hashed)


# --- Authenticator ----------------------------------------------------------------------


def _write(path: Path, users: dict[str, str], *, bump: int = 0) -> None:
    write_users(path, {name: fast_hash(pw) for name, pw in users.items()})
    if bump:
        st_ = os.stat(path)
        os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + bump))


def test_verify_right_wrong_unknown(tmp_path: Path) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "right", "bob": "other"})

    async def check() -> list[bool]:
        a = Authenticator(path)
        return [
            await a.verify(IP, "alice", b"right"),
            await a.verify(IP, "alice", b"wrong"),
            await a.verify(IP, "alice", b"other"),
            await a.verify(IP, "carol", b"right"),
            await a.verify(IP, "", b""),
            await a.verify(IP, "bob", b"other"),
            await a.verify(IP, "ALICE", b"right"),
        ]

    assert run(check()) == [True, False, False, False, False, True, False]


def test_has_users(tmp_path: Path) -> None:
    path = tmp_path / "users"
    a = Authenticator(path)
    a.refresh()
    assert not a.has_users
    _write(path, {"alice": "pw"})
    a.refresh()
    assert a.has_users


def test_penalty_grows_and_resets(tmp_path: Path) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "right"})

    async def check() -> list[float]:
        a = Authenticator(path, max_delay=10.0)
        seen = [a.penalty(IP)]
        for _ in range(3):
            await a.verify(IP, "alice", b"wrong")
            seen.append(a.penalty(IP))
        await a.verify(IP, "nobody", b"x")
        seen.append(a.penalty(IP))
        seen.append(a.penalty("198.51.100.1"))  # another client is not slowed down
        await a.verify(IP, "alice", b"right")
        seen.append(a.penalty(IP))
        return seen

    seen = run(check())
    assert seen[0] == 0
    assert seen[1] > 0
    assert seen[1] < seen[2] < seen[3] < seen[4]
    assert seen[5] == 0
    assert seen[6] == 0


def test_penalty_is_capped(tmp_path: Path) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "right"})

    async def check() -> float:
        a = Authenticator(path, max_delay=2.0)
        for _ in range(50):
            await a.verify(IP, "nobody", b"x")
        return a.penalty(IP)

    assert run(check()) == 2.0


def test_penalty_forgotten_after_quiet_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "right"})
    clock = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])

    async def check() -> tuple[float, float, float]:
        a = Authenticator(path, failure_memory=900.0)
        await a.verify(IP, "nobody", b"x")
        await a.verify(IP, "nobody", b"x")
        before = a.penalty(IP)
        clock[0] += 899
        still = a.penalty(IP)
        clock[0] += 2
        return before, still, a.penalty(IP)

    before, still, after = run(check())
    assert before > 0 and still == before and after == 0


def test_file_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "old"})

    async def check() -> list[bool]:
        a = Authenticator(path)
        seen = [await a.verify(IP, "alice", b"old"), await a.verify(IP, "bob", b"pw")]
        _write(path, {"alice": "old", "bob": "pw"}, bump=10_000_000)  # a user added
        seen.append(await a.verify(IP, "bob", b"pw"))
        _write(path, {"alice": "new", "bob": "pw"}, bump=20_000_000)  # password changed
        seen += [await a.verify(IP, "alice", b"new"), await a.verify(IP, "alice", b"old")]
        path.unlink()  # file removed: nobody can log in
        seen.append(await a.verify(IP, "bob", b"pw"))
        return seen

    assert run(check()) == [True, False, True, True, False, False]


def test_file_reread_after_same_size_same_mtime_replacement(tmp_path: Path) -> None:
    """`smtprelay user add` replaces the file by rename. A password change gives a file of
    the same size, and on filesystems with coarse timestamps (ext4 uses the jiffy clock,
    FAT 2 s, some network filesystems 1 s) it can carry the same mtime as the old one.
    The new file is a different inode, so the change is still detectable."""
    path = tmp_path / "users"
    _write(path, {"alice": "old-password"})
    old = os.stat(path)

    async def check() -> tuple[bool, bool]:
        a = Authenticator(path)
        assert await a.verify(IP, "alice", b"old-password")
        _write(path, {"alice": "new-password"})
        new = os.stat(path)
        assert new.st_size == old.st_size and new.st_ino != old.st_ino
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))  # same coarse tick
        return (await a.verify(IP, "alice", b"new-password"),
                await a.verify(IP, "alice", b"old-password"))

    assert run(check()) == (True, False)


def test_broken_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice\n")
    with pytest.raises(UsersFileError, match="line 1"):
        run(Authenticator(path).verify(IP, "alice", b"x"))


def test_memo_skips_bcrypt_for_repeat_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "right"})

    async def check() -> tuple[bool, bool, bool]:
        a = Authenticator(path)
        first = await a.verify(IP, "alice", b"right")

        def no_bcrypt(*args: object) -> bool:
            raise AssertionError("bcrypt called for a remembered password")

        monkeypatch.setattr(auth.bcrypt, "checkpw", no_bcrypt)
        second = await a.verify(IP, "alice", b"right")
        monkeypatch.undo()
        wrong = await a.verify(IP, "alice", b"wrong")
        return first, second, wrong

    assert run(check()) == (True, True, False)


def test_memo_does_not_accept_wrong_password_after_right(tmp_path: Path) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "right", "bob": "bobpw"})

    async def check() -> list[bool]:
        a = Authenticator(path)
        return [
            await a.verify(IP, "alice", b"right"),
            await a.verify(IP, "alice", b"wrong"),
            await a.verify(IP, "alice", b"right\x00"),
            await a.verify(IP, "alice", b"righ"),
            await a.verify(IP, "bob", b"right"),  # another user's remembered password
            await a.verify(IP, "alice", b"right"),
        ]

    assert run(check()) == [True, False, False, False, False, True]


def test_changed_hash_voids_memo(tmp_path: Path) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "old"})

    async def check() -> tuple[bool, bool, bool]:
        a = Authenticator(path)
        first = await a.verify(IP, "alice", b"old")
        _write(path, {"alice": "new"}, bump=50_000_000)
        return first, await a.verify(IP, "alice", b"old"), await a.verify(IP, "alice", b"new")

    assert run(check()) == (True, False, True)


def test_user_removed_voids_memo(tmp_path: Path) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "pw", "bob": "x"})

    async def check() -> tuple[bool, bool]:
        a = Authenticator(path)
        first = await a.verify(IP, "alice", b"pw")
        _write(path, {"bob": "x"}, bump=50_000_000)
        return first, await a.verify(IP, "alice", b"pw")

    assert run(check()) == (True, False)
