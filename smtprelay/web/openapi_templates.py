"""The templates resource of the OpenAPI document (web/openapi.py): list, store a new
version, read, delete, and render a preview, with their schemas."""

from __future__ import annotations

from typing import Any

from smtprelay.web.openapi_common import (
    BEARER,
    INTEGER,
    OPTIONAL_STRING,
    STRING,
    TIME,
    answers,
    body,
    json_answer,
    obj,
    ref,
)

_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
}
_VERSION = {"type": "integer", "minimum": 1}

SCHEMAS: dict[str, Any] = {
    "TemplateBody": obj(
        {"subject": STRING, "text": OPTIONAL_STRING, "html": OPTIONAL_STRING},
        "subject",
        closed=True,
    ),
    "Template": obj(
        {
            "name": STRING,
            "version": INTEGER,
            "created_at": TIME,
            "subject": STRING,
            "text": OPTIONAL_STRING,
            "html": OPTIONAL_STRING,
        },
        "name",
        "version",
        "created_at",
    ),
}

PATHS: dict[str, Any] = {
    "/v1/templates": {
        "get": {
            "summary": "The latest version of every template.",
            "security": BEARER,
            "responses": answers(
                {
                    "200": json_answer(
                        "Templates.",
                        obj(
                            {"templates": {"type": "array", "items": ref("Template")}}, "templates"
                        ),
                    )
                }
            ),
        },
    },
    "/v1/templates/{name}": {
        "parameters": [_NAME],
        "put": {
            "summary": "Store a new version.",
            "security": BEARER,
            "requestBody": body(ref("TemplateBody")),
            "responses": answers(
                {
                    "201": json_answer(
                        "Stored (fsynced).",
                        obj({"name": STRING, "version": INTEGER}, "name", "version"),
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
            "security": BEARER,
            "parameters": [{"name": "version", "in": "query", "schema": _VERSION}],
            "responses": answers(
                {"200": json_answer("The template.", ref("Template"))}, "404", "422"
            ),
        },
        "delete": {
            "summary": "Delete every version.",
            "security": BEARER,
            "responses": answers(
                {
                    "200": json_answer(
                        "Deleted.",
                        obj(
                            {"name": STRING, "deleted_versions": INTEGER},
                            "name",
                            "deleted_versions",
                        ),
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
            "security": BEARER,
            "requestBody": body(
                obj({"variables": {"type": "object"}, "version": _VERSION}, closed=True)
            ),
            "responses": answers(
                {
                    "200": json_answer(
                        "The rendered parts.",
                        obj(
                            {
                                "name": STRING,
                                "version": INTEGER,
                                "subject": STRING,
                                "text": OPTIONAL_STRING,
                                "html": OPTIONAL_STRING,
                            },
                            "name",
                            "version",
                            "subject",
                            "text",
                            "html",
                        ),
                    )
                },
                "400",
                "404",
                "415",
                "422",
            ),
        },
    },
}
