"""The daemon's task supervisor: a long-lived task that dies ends the whole group, is
logged once with its traceback, and the daemon exits non-zero."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from smtprelay import app, cli, config, maillog
from smtprelay.tasks import Supervisor, TaskDied, detach


async def _forever(started: list[str], cancelled: list[str], name: str) -> None:
    started.append(name)
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.append(name)
        raise


async def _fails_soon() -> None:
    await asyncio.sleep(0.01)
    raise RuntimeError("the loop broke")


def _critical(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_task_that_raises_ends_the_group_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started: list[str] = []
    cancelled: list[str] = []
    body_cancelled = False

    async def main() -> None:
        nonlocal body_cancelled
        supervisor = Supervisor()
        async with supervisor:
            supervisor.start("a", _forever(started, cancelled, "a"))
            supervisor.start("broken", _fails_soon())
            supervisor.start("b", _forever(started, cancelled, "b"))
            assert supervisor.running("broken")
            try:
                await asyncio.Event().wait()  # the daemon waiting for SIGTERM
            except asyncio.CancelledError:
                body_cancelled = True
                raise
        raise AssertionError("not reached: the group ends with TaskDied")

    with (
        caplog.at_level(logging.INFO, logger="smtprelay"),
        pytest.raises(TaskDied, match="broken failed") as died,
    ):
        asyncio.run(asyncio.wait_for(main(), 10))
    assert died.value.name == "broken"
    assert body_cancelled
    assert sorted(cancelled) == ["a", "b"]
    (record,) = _critical(caplog)  # once, with the traceback of the cause
    assert record.getMessage() == "broken failed; stopping"
    assert record.exc_info is not None and "the loop broke" in str(record.exc_info[1])


def test_a_task_that_returns_while_running_is_a_fault_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def returns() -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        async with Supervisor() as supervisor:
            supervisor.start("quitter", returns())
            await asyncio.Event().wait()

    with pytest.raises(TaskDied, match="quitter ended unexpectedly"):
        asyncio.run(asyncio.wait_for(main(), 10))
    (record,) = _critical(caplog)
    assert record.getMessage() == "quitter ended unexpectedly; stopping"


def test_a_stray_cancelled_error_is_not_taken_for_a_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def awaits_a_cancelled_future() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # CancelledError, though nobody cancelled this task

    async def main() -> None:
        async with Supervisor() as supervisor:
            supervisor.start("loop", awaits_a_cancelled_future())
            await asyncio.Event().wait()

    with pytest.raises(TaskDied, match="loop failed"):
        asyncio.run(asyncio.wait_for(main(), 10))
    assert len(_critical(caplog)) == 1


def test_a_clean_stop_cancels_every_task_and_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started: list[str] = []
    cancelled: list[str] = []

    async def ends_when_asked(stopping: asyncio.Event) -> None:
        await stopping.wait()  # e.g. the workers' supervisor once the pool is closed

    async def main() -> Supervisor:
        stopping = asyncio.Event()
        async with Supervisor() as supervisor:
            supervisor.start("a", _forever(started, cancelled, "a"))
            supervisor.start("pool", ends_when_asked(stopping))
            await asyncio.sleep(0.01)
            supervisor.ending()  # SIGTERM: from now on a task may end by itself
            stopping.set()
            await asyncio.sleep(0.01)
            assert not supervisor.running("pool")
        return supervisor

    supervisor = asyncio.run(asyncio.wait_for(main(), 10))
    assert cancelled == ["a"] and not supervisor.running("a")
    assert _critical(caplog) == []


def test_a_detached_task_is_kept_and_its_failure_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner: set[asyncio.Task[None]] = set()

    async def main() -> None:
        task = detach(_fails_soon(), owner, "Q1: operator action")
        assert owner == {task}
        await asyncio.wait([task])
        await asyncio.sleep(0)
        assert owner == set()

    asyncio.run(main())
    (record,) = _critical(caplog)
    assert record.getMessage() == "Q1: operator action failed"


def test_the_daemon_exits_non_zero_after_a_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cli serve -> 1 when the daemon stopped because a task died."""
    path = tmp_path / "smtprelay.toml"
    path.write_text(f'[spool]\ndir = "{tmp_path / "spool"}"\n')

    def run(settings: config.Settings, config_path: Path) -> None:
        raise app.DaemonFault("the delivery loop failed")

    monkeypatch.setattr(app, "run", run)
    monkeypatch.setattr(maillog, "setup", lambda fmt, level: None)
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "-c", str(path)])
    assert exited.value.code == cli.EXIT_FAILED == 1
