"""Inbound stage: SMTP listeners, session policy, and the hand-off to the spool."""
