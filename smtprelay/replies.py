"""SMTP replies: basic code, RFC 3463 enhanced status code and a short sentence.

Every reply the relay composes itself is a constant or a constructor here, so tests and
code name replies instead of repeating string literals.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Reply(NamedTuple):
    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)


OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
STARTTLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
TLS_ACTIVE = Reply(554, "5.5.1", "Error: TLS already active")
# STARTTLS where none is offered (the local submission socket), as Postfix answers.
NO_STARTTLS = Reply(502, "5.5.1", "Error: command not implemented")

TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
NO_SPACE = Reply(452, "4.3.1", "Insufficient system storage, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
# A session that only keeps its slot (NOOP, RSET, VRFY, HELP... or unknown commands) is
# closed after smtpd's junk/error limits, as Postfix closes it ("too many errors").
TOO_MANY_JUNK_COMMANDS = Reply(421, "4.7.0", "Error: too many junk commands")
TOO_MANY_UNKNOWN_COMMANDS = Reply(421, "4.7.0", "Error: too many unrecognized commands")

BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_HELO = Reply(501, "5.5.2", "Invalid characters in HELO/EHLO argument")
BAD_PARAMETER = Reply(501, "5.5.4", "Invalid command parameter")
UNKNOWN_COMMAND = Reply(502, "5.5.2", "Error: command not recognized")
# Postfix's answer to HTTP and other non-SMTP commands (smtpd_forbidden_commands).
NON_SMTP_COMMAND = Reply(221, "2.7.0", "Error: I can break rules, too. Goodbye.")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
SMTPUTF8_NOT_ADVERTISED = Reply(
    553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter on MAIL FROM"
)
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter")
SIZE_EXCEEDED = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
NUL_IN_DATA = Reply(554, "5.6.0", "Error: message content rejected: NUL character in data")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
SENDER_DOMAIN_DENIED = Reply(553, "5.7.1", "Sender address rejected: domain not allowed")
RECIPIENT_DOMAIN_DENIED = Reply(550, "5.7.1", "Recipient address rejected: domain not allowed")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_UNAVAILABLE = Reply(503, "5.5.1", "Error: authentication not enabled")
BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode base64")
MALFORMED_PLAIN = Reply(501, "5.5.2", "Malformed PLAIN credentials")
BYE = Reply(221, "2.0.0", "Bye")
# 354 carries no enhanced code (RFC 2034 excludes intermediate replies).
START_DATA = "354 End data with <CR><LF>.<CR><LF>"


def syntax(usage: str) -> Reply:
    """A command with a missing or extra argument: ``501 5.5.4 Syntax: MAIL FROM:<address>``."""
    return Reply(501, "5.5.4", f"Syntax: {usage}")


def helo(hostname: str) -> str:
    """The reply to HELO (RFC 5321 4.1.1.1; no enhanced code before EHLO)."""
    return f"250 {hostname}"


def ehlo(hostname: str, *, max_message_size: int, starttls: bool, auth: bool) -> list[str]:
    """The reply lines to EHLO: the host name, then one capability per line."""
    lines = [
        hostname,
        "PIPELINING",
        f"SIZE {max_message_size}",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "DSN",
    ]
    if starttls:
        lines.append("STARTTLS")
    if auth:
        lines.append("AUTH PLAIN LOGIN")
    return [*(f"250-{line}" for line in lines[:-1]), f"250 {lines[-1]}"]


def queued(qid: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: queued as {qid}")


_HAS_ENHANCED = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")

# Enhanced codes (RFC 3463 / RFC 5248) for replies composed inside aiosmtpd, which does
# not add them itself; once ENHANCEDSTATUSCODES is advertised every reply must carry one.
_DEFAULT_ENHANCED = {
    "221": "2.0.0",
    "250": "2.0.0",
    "252": "2.5.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",
    "555": "5.5.4",
}


def add_enhanced_code(line: str) -> str:
    """Insert the default enhanced code into a final reply line that lacks one.

    Greeting (220), EHLO lines, 334 challenges and 354 are left alone: RFC 2034 excludes
    them, and intermediate ``250-`` lines of EHLO are capability keywords.
    """
    code = line[:3]
    enhanced = _DEFAULT_ENHANCED.get(code)
    if enhanced is None or line[3:4] != " " or _HAS_ENHANCED.match(line):
        return line
    return f"{code} {enhanced} {line[4:]}"
