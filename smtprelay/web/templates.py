"""Message templates: versioned, stored durably, rendered with Jinja2 in a sandbox.

A template is a ``subject``, a ``text`` part and an ``html`` part (either part may be
missing, not both). Every ``PUT`` stores a new version; nothing is ever rewritten. On
disk, under the spool directory::

    <spool>/templates/<name>/<version>.json     {"subject", "text", "html", "created"}

each file written through a fsynced temp file and a rename, then the directory fsynced
(:mod:`smtprelay.safeio`), so a 201 means the version survives a crash; the store reads
them all back at start (templates are small, and few).

Rendering: Jinja2's :class:`SandboxedEnvironment` (a template cannot reach Python
internals), :class:`StrictUndefined` (a variable the request did not give is an error,
never an empty string), and two environments: ``html`` autoescaped, ``subject`` and
``text`` not (escaping them would put ``&amp;`` into a plain-text mail). Errors name the
part and its line: :class:`TemplateRenderError`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from smtprelay import safeio
from smtprelay.errors import RelayError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PARTS = ("subject", "text", "html")
MAX_PART = 256 * 1024  # characters of one part's source
_SOURCE = "<template>"  # the file name Jinja2 gives a template made from a string
_VERSION_FILE = re.compile(r"(\d{1,9})\.json")


class TemplateNotFound(RelayError):
    """No such template (or no such version of it)."""


class TemplateRenderError(RelayError):
    """A template part failed to compile or render; ``line`` is its line, when known,
    and ``part`` which of subject, text and html it was."""

    def __init__(self, detail: str, line: int | None, part: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.line = line
        self.part = part


class TemplateInvalid(RelayError):
    """A template given to :meth:`TemplateStore.put` does not compile: every part's
    error at once."""

    def __init__(self, errors: list[TemplateRenderError]) -> None:
        super().__init__("; ".join(e.detail for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str | None
    html: str | None
    version: int


@dataclass(frozen=True, slots=True)
class StoredTemplate:
    name: str
    version: int
    subject: str
    text: str | None
    html: str | None
    created: float

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "created": self.created,
        }


_PLAIN = SandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
)
_HTML = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True)


def _environment(part: str) -> SandboxedEnvironment:
    return _HTML if part == "html" else _PLAIN


def _error_line(error: BaseException) -> int | None:
    """The template line of a render error: Jinja2 rewrites the traceback so that the
    template's own frames carry its file name and line."""
    if isinstance(error, TemplateSyntaxError):
        return error.lineno
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename == _SOURCE:
            return frame.lineno
    return None


def _compile(stored: StoredTemplate) -> dict[str, Template]:
    """Every part compiled; raises TemplateInvalid naming each bad part and its line."""
    compiled: dict[str, Template] = {}
    errors = []
    for part in PARTS:
        source = getattr(stored, part)
        if source is None:
            continue
        try:
            compiled[part] = _environment(part).from_string(source)
        except TemplateSyntaxError as e:
            errors.append(
                TemplateRenderError(f"{part}: {e.message} (line {e.lineno})", e.lineno, part)
            )
    if errors:
        raise TemplateInvalid(errors)
    return compiled


class TemplateStore:
    """The templates under ``directory``; safe to use from any thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._versions: dict[str, dict[int, StoredTemplate]] = {}
        self._compiled: dict[tuple[str, int], dict[str, Template]] = {}

    def load(self) -> None:
        """Read every stored version (at start); raises OSError when the directory
        cannot be made or read. A file that is not a readable template is skipped:
        it was never answered with a 201 (a temp file of a crashed write)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for entry in sorted(self.directory.iterdir()):
            if not (entry.is_dir() and NAME.fullmatch(entry.name)):
                continue
            for file in entry.iterdir():
                match = _VERSION_FILE.fullmatch(file.name)
                if match is None:
                    continue
                try:
                    raw = json.loads(file.read_bytes())
                    stored = StoredTemplate(
                        entry.name,
                        int(match.group(1)),
                        raw["subject"],
                        raw.get("text"),
                        raw.get("html"),
                        float(raw.get("created", 0)),
                    )
                    compiled = _compile(stored)
                except (ValueError, KeyError, TypeError, TemplateInvalid):
                    continue
                self._versions.setdefault(entry.name, {})[stored.version] = stored
                self._compiled[(entry.name, stored.version)] = compiled

    def put(self, name: str, subject: str, text: str | None, html: str | None) -> int:
        """Store a new version durably; its number. Raises TemplateInvalid when a
        part does not compile, OSError when it cannot be written."""
        with self._lock:
            latest = max(self._versions.get(name, {}), default=0)
            stored = StoredTemplate(name, latest + 1, subject, text, html, time.time())
            compiled = _compile(stored)
            self._write(stored)
            self._versions.setdefault(name, {})[stored.version] = stored
            self._compiled[(name, stored.version)] = compiled
            return stored.version

    def _write(self, stored: StoredTemplate) -> None:
        folder = self.directory / stored.name
        if not folder.is_dir():
            folder.mkdir(parents=True)
            self._fsync(self.directory)  # the new folder's name is durable too
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            data = json.dumps(stored.to_json(), ensure_ascii=False).encode()
            safeio.write_file(fd, f"{stored.version}.json", data)
            safeio.fsync_dir(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _fsync(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            safeio.fsync_dir(fd)
        finally:
            os.close(fd)

    def get(self, name: str, version: int | None = None) -> StoredTemplate:
        with self._lock:
            versions = self._versions.get(name)
            if not versions:
                raise TemplateNotFound(f"no template {name!r}")
            chosen = max(versions) if version is None else version
            if chosen not in versions:
                raise TemplateNotFound(f"template {name!r} has no version {version}")
            return versions[chosen]

    def listing(self) -> list[StoredTemplate]:
        """The latest version of every template, by name."""
        with self._lock:
            return [v[max(v)] for _, v in sorted(self._versions.items())]

    def delete(self, name: str) -> int:
        """Remove every version (durably); how many there were."""
        with self._lock:
            versions = self._versions.pop(name, None)
            if not versions:
                raise TemplateNotFound(f"no template {name!r}")
            for version in versions:
                self._compiled.pop((name, version), None)
            shutil.rmtree(self.directory / name, ignore_errors=True)
            self._fsync(self.directory)
            return len(versions)

    def render(self, name: str, version: int | None, variables: dict[str, Any]) -> Rendered:
        """Render one version (None: the latest); raises TemplateNotFound, or
        TemplateRenderError naming the part and the template line."""
        stored = self.get(name, version)
        with self._lock:
            compiled = self._compiled[(name, stored.version)]
        parts: dict[str, str] = {}
        for part, template in compiled.items():
            try:
                parts[part] = template.render(variables)
            except Exception as e:  # a template can raise anything (1/0, "a" + 1 ...)
                line = _error_line(e)
                where = f" (line {line})" if line else ""
                raise TemplateRenderError(f"{part}: {e}{where}", line, part) from None
        subject = parts["subject"].strip()
        if "\n" in subject or "\r" in subject:
            raise TemplateRenderError("subject: renders to more than one line", None, "subject")
        return Rendered(subject, parts.get("text"), parts.get("html"), stored.version)
