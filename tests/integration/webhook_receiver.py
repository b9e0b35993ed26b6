"""A real webhook receiver for the tests: an aiohttp server on 127.0.0.1 in a thread of
its own, that verifies every request with the ``standardwebhooks`` library (the one
receivers use) and records what it got.

``script`` makes the next requests answer a given status (and headers), e.g. 429 with
Retry-After or 410; ``stop()``/``start()`` take it down and bring it back on the same
port, as a receiver that is down for a while.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.integration.daemon import LOOPBACK, free_port


@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    at: float  # monotonic
    event: dict[str, Any]


class Receiver:
    def __init__(self, secret: str, port: int | None = None) -> None:
        self.secret = secret
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}/hook"
        self.deliveries: list[Delivery] = []  # verified and answered 2xx
        self.requests: list[tuple[float, int]] = []  # (monotonic, status answered)
        self.bad_signatures: list[str] = []
        self._script: list[tuple[int, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def script(self, status: int, headers: dict[str, str] | None = None, times: int = 1) -> None:
        with self._lock:
            self._script += [(status, headers or {})] * times

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError as e:
            with self._lock:
                self.bad_signatures.append(str(e))
                self.requests.append((time.monotonic(), 400))
            return web.Response(status=400)
        with self._lock:
            status, headers = self._script.pop(0) if self._script else (204, {})
            self.requests.append((time.monotonic(), status))
            if 200 <= status < 300:
                self.deliveries.append(
                    Delivery(request.headers["webhook-id"], time.monotonic(), json.loads(body))
                )
        return web.Response(status=status, headers=headers)

    def start(self) -> Receiver:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/hook", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, LOOPBACK, self.port, reuse_address=True)
            loop.run_until_complete(site.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "the webhook receiver did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d.event for d in self.deliveries]

    def ids(self) -> list[str]:
        with self._lock:
            return [d.webhook_id for d in self.deliveries]
