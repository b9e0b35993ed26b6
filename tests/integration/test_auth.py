"""AUTH and relay permission: TLS before credentials, failures, untrusted networks."""

from __future__ import annotations

import base64
import shutil
import smtplib
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import bcrypt
import pytest
import trustme

from smtprelay import replies
from tests.integration.daemon import LOOPBACK, Daemon
from tests.integration.inbound_support import (
    HELO,
    PASSWORD,
    RECIPIENT,
    SENDER,
    USER,
    RawClient,
    assert_log,
    assert_reply,
    authenticated,
    client_context,
    line,
    log_mark,
    smtp,
    split_received,
    start_relay,
    submit,
)

PLAIN_BLOB = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()


UNTRUSTED = {"relay": {"trusted_networks": ["10.0.0.0/8"]}}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Daemon]:
    """Default settings, loopback trusted. No failed AUTH here: failures slow AUTH down."""
    daemon = start_relay(tmp_path_factory, ca)
    yield daemon
    daemon.kill()


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Daemon]:
    """127.0.0.1 is not in trusted_networks: only authenticated clients may relay."""
    daemon = start_relay(tmp_path_factory, ca, overrides=UNTRUSTED)
    yield daemon
    daemon.kill()


def capabilities(ehlo: list[str]) -> list[str]:
    return [item[4:] for item in ehlo[1:]]


def test_auth_offered_only_after_starttls(relay: Daemon) -> None:
    mark = log_mark(relay)
    with RawClient(relay.port) as raw:
        before = capabilities(raw.ehlo())
        assert "STARTTLS" in before
        assert not any(c.startswith("AUTH") for c in before), before
        assert_reply(raw.cmd(f"AUTH PLAIN {PLAIN_BLOB}"), replies.AUTH_NEEDS_TLS)
        assert_reply(raw.cmd("AUTH LOGIN"), replies.AUTH_NEEDS_TLS)
        assert raw.starttls(client_context(relay)).startswith("220 ")
        after = capabilities(raw.ehlo())
        assert "AUTH PLAIN LOGIN" in after, after
        assert "STARTTLS" not in after
        assert_reply(raw.cmd(f"AUTH PLAIN {PLAIN_BLOB}"), replies.AUTH_OK)
    # The credentials sent in clear were never even checked.
    assert "authentication failed" not in relay.log()[mark:]


def test_smtplib_refuses_to_login_in_clear(relay: Daemon) -> None:
    with smtp(relay) as client:
        assert not client.has_extn("auth")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            client.login(USER, PASSWORD)


def test_allow_plaintext_offers_auth_before_tls(make_daemon: Callable[..., Daemon]) -> None:
    relay = make_daemon(users={USER: PASSWORD}, overrides={"auth": {"allow_plaintext": True}})
    with smtp(relay) as client:
        assert client.has_extn("starttls")
        assert "PLAIN" in client.esmtp_features["auth"].split()
        code, text = client.login(USER, PASSWORD)
        assert_reply(line(code, text), replies.AUTH_OK)
        qid = submit(client, b"Subject: plaintext auth\r\n\r\nbody\r\n")
    envelope = relay.envelope(qid)
    assert envelope["client"]["auth_user"] == USER
    assert envelope["client"]["tls"] is None
    assert b" with ESMTPA id " in split_received(relay.message(qid))[0]


def test_no_users_means_no_auth(make_daemon: Callable[..., Daemon]) -> None:
    relay = make_daemon()  # users file absent
    with RawClient(relay.port) as raw:
        raw.ehlo()
        assert raw.starttls(client_context(relay)).startswith("220 ")
        assert not any(c.startswith("AUTH") for c in capabilities(raw.ehlo()))
        assert_reply(raw.cmd(f"AUTH PLAIN {PLAIN_BLOB}"), replies.AUTH_UNAVAILABLE)


