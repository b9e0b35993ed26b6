"""The Debian tools the integration tests drive (fail2ban-regex, systemd-analyze, ...):
found on the PATH or the test is skipped, naming the package to install.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: apt-get install {package}")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def fail2ban_regex(log: Path, filter_spec: str) -> tuple[list[str], dict[str, int], str]:
    """(matched hosts, line counts, full report) of fail2ban-regex on ``log``."""
    regex = tool("fail2ban-regex", "fail2ban")
    hosts = run(regex, "--out=ip", str(log), filter_spec)
    assert hosts.returncode == 0, hosts.stdout + hosts.stderr
    report = run(regex, "--print-all-missed", str(log), filter_spec)
    assert report.returncode == 0, report.stdout + report.stderr
    print(report.stdout)
    totals = re.search(
        r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", report.stdout
    )
    assert totals, report.stdout
    counts = dict(
        zip(("lines", "ignored", "matched", "missed"), map(int, totals.groups()), strict=True)
    )
    return hosts.stdout.split(), counts, report.stdout
