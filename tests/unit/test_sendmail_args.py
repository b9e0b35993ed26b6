"""smtprelay.sendmail without a relay: sendmail's command line, reading standard input,
and completing the message (recipients, Bcc, From/Date/Message-ID, CRLF)."""

from __future__ import annotations

import io

import pytest

from smtprelay.sendmail import (
    EX_DATAERR,
    EX_USAGE,
    Failure,
    Identity,
    Options,
    UsageError,
    parse_args,
    prepare,
    read_message,
)

# --- the command line ------------------------------------------------------------------


def test_defaults() -> None:
    assert parse_args([]) == Options()


@pytest.mark.parametrize(
    "argv",
    [
        ["-t", "-i"],
        ["-ti"],
        ["-it"],
        ["-t", "-oi"],
        ["-oi", "-t"],
        ["-t", "-o", "i"],
        ["-t", "-O", "IgnoreDots=True"],
    ],
)
def test_t_and_i_in_every_spelling(argv: list[str]) -> None:
    opts = parse_args(argv)
    assert (opts.extract_recipients, opts.ignore_dots) == (True, True)


@pytest.mark.parametrize(
    "argv",
    [
        ["-f", "app@x.test"],
        ["-fapp@x.test"],
        ["-r", "app@x.test"],
        ["-rapp@x.test"],
        ["-f", "<app@x.test>"],
        ["-f", "App <app@x.test>"],
        ["-tfapp@x.test"],
    ],
)
def test_sender(argv: list[str]) -> None:
    assert parse_args(argv).sender == "app@x.test"


@pytest.mark.parametrize("value", ["", "<>", " <> "])
def test_null_sender(value: str) -> None:
    assert parse_args(["-f", value]).sender == ""


def test_unqualified_sender_kept_for_later_qualification() -> None:
    assert parse_args(["-f", "root"]).sender == "root"


@pytest.mark.parametrize("argv", [["-F", "Cron Daemon"], ["-FCron Daemon"]])
def test_full_name(argv: list[str]) -> None:
    assert parse_args(argv).full_name == "Cron Daemon"


def test_empty_full_name_means_none() -> None:
    assert parse_args(["-F", ""]).full_name == ""


@pytest.mark.parametrize("argv", [["-C", "/x.toml"], ["-C/x.toml"], ["-c", "/x.toml"]])
def test_config_file(argv: list[str]) -> None:
    assert parse_args(argv).config == "/x.toml"


def test_ignored_options_take_their_values() -> None:
    """-o<x> with its value attached, and the options that take a separate value."""
    argv = [
        "-odi",
        "-oem",
        "-oL9",
        "-oeq",
        "-B",
        "8BITMIME",
        "-B8BITMIME",
        "-h",
        "17",
        "-L",
        "label",
        "-X",
        "/tmp/log",
        "-Am",
        "-G",
        "-U",
        "-m",
        "-n",
        "-s",
        "-bm",
        "-O",
        "DeliveryMode=b",
        "bob@x.test",
    ]
    opts = parse_args(argv)
    assert opts.recipients == ["bob@x.test"]
    assert opts == Options(recipients=["bob@x.test"])


def test_cron_command_line() -> None:
    opts = parse_args(["-FCronDaemon", "-odi", "-oem", "-oi", "-t"])
    assert opts == Options(extract_recipients=True, ignore_dots=True, full_name="CronDaemon")


def test_php_mail_command_line() -> None:
    opts = parse_args(["-t", "-i", "-f", "www@site.test"])
    assert (opts.extract_recipients, opts.ignore_dots, opts.sender) == (True, True, "www@site.test")


def test_recipients_anywhere_and_after_double_dash() -> None:
    opts = parse_args(["a@x.test", "-t", "Bob <b@y.test>, c@z.test", "--", "-dash@x.test"])
    assert opts.extract_recipients
    assert opts.recipients == ["a@x.test", "b@y.test", "c@z.test", "-dash@x.test"]


def test_double_dash_ends_options() -> None:
    assert parse_args(["--", "-t"]).extract_recipients is False


def test_unqualified_recipient() -> None:
    assert parse_args(["root"]).recipients == ["root"]


def test_lone_dash_is_ignored() -> None:
    assert parse_args(["-", "bob@x.test"]).recipients == ["bob@x.test"]


def test_dsn_options() -> None:
    opts = parse_args(["-N", "delay,Success", "-R", "hdrs", "-V", "id+1=x"])
    assert (opts.notify, opts.ret, opts.envid) == ("SUCCESS,DELAY", "HDRS", "id+1=x")
    assert parse_args(["-Nnever"]).notify == "NEVER"


