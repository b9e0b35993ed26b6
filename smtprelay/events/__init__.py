"""Delivery events (issue 13): made from the mail log, kept in a durable event store,
served by ``/v1/events`` and delivered to signed webhooks.

``types`` (the vocabulary), ``model`` (mail-log record -> event), ``recorder`` (the
logging handler and its group commit), ``db``/``store`` (SQLite event log),
``sequence`` (the per-recipient numbers), ``outbox``/``sender``/``webhooks`` (webhook
delivery), ``metrics``, ``api`` (HTTP) and ``service`` (how the daemon runs it all).
"""