@pytest.mark.slow
def test_wrong_password(make_daemon: Callable[..., Daemon]) -> None:
    # Failed attempts are slowed down per client (0.5 s more each): two failures only.
    relay = make_daemon(users={USER: PASSWORD})
    wrong = "Tr0ub4dor-wrong-pw"
    with smtp(relay) as client:
        client.starttls(context=client_context(relay))
        client.ehlo()
        client.user, client.password = USER, wrong
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.auth("PLAIN", client.auth_plain)
        assert_reply(line(failed.value.smtp_code, failed.value.smtp_error), replies.AUTH_FAILED)
        # unknown user, LOGIN mechanism with its two-step exchange
        client.user = "nobody"
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert_reply(line(failed.value.smtp_code, failed.value.smtp_error), replies.AUTH_FAILED)
        # not authenticated: nothing was granted
        code, text = client.rcpt(RECIPIENT)
        assert_reply(line(code, text), replies.NEED_MAIL)
        # and the right password still works afterwards
        client.user, client.password = USER, PASSWORD
        code, text = client.auth("PLAIN", client.auth_plain)
        assert_reply(line(code, text), replies.AUTH_OK)
    assert_log(
        relay,
        r"warning: unknown\[127\.0\.0\.1\]: SASL PLAIN authentication failed: "
        r"authentication failure, sasl_username=app1$",
    )
    assert_log(
        relay,
        r"warning: unknown\[127\.0\.0\.1\]: SASL LOGIN authentication failed: "
        r"authentication failure, sasl_username=nobody$",
    )
    log = relay.log()
    plain_blob = base64.b64encode(f"\0{USER}\0{wrong}".encode()).decode()
    for secret in (
        wrong,
        PASSWORD,
        base64.b64encode(wrong.encode()).decode(),
        plain_blob,
        PLAIN_BLOB,
    ):
        assert secret not in log


def test_malformed_auth_exchanges(relay: Daemon) -> None:
    # None of these reaches the password check, so none counts as a failed attempt.
    with RawClient(relay.port) as raw:
        raw.ehlo()
        raw.starttls(client_context(relay))
        raw.ehlo()
        assert raw.cmd("AUTH PLAIN !!notbase64!!").startswith("501 5.5.2 ")
        assert raw.cmd("AUTH CRAM-MD5").startswith("504 5.5.4 ")
        assert raw.cmd("AUTH LOGIN").startswith("334 ")
        assert raw.cmd("*").startswith("501 ")  # client cancels the exchange
        assert_reply(raw.cmd("NOOP"), replies.OK)
        assert_reply(raw.cmd(f"AUTH PLAIN {PLAIN_BLOB}"), replies.AUTH_OK)
        assert raw.cmd(f"AUTH PLAIN {PLAIN_BLOB}").startswith("503 5.5.1 ")


def test_relay_denied_from_untrusted_network(untrusted: Daemon) -> None:
    relay = untrusted
    before = relay.queued_ids()
    mark = log_mark(relay)
    with RawClient(relay.port) as raw:
        raw.ehlo("pc")
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        reply = raw.cmd("RCPT TO:<x@example.org>")
        assert (
            reply == f"{replies.RELAY_DENIED.code} {replies.RELAY_DENIED.enhanced} "
            f"<x@example.org>: {replies.RELAY_DENIED.text}"
        )
        assert_reply(raw.cmd("DATA"), replies.NEED_RCPT)
        # TLS alone grants nothing
        raw.starttls(client_context(relay))
        raw.ehlo("pc")
        assert_reply(raw.cmd(f"MAIL FROM:<{SENDER}>"), replies.SENDER_OK)
        assert_reply(raw.cmd("RCPT TO:<x@example.org>"), replies.RELAY_DENIED)
    assert_log(
        relay,
        r"smtprelay/smtpd\[\d+\]: NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.1\]: "
        r"554 5\.7\.1 <x@example\.org>: Relay access denied; "
        r"from=<app@example\.com> to=<x@example\.org> proto=ESMTP helo=<pc>$",
        start=mark,
    )
    assert relay.queued_ids() == before


def test_relay_allowed_after_auth_from_untrusted_network(untrusted: Daemon) -> None:
    relay = untrusted
    with authenticated(relay) as client:
        qid = submit(
            client,
            b"Subject: authenticated relay\r\n\r\nbody\r\n",
            recipients=("x@example.org", RECIPIENT),
        )
    envelope = relay.envelope(qid)
    assert envelope["client"]["auth_user"] == USER
    assert [r["address"] for r in envelope["recipients"]] == ["x@example.org", RECIPIENT]
    # AUTH is forgotten with the connection: a new plain session is refused again.
    with smtp(relay) as client:
        client.mail(SENDER)
        code, text = client.rcpt(RECIPIENT)
        assert_reply(line(code, text), replies.RELAY_DENIED)


