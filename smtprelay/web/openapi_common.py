"""The parts of the OpenAPI document (web/openapi.py) that every resource uses: media
types, references, the problem answers and the answers common to every endpoint."""

from __future__ import annotations

from typing import Any

JSON = "application/json"
PROBLEM = "application/problem+json"
# Every endpoint but the document itself takes a bearer token.
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM: {"schema": ref("Problem")}},
    }
    if headers:
        answer["headers"] = headers
    return answer


def json_answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema}}}


def obj(properties: dict[str, Any], *required: str, closed: bool = False) -> dict[str, Any]:
    """A JSON object schema: its properties, those ``required``, ``closed``: no others."""
    schema: dict[str, Any] = {"type": "object"}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    schema["properties"] = properties
    return schema


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
OPTIONAL_STRING = {"type": ["string", "null"]}
TIME = {"type": "string", "format": "date-time"}

RETRY = {
    "Retry-After": {
        "schema": {"type": "integer"},
        "description": "Seconds to wait before trying again.",
    }
}
COMMON = {
    "400": problem("The body is not valid JSON."),
    "401": problem(
        "No token, or not a valid one.", {"WWW-Authenticate": {"schema": {"type": "string"}}}
    ),
    "403": problem("The token lacks the scope (or the sender domain)."),
    "415": problem("Wrong Content-Type."),
    "422": problem("Invalid fields: every one named by a JSON Pointer."),
    "429": problem("Too many requests.", RETRY),
    "503": problem("Spool unwritable, disk full or shutting down.", RETRY),
}


def answers(ok: dict[str, dict[str, Any]], *codes: str) -> dict[str, Any]:
    result = dict(ok)
    for code in ("401", "403", "429", "503", *codes):
        result[code] = COMMON.get(code) or problem(
            {
                "404": "Unknown message or template.",
                "409": "Conflict.",
                "413": "Body or message over the limits.",
            }[code]
        )
    return result


SCHEMAS: dict[str, Any] = {
    "Problem": obj(
        {
            "type": STRING,
            "title": STRING,
            "status": INTEGER,
            "detail": STRING,
            "errors": {
                "type": "array",
                "items": obj({"pointer": STRING, "detail": STRING}, "pointer", "detail"),
            },
        },
        "type",
        "title",
        "status",
        "detail",
    ),
}