def test_verbose_and_help() -> None:
    assert parse_args(["-v"]).verbose
    assert parse_args(["--help"]).show_help


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-x"], "unknown option -x"),
        (["-tx"], "unknown option -x"),
        (["-f"], "option -f needs a value"),
        (["-t", "-F"], "option -F needs a value"),
        (["-bs"], "-bs is not supported"),
        (["-bp"], "-bp is not supported"),
        (["-q"], "-q (run the queue) is not supported"),
        (["-q1h"], "-q (run the queue) is not supported"),
        (["-I"], "newaliases"),
        (["-N", "sometimes"], "-N sometimes"),
        (["-N", "never,success"], "-N never,success"),
        (["-R", "all"], "-R all"),
        (["-V", "a\x01b"], "envelope id"),
        (["-V", "x" * 101], "envelope id"),
        (["-f", "a b@x.test"], "not an address"),
        (["-f", "a@x.test\r\nRCPT TO:<e@v>"], "not an address"),
        (["bob@x.test>\r\nRCPT TO:<e@v.test"], "not a recipient address"),
        (["undisclosed-recipients:;"], "not a recipient address"),
        ([""], "not a recipient address"),
    ],
)
def test_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=None) as error:
        parse_args(argv)
    assert message in str(error.value)


# --- standard input ----------------------------------------------------------------------


def test_without_i_a_lone_dot_line_ends_input() -> None:
    stream = io.BytesIO(b"a\n.x\n..\n.\nnot read\n")
    assert read_message(stream, ignore_dots=False) == b"a\n.x\n..\n"
    assert stream.read() == b"not read\n"


@pytest.mark.parametrize("end", [b".\r\n", b"."])
def test_lone_dot_with_crlf_or_at_eof(end: bytes) -> None:
    assert read_message(io.BytesIO(b"a\r\n" + end), ignore_dots=False) == b"a\r\n"


def test_with_i_everything_to_eof() -> None:
    data = b"a\n.\nb\n"
    assert read_message(io.BytesIO(data), ignore_dots=True) == data


# --- completing the message --------------------------------------------------------------

ME = Identity(login="cron", full_name="Cron User", hostname="relay.test")


