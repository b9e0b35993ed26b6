"""Local submission: ``smtprelay-sendmail`` run by users who can read no configuration
(``www-data``, a cron user) reaches the real daemon through its Unix socket, with loopback
*not* in ``trusted_networks``, and the message is delivered to a sink on loopback.

The callers are real processes of another user (``nobody``, made with ``setpriv``), so
``SO_PEERCRED`` reports a uid that is not the daemon's. Needs root (to change user, and
for the default socket directory ``/run/smtprelay``); skipped otherwise.
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smtprelay.config import DEFAULT_LOCAL_SOCKET
from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.delivery_support import MX1
from tests.integration.sinks import Received, Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setpriv, /run)")

BIN = Path(sys.executable).parent
NOBODY = pwd.getpwnam("nobody")
ORIGIN = "origin.test"  # [server] origin, distinct from [server] hostname (relay.test)
UNTRUSTED = ["10.0.0.0/8"]  # loopback may not relay over TCP
# What Debian's cron writes to "sendmail -FCronDaemon -i -B8BITMIME -oem root".
CRON_MESSAGE = (
    "From: root (Cron Daemon)\n"
    "To: root\n"
    "Subject: Cron <root@host> /usr/local/bin/backup\n"
    "MIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=UTF-8\n"
    "Content-Transfer-Encoding: 8bit\n"
    "X-Cron-Env: <SHELL=/bin/sh>\n"
    "X-Cron-Env: <LOGNAME=root>\n"
    "\n"
    "backup done: 3 files, naïve\n"
)
CRON_ARGS = ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"]


@pytest.fixture
def default_socket() -> Iterator[Path]:
    """The documented default path, which the command uses without a readable config."""
    path = Path(DEFAULT_LOCAL_SOCKET)
    made = not path.parent.exists()
    if path.exists():
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                pass
            else:
                pytest.skip(f"something already listens on {path}")
    yield path
    if made:
        shutil.rmtree(path.parent, ignore_errors=True)


def local_relay(
    make_daemon: Callable[..., Daemon],
    sink_port: int,
    socket_path: Path,
    name: str = "relay",
    start: bool = True,
    **server: object,
) -> Daemon:
    """A daemon serving ``socket_path``; dest.test and ORIGIN are routed to the sink."""
    daemon = make_daemon(
        name,
        start=start,
        overrides={
            "server": {"local_socket": str(socket_path), "origin": ORIGIN, **server},
            "relay": {
                "trusted_networks": UNTRUSTED,
                "allowed_recipient_domains": ["dest.test", ORIGIN],
            },
            "delivery.routes": {"dest.test": f"{MX1}:{sink_port}", ORIGIN: f"{MX1}:{sink_port}"},
        },
    )
    # The README's layout: the configuration is not readable by other users.
    os.chmod(daemon.config, 0o640)
    return daemon


def as_nobody(args: list[str], message: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``smtprelay-sendmail ARGS`` as user nobody (a cron or PHP user), message on stdin."""
    clean = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": "/nonexistent", **env}
    return subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            str(BIN / "smtprelay-sendmail"),
            *args,
        ],
        input=message,
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
        cwd="/",
    )


def one_message(sink: Sink) -> Received:
    wait_until(lambda: sink.messages, what="a message at the sink")
    (message,) = sink.messages
    return message


def headers_of(message: Received) -> list[bytes]:
    return message.body().partition(b"\r\n\r\n")[0].split(b"\r\n")


