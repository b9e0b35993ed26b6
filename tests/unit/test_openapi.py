"""GET /v1/openapi.json: a valid OpenAPI 3.1 document naming every /v1 endpoint."""

from __future__ import annotations

from openapi_spec_validator import validate

from smtprelay.events.api import WEBHOOK_FIELDS
from smtprelay.events.openapi import NEW_WEBHOOK
from smtprelay.web.openapi import document


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any error


def test_every_endpoint_of_the_api_is_described() -> None:
    paths = document()["paths"]
    wanted = {
        "/v1/messages": {"post", "get"},
        "/v1/messages/batch": {"post"},
        "/v1/messages/{id}": {"get", "patch"},
        "/v1/messages/{id}/cancel": {"post"},
        "/v1/templates": {"get"},
        "/v1/templates/{name}": {"put", "get", "delete"},
        "/v1/templates/{name}/render": {"post"},
        "/v1/openapi.json": {"get"},
        "/v1/events": {"get"},
        "/v1/messages/{id}/events": {"get"},
        "/v1/webhooks": {"get", "post"},
        "/v1/webhooks/{id}": {"get", "delete"},
    }
    for path, methods in wanted.items():
        assert methods <= set(paths[path]), path
    # Every error answer of every operation is a problem+json document.
    for path, item in paths.items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for code, answer in operation["responses"].items():
                if int(code) >= 400:
                    assert "application/problem+json" in answer["content"], (path, code)


def test_a_new_webhook_is_described_with_the_fields_the_handler_takes() -> None:
    assert set(NEW_WEBHOOK["properties"]) == WEBHOOK_FIELDS