def headers_of(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_extract_recipients_and_remove_bcc() -> None:
    raw = (
        b"To: a@x.test, B <b@x.test>\nCc: c@x.test\nBcc: d@x.test,\n\te@x.test\n"
        b"Subject: s\nFrom: Me <me@x.test>\nDate: x\nMessage-ID: <1@x>\n\nbody\n"
    )
    prepared = prepare(raw, Options(extract_recipients=True), ME)
    assert prepared.recipients == ("a@x.test", "b@x.test", "c@x.test", "d@x.test", "e@x.test")
    assert prepared.data == (
        b"To: a@x.test, B <b@x.test>\r\nCc: c@x.test\r\nSubject: s\r\n"
        b"From: Me <me@x.test>\r\nDate: x\r\nMessage-ID: <1@x>\r\n"
        b"\r\nbody\r\n"
    )
    assert prepared.sender == "cron@relay.test"


def test_without_t_headers_do_not_add_recipients_but_bcc_is_removed() -> None:
    raw = b"To: a@x.test\nBcc: d@x.test\nFrom: f@x.test\nDate: x\nMessage-ID: <1@x>\n\nb\n"
    prepared = prepare(raw, Options(recipients=["z@x.test"]), ME)
    assert prepared.recipients == ("z@x.test",)
    assert b"Bcc" not in prepared.data


def test_resent_headers_replace_the_originals_with_t() -> None:
    raw = b"To: a@x.test\nResent-To: r@x.test\nResent-Bcc: s@x.test\n\nb\n"
    prepared = prepare(raw, Options(extract_recipients=True), ME)
    assert prepared.recipients == ("r@x.test", "s@x.test")
    assert b"Resent-Bcc" not in prepared.data and b"To: a@x.test" in prepared.data


def test_argv_and_header_recipients_add_up_without_duplicates() -> None:
    prepared = prepare(
        b"To: A@x.test, root\n\nb\n",
        Options(extract_recipients=True, recipients=["a@x.test", "z@x.test"]),
        ME,
    )
    assert prepared.recipients == ("a@x.test", "z@x.test", "root@relay.test")


def test_missing_from_date_message_id_are_added() -> None:
    prepared = prepare(b"Subject: s\n\nb\n", Options(recipients=["a@x.test"]), ME)
    headers = headers_of(prepared.data)
    assert headers[:2] == [b"Subject: s", b"From: Cron User <cron@relay.test>"]
    assert headers[2].startswith(b"Date: ")
    assert headers[3].startswith(b"Message-ID: <") and headers[3].endswith(b"@relay.test>")


def test_from_uses_f_sender_and_F_name() -> None:
    opts = Options(recipients=["a@x.test"], sender="app@x.test", full_name="Ops, Team")
    prepared = prepare(b"\nb\n", opts, ME)
    assert prepared.sender == "app@x.test"
    assert b'From: "Ops, Team" <app@x.test>' in headers_of(prepared.data)


def test_non_ascii_full_name_is_encoded() -> None:
    prepared = prepare(b"\nb\n", Options(recipients=["a@x.test"], full_name="Jöhn"), ME)
    assert b"From: =?utf-8?b?SsO2aG4=?= <cron@relay.test>" in headers_of(prepared.data)


def test_empty_full_name_and_null_sender() -> None:
    prepared = prepare(b"\nb\n", Options(recipients=["a@x.test"], sender="", full_name=""), ME)
    assert prepared.sender == ""
    assert b"From: cron@relay.test" in headers_of(prepared.data)


def test_unqualified_sender_gets_the_hostname() -> None:
    prepared = prepare(b"\nb\n", Options(recipients=["a@x.test"], sender="www-data"), ME)
    assert prepared.sender == "www-data@relay.test"


def test_line_endings_become_crlf() -> None:
    raw = b"From: f@x\rDate: d\r\nMessage-ID: <m@x>\n\na\rb\r\nc\nno final newline"
    prepared = prepare(raw, Options(recipients=["a@x.test"]), ME)
    assert prepared.data == (
        b"From: f@x\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\na\r\nb\r\nc\r\nno final newline\r\n"
    )


def test_no_headers_at_all() -> None:
    prepared = prepare(b"just text\nmore\n", Options(recipients=["a@x.test"]), ME)
    head, body = prepared.data.split(b"\r\n\r\n", 1)
    assert [h.split(b":")[0] for h in head.split(b"\r\n")] == [b"From", b"Date", b"Message-ID"]
    assert body == b"just text\r\nmore\r\n"


def test_empty_message() -> None:
    prepared = prepare(b"", Options(recipients=["a@x.test"]), ME)
    assert prepared.data.endswith(b"\r\n\r\n") and prepared.data.startswith(b"From: ")


def test_headers_without_empty_line_get_one() -> None:
    prepared = prepare(b"Subject: s\nplain body line\n", Options(recipients=["a@x.test"]), ME)
    assert prepared.data.endswith(b"\r\n\r\nplain body line\r\n")
    assert b"Subject: s\r\n" in prepared.data


def test_mbox_from_line_is_dropped() -> None:
    raw = b"From someone Fri Nov 27 09:15:02 2026\nSubject: s\n\nb\n"
    prepared = prepare(raw, Options(recipients=["a@x.test"]), ME)
    assert prepared.data.startswith(b"Subject: s\r\n")


def test_dots_and_8bit_bytes_are_kept() -> None:
    raw = b"Subject: s\n\n.\n..x\n\xe9t\xc3\xa9\n"
    prepared = prepare(raw, Options(recipients=["a@x.test"]), ME)
    assert prepared.data.endswith(b"\r\n\r\n.\r\n..x\r\n\xe9t\xc3\xa9\r\n")


def test_no_recipient() -> None:
    with pytest.raises(Failure) as error:
        prepare(b"To: undisclosed-recipients:;\n\nb\n", Options(extract_recipients=True), ME)
    assert error.value.code == EX_USAGE and "no recipient" in str(error.value)


def test_bad_header_address() -> None:
    with pytest.raises(Failure) as error:
        prepare(b"To: <a\x01b@x.test>\n\nb\n", Options(extract_recipients=True), ME)
    assert error.value.code == EX_DATAERR


def test_over_the_local_socket_the_relay_qualifies() -> None:
    """Identity without a domain (the local socket): addresses stay as given, the
    relay qualifies them with [server] origin and adds the Message-ID."""
    me = Identity(login="www-data", full_name="", hostname=None)
    prepared = prepare(b"To: root, a@x.test\n\nb\n", Options(extract_recipients=True), me)
    assert prepared.sender == "www-data"
    assert prepared.recipients == ("root", "a@x.test")
    assert prepared.data.startswith(b"To: root, a@x.test\r\nFrom: www-data\r\nDate: ")
    assert b"Message-ID" not in prepared.data
