"""The messages resource of the OpenAPI document (web/openapi.py): submission (one
message, a batch), status, listing, moving and cancelling, with their schemas."""

from __future__ import annotations

from typing import Any

from smtprelay.web.msgstatus import MESSAGE_STATUSES
from smtprelay.web.openapi_common import (
    BEARER,
    INTEGER,
    JSON,
    STRING,
    TIME,
    answers,
    body,
    json_answer,
    obj,
    ref,
)

_ADDRESS = {
    "oneOf": [
        {"type": "string", "format": "email"},
        obj({"email": STRING, "name": STRING}, "email", closed=True),
    ]
}
_ADDRESSES = {"type": "array", "items": _ADDRESS}
_STRINGS = {"type": "array", "items": STRING}
_STRING_MAP = {"type": "object", "additionalProperties": STRING}
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{13}$"},
    "description": "The queue ID (the SMTP `250 ... queued as` ID, the mail log's).",
}


def _list_of(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    """An array of objects (a recipient list, a batch's results)."""
    return {"type": "array", "items": obj(properties, *required)}


SCHEMAS: dict[str, Any] = {
    "Message": {
        **obj(
            {
                "from": _ADDRESS,
                "to": _ADDRESSES,
                "cc": _ADDRESSES,
                "bcc": _ADDRESSES,
                "reply_to": {"oneOf": [_ADDRESS, _ADDRESSES]},
                "subject": STRING,
                "text": STRING,
                "html": STRING,
                "headers": _STRING_MAP,
                "attachments": {
                    "type": "array",
                    "items": obj(
                        {
                            "filename": STRING,
                            "content_type": STRING,
                            "content": {"type": "string", "contentEncoding": "base64"},
                            "content_id": STRING,
                        },
                        "filename",
                        "content",
                        closed=True,
                    ),
                },
                "tags": _STRINGS,
                "metadata": _STRING_MAP,
                "send_at": {**TIME, "description": "RFC 3339 with an offset; past: now."},
                "envelope": obj({"mail_from": STRING}, closed=True),
                "dsn": obj(
                    {
                        "notify": {
                            "type": "array",
                            "items": {"enum": ["NEVER", "SUCCESS", "FAILURE", "DELAY"]},
                        },
                        "ret": {"enum": ["FULL", "HDRS"]},
                        "envid": STRING,
                    },
                    closed=True,
                ),
                "template": obj(
                    {"name": STRING, "version": {"type": "integer", "minimum": 1}},
                    "name",
                    closed=True,
                ),
                "variables": {"type": "object"},
                "raw": {"type": "string", "contentEncoding": "base64"},
            },
            closed=True,
        ),
        "description": "One message; `raw` excludes subject, text, html, template and attachments.",
    },
    "Accepted": obj(
        {
            "id": STRING,
            "status": {"enum": ["queued", "scheduled"]},
            "send_at": TIME,
            "recipients": _list_of({"email": STRING, "status": STRING}, "email", "status"),
        },
        "id",
        "status",
        "recipients",
    ),
    "Reply": obj(
        {
            "code": {"type": ["integer", "null"]},
            "enhanced": {"type": ["string", "null"]},
            "text": STRING,
            "host": {"type": ["string", "null"]},
        },
        "code",
        "enhanced",
        "text",
        "host",
    ),
    "MessageStatus": obj(
        {
            "id": STRING,
            "status": {"enum": list(MESSAGE_STATUSES)},
            "submitted_via": {"enum": ["smtp", "http"]},
            "created_at": TIME,
            "send_at": TIME,
            "tags": _STRINGS,
            "metadata": _STRING_MAP,
            "size": INTEGER,
            "recipients": _list_of(
                {
                    "email": STRING,
                    "status": STRING,
                    "attempts": INTEGER,
                    "last_reply": ref("Reply"),
                    "next_attempt_at": TIME,
                    "delivered_at": TIME,
                },
                "email",
                "status",
                "attempts",
            ),
        },
        "id",
        "status",
        "submitted_via",
        "created_at",
        "tags",
        "metadata",
        "size",
        "recipients",
    ),
    "CancelResult": obj(
        {
            "id": STRING,
            "recipients": _list_of(
                {
                    "email": STRING,
                    "result": {"enum": ["canceled", "too_late", "pending"]},
                    "status": STRING,
                },
                "email",
                "result",
            ),
        },
        "id",
        "recipients",
    ),
}

_BATCH = obj(
    {
        "messages": {"type": "array", "minItems": 1, "items": ref("Message")},
        "defaults": ref("Message"),
        "validation": {"enum": ["strict", "permissive"], "default": "strict"},
    },
    "messages",
    closed=True,
)
_BATCH_RESULT = obj(
    {
        "messages": _list_of(
            {"index": INTEGER, "id": STRING, "status": STRING, "errors": {"type": "array"}},
            "index",
            "status",
        )
    },
    "messages",
)
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 255},
}
_ACCEPTED = {
    "description": "Queued: fsynced to the spool.",
    "headers": {"Location": {"schema": STRING}},
    "content": {JSON: {"schema": ref("Accepted")}},
}
_STATUS = json_answer("Its status.", ref("MessageStatus"))

PATHS: dict[str, Any] = {
    "/v1/messages": {
        "post": {
            "summary": "Submit one message (JSON, or message/rfc822 with the envelope in "
            "the query).",
            "security": BEARER,
            "parameters": [_IDEMPOTENCY],
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {"schema": ref("Message")},
                    "message/rfc822": {"schema": STRING},
                },
            },
            "responses": answers({"202": _ACCEPTED}, "400", "409", "413", "415", "422"),
        },
        "get": {
            "summary": "Queued and recently finished messages, newest first.",
            "security": BEARER,
            "parameters": [
                {"name": "status", "in": "query", "schema": {"enum": list(MESSAGE_STATUSES)}},
                {"name": "tag", "in": "query", "schema": STRING},
                {"name": "cursor", "in": "query", "schema": STRING},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                },
            ],
            "responses": answers(
                {
                    "200": json_answer(
                        "A page of messages.",
                        obj(
                            {
                                "messages": {"type": "array", "items": ref("MessageStatus")},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                            "messages",
                            "next_cursor",
                        ),
                    )
                },
                "422",
            ),
        },
    },
    "/v1/messages/batch": {
        "post": {
            "summary": "Submit up to [http] batch_max messages, made durable together.",
            "security": BEARER,
            "parameters": [_IDEMPOTENCY],
            "requestBody": body(_BATCH),
            "responses": answers(
                {"202": json_answer("At least one queued.", _BATCH_RESULT)},
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
            "security": BEARER,
            "responses": answers({"200": _STATUS}, "404"),
        },
        "patch": {
            "summary": "Move a scheduled message.",
            "security": BEARER,
            "requestBody": body(obj({"send_at": TIME}, "send_at", closed=True)),
            "responses": answers({"200": _STATUS}, "400", "404", "409", "415", "422"),
        },
    },
    "/v1/messages/{id}/cancel": {
        "parameters": [_ID],
        "post": {
            "summary": "Cancel every recipient not delivered or failed yet.",
            "security": BEARER,
            "responses": answers(
                {"200": json_answer("Each recipient's result.", ref("CancelResult"))},
                "404",
                "409",
            ),
        },
    },
}
