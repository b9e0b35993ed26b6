"""The OpenAPI description of the events API (``/v1/events``, ``/v1/webhooks``), merged
into ``GET /v1/openapi.json`` by ``web/openapi.py``; kept beside the handlers it
describes (``events/api.py``)."""

from __future__ import annotations

from typing import Any

from smtprelay.events.api import DEFAULT_LIMIT, MAX_LIMIT

JSON = "application/json"
_PROBLEM = {
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, **_PROBLEM}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


_ERRORS = {
    "401": _problem("No token, or not a valid one."),
    "403": _problem("The token lacks the scope."),
    "422": _problem("Invalid fields or query parameters, each named by a JSON Pointer."),
}
EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["id", "type", "timestamp", "data"],
    "properties": {
        "id": {"type": "string", "description": "Unique and stable across retries."},
        "type": {"type": "string", "examples": ["recipient.delivered"]},
        "timestamp": {"type": "string", "format": "date-time"},
        "data": {
            "type": "object",
            "description": "qid, recipient (where there is one), route, token or "
            "smtp_user, tags, metadata, sequence (per recipient: its events and its "
            "message's in order; 0 without a qid), and the fields of the event type.",
        },
    },
}
_PAGE = _json(
    "Events in order; pass next_cursor as after for the next page.",
    {
        "type": "object",
        "required": ["events", "next_cursor"],
        "properties": {
            "events": {"type": "array", "items": EVENT},
            "next_cursor": {"type": "string"},
        },
    },
)
_QUERY = [
    {"name": "after", "in": "query", "schema": {"type": "string"}},
    {"name": "type", "in": "query", "schema": {"type": "string"}},
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    },
]
WEBHOOK: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "source": {"enum": ["config", "api"]},
        "url": {"type": "string"},
        "events": {"type": "array", "items": {"type": "string"}},
        "allow_private": {"type": "boolean"},
        "created_at": {"type": "number"},
        "disabled": {"type": "boolean"},
        "disabled_at": {"type": ["number", "null"]},
        "disabled_reason": {"type": ["string", "null"]},
        "backlog": {"type": "integer"},
        "last_errors": {"type": "array"},
        "secret": {"type": "string", "description": "Only in the answer that creates it."},
    },
}
NEW_WEBHOOK: dict[str, Any] = {
    "type": "object",
    "required": ["url"],
    "additionalProperties": False,
    "properties": {
        "url": {"type": "string"},
        "events": {"type": "array", "items": {"type": "string"}},
        "allow_private": {"type": "boolean", "default": False},
        "secret": {"type": "string", "description": "whsec_...; made when absent."},
    },
}
_WEBHOOK_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}

PATHS: dict[str, Any] = {
    "/v1/events": {
        "get": {
            "summary": "Delivery events of every message, in order (scope read).",
            "parameters": [
                *_QUERY,
                {"name": "qid", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {"200": _PAGE, **_ERRORS},
        }
    },
    "/v1/messages/{id}/events": {
        "get": {
            "summary": "One message's events, in order (scope read).",
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                *_QUERY,
            ],
            "responses": {"200": _PAGE, "404": _problem("No events for this id."), **_ERRORS},
        }
    },
    "/v1/webhooks": {
        "get": {
            "summary": "Webhook endpoints, with their backlog (scope admin).",
            "responses": {
                "200": _json(
                    "Endpoints.",
                    {
                        "type": "object",
                        "properties": {"webhooks": {"type": "array", "items": WEBHOOK}},
                    },
                ),
                **_ERRORS,
            },
        },
        "post": {
            "summary": "Add an endpoint; the answer shows its secret, once (scope admin).",
            "requestBody": {"required": True, "content": {JSON: {"schema": NEW_WEBHOOK}}},
            "responses": {"201": _json("Added.", WEBHOOK), **_ERRORS},
        },
    },
    "/v1/webhooks/{id}": {
        "parameters": [_WEBHOOK_ID],
        "get": {
            "summary": "One endpoint: backlog, last errors, next attempt (scope admin).",
            "responses": {
                "200": _json("The endpoint.", WEBHOOK),
                "404": _problem("Unknown."),
                **_ERRORS,
            },
        },
        "delete": {
            "summary": "Remove an endpoint added through the API (scope admin).",
            "responses": {
                "204": {"description": "Removed."},
                "404": _problem("Unknown."),
                "409": _problem("Configured in the file: remove it there."),
                **_ERRORS,
            },
        },
    },
}
