"""What the HTTP handlers share: the running daemon's parts, and JSON helpers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from smtprelay.config import Settings
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.errors import RelayError
from smtprelay.inbound.server import Listeners
from smtprelay.stats import Stats
from smtprelay.web.guard import LogBudget, Penalty
from smtprelay.web.health import Health
from smtprelay.web.problem import forbidden
from smtprelay.web.templates import TemplateStore
from smtprelay.web.tokens import Token, TokenFile

if TYPE_CHECKING:
    from smtprelay.events.service import EventService


@dataclass
class Context:
    settings: Settings
    scheduler: Scheduler
    inbound: Listeners
    stats: Stats
    health: Health
    tokens: TokenFile
    started: float = field(default_factory=time.monotonic)
    http_endpoints: list[str] = field(default_factory=list)
    # Failed bearer tokens: the delay per client address, and their log lines' budget.
    penalty: Penalty = field(default_factory=Penalty)
    log_budget: LogBudget = field(default_factory=LogBudget)
    # Message templates (/v1/templates); None when their directory cannot be used.
    templates: TemplateStore | None = None
    # The events stage (/v1/events, /v1/webhooks); None when it is not running.
    events: EventService | None = None
    # SIGTERM (or a fault) was received: submissions are refused (503) from now on.
    stopping: bool = False

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started


CONTEXT = web.AppKey("context", Context)
# The token of the request (set by the bearer check); and the prefix of the JSON API,
# whose errors are RFC 9457 problems.
TOKEN = "smtprelay.token"
V1 = "/v1/"


def token_of(request: web.Request) -> Token:
    token: Token = request[TOKEN]
    return token


def require(request: web.Request, scope: str) -> Token:
    """The request's token if it has ``scope``; else 403 problem+json."""
    token = token_of(request)
    if not token.allows(scope):
        raise forbidden(f"token {token.name} lacks scope {scope}")
    return token


def context(request: web.Request) -> Context:
    return request.app[CONTEXT]


def error(
    status: int, code: str, message: str, extra: dict[str, Any] | None = None
) -> web.Response:
    """``{"error": {"code": ..., "message": ...}}`` (and ``extra`` keys) with ``status``."""
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    body.update(extra or {})
    return web.json_response(body, status=status)


class Problem(RelayError):
    """Raised by a handler: answered as a JSON error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
