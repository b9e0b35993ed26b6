"""smtprelay.sendmail.args: sendmail's command line (reading and completing the message:
test_sendmail_message.py)."""

from __future__ import annotations

import pytest

from smtprelay.sendmail.args import Options, SendmailUsageError, parse_args

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
    with pytest.raises(SendmailUsageError, match=None) as error:
        parse_args(argv)
    assert message in str(error.value)
