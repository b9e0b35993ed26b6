"""``GET /v1/openapi.json``: the OpenAPI 3.1 description of every ``/v1`` endpoint.

Served without a token: it describes the API, it holds nothing of the relay's state
(tools such as Schemathesis and client generators fetch it before they have a token).
Written out as a Python document, so that a unit test validates it with
``openapi-spec-validator`` and a change of an endpoint is a change here beside it.
It is one module because it is one document: split, its schemas would be read apart
from the paths that use them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from smtprelay import __version__
from smtprelay.events import openapi as events_openapi
from smtprelay.web.msgstatus import MESSAGE_STATUSES

PATH = "/v1/openapi.json"
JSON = "application/json"
PROBLEM = "application/problem+json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM: {"schema": _ref("Problem")}},
    }
    if headers:
        answer["headers"] = headers
    return answer


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema}}}


_RETRY = {
    "Retry-After": {
        "schema": {"type": "integer"},
        "description": "Seconds to wait before trying again.",
    }
}
_COMMON = {
    "400": _problem("The body is not valid JSON."),
    "401": _problem(
        "No token, or not a valid one.", {"WWW-Authenticate": {"schema": {"type": "string"}}}
    ),
    "403": _problem("The token lacks the scope (or the sender domain)."),
    "415": _problem("Wrong Content-Type."),
    "422": _problem("Invalid fields: every one named by a JSON Pointer."),
    "429": _problem("Too many requests.", _RETRY),
    "503": _problem("Spool unwritable, disk full or shutting down.", _RETRY),
}


def _answers(ok: dict[str, dict[str, Any]], *codes: str) -> dict[str, Any]:
    answers = dict(ok)
    for code in ("401", "403", "429", "503", *codes):
        answers[code] = _COMMON.get(code) or _problem(
            {
                "404": "Unknown message or template.",
                "409": "Conflict.",
                "413": "Body or message over the limits.",
            }[code]
        )
    return answers


_ADDRESS = {
    "oneOf": [
        {"type": "string", "format": "email"},
        {
            "type": "object",
            "required": ["email"],
            "additionalProperties": False,
            "properties": {"email": {"type": "string"}, "name": {"type": "string"}},
        },
    ]
}
_TIME = {"type": "string", "format": "date-time"}
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{13}$"},
    "description": "The queue ID (the SMTP `250 ... queued as` ID, the mail log's).",
}
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["pointer", "detail"],
                    "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}},
                },
            },
        },
    },
    "Message": {
        "type": "object",
        "additionalProperties": False,
        "description": "One message; `raw` excludes subject, text, html, template and attachments.",
        "properties": {
            "from": _ADDRESS,
            "to": {"type": "array", "items": _ADDRESS},
            "cc": {"type": "array", "items": _ADDRESS},
            "bcc": {"type": "array", "items": _ADDRESS},
            "reply_to": {"oneOf": [_ADDRESS, {"type": "array", "items": _ADDRESS}]},
            "subject": {"type": "string"},
            "text": {"type": "string"},
            "html": {"type": "string"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "attachments": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["filename", "content"],
                    "additionalProperties": False,
                    "properties": {
                        "filename": {"type": "string"},
                        "content_type": {"type": "string"},
                        "content": {"type": "string", "contentEncoding": "base64"},
                        "content_id": {"type": "string"},
                    },
                },
            },
            "tags": {"type": "array", "items": {"type": "string"}},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "send_at": {**_TIME, "description": "RFC 3339 with an offset; past: now."},
            "envelope": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"mail_from": {"type": "string"}},
            },
            "dsn": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "notify": {
                        "type": "array",
                        "items": {"enum": ["NEVER", "SUCCESS", "FAILURE", "DELAY"]},
                    },
                    "ret": {"enum": ["FULL", "HDRS"]},
                    "envid": {"type": "string"},
                },
            },
            "template": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "integer", "minimum": 1},
                },
            },
            "variables": {"type": "object"},
            "raw": {"type": "string", "contentEncoding": "base64"},
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["id", "status", "recipients"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["queued", "scheduled"]},
            "send_at": _TIME,
            "recipients": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["email", "status"],
                    "properties": {"email": {"type": "string"}, "status": {"type": "string"}},
                },
            },
        },
    },
    "Reply": {
        "type": "object",
        "required": ["code", "enhanced", "text", "host"],
        "properties": {
            "code": {"type": ["integer", "null"]},
            "enhanced": {"type": ["string", "null"]},
            "text": {"type": "string"},
            "host": {"type": ["string", "null"]},
        },
    },
    "MessageStatus": {
        "type": "object",
        "required": [
            "id",
            "status",
            "submitted_via",
            "created_at",
            "tags",
            "metadata",
            "size",
            "recipients",
        ],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": list(MESSAGE_STATUSES)},
            "submitted_via": {"enum": ["smtp", "http"]},
            "created_at": _TIME,
            "send_at": _TIME,
            "tags": {"type": "array", "items": {"type": "string"}},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "size": {"type": "integer"},
            "recipients": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["email", "status", "attempts"],
                    "properties": {
                        "email": {"type": "string"},
                        "status": {"type": "string"},
                        "attempts": {"type": "integer"},
                        "last_reply": _ref("Reply"),
                        "next_attempt_at": _TIME,
                        "delivered_at": _TIME,
                    },
                },
            },
        },
    },
    "CancelResult": {
        "type": "object",
        "required": ["id", "recipients"],
        "properties": {
            "id": {"type": "string"},
            "recipients": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["email", "result"],
                    "properties": {
                        "email": {"type": "string"},
                        "result": {"enum": ["canceled", "too_late", "pending"]},
                        "status": {"type": "string"},
                    },
                },
            },
        },
    },
    "TemplateBody": {
        "type": "object",
        "required": ["subject"],
        "additionalProperties": False,
        "properties": {
            "subject": {"type": "string"},
            "text": {"type": ["string", "null"]},
            "html": {"type": ["string", "null"]},
        },
    },
    "Template": {
        "type": "object",
        "required": ["name", "version", "created_at"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "integer"},
            "created_at": _TIME,
            "subject": {"type": "string"},
            "text": {"type": ["string", "null"]},
            "html": {"type": ["string", "null"]},
        },
    },
}

_BATCH = {
    "type": "object",
    "required": ["messages"],
    "additionalProperties": False,
    "properties": {
        "messages": {"type": "array", "minItems": 1, "items": _ref("Message")},
        "defaults": _ref("Message"),
        "validation": {"enum": ["strict", "permissive"], "default": "strict"},
    },
}
_BATCH_RESULT = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "messages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "status"],
                "properties": {
                    "index": {"type": "integer"},
                    "id": {"type": "string"},
                    "status": {"type": "string"},
                    "errors": {"type": "array"},
                },
            },
        }
    },
}
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 255},
}
_ACCEPTED = {
    "description": "Queued: fsynced to the spool.",
    "headers": {"Location": {"schema": {"type": "string"}}},
    "content": {JSON: {"schema": _ref("Accepted")}},
}

PATHS: dict[str, Any] = {
    "/v1/messages": {
        "post": {
            "summary": "Submit one message (JSON, or message/rfc822 with the envelope in "
            "the query).",
            "security": [{"bearer": []}],
            "parameters": [_IDEMPOTENCY],
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {"schema": _ref("Message")},
                    "message/rfc822": {"schema": {"type": "string"}},
                },
            },
            "responses": _answers({"202": _ACCEPTED}, "400", "409", "413", "415", "422"),
        },
        "get": {
            "summary": "Queued and recently finished messages, newest first.",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "status", "in": "query", "schema": {"enum": list(MESSAGE_STATUSES)}},
                {"name": "tag", "in": "query", "schema": {"type": "string"}},
                {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                },
            ],
            "responses": _answers(
                {
                    "200": _json(
                        "A page of messages.",
                        {
                            "type": "object",
                            "required": ["messages", "next_cursor"],
                            "properties": {
                                "messages": {"type": "array", "items": _ref("MessageStatus")},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        },
                    )
                },
                "422",
            ),
        },
    },
    "/v1/messages/batch": {
        "post": {
            "summary": "Submit up to [http] batch_max messages, made durable together.",
            "security": [{"bearer": []}],
            "parameters": [_IDEMPOTENCY],
            "requestBody": _body(_BATCH),
            "responses": _answers(
                {"202": _json("At least one queued.", _BATCH_RESULT)},
                "400",
                "409",
                "413",
                "415",
                "422",
            ),
        },
    },
    "/v1/messages/{id}": {
        "parameters": [_ID],
        "get": {
            "summary": "One message's status, the same for SMTP and HTTP submissions.",
            "security": [{"bearer": []}],
            "responses": _answers({"200": _json("Its status.", _ref("MessageStatus"))}, "404"),
        },
        "patch": {
            "summary": "Move a scheduled message.",
            "security": [{"bearer": []}],
            "requestBody": _body(
                {
                    "type": "object",
                    "required": ["send_at"],
                    "additionalProperties": False,
                    "properties": {"send_at": _TIME},
                }
            ),
            "responses": _answers(
                {"200": _json("Its status.", _ref("MessageStatus"))},
                "400",
                "404",
                "409",
                "415",
                "422",
            ),
        },
    },
    "/v1/messages/{id}/cancel": {
        "parameters": [_ID],
        "post": {
            "summary": "Cancel every recipient not delivered or failed yet.",
            "security": [{"bearer": []}],
            "responses": _answers(
                {"200": _json("Each recipient's result.", _ref("CancelResult"))}, "404", "409"
            ),
        },
    },
    "/v1/templates": {
        "get": {
            "summary": "The latest version of every template.",
            "security": [{"bearer": []}],
            "responses": _answers(
                {
                    "200": _json(
                        "Templates.",
                        {
                            "type": "object",
                            "required": ["templates"],
                            "properties": {
                                "templates": {"type": "array", "items": _ref("Template")}
                            },
                        },
                    )
                }
            ),
        },
    },
    "/v1/templates/{name}": {
        "parameters": [_NAME],
        "put": {
            "summary": "Store a new version.",
            "security": [{"bearer": []}],
            "requestBody": _body(_ref("TemplateBody")),
            "responses": _answers(
                {
                    "201": _json(
                        "Stored (fsynced).",
                        {
                            "type": "object",
                            "required": ["name", "version"],
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "integer"},
                            },
                        },
                    )
                },
                "400",
                "404",
                "415",
                "422",
            ),
        },
        "get": {
            "summary": "The latest version, or ?version=N.",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "version", "in": "query", "schema": {"type": "integer", "minimum": 1}}
            ],
            "responses": _answers({"200": _json("The template.", _ref("Template"))}, "404", "422"),
        },
        "delete": {
            "summary": "Delete every version.",
            "security": [{"bearer": []}],
            "responses": _answers(
                {
                    "200": _json(
                        "Deleted.",
                        {
                            "type": "object",
                            "required": ["name", "deleted_versions"],
                            "properties": {
                                "name": {"type": "string"},
                                "deleted_versions": {"type": "integer"},
                            },
                        },
                    )
                },
                "404",
            ),
        },
    },
    "/v1/templates/{name}/render": {
        "parameters": [_NAME],
        "post": {
            "summary": "Preview: render with variables.",
            "security": [{"bearer": []}],
            "requestBody": _body(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "variables": {"type": "object"},
                        "version": {"type": "integer", "minimum": 1},
                    },
                }
            ),
            "responses": _answers(
                {
                    "200": _json(
                        "The rendered parts.",
                        {
                            "type": "object",
                            "required": ["name", "version", "subject", "text", "html"],
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "integer"},
                                "subject": {"type": "string"},
                                "text": {"type": ["string", "null"]},
                                "html": {"type": ["string", "null"]},
                            },
                        },
                    )
                },
                "400",
                "404",
                "415",
                "422",
            ),
        },
    },
    PATH: {
        "get": {
            "summary": "This document (no token needed).",
            "security": [],
            "responses": {"200": _json("OpenAPI 3.1.", {"type": "object"})},
        },
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "smtprelay HTTP API",
            "version": __version__,
            "description": "JSON submission, status, cancel, templates, delivery events "
            "and webhooks beside SMTP, on the same spool. Errors are RFC 9457 problems.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "security": [{"bearer": []}],
        "paths": {**PATHS, **events_openapi.PATHS},
    }


async def serve(request: web.Request) -> web.Response:
    return web.json_response(document())


def register(app: web.Application) -> None:
    app.router.add_get(PATH, serve)