@pytest.mark.parametrize("workers", [0, 1])
def test_cron_as_nobody_without_config_delivers_qualified(
    make_daemon: Callable[..., Daemon],
    make_sink: Callable[..., Sink],
    sink_port: int,
    default_socket: Path,
    workers: int,
) -> None:
    """Cron's exact call, by a user who cannot read the configuration, loopback not
    trusted: delivered, with From:/To: and the envelope qualified with [server] origin,
    the caller's uid logged and in the Received: header. In-process and with workers."""
    sink = make_sink(MX1)
    daemon = local_relay(make_daemon, sink_port, default_socket, workers=workers)
    config = str(daemon.config)
    unreadable = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", config],
        capture_output=True,
    )
    assert unreadable.returncode != 0  # the caller cannot read the configuration
    result = as_nobody(CRON_ARGS, CRON_MESSAGE, SMTPRELAY_CONFIG=config)
    assert (result.returncode, result.stderr) == (0, "")

    message = one_message(sink)
    assert message.mail_from == f"nobody@{ORIGIN}"
    assert message.rcpt_tos == (f"root@{ORIGIN}",)
    headers = headers_of(message)
    # The relay puts the Message-ID: it adds first; then the message's own headers.
    assert headers[1:3] == [
        f"From: root@{ORIGIN} (Cron Daemon)".encode(),
        f"To: root@{ORIGIN}".encode(),
    ]
    assert b"X-Cron-Env: <LOGNAME=root>" in headers  # other headers untouched
    assert headers[0].startswith(b"Message-ID: <") and headers[0].endswith(b"@relay.test>")
    assert message.content.startswith(
        f"Received: by relay.test (smtprelay, from userid {NOBODY.pw_uid})\r\n\tid ".encode()
    )
    assert message.body().endswith("\r\n\r\nbackup done: 3 files, naïve\r\n".encode())

    log = daemon.log()
    assert f": uid={NOBODY.pw_uid} from=<nobody>" in log
    assert "smtprelay/pickup[" in log and "connect from local" in log
    assert f"from=<nobody@{ORIGIN}>" in log  # qmgr: the qualified sender


def test_headers_and_envelope_of_a_script(
    make_daemon: Callable[..., Daemon],
    make_sink: Callable[..., Sink],
    sink_port: int,
    default_socket: Path,
) -> None:
    """``-t`` with domainless To/Cc/Bcc/Reply-To/Sender, an -f without a domain, and
    addresses that already have one (left alone)."""
    sink = make_sink(MX1)
    daemon = local_relay(make_daemon, sink_port, default_socket)
    text = (
        'From: Web Site <www>\nSender: www\nReply-To: "Help, Desk" <help>, ops\n'
        "To: alice@dest.test, bob\nCc: carol (Carol C.)\nBcc: dave\n"
        "Subject: To: subject is not an address\n\nTo: nor is the body\n"
    )
    # bob twice (as given and qualified): one recipient, as Postfix's cleanup does.
    result = as_nobody(["-t", "-i", "-f", "bounces", f"bob@{ORIGIN}"], text)
    assert (result.returncode, result.stderr) == (0, "")
    message = one_message(sink)
    assert message.mail_from == f"bounces@{ORIGIN}"
    assert sorted(message.rcpt_tos) == sorted(
        ["alice@dest.test", f"bob@{ORIGIN}", f"carol@{ORIGIN}", f"dave@{ORIGIN}"]
    )
    headers = headers_of(message)
    assert headers[1:6] == [
        f"From: Web Site <www@{ORIGIN}>".encode(),
        f"Sender: www@{ORIGIN}".encode(),
        f'Reply-To: "Help, Desk" <help@{ORIGIN}>, ops@{ORIGIN}'.encode(),
        f"To: alice@dest.test, bob@{ORIGIN}".encode(),
        f"Cc: carol@{ORIGIN} (Carol C.)".encode(),
    ]
    assert b"Subject: To: subject is not an address" in headers
    assert not any(h.lower().startswith(b"bcc") for h in headers)
    assert message.body().endswith(b"\r\n\r\nTo: nor is the body\r\n")
    assert f": uid={NOBODY.pw_uid} from=<bounces>" in daemon.log()


