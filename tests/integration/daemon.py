"""Start the real smtprelay daemon as a child process on loopback, for integration tests.

A :class:`Daemon` writes its own TOML config into a temp directory, listens on free
ports of 127.0.0.1, and is stopped (or killed) by its own PID. Certificates come from a
trustme CA made for the test; ``ca_file`` lets clients verify them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trustme

from tests.polling import wait_until

LOOPBACK = "127.0.0.1"


# Ports for the daemons and servers a test starts come from below the kernel's
# ephemeral range (32768-60999 by default): a port the kernel hands out for "port 0" is
# also what it gives the next outgoing connection as its source port, and one taken
# that way between the choice and the daemon's bind failed a CI run ("Address already
# in use"). Nothing but an explicit bind takes a port below the range.
_PORTS = range(20000, 32768)
_pick = random.Random(os.getpid() ^ time.time_ns())
# Ports handed out lately: a port is only reserved once something binds it, so two calls
# before that (a daemon's SMTP and HTTP listeners) could get the same one (seen in CI:
# "[http] listen 127.0.0.1:32691: Address already in use", SMTP on 32691 too).
_recent: deque[int] = deque(maxlen=256)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` now, outside the ephemeral range (bounded tries)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        port = _pick.choice(_PORTS)
        if port in _recent:
            continue
        with socket.socket(family) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _recent.append(port)
        return port
    raise RuntimeError(f"no free port on {host} in {_PORTS}")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):  # an inline table, e.g. in sender_routes = [{...}]
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def _toml_key(key: str) -> str:
    # Domain names as keys ([delivery.routes]) contain dots: quote them.
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> None:
    """``"[webhooks]"`` makes an array-of-tables entry (``[[webhooks]]``); a suffix from
    ``#`` on is left out of the header, so that ``"[dkim.keys]#1"`` and ``"[dkim.keys]#2"``
    are two entries of ``[[dkim.keys]]``."""
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section.partition('#')[0]}]")
        lines += [f"{_toml_key(key)} = {_toml(value)}" for key, value in keys.items()]
        lines.append("")
    path.write_text("\n".join(lines))


class Daemon:
    """One smtprelay process. ``overrides`` are merged into the default test config."""

    def __init__(
        self,
        workdir: Path,
        ca: trustme.CA,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        users: Mapping[str, str] | None = None,
        implicit_tls: bool = True,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if implicit_tls else None
        self.spool = workdir / "spool"
        self.log_path = workdir / "smtprelay.log"
        self.ca_file = workdir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert = ca.issue_cert("localhost", LOOPBACK)
        cert_file, key_file = workdir / "cert.pem", workdir / "key.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        self.users_file = workdir / "users"
        sections: dict[str, dict[str, Any]] = {
            "server": {
                "hostname": "relay.test",
                "listen": [f"{LOOPBACK}:{self.port}"],
                "listen_implicit_tls": [f"{LOOPBACK}:{self.tls_port}"] if self.tls_port else [],
                # Off unless a test sets its own path: the default, /run/smtprelay/submit.sock,
                # would be shared by daemons running side by side.
                "local_socket": "",
            },
            "tls": {"cert_file": str(cert_file), "key_file": str(key_file)},
            "auth": {"users_file": str(self.users_file)},
            "spool": {"dir": str(self.spool)},
            # The event store beside the spool, not in it: tests that remount the spool's
            # file system read-only need no file open for writing there.
            "events": {"dir": str(workdir / "events")},
            "log": {"level": "info"},
            # Each daemon its own HTTP port: tests run daemons side by side.
            "http": {"listen": f"{LOOPBACK}:{free_port()}"},
            # Unless a test routes mail elsewhere, delivery goes to a closed loopback port:
            # messages stay queued (deferred) and nothing ever leaves the machine.
            "delivery": {"mode": "smarthost"},
            "delivery.smarthost": {"hosts": [f"{LOOPBACK}:9"], "tls": "none"},
        }
        for section, keys in (overrides or {}).items():
            sections.setdefault(section, {}).update(keys)
        self.spool = Path(sections["spool"]["dir"])
        self.config = workdir / "smtprelay.toml"
        self.sections = sections
        write_config(self.config, sections)
        for name, password in (users or {}).items():
            self.cli("user", "add", name, input=password + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.notifications: list[str] = []

    def cli(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``smtprelay ARGS -c CONFIG`` and return the finished process."""
        return subprocess.run(
            [sys.executable, "-m", "smtprelay", *args, "-c", str(self.config)],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def start(self, timeout: float = 20.0) -> Daemon:
        """Start and wait for the daemon's sd_notify READY=1 on our own NOTIFY_SOCKET."""
        notify_path = self.workdir / "notify.sock"
        notify_path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(0.1)
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "smtprelay", "serve", "-c", str(self.config)],
                stdout=log,
                stderr=log,
                cwd=self.workdir,
                env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            )
            log.close()
            proc = self.proc

            def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"smtprelay exited {proc.returncode}:\n{self.log()}")
                try:  # the receive timeout paces the polling
                    message = notify.recv(4096).decode()
                except TimeoutError:
                    return False
                self.notifications.append(message)
                return "READY=1" in message.splitlines()

            try:
                wait_until(ready, timeout, "READY=1", interval=0)
                return self
            except AssertionError:
                pass
        self.kill()
        raise RuntimeError(f"smtprelay did not become ready:\n{self.log()}")

    def reconfigure(self, overrides: Mapping[str, Mapping[str, Any]]) -> None:
        """Rewrite the config file with ``overrides`` merged in (takes effect on hup())."""
        for section, keys in overrides.items():
            self.sections.setdefault(section, {}).update(keys)
        write_config(self.config, self.sections)

    def hup(self, timeout: float = 10.0) -> str:
        """SIGHUP, then wait for the main process to log the outcome; returns that line.

        The outcome is the main process's last word on the reload: "configuration
        reloaded from ..." once everything is applied, or "reload refused ...". The lines
        that come before it ("reload: ... changes only on restart") and those of the
        inbound workers, which the main process signals half-way through its own reload
        ("inbound worker: configuration reloaded"), are not the outcome: a test that
        returned on them could look at the daemon before the main process had finished.
        """
        assert self.proc is not None
        seen = len(self._reload_outcomes())
        self.proc.send_signal(signal.SIGHUP)

        def outcome() -> str | None:
            lines = self._reload_outcomes()
            return lines[seen] if len(lines) > seen else None

        return wait_until(
            outcome, timeout, lambda: f"a reload outcome logged:\n{self.log()[-2000:]}"
        )

    def _reload_outcomes(self) -> list[str]:
        return [
            line
            for line in self.log().splitlines()
            if ("configuration reloaded from" in line or "reload refused" in line)
            and "inbound worker:" not in line
        ]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9: no clean-up of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    # --- spool inspection ---------------------------------------------------------------

    # A queue file is one line of JSON (the envelope), then the message bytes.

    def queued_ids(self) -> list[str]:
        queue = self.spool / "queue"
        return sorted(p.stem for p in queue.glob("*.msg"))

    def message_file(self, qid: str) -> Path:
        return self.spool / "queue" / f"{qid}.msg"

    def message(self, qid: str) -> bytes:
        return self.message_file(qid).read_bytes().split(b"\n", 1)[1]

    def envelope(self, qid: str) -> dict[str, Any]:
        envelope: dict[str, Any] = json.loads(
            self.message_file(qid).read_bytes().split(b"\n", 1)[0]
        )
        return envelope
