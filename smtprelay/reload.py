"""SIGHUP: re-read the configuration and apply what can change without a restart.

Applied to new sessions and new delivery attempts, with nothing dropped: the TLS
certificate and minimum version, relay policy (trusted networks, allow-lists,
max_recipients), message size, timeout and connection limits, the users file location,
routes and smarthosts (with their password file), bounce settings, logging, and the HTTP
tokens file and history retention. Listen addresses (SMTP and HTTP), the spool directory
and delivery concurrency need a restart; a change to them is logged. A configuration
that does not load is refused with a log line and the running one stays, as
``nginx -s reload`` does.
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
from smtprelay.inbound.policy import Policy
from smtprelay.inbound.server import InboundServer
from smtprelay.web.tokens import read_tokens

log = logging.getLogger("smtprelay")


@dataclass
class Running:
    path: Path
    settings: Settings
    inbound: InboundServer
    scheduler: Scheduler
    tls_context: ssl.SSLContext
    # Called with the new settings once they are applied (e.g. the HTTP endpoint).
    on_reload: list[Callable[[Settings], None]] = field(default_factory=list)


def reload(running: Running) -> bool:
    """Apply the configuration file again; False (and a log line) when it is refused."""
    try:
        new = config.load(running.path)
        authenticator = _authenticator(new)
        router = Router(new.delivery, running.scheduler.router.resolver)
        # Load the certificate into a scratch context first: a bad file must not leave
        # the live context half-changed.
        tls.load(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), new)
        if new.http.tokens_file:
            try:
                read_tokens(Path(new.http.tokens_file))
            except OSError as e:
                raise OSError(f"[http] tokens_file {new.http.tokens_file}: "
                              f"{e.strerror or e}") from None
    except (config.ConfigError, UsersFileError, tls.TLSError, OSError) as e:
        log.error("reload refused, the running configuration stays: %s", e)
        return False
    tls.load(running.tls_context, new)
    old = running.settings
    for name, before, after in (
        ("[server] listen", old.server.listen, new.server.listen),
        ("[server] listen_implicit_tls", old.server.listen_implicit_tls,
         new.server.listen_implicit_tls),
        ("[spool] dir", old.spool.dir, new.spool.dir),
        ("[delivery] concurrency", old.delivery.concurrency, new.delivery.concurrency),
        ("[delivery] per_destination_concurrency", old.delivery.per_destination_concurrency,
         new.delivery.per_destination_concurrency),
        ("[delivery] nameservers", old.delivery.nameservers, new.delivery.nameservers),
    ):
        if before != after:
            log.warning("reload: %s changes only on restart", name)
    intake = running.inbound.intake
    intake.policy = Policy(new.relay, new.server.max_recipients)
    intake.authenticator = authenticator
    intake.max_message_size = new.server.max_message_size
    intake.hostname = new.server.hostname
    running.inbound.settings = new
    running.scheduler.router = router
    if running.scheduler.notices is not None:
        running.scheduler.notices.settings = new.bounce
    maillog.setup(new.log.format, new.log.level)
    for apply in running.on_reload:
        apply(new)
    running.settings = new
    log.info("configuration reloaded from %s", running.path)
    return True


def _authenticator(settings: Settings) -> Authenticator | None:
    if not settings.auth.users_file:
        return None
    authenticator = Authenticator(Path(settings.auth.users_file))
    authenticator.refresh()  # a broken users file refuses the reload
    return authenticator
