"""The DATA reader: terminator, exact unstuffed size, NUL refusal, and the memory budget."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay import replies
from smtprelay.inbound import message
from smtprelay.inbound.datareader import DataBudget, DataReader, unstuffed_size
from smtprelay.replies import Reply

NEXT = b"NOOP\r\n"  # what the client sends after the data: must stay unread


def read_all(
    stream_bytes: bytes,
    *,
    max_size: int = 10_000,
    budget: DataBudget | None = None,
    limit: int = 64 * 1024,
    pieces: int = 1,
) -> tuple[bytes | Reply, DataReader, asyncio.StreamReader]:
    """Feed ``stream_bytes`` (in ``pieces`` parts) to a reader and read one message."""
    budget = budget if budget is not None else DataBudget()

    async def run() -> tuple[bytes | Reply, DataReader, asyncio.StreamReader]:
        stream = asyncio.StreamReader(limit=limit)
        reader = DataReader(stream, max_message_size=max_size, budget=budget)
        task = asyncio.create_task(reader.read())
        step = max(1, -(-len(stream_bytes) // pieces))
        for i in range(0, len(stream_bytes), step):
            stream.feed_data(stream_bytes[i : i + step])
            await asyncio.sleep(0)
        return await asyncio.wait_for(task, 10), reader, stream

    return asyncio.run(run())


def remaining(stream: asyncio.StreamReader) -> bytes:
    return bytes(stream._buffer)  # type: ignore[attr-defined]


def stuff(lines: list[bytes]) -> bytes:
    """Lines (without CRLF) as a client sends them: dot-stuffed, each ending in CRLF."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


# --- terminator and bytes --------------------------------------------------------------


def test_message_up_to_the_terminator() -> None:
    raw, _, stream = read_all(b"Subject: x\r\n\r\nbody\r\n.\r\n" + NEXT)
    assert raw == b"Subject: x\r\n\r\nbody\r\n"
    assert remaining(stream) == NEXT


def test_empty_message() -> None:
    raw, _, stream = read_all(b".\r\n" + NEXT)
    assert raw == b""
    assert remaining(stream) == NEXT


@pytest.mark.parametrize("fake", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n"])
def test_fake_terminators_are_content(fake: bytes) -> None:
    data = b"a" + fake + b"b\r\n.\r\n"
    for pieces in (1, 3, len(data)):
        raw, _, _ = read_all(data, pieces=pieces)
        assert raw == b"a" + fake + b"b\r\n"


@given(
    lines=st.lists(
        st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        max_size=30,
    ),
    pieces=st.integers(1, 50),
    limit=st.sampled_from([8, 16, 1024]),
)
def test_unstuffed_size_is_exact_for_crlf_data(lines: list[bytes], pieces: int, limit: int) -> None:
    """Whatever the cut of the stream (tiny buffer limits force cuts inside lines and
    inside ``<CRLF>.``), the data is found whole, its counted size is what the intake will
    measure after unstuffing, and a limit of exactly that size lets it through while one
    byte less refuses it."""
    lines = [line.replace(b"\0", b"") for line in lines]
    data = stuff(lines) + b".\r\n" + NEXT
    raw, _, stream = read_all(data, limit=limit, pieces=pieces)
    assert isinstance(raw, bytes)
    body, bare = message.normalize(raw)
    assert bare == 0
    assert body == b"".join(line + b"\r\n" for line in lines)
    assert unstuffed_size(raw) == len(body)
    assert remaining(stream) == NEXT
    exact, _, _ = read_all(data, max_size=len(body), limit=limit, pieces=pieces)
    assert exact == raw
    if body:
        refused, _, stream = read_all(data, max_size=len(body) - 1, limit=limit, pieces=pieces)
        assert refused == replies.SIZE_EXCEEDED
        assert remaining(stream) == NEXT


@given(st.binary(max_size=300).map(lambda b: b.replace(b"\0", b"")))
def test_unstuffed_size_never_exceeds_what_the_intake_measures(data: bytes) -> None:
    """With bare CR/LF (which the intake rewrites to CRLF, adding bytes) the count is a
    lower bound: the reader never refuses what the intake would accept."""
    stream_bytes = data + b"\r\n.\r\n"
    raw, _, _ = read_all(stream_bytes, limit=16, pieces=7)
    assert isinstance(raw, bytes)
    body, _ = message.normalize(raw)
    assert unstuffed_size(raw) <= len(body)


# --- size ----------------------------------------------------------------------------------


def test_size_limit_counts_after_unstuffing() -> None:
    """Dot-stuffed lines count one byte less: a message of exactly the limit passes
    even though more bytes were sent, one byte more is refused."""
    lines = [b"." * 9] * 100  # 100 lines of 9 dots: sent as 10 dots each
    exact = sum(len(line) + 2 for line in lines)
    raw, _, _ = read_all(stuff(lines) + b".\r\n", max_size=exact)
    assert isinstance(raw, bytes)
    assert len(message.normalize(raw)[0]) == exact
    refused, reader, _ = read_all(stuff(lines) + b".\r\n", max_size=exact - 1)
    assert refused == replies.SIZE_EXCEEDED
    assert reader.held == 0


def test_oversized_data_is_dropped_as_it_arrives() -> None:
    """50 times the limit is read to its end (the session stays in step) while the
    budget never holds more than the limit and one chunk."""
    budget = DataBudget()
    chunk_limit = 4096
    line = b"x" * 998 + b"\r\n"
    stream_bytes = line * 500 + b".\r\n" + NEXT  # 500 kB against a 10 kB limit
    result, reader, stream = read_all(
        stream_bytes, max_size=10_000, budget=budget, limit=chunk_limit, pieces=100
    )
    assert result == replies.SIZE_EXCEEDED
    assert budget.peak <= 10_000 + 2 * chunk_limit
    assert budget.held == 0 and reader.held == 0
    assert remaining(stream) == NEXT


def test_dot_stuffing_cannot_hide_size() -> None:
    """A message of lines "." (sent as "..") counts 3 bytes a line, not 4 and not 2."""
    lines = [b"."] * 1000
    size = 3 * 1000
    ok, _, _ = read_all(stuff(lines) + b".\r\n", max_size=size)
    assert isinstance(ok, bytes)
    refused, _, _ = read_all(stuff(lines) + b".\r\n", max_size=size - 1)
    assert refused == replies.SIZE_EXCEEDED


# --- NUL -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        # a next hop that strips NUL would see an end of data in this one
        b"Subject: x\r\n\r\na\r\n\x00.\r\nMAIL FROM:<evil@x>\r\n",
        b"\x00",
        b"Subject: \x00\r\n\r\nbody",
    ],
)
def test_nul_is_refused_and_nothing_kept(data: bytes) -> None:
    budget = DataBudget()
    result, reader, stream = read_all(data + b"\r\n.\r\n" + NEXT, budget=budget, pieces=3)
    assert result == replies.NUL_IN_DATA
    assert budget.held == 0 and reader.held == 0
    assert remaining(stream) == NEXT  # read to the real terminator, no further


