"""The daemon's HTTP API as the queue commands call it: its address, the token, one call,
and the queue listing fetched page by page."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from smtprelay import config
from smtprelay.queuecli.errors import DaemonDown, QueueFailure
from smtprelay.web.tokens import read_tokens, usable_by_cli

TIMEOUT = 30.0
BATCH = 10_000  # the API's most QIDs per request
PAGE = 1000  # messages per GET /queue request while listing the whole queue


def base_url(settings: config.Settings) -> str:
    """``http://HOST:PORT`` of ``[http] listen``; a wildcard address means loopback."""
    endpoint = settings.http.listen
    if endpoint is None:
        raise config.ConfigError(
            '[http] listen: "" turns the HTTP endpoint off; the queue commands need it'
        )
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(endpoint.host, endpoint.host)
    return f"http://[{host}]:{endpoint.port}" if ":" in host else f"http://{host}:{endpoint.port}"


def first_token(settings: config.Settings) -> str:
    path = settings.http.tokens_file
    if not path:
        raise config.ConfigError("[http] tokens_file: not set; the queue commands need a token")
    try:
        tokens = usable_by_cli(read_tokens(Path(path)))
    except OSError as e:
        raise config.ConfigError(
            f"[http] tokens_file {path}: cannot read it: {e.strerror or e}"
        ) from None
    except ValueError as e:
        raise config.ConfigError(f"[http] tokens_file {path}: {e}") from None
    if not tokens:
        raise config.ConfigError(
            f"[http] tokens_file {path}: no token in it that the CLI can use "
            "(one written in clear, with scope admin)"
        )
    return tokens[0]


class Caller(Protocol):
    """What the commands need of the API: one call, its JSON answer."""

    def call(self, method: str, path: str, body: Any = None) -> Any: ...


class Client:
    """Calls the daemon's API; raises DaemonDown or QueueFailure."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.base = base_url(settings)
        self._token: str | None = None
        # No proxy: the endpoint is local, whatever http_proxy says.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body: Any = None) -> Any:
        if self._token is None:
            self._token = first_token(self.settings)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=TIMEOUT) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            raise QueueFailure(_error_message(e)) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, ConnectionRefusedError):
                raise DaemonDown(f"nothing answers at {self.base} (connection refused)") from None
            raise QueueFailure(
                f"cannot reach the daemon at {self.base}: {reason(e.reason)}"
            ) from None
        except ConnectionRefusedError:
            raise DaemonDown(f"nothing answers at {self.base} (connection refused)") from None
        except (OSError, ValueError) as e:  # reset, timeout, malformed answer
            raise QueueFailure(f"the daemon at {self.base} did not answer: {reason(e)}") from None
        try:
            return json.loads(payload)
        except ValueError:
            raise QueueFailure(
                f"the daemon at {self.base} answered something that is not JSON"
            ) from None


def reason(error: object) -> str:
    """An error for a person: the system's words for an OSError, else its text."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read())
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError, OSError):
        message = str(e.reason)
    if e.code == 401:
        return f"the daemon refused the token (401): {message}"
    return f"the daemon answered {e.code}: {message}"


def fetch_queue(
    client: Caller, state: str | None = None, domain: str | None = None, limit: int | None = None
) -> dict[str, Any]:
    """``GET /queue`` page after page (each request bounded, so a large queue never
    holds up the daemon), up to ``limit`` messages (None: all of them)."""
    base = {k: v for k, v in (("state", state), ("domain", domain)) if v}
    messages: list[dict[str, Any]] = []
    after: str | None = None
    total = loading = 0
    while limit is None or len(messages) < limit:
        want = PAGE if limit is None else min(PAGE, limit - len(messages))
        query = {**base, "limit": str(want), **({"after": after} if after else {})}
        page = client.call("GET", "/queue?" + urllib.parse.urlencode(query))
        if after is None:
            total = int(page["total"])
            loading = int(page.get("loading", 0))
        messages += page["messages"]
        after = page.get("next")
        if not after:
            break
    return {"messages": messages, "total": total, "loading": loading}


def act(client: Caller, action: str, qids: list[str] | None) -> dict[str, Any]:
    """``POST /queue/<action>`` in batches the API takes; ``qids`` None only for a flush
    of everything. The answer as one ``{"action", "results"}`` (or the flush's)."""
    if qids is None:
        answer: dict[str, Any] = client.call("POST", "/queue/flush")
        return answer
    results: dict[str, str] = {}
    for i in range(0, len(qids), BATCH):
        part = client.call("POST", f"/queue/{action}", {"qids": qids[i : i + BATCH]})
        results.update(part.get("results", {}))
    return {"action": action, "results": results}
