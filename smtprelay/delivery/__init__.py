"""Delivery stage: schedule queued messages, find the next hop, speak SMTP to it.

``scheduler.Scheduler`` owns the queue in memory (due-time heap, active set,
per-destination slots and parking, operator actions) and is fed by
``Scheduler.enqueue_new`` (from the inbound stage, through ``app.py``) and by the spool at
start-up. Per attempt: ``routes.Router`` and ``resolver.Resolver`` give the hops,
``transport.Transport`` talks SMTP to them (``pool``, ``session``, ``transaction`` with
``pipelining``, ``linefold``) and returns one ``outcome.RecipientOutcome`` per recipient,
``backoff`` sets the next try, and
``notices.Notices`` spools delay and failure reports (built by ``smtprelay.bounce``). It
imports nothing of the inbound stage or of HTTP; reloaded settings arrive through
``Scheduler.apply``. The scheduler sees the router and transport only through the
Protocols of ``interfaces``; ``errors`` holds the stage's exception tree and the one
mapping of library errors into it. Path of a message: docs/flow.md.
"""
