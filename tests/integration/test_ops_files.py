"""Operations files: the systemd unit and the fail2ban filter and jail, checked by the real tools.

* ``systemd/smtprelay.service``: ``systemd-analyze verify`` and ``systemd-analyze security
  --offline`` (its exposure score must stay below ``SECURITY_THRESHOLD``). Both need the
  ExecStart binary to exist, so they run on a copy whose ``/opt/smtprelay/.venv/bin/smtprelay``
  is rewritten to this venv's ``smtprelay`` script.
* ``conf/fail2ban/filter.d/smtprelay.conf``: ``fail2ban-regex`` on the log of a real daemon
  that refused two AUTH attempts (and one relay probe, and accepted one good AUTH), in the
  log file form (RFC 3339 timestamp and host first) and in the journal form (the daemon
  started with ``JOURNAL_STREAM`` set, each line prefixed the way fail2ban's systemd
  backend presents a journal entry).
* ``conf/fail2ban/jail.d/smtprelay.conf``: ``fail2ban-client -t`` loads it with the filter.

The tools come from Debian's ``systemd`` and ``fail2ban`` packages; without them the tests
are skipped and say which package is missing.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from smtprelay.inbound.server import SHUTDOWN_GRACE
from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.debian_tools import fail2ban_regex, run, tool

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "smtprelay.service"
FILTER = ROOT / "conf" / "fail2ban" / "filter.d" / "smtprelay.conf"
JAIL = ROOT / "conf" / "fail2ban" / "jail.d" / "smtprelay.conf"

# The install layout the unit and README.md document.
INSTALLED_BIN = "/opt/smtprelay/.venv/bin/smtprelay"
INSTALLED_CONFIG = "/etc/smtprelay/smtprelay.toml"

# systemd 252 (Debian 12) rates the unit 1.4 ("OK"); a lost hardening line shows here.
SECURITY_THRESHOLD = 2.0

USER, PASSWORD = "app1", "pw"
SENDER, RECIPIENT = "app@example.com", "bob@example.net"
UNTRUSTED = {"relay": {"trusted_networks": ["10.0.0.0/8"]}}


# --- systemd unit ---------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    """``Key=value`` lines of the unit (all sections); repeated keys keep every value."""
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        text = raw.strip()
        if not text or text.startswith(("#", ";", "[")):
            continue
        key, sep, value = text.partition("=")
        assert sep, f"not a Key=value line in {UNIT.name}: {raw!r}"
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's smtprelay (systemd checks it exists)."""
    if not Path("/bin/kill").exists():  # ExecReload's; Debian's procps package has it
        pytest.skip("/bin/kill not found: apt-get install procps")
    script = Path(sys.executable).parent / "smtprelay"
    assert script.exists(), f"{script} missing: install the package into the venv"
    text = UNIT.read_text()
    assert INSTALLED_BIN in text
    copy = tmp_path / "smtprelay.service"
    copy.write_text(text.replace(INSTALLED_BIN, str(script)))
    return copy