def test_socket_grants_nothing_on_tcp(
    make_daemon: Callable[..., Daemon],
    make_sink: Callable[..., Sink],
    sink_port: int,
    short_path: Path,
) -> None:
    """The socket relays without AUTH; the TCP listener still refuses loopback (not in
    trusted_networks); the socket offers neither AUTH nor STARTTLS; the recipient
    allow-list applies on the socket too."""
    make_sink(MX1)
    path = short_path
    daemon = local_relay(make_daemon, sink_port, path)
    with smtplib.SMTP(LOOPBACK, daemon.port, timeout=10) as tcp:
        tcp.ehlo("client.test")
        tcp.mail("app@sender.test")
        code, reply = tcp.rcpt("bob@dest.test")
        assert (code, reply[:5]) == (554, b"5.7.1")
    local = UnixSMTP(str(path))
    try:
        code, _ = local.ehlo("localhost")
        assert code == 250
        assert not local.has_extn("auth") and not local.has_extn("starttls")
        assert local.docmd("STARTTLS")[0] == 502
        code, _ = local.docmd("AUTH", "PLAIN AGFwcDEAc2VjcmV0LXB3")
        assert code >= 500
        local.mail("app@sender.test")
        assert local.rcpt("bob@dest.test")[0] == 250
        code, reply = local.rcpt("eve@elsewhere.test")
        assert (code, reply[:5]) == (550, b"5.7.1")
    finally:
        local.close()
    assert "reject: RCPT from local: 550 5.7.1" in daemon.log()


