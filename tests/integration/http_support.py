"""Helpers for the tests of the HTTP endpoint (test_http, test_queue_counts, test_slots):
a small client for the relay's API and the settings that enable it. The fixtures that
start a relay with the API are in http_fixtures.py.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.daemon import LOOPBACK, Daemon, free_port
from tests.polling import wait_until

TOKEN = "test-token-5f1c9a0e7d"


class Api:
    """A tiny HTTP client for the relay's endpoint; answers (status, JSON or text)."""

    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.port = port
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        headers = {}
        token = token if token is not None else self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            kind = response.getheader("Content-Type", "")
        finally:
            conn.close()
        if kind.startswith("application/json"):
            return response.status, json.loads(payload)
        return response.status, payload.decode()

    def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return self.call("GET", path, **kwargs)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body)
        assert status == 200, (method, path, status, answer)
        return answer


def post_json(
    port: int, token: str, path: str, body: Any, key: str | None = None
) -> tuple[int, dict[str, str], Any]:
    """POST ``body`` as JSON (with an Idempotency-Key ``key``): the status, the headers
    (names in lower case) and the JSON answer, problem+json included."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        response = conn.getresponse()
        payload = response.read()
        got = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    return response.status, got, json.loads(payload)


def http_overrides(tokens_file: Path | str) -> dict[str, Any]:
    return {"listen": f"{LOOPBACK}:{free_port()}", "tokens_file": str(tokens_file)}


def api_of(relay: Daemon) -> Api:
    return Api(int(relay.sections["http"]["listen"].rsplit(":", 1)[1]))


def wait_loaded(relay: Daemon, timeout: float = 20.0) -> Api:
    """The API of a daemon whose start-up load of the spooled envelopes is over.

    READY=1 comes before the envelopes are read (a large queue must not delay the
    listeners), so a listing right after start may not hold every spooled message yet."""
    api = api_of(relay)
    wait_until(
        lambda: api.ok("GET", "/status")["queue"]["loading"] == 0,
        timeout,
        lambda: f"the queue loaded\n{relay.log()}",
    )
    return api


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found
