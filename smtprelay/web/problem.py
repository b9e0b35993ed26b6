"""RFC 9457 problem details: every error of the ``/v1`` API.

A handler raises :class:`ApiProblem` (or one of the helpers below); the error middleware
answers it as ``application/problem+json``::

    {"type": "https://smtprelay.dev/problems/invalid-fields", "title": "Invalid fields",
     "status": 422, "detail": "2 fields are invalid",
     "errors": [{"pointer": "/to/0", "detail": "not an email address"}, ...]}

``errors`` names every invalid field at once by its JSON Pointer (RFC 6901) into the
request body, never only the first. The older paths (``/status``, ``/queue`` ...) keep
their ``{"error": {...}}`` shape, which the CLI reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smtprelay.errors import RelayError

if TYPE_CHECKING:
    from aiohttp import web

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://smtprelay.dev/problems/"


@dataclass(frozen=True, slots=True)
class FieldError:
    pointer: str  # JSON Pointer into the request body ("" is the whole body)
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"pointer": self.pointer, "detail": self.detail}


def pointer(*parts: str | int) -> str:
    """The JSON Pointer of a path: ``pointer("to", 0)`` is ``/to/0`` (``~`` and ``/``
    escaped as RFC 6901 says)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class ApiProblem(RelayError):
    """Raised by a ``/v1`` handler; answered as problem+json with ``status``."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        errors: Iterable[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in a preparation worker (smtprelay.web.preparing), answered by the main
        # process: pickled with every argument, not only the message.
        args = (self.status, self.slug, self.title, self.detail, self.errors)
        return (ApiProblem, (*args, self.headers, self.extra))

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = [e.to_json() for e in self.errors]
        body.update(self.extra)
        return body

    def response(self) -> web.Response:
        return problem_response(self.status, self.body(), self.headers)


def problem_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return json_response(status, body, MEDIA_TYPE, headers)


def json_bytes(body: Mapping[str, Any]) -> bytes:
    """UTF-8 JSON as written (not \\u-escaped); a lone surrogate a request brought in
    (JSON may \\u-escape one, UTF-8 cannot carry it) makes it all \\u-escaped instead."""
    try:
        return json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body).encode("ascii")


def json_response(
    status: int,
    body: Mapping[str, Any],
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """:func:`json_bytes` under the given media type."""
    # Imported here: the HTTP front and the preparing workers use this module's
    # problems but never answer one, and aiohttp is 16 MB of each process's memory.
    from aiohttp import web

    return web.Response(
        status=status,
        body=json_bytes(body),
        content_type=content_type,
        charset="utf-8",
        headers=headers,
    )


SURROGATE = "not valid Unicode: a lone surrogate (a \\uD800-\\uDFFF escape without its pair)"


def lone_surrogates(document: Any, prefix: tuple[str | int, ...] = ()) -> list[FieldError]:
    """A FieldError for every string of a parsed JSON ``document`` (member names too)
    holding a lone surrogate: JSON's \\u escapes can give one, but no message, header or
    file can carry it."""
    found: list[FieldError] = []
    todo: list[tuple[Any, tuple[str | int, ...]]] = [(document, prefix)]
    while todo:
        node, path = todo.pop()
        if isinstance(node, str):
            if _has_surrogate(node):
                found.append(FieldError(pointer(*path), SURROGATE))
        elif isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and _has_surrogate(key):
                    found.append(FieldError(pointer(*path, key), SURROGATE))
                else:
                    todo.append((value, (*path, key)))
        elif isinstance(node, list):
            todo += [(value, (*path, i)) for i, value in enumerate(node)]
    found.sort(key=lambda e: e.pointer)
    return found


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def invalid(errors: Iterable[FieldError], detail: str | None = None) -> ApiProblem:
    """422: the body is JSON of the right shape at the top, but fields are wrong."""
    found = list(errors)
    count = len(found)
    text = detail or (f"{count} field{'s are' if count != 1 else ' is'} invalid")
    return ApiProblem(422, "invalid-fields", "Invalid fields", text, found)


def bad_json(detail: str) -> ApiProblem:
    return ApiProblem(400, "malformed-json", "Malformed JSON", detail)


def unsupported_media(given: str, wanted: str) -> ApiProblem:
    return ApiProblem(
        415,
        "unsupported-media-type",
        "Unsupported media type",
        f"Content-Type {given or '(none)'} is not accepted here: send {wanted}",
    )


def not_found(detail: str) -> ApiProblem:
    return ApiProblem(404, "not-found", "Not found", detail)


def conflict(detail: str, slug: str = "conflict") -> ApiProblem:
    return ApiProblem(409, slug, "Conflict", detail)


def forbidden(detail: str) -> ApiProblem:
    return ApiProblem(403, "forbidden", "Forbidden", detail)


def too_large(detail: str) -> ApiProblem:
    return ApiProblem(413, "too-large", "Content too large", detail)


def unavailable(detail: str, retry_after: int = 30) -> ApiProblem:
    """503 with Retry-After: the spool is not writable, the disk is full, or the daemon
    is shutting down; the client should try again later, nothing was queued."""
    return ApiProblem(
        503,
        "unavailable",
        "Service unavailable",
        detail,
        headers={"Retry-After": str(retry_after)},
    )


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 415, 400 or 422 (pointer "") otherwise."""
    if request.content_type != "application/json":
        raise unsupported_media(request.content_type, "application/json")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_json(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise invalid([FieldError("", "must be a JSON object")])
    errors = lone_surrogates(body)
    if errors:
        raise invalid(errors)
    return body