def test_implicit_tls_auth_relays_from_untrusted_network(untrusted: Daemon) -> None:
    relay = untrusted
    assert relay.tls_port
    with smtplib.SMTP_SSL(
        LOOPBACK, relay.tls_port, local_hostname=HELO, context=client_context(relay), timeout=15
    ) as client:
        client.ehlo()
        client.mail(SENDER)
        code, text = client.rcpt(RECIPIENT)
        assert_reply(line(code, text), replies.RELAY_DENIED)
        client.rset()
        client.login(USER, PASSWORD)
        qid = submit(client, b"Subject: implicit\r\n\r\nbody\r\n")
    assert qid in relay.queued_ids()


# --- what an attacker can learn, and how fast it can guess ------------------------------


def from_address(relay: Daemon, source: str) -> smtplib.SMTP:
    """A STARTTLS session from ``source`` (any 127.0.0.0/8 address is ours on loopback;
    each is a client of its own for the AUTH slow-down)."""
    client = smtplib.SMTP(
        LOOPBACK, relay.port, local_hostname=HELO, timeout=30, source_address=(source, 0)
    )
    client.ehlo()
    client.starttls(context=client_context(relay))
    client.ehlo()
    return client


def auth_plain(client: smtplib.SMTP, user: str, password: str) -> str:
    blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    code, text = client.docmd("AUTH", f"PLAIN {blob}")
    return line(code, text)


def users_file(relay: Daemon, users: dict[str, str], rounds: int) -> None:
    relay.users_file.write_text(
        "".join(
            f"{name}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds)).decode()}\n"
            for name, pw in users.items()
        )
    )


