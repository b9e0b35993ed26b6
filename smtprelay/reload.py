"""SIGHUP: re-read the configuration and apply what can change without a restart.

Applied to new sessions and new delivery attempts, with nothing dropped: the TLS
certificate and minimum version, relay policy (trusted networks, allow-lists,
max_recipients), message size, timeout and connection limits, the users file location,
routes and smarthosts (with their password file), bounce settings, logging, and the HTTP
tokens file and history retention. Listen addresses (SMTP and HTTP), the spool directory
and delivery concurrency need a restart; a change to them is logged. A configuration
that does not load is refused with a log line and the running one stays, as
``nginx -s reload`` does. Inbound worker processes get a SIGHUP from the main process
once it has accepted the file, and apply its inbound part themselves
(:func:`reload_inbound`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from smtprelay import config, maillog, tls
from smtprelay.config import Settings
from smtprelay.delivery.routes import Router
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.inbound.auth import Authenticator, UsersFileError
from smtprelay.inbound.server import InboundServer, Listeners, users
from smtprelay.web.tokens import read_tokens

log = logging.getLogger("smtprelay")


@dataclass
class Running:
    path: Path
    settings: Settings
    inbound: Listeners
    scheduler: Scheduler
    tls_context: ssl.SSLContext
    # Called with the new settings once they are applied (e.g. the HTTP endpoint).
    on_reload: list[Callable[[Settings], None]] = field(default_factory=list)


class Refused(Exception):
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
    except (config.ConfigError, UsersFileError, tls.TLSError, OSError) as e:
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


def reload(running: Running) -> bool:
    """Apply the configuration file again; False (and a log line) when it is refused."""
    try:
        new, authenticator = prepare(running.path)
        router = Router(new.delivery, running.scheduler.router.resolver)
        if new.http.tokens_file:
            try:
                read_tokens(Path(new.http.tokens_file))
            except OSError as e:
                raise Refused(f"[http] tokens_file {new.http.tokens_file}: "
                              f"{e.strerror or e}") from None
    except Refused as e:
        log.error("reload refused, the running configuration stays: %s", e)
        return False
    tls.load(running.tls_context, new)
    old = running.settings
    for name, before, after in (
        ("[server] listen", old.server.listen, new.server.listen),
        ("[server] listen_implicit_tls", old.server.listen_implicit_tls,
         new.server.listen_implicit_tls),
        ("[server] workers", old.server.workers, new.server.workers),
        ("[spool] dir", old.spool.dir, new.spool.dir),
        ("[delivery] concurrency", old.delivery.concurrency, new.delivery.concurrency),
        ("[delivery] per_destination_concurrency", old.delivery.per_destination_concurrency,
         new.delivery.per_destination_concurrency),
        ("[delivery] nameservers", old.delivery.nameservers, new.delivery.nameservers),
    ):
        if before != after:
            log.warning("reload: %s changes only on restart", name)
    running.inbound.apply(new, authenticator)
    running.scheduler.router = router
    running.scheduler.transport.line_length_limit = new.delivery.line_length_limit  # next delivery
    if running.scheduler.notices is not None:
        running.scheduler.notices.settings = new.bounce
    maillog.setup(new.log.format, new.log.level)
    for apply in running.on_reload:
        apply(new)
    running.settings = new
    log.info("configuration reloaded from %s", running.path)
    return True
