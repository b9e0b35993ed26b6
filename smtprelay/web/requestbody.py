"""The JSON bodies of ``POST /v1/messages`` and ``/v1/messages/batch``, checked as far as
the request itself goes: the limit and the parsing, shared by the main process's handlers
(:mod:`smtprelay.web.submission`) and the HTTP front (:mod:`smtprelay.web.front`) so that
both read a body the same way; a batch's messages and its answer, the handlers'. Each
message is checked later, on its own (:func:`smtprelay.web.intake.validate`).
"""

from __future__ import annotations

import json
from typing import Any

from smtprelay.web import intake
from smtprelay.web.problem import (
    ApiProblem,
    FieldError,
    bad_json,
    invalid,
    lone_surrogates,
    pointer,
)

# JSON carries attachments in base64 (4/3 of their size) and some structure.
JSON_OVERHEAD = 64 * 1024
# A message's JSON and the prefix of its JSON Pointers (``("messages", 3)`` in a batch).
Doc = tuple[Any, tuple[str | int, ...]]


def body_limit(max_message_size: int) -> int:
    """The largest body taken for a message of ``[server] max_message_size``."""
    return max_message_size * 4 // 3 + JSON_OVERHEAD


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 if it is not JSON, 422 if not an object."""
    try:
        doc = json.loads(body)
    except UnicodeDecodeError:
        raise bad_json("the body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise bad_json(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise bad_json("the body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise invalid([FieldError("", "must be a JSON object")])
    return doc


def batch_docs(doc: dict[str, Any], batch_max: int) -> tuple[list[Doc], bool]:
    """A batch's messages (``defaults`` merged into each) and whether it is strict; 422
    naming every field of the batch itself that is wrong."""
    # The messages' own strings are checked with each message (permissive: only it fails).
    errors = lone_surrogates({k: v for k, v in doc.items() if k != "messages"})
    flagged = {e.pointer for e in errors}
    errors += [
        FieldError(pointer(k), "unknown field")
        for k in doc
        if k not in ("messages", "defaults", "validation") and pointer(k) not in flagged
    ]
    messages, defaults = doc.get("messages"), doc.get("defaults", {})
    mode = doc.get("validation", "strict")
    if not isinstance(messages, list) or not messages:
        errors.append(FieldError("/messages", "required: a list of 1 or more messages"))
    elif len(messages) > batch_max:
        errors.append(FieldError("/messages", f"more than {batch_max} messages ([http] batch_max)"))
    if not isinstance(defaults, dict):
        errors.append(FieldError("/defaults", "must be a JSON object"))
    if mode not in ("strict", "permissive"):
        errors.append(FieldError("/validation", 'must be "strict" or "permissive"'))
    if errors:
        raise invalid(errors)
    assert isinstance(messages, list) and isinstance(defaults, dict)
    docs: list[Doc] = [
        ({**defaults, **message} if isinstance(message, dict) else message, ("messages", i))
        for i, message in enumerate(messages)
    ]
    return docs, mode == "strict"


def batch_answer(results: list[intake.Prepared | ApiProblem]) -> dict[str, Any]:
    """The 202 body of a batch: every message in request order, queued or rejected; 422
    naming every error when none was queued."""
    entries: list[dict[str, Any]] = []
    for i, r in enumerate(results):
        if isinstance(r, intake.Prepared):
            entries.append({"index": i, **r.answer()})
        else:
            entries.append(
                {
                    "index": i,
                    "status": "rejected",
                    "title": r.title,
                    "errors": [e.to_json() for e in r.errors]
                    or [{"pointer": pointer("messages", i), "detail": r.detail}],
                }
            )
    queued = sum(1 for r in results if isinstance(r, intake.Prepared))
    if not queued:
        raise invalid(
            [FieldError(e["pointer"], e["detail"]) for entry in entries for e in entry["errors"]],
            "no message of the batch is valid",
        )
    return {
        "status": "queued",
        "queued": queued,
        "rejected": len(results) - queued,
        "messages": entries,
    }
