"""The parts of provider rate limits that need no network: the token bucket, the daily
quota's clock (injected), the "slow down" reply table, the rate and reset syntax, the
configuration keys, and a limiter's gate."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay import config
from smtprelay.config import ConfigError, UpstreamLimits
from smtprelay.delivery.errors import AUTH_FAILED, TLS_FAILED, TLS_NOT_OFFERED, remote_reply
from smtprelay.delivery.limiter import LEAD, Limiter, Pause
from smtprelay.delivery.quota import DAY, DailyQuota
from smtprelay.delivery.slowdown import RULES, slow_down
from smtprelay.delivery.tokenbucket import TokenBucket
from smtprelay.replies import Reply
from smtprelay.units import Rate, parse_quota_reset, parse_rate

# 2026-12-05 00:00:00 UTC, a day boundary.
MIDNIGHT = 1796428800.0

# --- the token bucket -------------------------------------------------------------------


@given(
    messages=st.integers(min_value=1, max_value=50),
    period=st.sampled_from([1.0, 60.0, 3600.0]),
    burst=st.integers(min_value=1, max_value=5),
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=200),
)
def test_bucket_never_exceeds_rate_plus_burst_in_any_window(
    messages: int, period: float, burst: int, gaps: list[float]
) -> None:
    rate = Rate(messages, period)
    bucket = TokenBucket(rate, burst)
    now, taken = 0.0, []
    for gap in gaps:
        now += gap * rate.interval
        if bucket.take(now):
            taken.append(now)
    for i, start in enumerate(taken):
        for span in (rate.interval, 3 * rate.interval, 10 * rate.interval):
            inside = [t for t in taken[i:] if t < start + span]
            # Tokens at start, start + interval, ...: burst + span/interval of them.
            assert len(inside) <= burst + span / rate.interval + 1e-9


@given(burst=st.integers(min_value=1, max_value=5), idle=st.floats(min_value=0, max_value=100))
def test_bucket_gives_its_burst_at_once_then_one_per_interval(burst: int, idle: float) -> None:
    bucket = TokenBucket(Rate(10, 1.0), burst)
    now = 1000.0 + idle
    assert [bucket.take(now) for _ in range(burst + 1)] == [True] * burst + [False]
    assert bucket.available_at(now) == pytest.approx(now + 0.1)
    assert bucket.take(now + 0.1)
    assert not bucket.take(now + 0.1)


def test_bucket_available_at_is_when_take_succeeds() -> None:
    bucket = TokenBucket(Rate(30, 60.0))
    assert bucket.take(5.0)
    at = bucket.available_at(5.0)
    assert at == pytest.approx(7.0)
    assert not bucket.take(at - 0.001)
    assert bucket.take(at)


def test_bucket_refuses_a_burst_below_one() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(Rate(1, 1.0), 0)


# --- the daily quota, with an injected clock -------------------------------------------------


def test_quota_resets_at_the_configured_time_of_day() -> None:
    quota = DailyQuota(3, "06:30 UTC")
    reset = MIDNIGHT + 6.5 * 3600
    before = reset - 1
    assert [quota.take(before) for _ in range(4)] == [True, True, True, False]
    assert quota.remaining(before) == 0
    assert quota.frees_at(before) == reset
    assert quota.used(reset - 0.001) == 3
    assert quota.used(reset) == 0  # a new day at 06:30
    assert quota.take(reset) and quota.remaining(reset) == 2
    assert quota.frees_at(reset) == reset


def test_quota_midnight_default_counts_a_calendar_day() -> None:
    quota = DailyQuota(2)
    assert quota.take(MIDNIGHT + 10) and quota.take(MIDNIGHT + 20)
    assert not quota.take(MIDNIGHT + DAY - 1)
    assert quota.frees_at(MIDNIGHT + 30) == MIDNIGHT + DAY
    assert quota.take(MIDNIGHT + DAY)


def test_rolling_quota_frees_each_use_a_day_later() -> None:
    quota = DailyQuota(2, "rolling")
    assert quota.take(100.0) and quota.take(200.0)
    assert not quota.take(300.0)
    assert quota.frees_at(300.0) == 100.0 + DAY
    assert not quota.take(100.0 + DAY - 0.5)
    assert quota.take(100.0 + DAY)
    assert quota.frees_at(100.0 + DAY) == 200.0 + DAY


@given(st.lists(st.floats(min_value=0, max_value=3 * DAY), max_size=60))
def test_rolling_quota_never_allows_more_than_limit_in_24_hours(offsets: list[float]) -> None:
    quota = DailyQuota(5, "rolling")
    taken = [t for t in sorted(offsets) if quota.take(t)]
    for i, start in enumerate(taken):
        assert len([t for t in taken[i:] if t < start + DAY]) <= 5


def test_quota_retune_keeps_the_count_unless_the_reset_moves() -> None:
    quota = DailyQuota(2)
    quota.take(MIDNIGHT + 1)
    quota.retune(3, "00:00 UTC")
    assert quota.remaining(MIDNIGHT + 2) == 2
    quota.retune(3, "12:00 UTC")
    assert quota.remaining(MIDNIGHT + 2) == 3


# --- the "slow down" table ----------------------------------------------------------------------

SLOW_DOWN = [
    ("450 4.7.0 slow down", 1),
    ("421 4.7.0 Try again later, closing connection.", 1),  # Gmail
    ("451 4.7.500 Server busy. Please try again later.", 1),  # Microsoft
    ("452 4.5.3 Too many recipients", 2),
    ("432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", 3),  # Microsoft
    ("451 4.3.2 Concurrency limit reached, try again", 3),
    ("454 Throttling failure: Maximum sending rate exceeded.", 4),  # SES
    ("421 Too many concurrent SMTP connections", 4),
    ("550 5.4.5 Daily user sending quota exceeded.", 5),  # Gmail
    ("550 5.4.5 Daily SMTP relay limit exceeded for user.", 5),  # Gmail
    ("550 5.7.1 Daily SMTP relay limit exceeded for customer", 6),  # Gmail Workspace
    ("550 5.7.60 submission quota exceeded", 6),  # Microsoft
    ("554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException", 7),
    ("550 5.1.90 Your message can't be sent because you've reached your daily limit", 8),
]

NOT_SLOW_DOWN = [
    "250 2.0.0 Ok",
    "450 4.2.1 Mailbox busy, try later",
    "451 4.3.0 Temporary failure",
    "451 4.7.1 Greylisted, please try again in 300 seconds",
    "450 4.7.1 <x@y>: Recipient address rejected: graylisted",
    "550 5.1.1 No such user",
    "550 5.7.1 Relaying denied",
    "554 5.7.1 Message rejected as spam",
    "552 5.3.4 Message too big",
    "454 4.7.0 TLS not available due to local problem",
]


@pytest.mark.parametrize(("line", "rule"), SLOW_DOWN)
def test_slow_down_replies_match_their_rule(line: str, rule: int) -> None:
    code, _, text = line.partition(" ")
    found = slow_down(remote_reply(int(code), text))
    assert found is not None and found.number == rule, line


@pytest.mark.parametrize("line", NOT_SLOW_DOWN)
def test_other_replies_are_the_message_s_own(line: str) -> None:
    code, _, text = line.partition(" ")
    assert slow_down(remote_reply(int(code), text)) is None, line


@pytest.mark.parametrize("reply", [AUTH_FAILED, TLS_FAILED, TLS_NOT_OFFERED])
def test_relay_s_own_tls_and_auth_failures_are_no_slow_down(reply: Reply) -> None:
    assert slow_down(reply) is None


@given(
    code=st.integers(min_value=200, max_value=599),
    text=st.text(max_size=80),
)
def test_slow_down_only_for_failures_and_never_raises(code: int, text: str) -> None:
    rule = slow_down(remote_reply(code, text))
    if code < 400:
        assert rule is None
    if rule is not None:
        assert rule.permanent == (code >= 500)


def test_rules_are_numbered_in_order_and_documented() -> None:
    assert [r.number for r in RULES] == list(range(1, len(RULES) + 1))
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for rule in RULES:
        assert f"| {rule.number} |" in readme, f"rule {rule.number} missing in README"


# --- syntax and configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [("10/s", Rate(10, 1)), ("30/min", Rate(30, 60)), ("1000 / h", Rate(1000, 3600))],
)
def test_rates(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate
    assert parse_rate(str(rate)) == rate
    assert parse_rate("") is None


@pytest.mark.parametrize("bad", ["10", "10/d", "0/s", "-1/s", "ten/s", 10, True])
def test_bad_rates(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a rate"):
        parse_rate(bad)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("00:00 UTC", "00:00 UTC"),
        ("6:30", "06:30 UTC"),
        ("23:59 utc", "23:59 UTC"),
        ("Rolling", "rolling"),
    ],
)
def test_quota_resets(text: str, normal: str) -> None:
    assert parse_quota_reset(text) == normal


@pytest.mark.parametrize("bad", ["24:00", "12:60", "noon", "", 0, "12:00 CET"])
def test_bad_quota_resets(bad: object) -> None:
    with pytest.raises(ValueError, match="time of day"):
        parse_quota_reset(bad)


def test_limit_keys_on_the_smarthost_and_per_domain() -> None:
    settings = config.parse(
        {
            "delivery": {
                "mode": "smarthost",
                "smarthost": {
                    "hosts": ["smtp.example.com:587"],
                    "max_rate": "30/min",
                    "daily_quota": 10000,
                    "quota_reset": "07:00 UTC",
                    "max_connections": 3,
                    "max_recipients_per_message": 100,
                },
                "domain_limits": {"Gmail.com": {"max_rate": "5/s"}},
                "slowdown_backoff": ["10s", "1m"],
            }
        }
    )
    smarthost = settings.delivery.smarthost
    assert smarthost.max_rate == Rate(30, 60)
    assert (smarthost.daily_quota, smarthost.quota_reset) == (10000, "07:00 UTC")
    assert (smarthost.max_connections, smarthost.max_recipients_per_message) == (3, 100)
    assert settings.delivery.domain_limits == {"gmail.com": UpstreamLimits(max_rate=Rate(5, 1))}
    assert settings.delivery.slowdown_backoff == (10.0, 60.0)
    shown = config.effective(settings)
    assert 'max_rate = "30/min"' in shown
    assert '[delivery.domain_limits."gmail.com"]' in shown
    assert 'slowdown_backoff = ["10s", "1m"]' in shown
    assert config.parse(_reparse(shown)) == settings


def _reparse(text: str) -> dict[str, object]:
    return tomllib.loads(text)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"smarthost": {"max_rate": "fast"}},
            "[delivery.smarthost] max_rate: 'fast' is not a rate",
        ),
        ({"smarthost": {"daily_quota": -1}}, "[delivery.smarthost] daily_quota:"),
        (
            {"domain_limits": {"a.test": {"max_rate": "1/d"}}},
            '[delivery.domain_limits."a.test"] max_rate:',
        ),
        (
            {"domain_limits": {"a.test": {"speed": 1}}},
            '[delivery.domain_limits."a.test"] speed: unknown key',
        ),
        ({"slowdown_backoff": []}, "[delivery] slowdown_backoff:"),
    ],
)
def test_bad_limit_keys_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse({"delivery": raw})
    assert str(caught.value).startswith(message), caught.value


# --- a limiter's gate -----------------------------------------------------------------------


def test_gate_lets_in_a_second_of_tokens_then_waits_for_them() -> None:
    limiter = Limiter("up", "up.test", UpstreamLimits(max_rate=Rate(5, 1)))
    assert limiter.ahead() == 5
    now = 100.0
    for _ in range(5):
        assert limiter.open(now)
        limiter.admitted += 1
    assert not limiter.open(now)
    assert limiter.opens_at(now) is None  # the line moves when one takes its token
    limiter.admitted -= 1
    assert limiter.bucket is not None and limiter.bucket.take(now)
    assert limiter.open(now)  # the next token is within LEAD


def test_gate_waits_for_a_token_further_than_lead() -> None:
    limiter = Limiter("up", "up.test", UpstreamLimits(max_rate=Rate(1, 60)))  # one a minute
    assert limiter.ahead() == 1
    assert limiter.bucket is not None and limiter.bucket.take(0.0)
    assert limiter.opens_at(0.0) == pytest.approx(60.0 - LEAD)
    assert limiter.open(60.0 - LEAD)


def test_gate_closed_during_a_pause_and_when_the_quota_is_used() -> None:
    limiter = Limiter("up", "up.test", UpstreamLimits(daily_quota=1, quota_reset="rolling"))
    limiter.pause = Pause(50.0, remote_reply(450, "4.7.0 slow down"))
    assert limiter.opens_at(10.0) == 50.0
    assert limiter.open(50.0) and not limiter.paused(50.0)
    limiter.admitted = 1
    assert limiter.opens_at(50.0) is None  # the last of the quota is on its way
    limiter.admitted = 0
    assert limiter.quota is not None and limiter.quota.take(50.0)
    assert limiter.opens_at(60.0) == 50.0 + DAY


def test_a_limiter_without_limits_shapes_only_while_paused() -> None:
    limiter = Limiter("gmail.com", "gmail.com", None)
    assert (limiter.shapes, limiter.open(5.0)) == (False, True)
    limiter.pause = Pause(10.0, remote_reply(421, "4.7.0 Try again later"))
    assert (limiter.shapes, limiter.open(5.0)) == (True, False)
    state = limiter.state(5.0, 3)
    assert state == {
        "upstream": "gmail.com",
        "rate_limited": 3,
        "paused_s": 5.0,
        "paused_by": "421 4.7.0 Try again later",
    }
