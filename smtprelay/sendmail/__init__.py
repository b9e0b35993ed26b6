"""``smtprelay sendmail`` / ``smtprelay-sendmail``: the sendmail command line, for cron and PHP.

Reads one message from standard input, completes it as sendmail does (recipients from
the headers with ``-t``, ``Bcc:`` removed, ``From:`` and ``Date:`` added when missing,
CRLF line endings) and submits it over SMTP to the daemon on this machine: through its
local submission socket (``[server] local_socket``, :mod:`smtprelay.inbound.local`),
which needs neither a trusted loopback nor a readable configuration file -- the default
``/run/smtprelay/submit.sock`` is used when the file cannot be read, so ``www-data`` and
cron users need no access to it; the daemon qualifies domainless addresses and adds the
``Message-ID:``. Only with ``local_socket = ""`` in a readable file does it connect to
the first ``[server] listen`` address instead (and then qualifies addresses itself).
Nothing is written anywhere else: the message is either acknowledged by the relay (which
means it is on disk, DESIGN.md promise 1) or the command exits non-zero and says why on
stderr.

Exit codes are sendmail's (``<sysexits.h>``), which cron, PHP's ``mail()`` and scripts
already understand:

====  ===============  =========================================================
0     EX_OK            the relay accepted the message for every recipient
64    EX_USAGE         bad command line, or no recipient at all
65    EX_DATAERR       the relay refused the message itself (5xx after DATA)
67    EX_NOUSER        the relay refused one or more recipients (5xx); the others,
                       if any, were accepted and the message goes to them
69    EX_UNAVAILABLE   the relay refused the session or the sender (5xx)
70    EX_SOFTWARE      internal error (a bug: the traceback is printed)
74    EX_IOERR         standard input could not be read
75    EX_TEMPFAIL      relay not reachable, timed out, connection lost, or any 4xx:
                       nothing was accepted, run the command again later
78    EX_CONFIG        the configuration file is invalid, or missing and the default
                       socket does not answer either
====  ===============  =========================================================

When the relay is down the command does not queue the message somewhere else: the spool
belongs to the daemon (its envelope records the client and the relay policy that
accepted it), so the command exits 75 and the failure is never silent: PHP's ``mail()``
returns false, scripts can keep the message and retry, cron logs the failed exit status.

One job per module: ``args`` (the command line), ``message`` (standard input completed
into sender, recipients and data), ``relay`` (where to and the connection), ``submit``
(the SMTP transactions), ``command`` (the whole run, its messages and exit statuses),
``exits`` (the statuses above).
"""

from smtprelay.sendmail.command import main, run

__all__ = ["main", "run"]