def test_unit_settings() -> None:
    """What the daemon relies on, readable without systemd tools."""
    unit = unit_settings()
    one = {key: values[-1] for key, values in unit.items()}
    assert one["Type"] == "notify"  # the daemon sends READY=1 / STOPPING=1
    assert one["ExecStart"] == f"{INSTALLED_BIN} serve -c {INSTALLED_CONFIG}"
    # Reload: the configuration is checked first, then the daemon gets SIGHUP.
    check, hup = unit["ExecReload"]
    assert f"{INSTALLED_BIN} check-config -c {INSTALLED_CONFIG}" in check
    assert hup == "/bin/kill -HUP $MAINPID"
    assert one["Restart"] == "on-failure"
    # Stopping waits SHUTDOWN_GRACE for SMTP sessions, then as long for deliveries.
    stop = one["TimeoutStopSec"]
    assert stop.endswith("s") and int(stop[:-1]) > 2 * SHUTDOWN_GRACE
    # The main process stops its inbound workers: systemd signals only it at first.
    assert one["KillMode"] == "mixed"
    assert one["User"] not in ("", "root")
    assert one["StateDirectory"] == "smtprelay"
    # The local submission socket's directory, reachable by every user (cron, www-data).
    assert (one["RuntimeDirectory"], one["RuntimeDirectoryMode"]) == ("smtprelay", "0755")
    assert one["WorkingDirectory"] == "/var/lib/smtprelay"
    assert one["ConfigurationDirectory"] == "smtprelay"
    assert one["UMask"] == "0027"
    assert one["CapabilityBoundingSet"] == one["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert one["RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert unit["SystemCallFilter"][0] == "@system-service"
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert one.get(key) == "yes", key
    assert one["ProtectSystem"] == "strict"


def test_unit_verifies(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    unit = unit_copy(tmp_path)
    result = run(analyze, "verify", "--man=no", str(unit))
    output = result.stdout + result.stderr
    print(output)
    assert result.returncode == 0, output
    # Warnings about other units of the host are not ours; any about this one are.
    assert "smtprelay" not in output, output


def test_unit_security_exposure(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    if "--offline" not in run(analyze, "--help").stdout:
        pytest.skip("systemd-analyze has no --offline (needs systemd >= 250)")
    unit = unit_copy(tmp_path)
    result = run(analyze, "security", "--offline=true", "--no-pager", str(unit))
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(
        r"Overall exposure level for smtprelay\.service: (\d+\.\d+) (\S+)", result.stdout
    )
    assert found, result.stdout
    score = float(found[1])
    print(f"systemd-analyze security: exposure {score} {found[2]}")
    assert score < SECURITY_THRESHOLD, result.stdout


# --- fail2ban ---------------------------------------------------------------------------


# The user name ends the failure line, Postfix-style: text from the client, which must
# not make the filter ban the address it names.
FORGED_USER = "x: warning: unknown[192.0.2.66]: SASL PLAIN authentication failed: x"


def failed_auth_session(daemon: Daemon) -> None:
    """A relay probe, three failed AUTHs (PLAIN, LOGIN, and PLAIN with a user name that
    forges another host's failure), then a good AUTH and a message."""
    context = ssl.create_default_context(cafile=str(daemon.ca_file))
    with smtplib.SMTP(LOOPBACK, daemon.port, local_hostname="client.test", timeout=15) as client:
        client.starttls(context=context)
        client.ehlo()
        client.mail(SENDER)
        code, text = client.rcpt(RECIPIENT)
        assert (code, text[:5]) == (554, b"5.7.1"), (code, text)
        client.rset()
        client.user, client.password = USER, "wrong-pw"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.auth("PLAIN", client.auth_plain)
        client.user = "nobody"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        client.user = FORGED_USER
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.auth("PLAIN", client.auth_plain)
        client.user, client.password = USER, PASSWORD
        assert client.auth("PLAIN", client.auth_plain)[0] == 235
        client.sendmail(SENDER, [RECIPIENT], b"Subject: ok\r\n\r\nbody\r\n")
    assert daemon.stop() == 0  # every line is written once the daemon has exited


@pytest.mark.slow
def test_fail2ban_filter_on_daemon_log(make_daemon: Callable[..., Daemon]) -> None:
    tool("fail2ban-regex", "fail2ban")
    daemon = make_daemon(overrides=UNTRUSTED, users={USER: PASSWORD})
    failed_auth_session(daemon)
    log = daemon.log()
    assert log.count("authentication failure, sasl_username=") == 3, log
    for name in (USER, "nobody", FORGED_USER):
        assert f"authentication failure, sasl_username={name}\n" in log, log
    assert "Relay access denied" in log, log

    hosts, counts, report = fail2ban_regex(daemon.log_path, str(FILTER))
    assert hosts == [LOOPBACK] * 3, report
    assert counts["matched"] == 3 and counts["missed"] == counts["lines"] - 3, report
    # Every line's RFC 3339 timestamp was recognised by the filter's datepattern.
    assert re.search(rf"\[{counts['lines']}\] \{{\^LN-BEG\}}Year-Month-DayT", report), report
    # The good AUTH and the relay probe are among the lines that did not match.
    missed = report.split("Missed line(s):", 1)[1]
    assert f"sasl_username={USER}" in missed and "Relay access denied" in missed, report

    hosts, counts, report = fail2ban_regex(daemon.log_path, f"{FILTER}[mode=aggressive]")
    assert hosts == [LOOPBACK] * 4 and counts["matched"] == 4, report


@pytest.mark.slow
def test_fail2ban_filter_on_journal_lines(
    make_daemon: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tool("fail2ban-regex", "fail2ban")
    # Under systemd the daemon sees JOURNAL_STREAM and leaves time and host to journald.
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    daemon = make_daemon(overrides=UNTRUSTED, users={USER: PASSWORD})
    assert daemon.proc is not None
    pid = daemon.proc.pid
    failed_auth_session(daemon)
    lines = daemon.log().splitlines()
    assert lines and all(line.startswith("smtprelay/") for line in lines), lines
    # fail2ban's systemd backend hands the filter "HOST IDENTIFIER[PID]: MESSAGE"
    # (the time comes separately), the identifier being the executable's name.
    host = socket.gethostname().split(".")[0]
    journal = tmp_path / "journal.log"
    journal.write_text("".join(f"{host} smtprelay[{pid}]: {line}\n" for line in lines))

    hosts, counts, report = fail2ban_regex(journal, str(FILTER))
    assert hosts == [LOOPBACK] * 3 and counts["matched"] == 3, report


def test_fail2ban_jail_example_loads(tmp_path: Path) -> None:
    client = tool("fail2ban-client", "fail2ban")
    system = Path("/etc/fail2ban")
    if not (system / "jail.conf").exists():
        pytest.skip("/etc/fail2ban/jail.conf missing: apt-get install fail2ban")
    config = tmp_path / "fail2ban"
    shutil.copytree(system, config, symlinks=True)
    # Only our jail: the host's own (e.g. Debian's sshd) may lack their log files here.
    shutil.rmtree(config / "jail.d")
    (config / "jail.d").mkdir()
    (config / "jail.local").unlink(missing_ok=True)
    shutil.copy(JAIL, config / "jail.d" / JAIL.name)
    shutil.copy(FILTER, config / "filter.d" / FILTER.name)

    test = run(client, "-c", str(config), "-t")
    assert test.returncode == 0 and "OK" in test.stdout, test.stdout + test.stderr
    dump = run(client, "-c", str(config), "-d")
    assert dump.returncode == 0, dump.stdout + dump.stderr
    assert "['add', 'smtprelay', 'systemd']" in dump.stdout, dump.stdout
    assert "'addjournalmatch', '_SYSTEMD_UNIT=smtprelay.service'" in dump.stdout, dump.stdout
    assert "SASL" in dump.stdout and "25,465,587" in dump.stdout, dump.stdout
