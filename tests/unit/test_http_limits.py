"""smtprelay.web.limits: the bound on HTTP requests in flight, as aiohttp middleware
on a real server on loopback, driven by a real aiohttp client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from smtprelay.web.limits import InFlight
from tests.polling import wait_until_async

Run = Callable[[TestServer, aiohttp.ClientSession, asyncio.Event, list[str]], Awaitable[None]]


def serve(limits: InFlight, test: Run) -> None:
    """Run ``test`` against a server whose every handler waits for ``release``."""

    async def main() -> None:
        release = asyncio.Event()
        entered: list[str] = []

        async def hold(request: web.Request) -> web.Response:
            entered.append(request.path)
            await release.wait()
            return web.json_response({"ok": True})

        app = web.Application(middlewares=[limits.middleware])
        app.router.add_get("/light", hold)
        app.router.add_get("/heavy", hold)
        server = TestServer(app, host="127.0.0.1")
        async with server, aiohttp.ClientSession() as session:
            await test(server, session, release, entered)

    asyncio.run(asyncio.wait_for(main(), 60))


async def get(
    server: TestServer, session: aiohttp.ClientSession, path: str
) -> tuple[int, Any, str | None]:
    async with session.get(server.make_url(path)) as response:
        return response.status, await response.json(), response.headers.get("Retry-After")


def test_requests_over_the_cap_wait_then_get_503_with_retry_after() -> None:
    limits = InFlight(2, wait=0.2, max_waiting=1)

    async def test(
        server: TestServer,
        session: aiohttp.ClientSession,
        release: asyncio.Event,
        entered: list[str],
    ) -> None:
        held = [asyncio.create_task(get(server, session, "/light")) for _ in range(2)]
        await wait_until_async(lambda: len(entered) == 2, 30)
        waiting = asyncio.create_task(get(server, session, "/light"))
        await wait_until_async(lambda: limits.waiting == 1, 30)
        # One is waiting already (max_waiting): the next is refused at once.
        status, body, retry = await get(server, session, "/light")
        assert (status, body["error"]["code"], retry) == (503, "busy", "1")
        # The waiting one never gets a slot within its wait.
        status, body, retry = await waiting
        assert (status, retry) == (503, "1")
        assert "limit 2" in body["error"]["message"]
        assert len(entered) == 2 and limits.active == 2
        release.set()
        assert [(await task)[0] for task in held] == [200, 200]
        assert (await get(server, session, "/light"))[0] == 200
        assert (limits.active, limits.waiting, limits.refused) == (0, 0, 2)

    serve(limits, test)


def test_a_waiting_request_gets_the_slot_that_frees() -> None:
    limits = InFlight(1, wait=30.0)

    async def test(
        server: TestServer,
        session: aiohttp.ClientSession,
        release: asyncio.Event,
        entered: list[str],
    ) -> None:
        first = asyncio.create_task(get(server, session, "/light"))
        await wait_until_async(lambda: len(entered) == 1, 30)
        second = asyncio.create_task(get(server, session, "/light"))
        await wait_until_async(lambda: limits.waiting == 1, 30)
        assert len(entered) == 1
        release.set()
        assert (await first)[0] == 200
        assert (await second)[0] == 200
        assert limits.refused == 0

    serve(limits, test)


def test_heavy_paths_have_a_smaller_cap_and_leave_room_for_the_rest() -> None:
    limits = InFlight(3, heavy_paths={"/heavy"}, heavy_limit=1, wait=0.2)

    async def test(
        server: TestServer,
        session: aiohttp.ClientSession,
        release: asyncio.Event,
        entered: list[str],
    ) -> None:
        heavy = asyncio.create_task(get(server, session, "/heavy"))
        await wait_until_async(lambda: entered == ["/heavy"], 30)
        assert (await get(server, session, "/heavy"))[0] == 503  # one heavy at a time
        light = [asyncio.create_task(get(server, session, "/light")) for _ in range(2)]
        await wait_until_async(lambda: len(entered) == 3, 30)  # the light ones still get slots
        assert sorted(entered) == ["/heavy", "/light", "/light"]
        release.set()
        assert (await heavy)[0] == 200
        assert [(await task)[0] for task in light] == [200, 200]
        assert limits.active == 0

    serve(limits, test)
