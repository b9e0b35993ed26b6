"""``GET /v1/openapi.json``: the OpenAPI 3.1 description of every ``/v1`` endpoint.

Served without a token: it describes the API, it holds nothing of the relay's state
(tools such as Schemathesis and client generators fetch it before they have a token).
Written out as a Python document, so that a unit test validates it with
``openapi-spec-validator`` and a change of an endpoint is a change beside it: one module
per resource, each with the paths and the schemas they use (openapi_messages.py,
openapi_templates.py, events/openapi.py), and what they share in openapi_common.py.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from smtprelay import __version__
from smtprelay.events import openapi as events_openapi
from smtprelay.web import openapi_common, openapi_messages, openapi_templates
from smtprelay.web.openapi_common import json_answer

PATH = "/v1/openapi.json"

SCHEMAS: dict[str, Any] = {
    **openapi_common.SCHEMAS,
    **openapi_messages.SCHEMAS,
    **openapi_templates.SCHEMAS,
}

PATHS: dict[str, Any] = {
    **openapi_messages.PATHS,
    **openapi_templates.PATHS,
    PATH: {
        "get": {
            "summary": "This document (no token needed).",
            "security": [],
            "responses": {"200": json_answer("OpenAPI 3.1.", {"type": "object"})},
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
