"""The messages resource of the OpenAPI document (web/openapi.py): submission (one
message, a batch), status, listing, moving and cancelling, with their schemas."""

from __future__ import annotations

from typing import Any

from smtprelay.web import openapi_common as oa
from smtprelay.web.msgstatus import MESSAGE_STATUSES

_ADDRESS = {
    "oneOf": [
        {"type": "string", "format": "email"},
        oa.obj({"email": oa.STRING, "name": oa.STRING}, "email", closed=True),
    ]
}
_ADDRESSES = {"type": "array", "items": _ADDRESS}
_STRINGS = {"type": "array", "items": oa.STRING}
_STRING_MAP = {"type": "object", "additionalProperties": oa.STRING}
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{13}$"},
    "description": "The queue ID (the SMTP `250 ... queued as` ID, the mail log's).",
}


def _list_of(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    """An array of objects (a recipient list, a batch's results)."""
    return {"type": "array", "items": oa.obj(properties, *required)}


SCHEMAS: dict[str, Any] = {
    "Message": {
        **oa.obj(
            {
                "from": _ADDRESS,
                "to": _ADDRESSES,
                "cc": _ADDRESSES,
                "bcc": _ADDRESSES,
                "reply_to": {"oneOf": [_ADDRESS, _ADDRESSES]},
                "subject": oa.STRING,
                "text": oa.STRING,
                "html": oa.STRING,
                "headers": _STRING_MAP,
                "attachments": {
                    "type": "array",
                    "items": oa.obj(
                        {
                            "filename": oa.STRING,
                            "content_type": oa.STRING,
                            "content": {"type": "string", "contentEncoding": "base64"},
                            "content_id": oa.STRING,
                        },
                        "filename",
                        "content",
                        closed=True,
                    ),
                },
                "tags": _STRINGS,
                "metadata": _STRING_MAP,
                "send_at": {**oa.TIME, "description": "RFC 3339 with an offset; past: now."},
                "envelope": oa.obj({"mail_from": oa.STRING}, closed=True),
                "dsn": oa.obj(
                    {
                        "notify": {
                            "type": "array",
                            "items": {"enum": ["NEVER", "SUCCESS", "FAILURE", "DELAY"]},
                        },
                        "ret": {"enum": ["FULL", "HDRS"]},
                        "envid": oa.STRING,
                    },
                    closed=True,
                ),
                "template": oa.obj(
                    {"name": oa.STRING, "version": {"type": "integer", "minimum": 1}},
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
    "Accepted": oa.obj(
        {
            "id": oa.STRING,
            "status": {"enum": ["queued", "scheduled"]},
            "send_at": oa.TIME,
            "recipients": _list_of({"email": oa.STRING, "status": oa.STRING}, "email", "status"),
        },
        "id",
        "status",
        "recipients",
    ),
    "Reply": oa.obj(
        {
            "code": {"type": ["integer", "null"]},
            "enhanced": {"type": ["string", "null"]},
            "text": oa.STRING,
            "host": {"type": ["string", "null"]},
        },
        "code",
        "enhanced",
        "text",
        "host",
    ),
    "MessageStatus": oa.obj(
        {
            "id": oa.STRING,
            "status": {"enum": list(MESSAGE_STATUSES)},
            "submitted_via": {"enum": ["smtp", "http"]},
            "created_at": oa.TIME,
            "send_at": oa.TIME,
            "tags": _STRINGS,
            "metadata": _STRING_MAP,
            "size": oa.INTEGER,
            "recipients": _list_of(
                {
                    "email": oa.STRING,
                    "status": oa.STRING,
                    "attempts": oa.INTEGER,
                    "last_reply": oa.ref("Reply"),
                    "next_attempt_at": oa.TIME,
                    "delivered_at": oa.TIME,
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
    "CancelResult": oa.obj(
        {
            "id": oa.STRING,
            "recipients": _list_of(
                {
                    "email": oa.STRING,
                    "result": {"enum": ["canceled", "too_late", "pending"]},
                    "status": oa.STRING,
                },
                "email",
                "result",
            ),
        },
        "id",
        "recipients",
    ),
}

_BATCH = oa.obj(
    {
        "messages": {"type": "array", "minItems": 1, "items": oa.ref("Message")},
        "defaults": oa.ref("Message"),
        "validation": {"enum": ["strict", "permissive"], "default": "strict"},
    },
    "messages",
    closed=True,
)
_BATCH_RESULT = oa.obj(
    {
        "messages": _list_of(
            {
                "index": oa.INTEGER,
                "id": oa.STRING,
                "status": oa.STRING,
                "errors": {"type": "array"},
            },
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
    "headers": {"Location": {"schema": oa.STRING}},
    "content": {oa.JSON: {"schema": oa.ref("Accepted")}},
}
_STATUS = oa.json_answer("Its status.", oa.ref("MessageStatus"))

PATHS: dict[str, Any] = {
    "/v1/messages": {
        "post": {
            "summary": "Submit one message (JSON, or message/rfc822 with the envelope in "
            "the query).",
            "security": oa.BEARER,
            "parameters": [_IDEMPOTENCY],
            "requestBody": {
                "required": True,
                "content": {
                    oa.JSON: {"schema": oa.ref("Message")},
                    "message/rfc822": {"schema": oa.STRING},
                },
            },
            "responses": oa.answers({"202": _ACCEPTED}, "400", "409", "413", "415", "422"),
        },
        "get": {
            "summary": "Queued and recently finished messages, newest first.",
            "security": oa.BEARER,
            "parameters": [
                {"name": "status", "in": "query", "schema": {"enum": list(MESSAGE_STATUSES)}},
                {"name": "tag", "in": "query", "schema": oa.STRING},
                {"name": "cursor", "in": "query", "schema": oa.STRING},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                },
            ],
            "responses": oa.answers(
                {
                    "200": oa.json_answer(
                        "A page of messages.",
                        oa.obj(
                            {
                                "messages": {"type": "array", "items": oa.ref("MessageStatus")},
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
            "security": oa.BEARER,
            "parameters": [_IDEMPOTENCY],
            "requestBody": oa.body(_BATCH),
            "responses": oa.answers(
                {"202": oa.json_answer("At least one queued.", _BATCH_RESULT)},
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
            "security": oa.BEARER,
            "responses": oa.answers({"200": _STATUS}, "404"),
        },
        "patch": {
            "summary": "Move a scheduled message.",
            "security": oa.BEARER,
            "requestBody": oa.body(oa.obj({"send_at": oa.TIME}, "send_at", closed=True)),
            "responses": oa.answers({"200": _STATUS}, "400", "404", "409", "415", "422"),
        },
    },
    "/v1/messages/{id}/cancel": {
        "parameters": [_ID],
        "post": {
            "summary": "Cancel every recipient not delivered or failed yet.",
            "security": oa.BEARER,
            "responses": oa.answers(
                {"200": oa.json_answer("Each recipient's result.", oa.ref("CancelResult"))},
                "404",
                "409",
            ),
        },
    },
}
