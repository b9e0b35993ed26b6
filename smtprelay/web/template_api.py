"""``/v1/templates``: store, read, list, delete and preview message templates (scope
``templates``). The store itself is :mod:`smtprelay.web.templates`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from smtprelay.web.context import context, require
from smtprelay.web.msgstatus import rfc3339
from smtprelay.web.problem import (
    ApiProblem,
    FieldError,
    invalid,
    json_object,
    not_found,
    unavailable,
)
from smtprelay.web.templates import (
    MAX_PART,
    NAME,
    PARTS,
    StoredTemplate,
    TemplateInvalid,
    TemplateNotFound,
    TemplateRenderError,
    TemplateStore,
)

_T = TypeVar("_T")
# Each route is declared on its handler.
_ROUTES = web.RouteTableDef()


def _store(request: web.Request) -> TemplateStore:
    require(request, "templates")
    store = context(request).templates
    if store is None:
        raise unavailable("templates are not available (the store could not be read)")
    return store


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not NAME.fullmatch(name):
        raise not_found(
            f"no template {name!r} (names are letters, digits, '.', '_' and '-', up to 64)"
        )
    return name


async def _io(func: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


def _shown(stored: StoredTemplate, *, parts: bool = True) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "name": stored.name,
        "version": stored.version,
        "created_at": rfc3339(stored.created),
    }
    if parts:
        shown.update(subject=stored.subject, text=stored.text, html=stored.html)
    return shown


def _line_of(error: TemplateRenderError) -> dict[str, Any]:
    return {"part": error.part, "line": error.line}


@_ROUTES.put("/v1/templates/{name}")
async def put_template(request: web.Request) -> web.Response:
    """A new version: 201 ``{"name", "version"}``; 422 naming every bad field (a
    template that does not compile: its part and line)."""
    store = _store(request)
    name = _name(request)
    body = await json_object(request)
    errors = [FieldError(f"/{k}", "unknown field") for k in body if k not in PARTS]
    for part in PARTS:
        value = body.get(part)
        if part == "subject" and value is None:
            errors.append(FieldError("/subject", "required"))
        elif value is not None and not isinstance(value, str):
            errors.append(FieldError(f"/{part}", "must be a string"))
        elif isinstance(value, str) and len(value) > MAX_PART:
            errors.append(FieldError(f"/{part}", f"longer than {MAX_PART} characters"))
    if body.get("text") is None and body.get("html") is None:
        errors.append(FieldError("/text", "a text or an html part is required"))
    if errors:
        raise invalid(errors)
    try:
        version = await _io(store.put, name, body["subject"], body.get("text"), body.get("html"))
    except TemplateInvalid as e:
        raise ApiProblem(
            422,
            "template-syntax",
            "Template syntax error",
            str(e),
            [FieldError(f"/{x.part}", x.detail) for x in e.errors],
            extra={"lines": [_line_of(x) for x in e.errors]},
        ) from None
    except OSError as e:
        raise unavailable(f"the template cannot be stored now: {e.strerror or e}") from None
    return web.json_response(
        {"name": name, "version": version},
        status=201,
        headers={"Location": f"/v1/templates/{name}?version={version}"},
    )


@_ROUTES.get("/v1/templates/{name}")
async def get_template(request: web.Request) -> web.Response:
    store = _store(request)
    name = _name(request)
    version: int | None = None
    if "version" in request.query:
        try:
            version = int(request.query["version"])
            if version < 1:
                raise ValueError
        except ValueError:
            raise invalid([FieldError("/version", "a version number (1, 2, ...)")]) from None
    try:
        stored = store.get(name, version)
    except TemplateNotFound as e:
        raise not_found(str(e)) from None
    return web.json_response(_shown(stored))


@_ROUTES.get("/v1/templates")
async def list_templates(request: web.Request) -> web.Response:
    store = _store(request)
    return web.json_response({"templates": [_shown(t, parts=False) for t in store.listing()]})


@_ROUTES.delete("/v1/templates/{name}")
async def delete_template(request: web.Request) -> web.Response:
    """Every version goes; messages queued with it keep their rendered text."""
    store = _store(request)
    name = _name(request)
    try:
        versions = await _io(store.delete, name)
    except TemplateNotFound as e:
        raise not_found(str(e)) from None
    except OSError as e:
        raise unavailable(f"the template cannot be deleted now: {e.strerror or e}") from None
    return web.json_response({"name": name, "deleted_versions": versions})


@_ROUTES.post("/v1/templates/{name}/render")
async def render_template(request: web.Request) -> web.Response:
    """Preview: ``{"variables", "version"?}`` -> the rendered parts, or 422 naming the
    part and template line that failed."""
    store = _store(request)
    name = _name(request)
    body = await json_object(request)
    errors = [
        FieldError(f"/{k}", "unknown field") for k in body if k not in ("variables", "version")
    ]
    variables = body.get("variables", {})
    if not isinstance(variables, dict):
        errors.append(FieldError("/variables", "must be an object"))
    version = body.get("version")
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 1
    ):
        errors.append(FieldError("/version", "a version number (1, 2, ...)"))
    if errors:
        raise invalid(errors)
    try:
        rendered = await _io(store.render, name, version, variables)
    except TemplateNotFound as e:
        raise not_found(str(e)) from None
    except TemplateRenderError as e:
        raise ApiProblem(
            422,
            "template-render",
            "Template render error",
            e.detail,
            [FieldError("/variables", e.detail)],
            extra=_line_of(e),
        ) from None
    return web.json_response(
        {
            "name": name,
            "version": rendered.version,
            "subject": rendered.subject,
            "text": rendered.text,
            "html": rendered.html,
        }
    )


def register(app: web.Application) -> None:
    app.router.add_routes(_ROUTES)
