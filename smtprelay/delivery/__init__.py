"""Delivery stage: schedule queued messages, find the next hop, speak SMTP to it."""