# --- budget --------------------------------------------------------------------------------


def test_budget_limit_follows_the_message_size() -> None:
    budget = DataBudget(floor=1000)
    assert budget.limit(100) == 1000
    assert budget.limit(1000) == 4000
    assert budget.has_room(4000, 1000) and not budget.has_room(4001, 1000)


def test_budget_accounting() -> None:
    budget = DataBudget(floor=100)
    assert budget.take(60, 10) and budget.take(40, 10)
    assert not budget.take(1, 10)
    assert budget.held == budget.peak == 100
    budget.give_back(60)
    assert budget.held == 40 and budget.take(60, 10)


def test_reader_without_budget_refuses_with_452_and_keeps_nothing() -> None:
    budget = DataBudget(floor=8000)
    assert budget.take(7000, 2000)  # other sessions hold most of it
    result, reader, stream = read_all(
        b"y" * 998 + b"\r\n" + b"z" * 998 + b"\r\n.\r\n" + NEXT,
        max_size=2000,  # limit: max(8000, 4 * 2000)
        budget=budget,
        limit=512,
    )
    assert result == replies.NO_SPACE
    assert reader.held == 0
    assert budget.held == 7000  # what it had taken before the refusal is back
    assert budget.peak <= 8000
    assert remaining(stream) == NEXT


def test_accepted_data_stays_counted_until_released() -> None:
    budget = DataBudget()
    raw, reader, _ = read_all(b"body\r\n.\r\n", budget=budget)
    assert isinstance(raw, bytes)
    assert budget.held == reader.held >= len(b"body\r\n.\r\n")
    reader.release()
    assert budget.held == 0
    reader.release()  # twice is harmless
    assert budget.held == 0


def test_many_readers_share_one_budget() -> None:
    """Eight sessions each sending a message of the maximum size at once: together they
    never hold more than the budget; those that got no room are told 452."""
    budget = DataBudget(floor=0)  # limit: four messages of the maximum size
    size = 20_000
    line = b"m" * 98 + b"\r\n"
    data = line * (size // len(line)) + b".\r\n"

    async def run() -> list[bytes | Reply]:
        streams = [asyncio.StreamReader(limit=1024) for _ in range(8)]
        readers = [DataReader(s, max_message_size=size, budget=budget) for s in streams]
        tasks = [asyncio.create_task(r.read()) for r in readers]
        for i in range(0, len(data), 500):  # all sessions progress side by side
            for stream in streams:
                stream.feed_data(data[i : i + 500])
            await asyncio.sleep(0)
        results = [await asyncio.wait_for(t, 10) for t in tasks]
        for reader in readers:
            reader.release()
        return results

    results = asyncio.run(run())
    assert budget.peak <= budget.limit(size) == 4 * size
    assert results.count(replies.NO_SPACE) >= 4
    assert sum(isinstance(r, bytes) for r in results) >= 1
    assert budget.held == 0
