"""Where things are by default, for commands that must start fast.

``smtprelay-sendmail`` runs once per message (cron, every PHP ``mail()``). When it cannot
read the configuration it needs only these, and importing them here instead of from
:mod:`smtprelay.config` (pydantic) saves it about 0.2 s of CPU per message.
:mod:`smtprelay.config` re-exports them; it stays the one place defaults are documented.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/smtprelay/smtprelay.toml")
# The local submission socket ([server] local_socket): where ``smtprelay-sendmail`` looks
# when it cannot read the configuration (the systemd unit's RuntimeDirectory).
DEFAULT_LOCAL_SOCKET = "/run/smtprelay/submit.sock"
# [server] max_recipients
DEFAULT_MAX_RECIPIENTS = 1000


def config_path(explicit: str | None) -> Path:
    """``-c FILE``, else ``$SMTPRELAY_CONFIG``, else ``/etc/smtprelay/smtprelay.toml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("SMTPRELAY_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH
