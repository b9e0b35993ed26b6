"""``smtprelay-sendmail`` as cron, PHP's ``mail()`` and scripts run it: a message piped in
by ``/bin/sh``, handed to the real daemon, delivered by it to a receiving sink on
loopback ([delivery.routes]), and checked there: envelope and bytes.
"""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.daemon import LOOPBACK, Daemon, free_port, write_config
from tests.integration.delivery_support import MX1, MX2
from tests.integration.sinks import Received, Sink
from tests.polling import wait_until

pytest_plugins = ["tests.integration.delivery_fixtures"]

BIN = Path(sys.executable).parent
LOGIN = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def relay(
    make_daemon: Callable[..., Daemon], make_sink: Callable[..., Sink], sink_port: int
) -> tuple[Daemon, Sink]:
    """The daemon (hostname relay.test), delivering dest.test and relay.test to a sink
    and refusing (550 5.7.1) recipients in any other domain."""
    sink = make_sink(MX1)
    daemon = make_daemon(
        overrides={
            "delivery.routes": {
                "dest.test": f"{MX1}:{sink_port}",
                "relay.test": f"{MX1}:{sink_port}",
            },
            "relay": {"allowed_recipient_domains": ["dest.test", "relay.test"]},
        }
    )
    return daemon, sink


def shell(command: str, config: Path | str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with /bin/sh, as cron runs a job (PATH has the venv's scripts)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("NAME", "SMTPRELAY_CONFIG")}
    full_env.update(
        PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        SMTPRELAY_CONFIG=str(config),
        NAME="",
        **env,
    )
    return subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, text=True, env=full_env, timeout=60
    )


def pipe(text: str, args: str) -> str:
    """``printf '%s' TEXT | smtprelay-sendmail ARGS`` as a shell command line."""
    return f"printf '%s' {shlex.quote(text)} | smtprelay-sendmail {args}"


def received(sink: Sink, count: int = 1) -> list[Received]:
    wait_until(lambda: len(sink.messages) >= count, what=f"{count} message(s) at the sink")
    time.sleep(0.2)  # nothing more should arrive
    assert len(sink.messages) == count, sink.messages
    return sink.messages


def split(message: Received) -> tuple[list[bytes], bytes]:
    """Header lines (after the relay's Received:) and the body, from the exact bytes."""
    head, _, body = message.body().partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def test_cron_style_pipe_with_t_and_i(relay: tuple[Daemon, Sink]) -> None:
    """``-t -i`` from a real pipe: recipients from To/Cc/Bcc (a folded Bcc too), Bcc
    removed, From/Date/Message-ID added, LF made CRLF, a lone "." kept as content."""
    daemon, sink = relay
    text = (
        "To: Alice <alice@dest.test>\n"
        'Cc: carol@dest.test, "Dee, D." <dee@dest.test>\n'
        "Bcc: bob@dest.test,\n  hidden@dest.test\n"
        "Subject: nightly report\n"
        "\n"
        "line one\n.\n..two dots\nlast\n"
    )
    result = shell(pipe(text, "-t -i"), daemon.config)
    assert (result.returncode, result.stderr) == (0, "")
    (message,) = received(sink)
    assert message.mail_from == f"{LOGIN}@relay.test"
    assert message.rcpt_tos == (
        "alice@dest.test",
        "carol@dest.test",
        "dee@dest.test",
        "bob@dest.test",
        "hidden@dest.test",
    )
    headers, body = split(message)
    assert headers[:3] == [
        b"To: Alice <alice@dest.test>",
        b'Cc: carol@dest.test, "Dee, D." <dee@dest.test>',
        b"Subject: nightly report",
    ]
    assert headers[3] == f"From: {LOGIN}@relay.test".encode()
    assert headers[4].startswith(b"Date: ") and headers[5].startswith(b"Message-ID: <")
    assert len(headers) == 6 and not any(h.lower().startswith(b"bcc") for h in headers)
    assert body == b"line one\r\n.\r\n..two dots\r\nlast\r\n"
    assert b"hidden" not in message.content


def test_cron_exact_arguments(relay: tuple[Daemon, Sink]) -> None:
    """Vixie cron runs ``sendmail -FCronDaemon -odi -oem -oi -t`` with ``To: root``: the
    unqualified address gets [server] hostname; the message's own From: is kept."""
    daemon, sink = relay
    text = (
        "From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> backup\n"
        "Date: Fri, 27 Nov 2026 09:15:02 +0000\nMessage-ID: <cron.1@host>\n\nok\n"
    )
    result = shell(pipe(text, "-FCronDaemon -odi -oem -oi -t"), daemon.config)
    assert (result.returncode, result.stderr) == (0, "")
    (message,) = received(sink)
    assert message.rcpt_tos == ("root@relay.test",)
    headers, body = split(message)
    assert headers == [line.encode() for line in text.split("\n\n")[0].split("\n")]
    assert body == b"ok\r\n"


def test_f_sets_envelope_sender_and_F_the_from_name(relay: tuple[Daemon, Sink]) -> None:
    daemon, sink = relay
    result = shell(
        pipe("Subject: hi\n\nbody\n", "-i -f app@sender.test -F 'Jöhn Dœ, ops' bob@dest.test"),
        daemon.config,
    )
    assert (result.returncode, result.stderr) == (0, "")
    (message,) = received(sink)
    assert (message.mail_from, message.rcpt_tos) == ("app@sender.test", ("bob@dest.test",))
    parsed = email.message_from_bytes(message.body(), policy=email.policy.default)
    assert parsed["From"].addresses[0].display_name == "Jöhn Dœ, ops"
    assert parsed["From"].addresses[0].addr_spec == "app@sender.test"
    assert parsed["To"] is None  # without -t nothing is added but From/Date/Message-ID


def test_attached_f_r_alias_and_null_sender(relay: tuple[Daemon, Sink]) -> None:
    daemon, sink = relay
    assert (
        shell(
            pipe("Subject: a\n\n1\n", "-fapp@sender.test bob@dest.test"), daemon.config
        ).returncode
        == 0
    )
    assert shell(pipe("Subject: b\n\n2\n", "-r '<>' bob@dest.test"), daemon.config).returncode == 0
    first, second = sorted(received(sink, 2), key=lambda m: b"Subject: b" in m.content)
    assert first.mail_from == "app@sender.test"
    assert second.mail_from == "<>"  # -r <>: the null sender; From: is the login user
    assert f"From: {LOGIN}@relay.test".encode() in second.content


def test_without_i_a_lone_dot_ends_the_message(relay: tuple[Daemon, Sink]) -> None:
    daemon, sink = relay
    text = "Subject: dot\n\nbefore\n.\nafter the dot\n"
    result = shell(pipe(text, "bob@dest.test"), daemon.config)
    assert (result.returncode, result.stderr) == (0, "")
    (message,) = received(sink)
    assert split(message)[1] == b"before\r\n"
    assert b"after the dot" not in message.content


def test_recipients_from_argv_and_headers_together(relay: tuple[Daemon, Sink]) -> None:
    """As Postfix's sendmail: with -t, argument recipients are added (not removed);
    an argument may be a list; duplicates are sent once."""
    daemon, sink = relay
    text = "To: alice@dest.test\nSubject: both\n\nx\n"
    result = shell(
        pipe(text, "-t -i 'Ed <ed@dest.test>, alice@dest.test' -- fay@dest.test"), daemon.config
    )
    assert (result.returncode, result.stderr) == (0, "")
    (message,) = received(sink)
    assert message.rcpt_tos == ("ed@dest.test", "alice@dest.test", "fay@dest.test")


def test_smtprelay_sendmail_subcommand_and_config_flags(relay: tuple[Daemon, Sink]) -> None:
    """``smtprelay sendmail`` is the same command; -C / -c FILE (after the command) and
    ``smtprelay -c FILE sendmail`` name the configuration."""
    daemon, sink = relay
    for args in (
        f"sendmail -C {daemon.config} -t -i",
        f"sendmail -c {daemon.config} -ti",
        f"-c {daemon.config} sendmail -oi -t",
    ):
        text = f"To: bob@dest.test\nSubject: {args}\n\nx\n"
        command = f"printf '%s' {shlex.quote(text)} | {sys.executable} -m smtprelay {args}"
        result = shell(command, "/nonexistent.toml")
        assert (result.returncode, result.stderr) == (0, ""), args
    assert len(received(sink, 3)) == 3


def test_daemon_down_exits_75_and_says_so(make_daemon: Callable[..., Daemon]) -> None:
    """Nothing listening: EX_TEMPFAIL (75) so the caller keeps the message and retries."""
    daemon = make_daemon(start=False)
    result = shell(pipe("To: bob@dest.test\n\nx\n", "-t -i"), daemon.config)
    assert result.returncode == 75
    assert "message not sent" in result.stderr
    assert f"127.0.0.1:{daemon.port}" in result.stderr and "not reachable" in result.stderr
    assert "try again later" in result.stderr and "Traceback" not in result.stderr


def test_refused_recipient_is_reported(relay: tuple[Daemon, Sink]) -> None:
    """5xx for one recipient: the others get the message, exit 67 (EX_NOUSER) with the
    relay's reply; 5xx for all: nothing is queued, exit 67."""
    daemon, sink = relay
    result = shell(pipe("Subject: x\n\nx\n", "bob@dest.test eve@elsewhere.test"), daemon.config)
    assert result.returncode == 67
    assert "<eve@elsewhere.test>: 550 5.7.1" in result.stderr
    (message,) = received(sink)
    assert message.rcpt_tos == ("bob@dest.test",)

    result = shell(pipe("Subject: y\n\ny\n", "eve@elsewhere.test"), daemon.config)
    assert result.returncode == 67
    assert "all recipients refused" in result.stderr and "550 5.7.1" in result.stderr
    assert daemon.queued_ids() == [] and len(sink.messages) == 1


def test_no_recipient_is_a_usage_error(relay: tuple[Daemon, Sink]) -> None:
    daemon, _ = relay
    result = shell(pipe("Subject: nobody\n\nx\n", "-t -i"), daemon.config)
    assert result.returncode == 64 and "no recipient" in result.stderr


def test_missing_config_exits_78(tmp_path: Path) -> None:
    result = shell(pipe("To: bob@dest.test\n\nx\n", "-t"), tmp_path / "none.toml")
    assert result.returncode == 78 and "configuration error" in result.stderr


@pytest.fixture
def fake_relay(tmp_path: Path, make_sink: Callable[..., Sink]) -> tuple[Sink, Path]:
    """A scriptable sink standing in for the daemon at [server] listen."""
    sink = make_sink(MX2)
    config = tmp_path / "fake.toml"
    # local_socket = "": the command's TCP path, to [server] listen.
    write_config(
        config,
        {
            "server": {
                "hostname": "relay.test",
                "local_socket": "",
                "listen": [f"{MX2}:{sink.port}"],
            }
        },
    )
    return sink, config


@pytest.mark.parametrize("script", ["rcpt", "data", "greeting"])
def test_temporary_failures_exit_75_with_nothing_sent(
    fake_relay: tuple[Sink, Path], script: str
) -> None:
    """Any 4xx: exit 75 and no message accepted (a 4xx recipient among accepted ones
    aborts the whole transaction, so a retry does not duplicate the message)."""
    sink, config = fake_relay
    if script == "rcpt":
        sink.rcpt_reply("later@dest.test", "451 4.3.0 try again")
    elif script == "data":
        sink.on_data("452 4.3.1 disk full")
    else:
        sink.on_connect("421 4.3.2 busy")
    result = shell(pipe("Subject: t\n\nx\n", "now@dest.test later@dest.test"), config)
    assert result.returncode == 75, result.stderr
    reply = {"rcpt": "451 4.3.0", "data": "452 4.3.1", "greeting": "421 4.3.2"}[script]
    assert reply in result.stderr and "try again later" in result.stderr
    assert sink.messages == []


def test_message_refused_exits_65(fake_relay: tuple[Sink, Path]) -> None:
    sink, config = fake_relay
    sink.on_data("554 5.6.0 content refused")
    result = shell(pipe("Subject: t\n\nx\n", "bob@dest.test"), config)
    assert result.returncode == 65 and "554 5.6.0 content refused" in result.stderr


def test_wildcard_listen_address_is_reached_on_loopback(
    tmp_path: Path, make_sink: Callable[..., Sink]
) -> None:
    """``listen = ["0.0.0.0:PORT"]``: the command connects to 127.0.0.1:PORT."""
    sink = make_sink(LOOPBACK, port=free_port())
    config = tmp_path / "wild.toml"
    write_config(
        config,
        {
            "server": {
                "hostname": "relay.test",
                "local_socket": "",
                "listen": [f"0.0.0.0:{sink.port}"],
            }
        },
    )
    result = shell(pipe("Subject: w\n\nx\n", "bob@dest.test"), config)
    assert (result.returncode, result.stderr) == (0, "")
    (message,) = received(sink)
    assert message.rcpt_tos == ("bob@dest.test",)


def test_esmtp_parameters_reach_the_relay(make_daemon: Callable[..., Daemon]) -> None:
    """-N/-R/-V become NOTIFY/RET/ENVID; 8-bit content BODY=8BITMIME; a non-ASCII address
    SMTPUTF8; SIZE is declared. (Delivery goes to a closed port: the message stays queued.)"""
    daemon = make_daemon()
    text = "Subject: é\n\nnaïve\n"
    result = shell(
        pipe(text, "-N success,failure -R hdrs -V 'job 7' -i bób@dest.test"), daemon.config
    )
    assert (result.returncode, result.stderr) == (0, "")
    (qid,) = daemon.queued_ids()
    envelope = daemon.envelope(qid)
    params = envelope["mail_params"]
    assert (params["BODY"], params["RET"], params["ENVID"]) == ("8BITMIME", "HDRS", "job+207")
    assert "SMTPUTF8" in params and int(params["SIZE"]) > len(text)
    (rcpt,) = envelope["recipients"]
    assert (rcpt["address"], rcpt["params"]["NOTIFY"]) == ("bób@dest.test", "SUCCESS,FAILURE")
    message = daemon.message(qid)
    assert "\r\nSubject: é\r\n".encode() in message
    assert message.endswith("\r\n\r\nnaïve\r\n".encode())


def test_more_recipients_than_max_recipients(
    make_daemon: Callable[..., Daemon], make_sink: Callable[..., Sink], sink_port: int
) -> None:
    """[server] max_recipients = 2 and five recipients: three transactions, all accepted."""
    sink = make_sink(MX1)
    daemon = make_daemon(
        overrides={
            "server": {"max_recipients": 2},
            "delivery.routes": {"dest.test": f"{MX1}:{sink_port}"},
        }
    )
    rcpts = [f"r{n}@dest.test" for n in range(5)]
    result = shell(pipe("Subject: many\n\nx\n", " ".join(rcpts)), daemon.config)
    assert (result.returncode, result.stderr) == (0, "")
    messages = received(sink, 3)
    assert sorted(r for m in messages for r in m.rcpt_tos) == rcpts
    assert len({m.body() for m in messages}) == 1  # one message, same Message-ID
