"""The HTTP front process (smtprelay/web/front.py) runs beside the main process on
every relay with an HTTP listener: it must not load aiohttp (16 MB of memory), which
only the main process, answering everything the front hands over, needs. pyproject's
import-linter contract says so for the imports it sees; this checks what a fresh
interpreter actually loads, lazy imports included."""

from __future__ import annotations

import subprocess
import sys


def test_the_front_loads_no_aiohttp_delivery_or_inbound() -> None:
    probe = (
        "import sys, smtprelay.web.front\n"
        "print(sorted({m.split('.')[0] if not m.startswith('smtprelay.') else"
        " '.'.join(m.split('.')[:2]) for m in sys.modules}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    for heavy in (
        "'aiohttp'",
        "'aiosmtplib'",
        "'dns'",
        "'smtprelay.delivery'",
        "'smtprelay.inbound'",
    ):
        assert heavy not in loaded, loaded
    assert "'smtprelay.web'" in loaded  # the probe did import the front
