"""SIGHUP, the inbound stage's part: check a reloaded file, then apply what sessions use.

Lives inside the stage so that an inbound worker process (:mod:`smtprelay.inbound.worker`),
which reloads on its own SIGHUP, imports nothing of the delivery stage or the HTTP
endpoint. The main process's reload (:mod:`smtprelay.reload`) checks with the same
:func:`prepare` and then applies the delivery and HTTP parts as well.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from smtprelay import config, maillog, tls
from smtprelay.config import Settings
from smtprelay.errors import ConfigError
from smtprelay.inbound.auth import Authenticator
from smtprelay.inbound.server import InboundServer, users

log = logging.getLogger("smtprelay")


class Refused(ConfigError):
    """The file does not load; the message says why."""


def prepare(path: Path) -> tuple[Settings, Authenticator | None]:
    """Load the file and what it names that a reload must check before applying
    anything: users file and certificate. Raises Refused."""
    try:
        new = config.load(path)
        authenticator = users(new)
        # Load the certificate into a scratch context first: a bad file must not leave
        # the live context half-changed.
        tls.load(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), new)
    except (ConfigError, OSError) as e:  # the users file and certificate's errors too
        raise Refused(str(e)) from None
    return new, authenticator


def reload_inbound(path: Path, inbound: InboundServer, tls_context: ssl.SSLContext) -> bool:
    """A worker's part of a reload: certificate, policy, limits, users, logging."""
    try:
        new, authenticator = prepare(path)
    except Refused as e:
        log.error("reload refused, the running configuration stays: %s", e)
        return False
    tls.load(tls_context, new)
    inbound.apply(new, authenticator)
    maillog.setup(new.log.format, new.log.level)
    log.info("inbound worker: configuration reloaded from %s", path)
    return True
