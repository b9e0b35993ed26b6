"""Inbound stage: SMTP listeners, session policy, and the hand-off to the spool.

A connection is served by one object in layers: ``connection.Connection`` (TLS, PROXY
header, timeouts), ``commandloop.CommandLoop`` (replies, command table, junk limits),
``greeting.Greeting`` (EHLO, AUTH with ``sasl``) and ``protocol.Session`` (MAIL/RCPT
checks with ``address``, ``esmtpparams`` and ``policy``, the fast DATA reader);
``handler.Intake`` commits the message to the spool and only then answers 250, and calls
``on_queued(envelope, data)``: that callback is the stage's only way out. It runs in the
main process (``server.InboundServer``, the local socket in ``local`` and
``localsocket``) or in worker processes (``workers`` in the main process, ``worker`` and
``channel`` in each worker), which import nothing of the delivery stage or of HTTP
(their reload is ``reload`` here), as the import-linter contract in pyproject.toml
checks. Path of a message: docs/flow.md.
"""
