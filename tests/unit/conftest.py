"""Shared settings for the unit suite.

Hypothesis deadlines are off: several property tests touch the filesystem or bcrypt,
whose timing depends on the machine, and a slow example is not a failing example.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "unit",
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("unit")
