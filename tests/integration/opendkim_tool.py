"""OpenDKIM's own verifier (Debian opendkim-tools' ``opendkim-testmsg``) for the DKIM tests.

``opendkim-testmsg`` verifies the message on its standard input and looks the key up in
DNS through the C library's resolver, which reads only /etc/resolv.conf (no port, no
environment variable). So each run gets a mount namespace of its own (``unshare
--mount``, private propagation) in which a resolv.conf naming the test DNS server is
bind-mounted over /etc/resolv.conf, and the test DNS server listens on port 53 of a
loopback address of its own. That needs root, as CI runs; elsewhere the tests that use it
skip and say why. Nothing outside this one process sees the changed file.

libopendkim 2.11 refuses a message without a Date: field (a syntax error, RFC 5322
requires one); the tests' messages have one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

TESTMSG = Path("/usr/sbin/opendkim-testmsg")
# A loopback address of its own: port 53 of 127.0.0.1 may be a local resolver's.
DNS_ADDRESS = "127.0.0.153"
DNS_PORT = 53


def unavailable() -> str | None:
    """Why OpenDKIM's verifier cannot run here, or None."""
    if not TESTMSG.exists():
        return "opendkim-testmsg missing (apt-get install opendkim-tools)"
    if os.geteuid() != 0:
        return "opendkim-testmsg runs in a mount namespace with port 53: needs root (as CI)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) missing"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        return f"unshare --mount refused: {probe.stderr.decode(errors='replace').strip()}"
    return None


def verify(message: bytes, workdir: Path, nameserver: str = DNS_ADDRESS) -> tuple[bool, str]:
    """(True, "") if OpenDKIM verifies ``message``'s signature, else (False, its error)."""
    resolv = workdir / "opendkim-resolv.conf"
    resolv.write_text(f"nameserver {nameserver}\noptions attempts:2 timeout:2\n")
    run = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            'mount --bind "$1" /etc/resolv.conf && exec "$2"',
            "sh",
            str(resolv),
            str(TESTMSG),
        ],
        input=message,
        capture_output=True,
        timeout=60,
    )
    output = (run.stdout + run.stderr).decode(errors="replace").strip()
    return run.returncode == 0, output
