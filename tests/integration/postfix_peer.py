"""A private Postfix instance on a loopback port, as the relay's next hop in tests.

Everything it owns is under one temporary directory (configuration, queue, data, log);
it is started with ``postfix -c DIR start`` and stopped with ``postfix -c DIR stop``, so
a system Postfix (its /etc/postfix, queue and port 25) is never touched. Starting
Postfix needs root and the Debian ``postfix`` package; :func:`unavailable` says why not.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.polling import wait_until

POSTFIX = "/usr/sbin/postfix"

# Only the services a relaying instance uses; no chroot (no copies of /etc needed).
_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def unavailable() -> str | None:
    """Why a PostfixPeer cannot run here, or None."""
    if not os.path.exists(POSTFIX):
        return "Debian package postfix is not installed"
    if os.geteuid() != 0:
        return "starting Postfix needs root"
    return None


class PostfixPeer:
    """Postfix on ``127.0.0.1:port``, relaying every domain to ``relayhost`` ("[ip]:port")."""

    def __init__(self, port: int, relayhost: str, **main_cf: str) -> None:
        self.port = port
        # Not under pytest's tmp_path: that is mode 0700 and the postfix user must enter.
        self.base = Path(tempfile.mkdtemp(prefix="smtprelay-postfix-"))
        self.base.chmod(0o755)
        self.conf = self.base / "etc"
        self.log_path = self.base / "maillog"
        for sub in ("etc", "spool", "lib"):
            (self.base / sub).mkdir()
        shutil.chown(self.base / "lib", "postfix")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.base / "spool"),
            "data_directory": str(self.base / "lib"),
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.base),
            "myhostname": "postfix-peer.test",
            "mydomain": "test",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "relayhost": relayhost,
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtputf8_enable": "no",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            **main_cf,
        }
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (self.conf / "master.cf").write_text(_MASTER_CF.format(listen=f"127.0.0.1:{port}"))

    def _postfix(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.conf), command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start(self) -> PostfixPeer:
        done = self._postfix("start")
        if done.returncode != 0:
            raise RuntimeError(f"postfix start failed: {done.stderr}\n{self.log()}")

        def listening() -> bool:
            with socket.socket() as probe:
                probe.settimeout(1)
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        try:
            wait_until(listening, 20, "postfix listening", interval=0.1)
            return self
        except AssertionError:
            pass
        self.stop()
        raise RuntimeError(f"postfix did not listen on 127.0.0.1:{self.port}\n{self.log()}")

    def master_pid(self) -> int | None:
        try:
            return int((self.base / "spool" / "pid" / "master.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.master_pid()
        self._postfix("stop")  # waits for the master to terminate
        if pid is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                pass
            else:  # still there: ours (the pid file is in our own queue directory)
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> PostfixPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