def test_unknown_and_existing_users_take_the_same_time(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Timing tells nothing about which users exist: unknown names cost a bcrypt check too.
    Cost 8 (15 ms or more a check) makes the difference plain were it there: an
    unknown user answered without bcrypt takes a few milliseconds."""
    relay = make_daemon(start=False, overrides=UNTRUSTED)
    users_file(relay, {USER: PASSWORD}, rounds=8)
    relay.start()
    took: dict[str, list[float]] = {"known": [], "unknown": []}
    for n in range(20):  # interleaved, so a busy moment of the machine hits both alike
        for kind, user in (("known", USER), ("unknown", f"nobody{n}")):
            # A fresh client address each time: no failure penalty in the figures.
            source = f"127.0.{11 if kind == 'known' else 12}.{n + 1}"
            with from_address(relay, source) as client:
                start = time.perf_counter()
                reply = auth_plain(client, user, "wrong-password")
                took[kind].append(time.perf_counter() - start)
            assert_reply(reply, replies.AUTH_FAILED)
    known, unknown = (statistics.median(took[k]) for k in ("known", "unknown"))
    print(
        f"median AUTH reply: known user {known * 1000:.1f} ms, unknown user {unknown * 1000:.1f} ms"
    )
    assert 0.5 < unknown / known < 2.0, took
    # and each kind is as often the faster one: no systematic gap hides under the medians
    faster = sum(u < k for u, k in zip(took["unknown"], took["known"], strict=True))
    assert 3 <= faster <= 17, took


LONG = ("a-long-passphrase-" * 6)[:100]  # 100 bytes; bcrypt uses the first 72


@pytest.mark.skipif(shutil.which("htpasswd") is None, reason="htpasswd (apache2-utils) missing")
def test_long_passwords_from_htpasswd_and_user_add_log_in(
    make_daemon: Callable[..., Daemon],
) -> None:
    relay = make_daemon(users={"cli-user": LONG}, overrides=UNTRUSTED)
    subprocess.run(
        ["htpasswd", "-B", "-b", str(relay.users_file), "ht-user", LONG],
        check=True,
        capture_output=True,
    )
    assert relay.users_file.read_text().count("\n") == 2
    mark = log_mark(relay)
    for n, user in enumerate(("cli-user", "ht-user")):
        with from_address(relay, f"127.0.13.{n + 1}") as client:
            assert_reply(line(*client.login(user, LONG)), replies.AUTH_OK)
            qid = submit(client, b"Subject: long password\r\n\r\nbody\r\n")
        assert relay.envelope(qid)["client"]["auth_user"] == user
        # LOGIN, with the password in its own step
        with from_address(relay, f"127.0.14.{n + 1}") as client:
            client.user, client.password = user, LONG
            code, text = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
            assert_reply(line(code, text), replies.AUTH_OK)
    # Wrong long passwords: 535 for a known user and an unknown one alike, never 451.
    for n, user in enumerate(("cli-user", "ht-user", "nobody")):
        with from_address(relay, f"127.0.15.{n + 1}") as client:
            assert_reply(auth_plain(client, user, "X" + LONG[1:]), replies.AUTH_FAILED)
    log = relay.log()[mark:]
    assert log.count("authentication failed") == 3, log
    assert "Traceback" not in log and "internal error" not in log and " 451 " not in log


@pytest.mark.slow
def test_parallel_wrong_passwords_from_one_address_are_slowed_together(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Eight sessions from one address guess no faster than one session from another,
    in the same window; and a right password from a third address is answered without
    waiting for the guessing address's turn."""
    relay = make_daemon(start=False, overrides=UNTRUSTED)
    users_file(relay, {USER: PASSWORD}, rounds=4)  # bcrypt time negligible: the delay counts
    relay.start()
    window = 4.0
    replies_at: dict[str, list[float]] = {"parallel": [], "single": []}
    lock = threading.Lock()
    third_failure = threading.Event()
    clients = [from_address(relay, "127.0.16.1") for _ in range(8)]
    single = from_address(relay, "127.0.16.2")
    start = time.monotonic()
    deadline = start + window

    def guess(client: smtplib.SMTP, kind: str) -> None:
        while time.monotonic() < deadline:
            assert client.sock is not None
            client.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                reply = auth_plain(client, USER, "guess")
            except (OSError, smtplib.SMTPException):
                return  # still waiting for its turn at the end of the window
            assert_reply(reply, replies.AUTH_FAILED)
            with lock:
                replies_at[kind].append(time.monotonic())
                if len(replies_at["parallel"]) == 3:
                    third_failure.set()

    threads = [threading.Thread(target=guess, args=(c, "parallel")) for c in clients]
    threads.append(threading.Thread(target=guess, args=(single, "single")))
    for thread in threads:
        thread.start()
    assert third_failure.wait(window)
    # The guessing address's next turn is 1.5 s after its third failure.
    with from_address(relay, "127.0.16.3") as good:
        assert_reply(auth_plain(good, USER, PASSWORD), replies.AUTH_OK)
        good_done = time.monotonic()
    for thread in threads:
        thread.join(window + 30)
    for client in [*clients, single]:
        client.close()
    parallel, single_count = len(replies_at["parallel"]), len(replies_at["single"])
    print(
        f"in {window} s: 8 sessions from one address {parallel} answers, one session {single_count}"
    )
    assert single_count >= 3
    assert parallel <= single_count + 1  # one session's rate, not eight times it
    later = replies_at["parallel"][3:]
    assert not later or good_done < later[0]  # not queued behind the guesser's turn
    # every answered guess is in the log for fail2ban (those cut off at the end may be too)
    assert relay.log().count("[127.0.16.1]: SASL PLAIN authentication failed") >= parallel


def test_authenticated_header_names_the_user_only_when_asked(
    make_daemon: Callable[..., Daemon],
    untrusted: Daemon,
) -> None:
    with authenticated(untrusted) as client:
        quiet = submit(client, b"Subject: default\r\n\r\nbody\r\n")
    received, _ = split_received(untrusted.message(quiet))
    assert b"Authenticated sender" not in received and USER.encode() not in received
    assert b" with ESMTPSA id " in received  # that AUTH was used stays visible (RFC 3848)

    relay = make_daemon(
        users={USER: PASSWORD}, overrides={**UNTRUSTED, "auth": {"authenticated_header": True}}
    )
    with authenticated(relay) as client:
        named = submit(client, b"Subject: header on\r\n\r\nbody\r\n")
    received, _ = split_received(relay.message(named))
    assert b"\t(Authenticated sender: app1)\r\n" in received
