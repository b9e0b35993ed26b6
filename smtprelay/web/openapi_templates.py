"""The templates resource of the OpenAPI document (web/openapi.py): list, store a new
version, read, delete, and render a preview, with their schemas."""

from __future__ import annotations

from typing import Any

from smtprelay.web import openapi_common as oa

_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
}
_VERSION = {"type": "integer", "minimum": 1}

SCHEMAS: dict[str, Any] = {
    "TemplateBody": oa.obj(
        {"subject": oa.STRING, "text": oa.OPTIONAL_STRING, "html": oa.OPTIONAL_STRING},
        "subject",
        closed=True,
    ),
    "Template": oa.obj(
        {
            "name": oa.STRING,
            "version": oa.INTEGER,
            "created_at": oa.TIME,
            "subject": oa.STRING,
            "text": oa.OPTIONAL_STRING,
            "html": oa.OPTIONAL_STRING,
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
            "security": oa.BEARER,
            "responses": oa.answers(
                {
                    "200": oa.json_answer(
                        "Templates.",
                        oa.obj(
                            {"templates": {"type": "array", "items": oa.ref("Template")}},
                            "templates",
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
            "security": oa.BEARER,
            "requestBody": oa.body(oa.ref("TemplateBody")),
            "responses": oa.answers(
                {
                    "201": oa.json_answer(
                        "Stored (fsynced).",
                        oa.obj({"name": oa.STRING, "version": oa.INTEGER}, "name", "version"),
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
            "security": oa.BEARER,
            "parameters": [{"name": "version", "in": "query", "schema": _VERSION}],
            "responses": oa.answers(
                {"200": oa.json_answer("The template.", oa.ref("Template"))}, "404", "422"
            ),
        },
        "delete": {
            "summary": "Delete every version.",
            "security": oa.BEARER,
            "responses": oa.answers(
                {
                    "200": oa.json_answer(
                        "Deleted.",
                        oa.obj(
                            {"name": oa.STRING, "deleted_versions": oa.INTEGER},
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
            "security": oa.BEARER,
            "requestBody": oa.body(
                oa.obj({"variables": {"type": "object"}, "version": _VERSION}, closed=True)
            ),
            "responses": oa.answers(
                {
                    "200": oa.json_answer(
                        "The rendered parts.",
                        oa.obj(
                            {
                                "name": oa.STRING,
                                "version": oa.INTEGER,
                                "subject": oa.STRING,
                                "text": oa.OPTIONAL_STRING,
                                "html": oa.OPTIONAL_STRING,
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
