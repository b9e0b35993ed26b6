"""One submission over a connected session: EHLO, the ESMTP parameters the relay offers,
then MAIL/RCPT/DATA in as many transactions as ``max_recipients`` needs; the replies
turned into sendmail's exit statuses."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator, Sequence

from smtprelay.dsnparams import xtext_encode
from smtprelay.sendmail.args import Options
from smtprelay.sendmail.exits import (
    EX_DATAERR,
    EX_NOUSER,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    SubmissionFailed,
)
from smtprelay.sendmail.message import Prepared
from smtprelay.sendmail.relay import Relay, connect, is_temporary, reply_text


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def submit(prepared: Prepared, opts: Options, relay: Relay) -> list[str]:
    """Hand the message to the relay. Returns the refused recipients' replies (the
    message went to the others); raises :class:`SubmissionFailed` when nothing more was accepted."""
    smtp, where = connect(relay, opts.verbose)
    accepted: list[str] = []
    refused: list[str] = []
    in_data = False
    try:
        code, reply = smtp.ehlo()
        if code != 250:
            code, reply = smtp.helo()
            if code != 250:
                raise SubmissionFailed(
                    EX_TEMPFAIL if is_temporary(code) else EX_UNAVAILABLE,
                    f"relay at {where} refused HELO: {reply_text(code, reply)}",
                )
        mail_params, rcpt_params = _parameters(smtp, prepared, opts)
        # More recipients than the relay takes in one transaction: several transactions.
        for chunk in _chunks(prepared.recipients, relay.max_recipients):
            code, reply = smtp.docmd("MAIL", f"FROM:<{prepared.sender}>{mail_params}")
            if code != 250:
                text = f"sender <{prepared.sender}> refused: {reply_text(code, reply)}"
                raise SubmissionFailed(EX_TEMPFAIL if is_temporary(code) else EX_UNAVAILABLE, text)
            taken: list[str] = []
            deferred: list[str] = []
            for rcpt in chunk:
                code, reply = smtp.docmd("RCPT", f"TO:<{rcpt}>{rcpt_params}")
                if 200 <= code < 300:
                    taken.append(rcpt)
                elif is_temporary(code):
                    deferred.append(f"<{rcpt}>: {reply_text(code, reply)}")
                else:
                    refused.append(f"<{rcpt}>: {reply_text(code, reply)}")
            if deferred or not taken:
                smtp.rset()
                if deferred:  # all or nothing: a retry must not duplicate the message
                    raise SubmissionFailed(
                        EX_TEMPFAIL, "recipient deferred: " + "; ".join(deferred)
                    )
                continue
            in_data = True
            final: bytes | str
            try:
                code, final = smtp.data(prepared.data)
            except smtplib.SMTPDataError as e:
                code, final = e.smtp_code, e.smtp_error
            in_data = False
            if code != 250:
                text = f"message refused: {reply_text(code, final)}"
                raise SubmissionFailed(EX_TEMPFAIL if is_temporary(code) else EX_DATAERR, text)
            accepted += taken
    except SubmissionFailed as e:
        if accepted:
            e.args = (f"{e}; already accepted for {len(accepted)} recipient(s)",)
        raise
    except (smtplib.SMTPException, OSError) as e:
        doubt = " during DATA: the relay may or may not have queued the message" if in_data else ""
        raise SubmissionFailed(
            EX_TEMPFAIL, f"connection to the relay at {where} lost{doubt} ({e})"
        ) from None
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()
    if not accepted:
        raise SubmissionFailed(EX_NOUSER, "all recipients refused: " + "; ".join(refused))
    return refused


def _parameters(smtp: smtplib.SMTP, prepared: Prepared, opts: Options) -> tuple[str, str]:
    """ESMTP parameters for MAIL and RCPT, each only where the relay offers it."""
    mail: list[str] = []
    rcpt: list[str] = []
    if smtp.has_extn("size"):
        mail.append(f"SIZE={len(prepared.data)}")
    if smtp.has_extn("8bitmime") and not prepared.data.isascii():
        mail.append("BODY=8BITMIME")
    addresses = (prepared.sender, *prepared.recipients)
    if not all(a.isascii() for a in addresses):
        if not smtp.has_extn("smtputf8"):
            raise SubmissionFailed(
                EX_DATAERR, "a non-ASCII address needs SMTPUTF8, which the relay does not offer"
            )
        mail.append("SMTPUTF8")
        smtp.command_encoding = "utf-8"
    if smtp.has_extn("dsn"):
        if opts.ret:
            mail.append(f"RET={opts.ret}")
        if opts.envid:
            mail.append(f"ENVID={xtext_encode(opts.envid)}")
        if opts.notify:
            rcpt.append(f"NOTIFY={opts.notify}")
    return "".join(" " + p for p in mail), "".join(" " + p for p in rcpt)
