"""Replies that mean "slow down": the upstream, not the message, is the problem.

A provider that finds a relay too fast answers with a temporary reply -- and some
(Gmail, Microsoft 365) with a *permanent* one when a daily quota is used up. Treated
as the message's own failure, the first burns the message's retry schedule and the
second bounces it, for no fault of the message. A reply matched by :data:`RULES`
instead pauses the whole upstream (delivery/ratelimits.py, growing with each such reply in
a row, ``[delivery] slowdown_backoff``); the message waits in the queue as
``rate-limited``, its attempts and retry schedule untouched, and goes when the pause
ends. A 5xx that means "quota" is treated as temporary that way. Only a server's
reply is looked at: one the relay composed itself (``relay=none``: an OAuth2 token it
could not get, an unreachable destination) says nothing about the upstream's pace.

The table, first match wins (``README.md`` section "Provider rate limits" shows it):

===  =================  =============  ===============================================
#    reply codes        enhanced code  text (case-insensitive)
===  =================  =============  ===============================================
1    421 450 451 452    4.7.x          not greylisting, not a TLS/AUTH problem
2    421 450 451 452    4.5.3          any (too many recipients, RFC 5321 4.5.3.1.10)
3    any 4xx            4.3.2          "concurrency limit" / "thread limit" (Microsoft)
4    any 4xx            any            throttl*, rate limit, too many messages or
                                       connections, slow down, sending rate (SES, ...)
5    any 5xx            5.4.5          "quota" or "limit" (Gmail daily sending limits)
6    any 5xx            5.7.x          "quota exceeded", "daily ... limit", "sending
                                       limit", "relay limit" (Microsoft, Gmail)
7    any 5xx            any            "SubmissionQuotaExceeded" (Microsoft 365)
8    any 5xx            5.1.90         "daily limit" (Microsoft recipient rate limit)
===  =================  =============  ===============================================

Excluded from rule 1, because pausing the upstream would not help (the message
follows its retry schedule instead): greylisting ("greylist"/"graylist" in the text),
and the 4.7.x codes of TLS and authentication problems -- 4.7.4, 4.7.5, 4.7.8, 4.7.9,
4.7.10, 4.7.12, 4.7.13 (RFC 3463, RFC 4954, RFC 5248) -- which the relay's own
replies for a failed STARTTLS or AUTH use too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtprelay.replies import Reply

__all__ = ["RULES", "Rule", "slow_down"]

# 4.7.x that name a security problem of this connection, not a rate.
_SECURITY = frozenset({"4.7.4", "4.7.5", "4.7.8", "4.7.9", "4.7.10", "4.7.12", "4.7.13"})
_GREYLISTING = re.compile(r"gr[ae]y-?list", re.IGNORECASE)
_TRANSIENT = frozenset({421, 450, 451, 452})


@dataclass(frozen=True, slots=True)
class Rule:
    number: int
    codes: frozenset[int] | None  # None: the class in ``permanent``
    permanent: bool  # the rule is for 5xx replies (a quota), else 4xx
    enhanced: re.Pattern[str] | None  # matched against the whole enhanced code
    text: re.Pattern[str] | None  # searched in the reply text
    source: str  # who answers so, for the README table and the log

    def matches(self, reply: Reply) -> bool:
        if self.permanent != (reply.code >= 500) or not 400 <= reply.code < 600:
            return False
        if self.codes is not None and reply.code not in self.codes:
            return False
        if self.enhanced is not None and not self.enhanced.fullmatch(reply.enhanced):
            return False
        return self.text is None or self.text.search(reply.text) is not None


def _text(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


RULES: tuple[Rule, ...] = (
    Rule(
        1,
        _TRANSIENT,
        False,
        re.compile(r"4\.7\.\d{1,3}"),
        None,
        "RFC 3463 policy/rate (Gmail 4.7.0, 4.7.28; Microsoft 4.7.500-699)",
    ),
    Rule(2, _TRANSIENT, False, re.compile(r"4\.5\.3"), None, "RFC 5321 too many recipients"),
    Rule(
        3,
        None,
        False,
        re.compile(r"4\.3\.2"),
        _text(r"concurrency limit|thread limit"),
        "Microsoft 365 concurrency limit",
    ),
    Rule(
        4,
        None,
        False,
        None,
        _text(
            r"throttl|rate.?limit|too many (\w+ ){0,2}(messages|mails|emails|connections)"
            r"|slow(ing)? down|sending rate"
        ),
        "Amazon SES, SendGrid, Mailgun, Postmark throttling",
    ),
    Rule(5, None, True, re.compile(r"5\.4\.5"), _text(r"quota|limit"), "Gmail daily limits"),
    Rule(
        6,
        None,
        True,
        re.compile(r"5\.7\.\d{1,3}"),
        _text(r"quota exceeded|daily .*limit|sending limit|relay limit"),
        "Microsoft 365 / Gmail submission quota",
    ),
    Rule(
        7,
        None,
        True,
        None,
        _text(r"SubmissionQuotaExceeded"),
        "Microsoft 365 SubmissionQuotaExceededException",
    ),
    Rule(
        8,
        None,
        True,
        re.compile(r"5\.1\.90"),
        _text(r"daily limit"),
        "Microsoft 365 recipient rate limit",
    ),
)


def slow_down(reply: Reply) -> Rule | None:
    """The rule that makes ``reply`` a "slow down" for the whole upstream, if any."""
    if reply.code < 400:
        return None
    if reply.code < 500 and (reply.enhanced in _SECURITY or _GREYLISTING.search(reply.text)):
        return None
    return next((rule for rule in RULES if rule.matches(reply)), None)
