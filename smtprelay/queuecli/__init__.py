"""``smtprelay queue ...`` and ``smtprelay trace``: the operator's queue commands.

They talk to the running daemon through its HTTP API (``[http] listen``, with the first
token of ``[http] tokens_file``), so an action never races a delivery attempt. When the
daemon is not running (connection refused), ``queue list`` and ``queue show`` read the
spool, and ``hold``, ``release`` and ``delete`` change the spool files directly with the
scheduler's own per-message actions (:mod:`smtprelay.spool.actions`) -- safe only because
no daemon is there to change them too; ``flush``, ``bounce`` and ``trace`` need the daemon.

One job per module: ``client`` (the API: address, token, calls, paging), ``format`` (the
answers for a person), ``offline`` (the spool, when the daemon is stopped), ``commands``
(argparse and the commands that use the three), ``errors`` (exit statuses).
"""

from smtprelay.queuecli.commands import register

__all__ = ["register"]
