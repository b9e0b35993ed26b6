"""An inbound worker process loads nothing of the delivery stage or the HTTP endpoint.

Checked in a fresh interpreter (this one has imported everything already): the modules
loaded by importing the worker's main module, as ``python -m smtprelay.inbound.worker``
does before it reads its arguments.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Prefixes no worker may load: the delivery stage and what only it uses (the SMTP client,
# DNS), the main process's reload, and the HTTP endpoint.
FORBIDDEN = (
    "smtprelay.delivery",
    "smtprelay.reload",
    "smtprelay.web",
    "aiosmtplib",
    "dns",
    "aiohttp",
)


def _loaded_after_import(module: str) -> list[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def _forbidden(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in FORBIDDEN)]


def test_worker_imports_nothing_of_delivery() -> None:
    loaded = _loaded_after_import("smtprelay.inbound.worker")
    assert "smtprelay.inbound.reload" in loaded  # the worker's own reload is there
    assert _forbidden(loaded) == []


def test_the_check_sees_the_main_process_loading_delivery() -> None:
    # The same check on the main process's composition must find what the worker lacks,
    # or the test above could pass by looking at nothing.
    loaded = _loaded_after_import("smtprelay.reload")
    assert {"smtprelay.delivery.scheduler", "aiosmtplib", "dns"} <= set(_forbidden(loaded))
