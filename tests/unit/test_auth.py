"""smtprelay.inbound.auth: the users file and credential checks."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay import config
from smtprelay.inbound import auth
from smtprelay.inbound.auth import Authenticator, UsersFileError, read_users, write_users
from smtprelay.inbound.authlimit import Throttle
from smtprelay.inbound.server import InboundServer, build_intake, users
from smtprelay.spool import Spool

IP = "192.0.2.9"
T = TypeVar("T")


def fast_hash(password: str) -> bytes:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make(path: Path) -> Authenticator:
    """An authenticator whose failure penalty passes at once (on its own clock): these
    tests fail on purpose, and the slow-down has its own tests (test_authlimit.py)."""
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds

    return Authenticator(path, throttle=Throttle(clock=lambda: clock[0], sleep=sleep))


# --- the users file --------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("htpasswd") is None, reason="htpasswd (apache2-utils) missing")
def test_read_users_parses_htpasswd_output(tmp_path: Path) -> None:
    out = subprocess.run(
        ["htpasswd", "-nbB", "-C", "4", "app1", "s3cret pw"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = tmp_path / "users"
    path.write_text("# made by htpasswd\n" + out)
    users = read_users(path)
    assert list(users) == ["app1"]
    assert users["app1"].startswith(b"$2y$04$")

    async def check() -> tuple[bool, bool]:
        a = make(path)
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
    alphabet=st.characters(
        exclude_categories=["Cs", "Zs", "Zl", "Zp", "Cc"], exclude_characters=":"
    ),
    min_size=1,
    max_size=12,
).filter(lambda n: not n.startswith("#") and not any(c.isspace() for c in n))
fake_hashes = st.builds(
    lambda v, cost, rest: f"$2{v}${cost:02d}${rest}".encode(),
    st.sampled_from("aby"),
    st.integers(4, 31),
    st.text(
        alphabet="./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        min_size=53,
        max_size=53,
    ),
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
        a = make(path)
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
    a = make(path)
    a.refresh()
    assert not a.has_users
    _write(path, {"alice": "pw"})
    a.refresh()
    assert a.has_users


def test_file_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "old"})

    async def check() -> list[bool]:
        a = make(path)
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
        a = make(path)
        assert await a.verify(IP, "alice", b"old-password")
        _write(path, {"alice": "new-password"})
        new = os.stat(path)
        assert new.st_size == old.st_size and new.st_ino != old.st_ino
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))  # same coarse tick
        return (
            await a.verify(IP, "alice", b"new-password"),
            await a.verify(IP, "alice", b"old-password"),
        )

    assert run(check()) == (True, False)


def test_broken_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice\n")
    with pytest.raises(UsersFileError, match="line 1"):
        run(make(path).verify(IP, "alice", b"x"))


def test_memo_skips_bcrypt_for_repeat_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "right"})

    async def check() -> tuple[bool, bool, bool]:
        a = make(path)
        first = await a.verify(IP, "alice", b"right")

        def no_bcrypt(*args: object) -> bool:
            raise AssertionError("bcrypt called for a remembered password")

        monkeypatch.setattr(bcrypt, "checkpw", no_bcrypt)
        second = await a.verify(IP, "alice", b"right")
        monkeypatch.undo()
        wrong = await a.verify(IP, "alice", b"wrong")
        return first, second, wrong

    assert run(check()) == (True, True, False)


def test_memo_does_not_accept_wrong_password_after_right(tmp_path: Path) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "right", "bob": "bobpw"})

    async def check() -> list[bool]:
        a = make(path)
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
        a = make(path)
        first = await a.verify(IP, "alice", b"old")
        _write(path, {"alice": "new"}, bump=50_000_000)
        return first, await a.verify(IP, "alice", b"old"), await a.verify(IP, "alice", b"new")

    assert run(check()) == (True, False, True)


def test_user_removed_voids_memo(tmp_path: Path) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "pw", "bob": "x"})

    async def check() -> tuple[bool, bool]:
        a = make(path)
        first = await a.verify(IP, "alice", b"pw")
        _write(path, {"bob": "x"}, bump=50_000_000)
        return first, await a.verify(IP, "alice", b"pw")

    assert run(check()) == (True, False)


# --- unknown users cost the same; long passwords ----------------------------------------


def test_unknown_user_is_checked_against_a_hash_of_the_files_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users"
    write_users(
        path,
        {
            "alice": bcrypt.hashpw(b"a", bcrypt.gensalt(rounds=5)),
            "bob": bcrypt.hashpw(b"b", bcrypt.gensalt(rounds=5)),
            "carol": bcrypt.hashpw(b"c", bcrypt.gensalt(rounds=4)),
        },
    )
    calls: list[tuple[bytes, bytes]] = []
    real = bcrypt.checkpw

    def recording(password: bytes, hashed: bytes) -> bool:
        calls.append((password, hashed))
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", recording)

    async def check() -> list[bool]:
        a = make(path)
        return [
            await a.verify(IP, "nobody", b"a"),
            await a.verify(IP, "alice", b"x"),
            await a.verify(IP, "nobody", b"x" * 100),
        ]

    assert run(check()) == [False, False, False]
    assert [len(p) for p, _ in calls] == [1, 1, 72]
    unknown, known, long_unknown = (h for _, h in calls)
    assert known == read_users(path)["alice"]
    # the most common cost in the file (5), a hash of nobody's
    assert unknown.startswith(b"$2b$05$") and long_unknown == unknown
    assert unknown not in read_users(path).values()


@pytest.mark.parametrize(
    ("costs", "expected"),
    [
        ([], auth.HASH_ROUNDS),
        ([4], 4),
        ([4, 6, 6], 6),
        ([4, 4, 6], 4),
        ([5, 7], 7),
    ],
)
def test_dummy_hash_cost(costs: list[int], expected: int) -> None:
    users = {f"u{n}": f"$2y${cost:02d}${'a' * 53}".encode() for n, cost in enumerate(costs)}
    dummy = auth.dummy_hash(users)
    assert dummy.startswith(f"$2b${expected:02d}$".encode())
    assert not bcrypt.checkpw(b"", auth.dummy_hash({"x": fast_hash("y")}))


@pytest.mark.parametrize("cost", ["03", "32", "99", "00"])
def test_read_users_rejects_costs_bcrypt_refuses(tmp_path: Path, cost: str) -> None:
    path = tmp_path / "users"
    path.write_text(f"alice:$2y${cost}${'a' * 53}\n")
    with pytest.raises(UsersFileError, match=f"line 1: bcrypt cost {cost}"):
        read_users(path)


LONG = ("long-password-" * 8)[:100]  # 100 bytes: bcrypt uses the first 72


@pytest.mark.skipif(shutil.which("htpasswd") is None, reason="htpasswd (apache2-utils) missing")
def test_htpasswd_hashes_the_first_72_bytes_and_so_do_we(tmp_path: Path) -> None:
    out = subprocess.run(
        ["htpasswd", "-nbB", "-C", "4", "long", LONG], check=True, capture_output=True, text=True
    ).stdout
    path = tmp_path / "users"
    path.write_text(out)
    path2 = tmp_path / "users2"
    write_users(path2, {"long": auth.hash_password(LONG)})

    async def check(p: Path) -> list[bool]:
        a = make(p)
        return [
            await a.verify(IP, "long", LONG.encode()),
            await a.verify(IP, "long", LONG[:72].encode()),  # what bcrypt sees
            await a.verify(IP, "long", LONG[:72].encode() + b"anything"),
            await a.verify(IP, "long", LONG[:71].encode()),
            await a.verify(IP, "long", LONG[:71].encode() + b"X" + LONG[72:].encode()),
            await a.verify(IP, "nobody", LONG.encode()),
        ]

    expected = [True, True, True, False, False, False]
    assert run(check(path)) == expected
    assert run(check(path2)) == expected


def test_hash_password_of_a_long_password() -> None:
    hashed = auth.hash_password(LONG)  # bcrypt 5 alone raises ValueError here
    assert bcrypt.checkpw(LONG[:72].encode(), hashed)
    assert auth.password_truncated(LONG) and not auth.password_truncated(LONG[:72])
    assert auth.password_truncated("é" * 37)  # bytes count, not characters


def test_inherit_keeps_the_failure_record_and_the_pool(tmp_path: Path) -> None:
    path = tmp_path / "users"
    _write(path, {"alice": "right"})

    async def check() -> tuple[int, int]:
        old = make(path)
        await old.verify(IP, "alice", b"wrong")
        await old.verify(IP, "alice", b"right")
        await old.verify(IP, "alice", b"wrong")
        new = Authenticator(path)
        new.inherit(old)
        assert new.pool is old.pool
        return new.throttle.failures(IP), len(new._memo)

    assert run(check()) == (1, 1)


def test_reload_hands_the_record_to_the_new_authenticator(tmp_path: Path) -> None:
    """InboundServer.apply (SIGHUP): a reload must not wipe a guessing client's penalty."""
    path = tmp_path / "users"
    _write(path, {"alice": "right"})
    raw = {
        "server": {"hostname": "relay.test"},
        "spool": {"dir": str(tmp_path / "spool")},
        "auth": {"users_file": str(path)},
    }

    async def check() -> tuple[Authenticator, Authenticator, bool, bool]:
        before = config.parse(raw)
        old = users(before)
        assert old is not None
        await old.verify(IP, "alice", b"wrong")
        spool = Spool(tmp_path / "spool")
        try:
            intake = build_intake(before, spool, old, None)
            inbound = InboundServer(before, intake, None)  # type: ignore[arg-type]
            header_before = intake.authenticated_header
            inbound.apply(
                config.parse({**raw, "auth": {**raw["auth"], "authenticated_header": True}}),
                users(before),
            )
            assert intake.authenticator is not None
            return old, intake.authenticator, header_before, intake.authenticated_header
        finally:
            spool.close()

    old, new, header_before, header_after = run(check())
    assert new is not old and new.throttle is old.throttle and new.pool is old.pool
    assert new.throttle.failures(IP) == 1
    assert (header_before, header_after) == (False, True)


def test_parallel_first_logins_of_one_client_pay_bcrypt_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application opening five connections at once: its checks take turns, and the
    ones after the first find the password already checked."""
    path = tmp_path / "users"
    _write(path, {"alice": "right"})
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def recording(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", recording)

    async def check() -> list[bool]:
        a = make(path)
        return list(await asyncio.gather(*(a.verify(IP, "alice", b"right") for _ in range(5))))

    assert run(check()) == [True] * 5
    assert calls == [b"right"]