def test_readable_config_names_the_socket_and_the_mode(
    make_daemon: Callable[..., Daemon],
    make_sink: Callable[..., Sink],
    sink_port: int,
    short_path: Path,
) -> None:
    """A readable configuration with its own local_socket: the command uses that path.
    The socket has the configured mode and group; a user outside the group is refused
    by the kernel (the command exits 75 and says why)."""
    sink = make_sink(MX1)
    path = short_path
    daemon = local_relay(
        make_daemon, sink_port, path, local_socket_mode="0660", local_socket_group="daemon"
    )
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == 1  # Debian's group "daemon"
    # A copy nobody can read: its local_socket is used, not the default.
    readable = path.parent.parent / "smtprelay.toml"
    shutil.copy(daemon.config, readable)
    readable.chmod(0o644)
    result = as_nobody(["bob@dest.test"], "Subject: s\n\nx\n", SMTPRELAY_CONFIG=str(readable))
    assert result.returncode == 75 and "Permission denied" in result.stderr
    assert str(path) in result.stderr
    result = subprocess.run(
        [str(BIN / "smtprelay-sendmail"), "-C", str(daemon.config), "bob@dest.test"],
        input="Subject: s\n\nx\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert one_message(sink).rcpt_tos == ("bob@dest.test",)


def test_stale_socket_replaced_live_one_refused(
    make_daemon: Callable[..., Daemon],
    sink_port: int,
    short_path: Path,
) -> None:
    """After kill -9 the socket file stays: the next start replaces it. A second daemon
    on a socket that is being served does not start, and says which key; a clean stop
    removes the file."""
    path = short_path
    first = local_relay(make_daemon, sink_port, path, "first")
    first.kill()
    assert path.exists()
    second = local_relay(make_daemon, sink_port, path, "second")
    third = local_relay(make_daemon, sink_port, path, "third", start=False)
    with pytest.raises(RuntimeError, match=r"\[server\] local_socket .*listening"):
        third.start()
    assert second.stop() == 0
    assert not path.exists()


# --- helpers -------------------------------------------------------------------------


@pytest.fixture
def short_path() -> Iterator[Path]:
    """A socket path under /tmp (pytest's tmp_path can exceed the 107-byte limit), in a
    directory the daemon makes itself, reachable by other users."""
    top = Path(tempfile.mkdtemp(prefix="smtprelay-"))
    top.chmod(0o755)
    yield top / "run" / "submit.sock"
    shutil.rmtree(top, ignore_errors=True)


class UnixSMTP(smtplib.SMTP):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(local_hostname="localhost")
        self.connect(path)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(self.path)
        return sock


def test_reload_applies_origin_to_new_sessions(
    make_daemon: Callable[..., Daemon],
    make_sink: Callable[..., Sink],
    sink_port: int,
    short_path: Path,
) -> None:
    """SIGHUP: a new [server] origin applies to the next local session; a new socket
    mode is reported as needing a restart. The start-up line names the socket."""
    sink = make_sink(MX1)
    daemon = local_relay(make_daemon, sink_port, short_path)
    assert f"smtprelay ready: smtp on {LOOPBACK}:{daemon.port}" in daemon.log()
    assert f", {short_path}; http on " in daemon.log()
    daemon.reconfigure(
        {
            "server": {"origin": "dest.test", "local_socket_mode": "0600"},
        }
    )
    assert "configuration reloaded" in daemon.hup()
    assert "[server] local_socket_mode changes only on restart" in daemon.log()
    result = subprocess.run(
        [str(BIN / "smtprelay-sendmail"), "-C", str(daemon.config), "-t"],
        input="To: carol\nSubject: s\n\nx\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    message = one_message(sink)
    assert message.rcpt_tos == ("carol@dest.test",)
    assert b"\r\nTo: carol@dest.test\r\n" in message.content
    assert stat.S_IMODE(short_path.stat().st_mode) == 0o666  # unchanged until a restart


def test_exit_codes_without_config_and_daemon(default_socket: Path, tmp_path: Path) -> None:
    """Nothing at the default socket: with a configuration that exists but is not
    readable the relay is installed and down (75, try again later); with none at all
    it is a configuration error (78). Both reasons are given."""
    existing = tmp_path / "unreadable.toml"
    existing.write_text("[server]\n")
    existing.chmod(0o600)
    result = as_nobody(["bob@dest.test"], "Subject: s\n\nx\n", SMTPRELAY_CONFIG=str(existing))
    assert result.returncode == 75, result.stderr
    assert f"{existing}: Permission denied" in result.stderr
    assert f"not reachable at {DEFAULT_LOCAL_SOCKET}" in result.stderr
    missing = "/nonexistent/smtprelay.toml"
    result = as_nobody(["bob@dest.test"], "Subject: s\n\nx\n", SMTPRELAY_CONFIG=missing)
    assert result.returncode == 78, result.stderr
    assert "configuration error" in result.stderr and DEFAULT_LOCAL_SOCKET in result.stderr


PHP = shutil.which("php")
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(
    PHP is None or not Path(SYSTEM_PYTHON).exists(),
    reason="php or Debian's python3 is not installed (apt-get install php-cli)",
)
def test_php_mail_as_www_user(
    make_daemon: Callable[..., Daemon],
    make_sink: Callable[..., Sink],
    sink_port: int,
    default_socket: Path,
) -> None:
    """PHP's mail() with sendmail_path pointing at the command, as a user who cannot
    read the configuration (the README's layout): mail() returns true and the message
    arrives, its domainless From: qualified."""
    assert PHP is not None
    sink = make_sink(MX1)
    daemon = local_relay(make_daemon, sink_port, default_socket)
    script = (
        'exit(mail("alice@dest.test", "php subject", "sent by mail()\\n", '
        '"From: www\\r\\nX-Mailer: PHP") ? 0 : 1);'
    )
    # The test venv's interpreter lives under /root, which user nobody cannot reach from
    # the shell PHP runs; the command needs only the standard library on this path, so
    # the system's Python runs it from the checkout, as an install in /opt would.
    checkout = Path(__file__).resolve().parents[2]
    sendmail_path = f"{SYSTEM_PYTHON} -m smtprelay.sendmail -t -i"
    clean = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "PYTHONPATH": str(checkout),
        "SMTPRELAY_CONFIG": str(daemon.config),
    }
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            PHP,
            "-n",
            "-d",
            f"sendmail_path={sendmail_path}",
            "-r",
            script,
        ],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
        cwd="/",
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    message = one_message(sink)
    assert message.rcpt_tos == ("alice@dest.test",)
    headers = headers_of(message)
    assert b"To: alice@dest.test" in headers
    assert b"Subject: php subject" in headers
    assert f"From: www@{ORIGIN}".encode() in headers
    assert b"\r\n\r\nsent by mail()\r\n" in message.body()  # PHP adds a newline
    assert f": uid={NOBODY.pw_uid} from=<nobody>" in daemon.log()
