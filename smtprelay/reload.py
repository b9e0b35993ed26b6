"""SIGHUP: re-read the configuration and apply what can change without a restart.

Applied to new sessions and new delivery attempts, with nothing dropped: the TLS
certificate and minimum version, relay policy (trusted networks, allow-lists,
max_recipients), message size, timeout and connection limits, the users file location,
routes, sender routes and smarthosts (with their password and OAuth secret files; cached
access tokens of unchanged upstreams are kept), DKIM keys (every key file is read
again: a new selector takes over; a bad file refuses the reload), bounce settings,
logging, the HTTP tokens file and history retention, and the events stage's
``[events]`` and ``[[webhooks]]``
(:meth:`smtprelay.events.service.EventService.stage_reload`). Listen addresses (SMTP
and HTTP), the spool directory, ``[events] dir`` and delivery concurrency need a
restart; a change to them is logged. A configuration
that does not load is refused with a log line and the running one stays, as
``nginx -s reload`` does. Inbound worker processes get a SIGHUP from the main process
once it has accepted the file, and apply its inbound part themselves
(:func:`smtprelay.inbound.reload.reload_inbound`, which this module composes: the check
of the file is the same, then the delivery stage and the HTTP endpoint apply theirs).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from smtprelay import maillog, tls
from smtprelay.config import Settings
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.dkimsign import DkimKeyError, Signer, load_keyring
from smtprelay.inbound.reload import Refused, prepare
from smtprelay.inbound.server import Listeners
from smtprelay.web.tokens import read_tokens

log = logging.getLogger("smtprelay")


@dataclass
class Running:
    path: Path
    settings: Settings
    inbound: Listeners
    scheduler: Scheduler
    tls_context: ssl.SSLContext
    # The DKIM signer of the delivery transport: its keys are re-read on every reload.
    signer: Signer | None = None
    # Called with the new settings once they are applied (e.g. the HTTP endpoint).
    on_reload: list[Callable[[Settings], None]] = field(default_factory=list)
    # Called with the new settings before anything is applied: each checks its part
    # (raising ValueError, which refuses the whole file, naming the key) and returns
    # what applies it (e.g. the events stage: [events] and [[webhooks]]).
    staged: list[Callable[[Settings], Callable[[], None]]] = field(default_factory=list)


def reload(running: Running) -> bool:
    """Apply the configuration file again; False (and a log line) when it is refused."""
    try:
        new, authenticator = prepare(running.path)
        # Built before anything is applied: it reads the password and OAuth secret files.
        try:
            router = running.scheduler.router_for(new)
        except OSError as e:
            raise Refused(str(e)) from None
        try:
            keyring = load_keyring(new.dkim)  # a new selector's key, or a bad file
        except DkimKeyError as e:
            raise Refused(str(e)) from None
        if new.http.tokens_file:
            try:
                read_tokens(Path(new.http.tokens_file))
            except OSError as e:
                raise Refused(
                    f"[http] tokens_file {new.http.tokens_file}: {e.strerror or e}"
                ) from None
            except ValueError as e:
                raise Refused(f"[http] tokens_file {new.http.tokens_file}: {e}") from None
        try:
            appliers = [stage(new) for stage in running.staged]
        except ValueError as e:
            raise Refused(str(e)) from None
    except Refused as e:
        log.error("reload refused, the running configuration stays: %s", e)
        return False
    tls.load(running.tls_context, new)
    old = running.settings
    for name, before, after in (
        ("[server] listen", old.server.listen, new.server.listen),
        (
            "[server] listen_implicit_tls",
            old.server.listen_implicit_tls,
            new.server.listen_implicit_tls,
        ),
        (
            "[server] legacy_tls_listen",
            old.server.legacy_tls_listen,
            new.server.legacy_tls_listen,
        ),
        ("[server] workers", old.server.workers, new.server.workers),
        ("[spool] dir", old.spool.dir, new.spool.dir),
        ("[delivery] concurrency", old.delivery.concurrency, new.delivery.concurrency),
        (
            "[delivery] per_destination_concurrency",
            old.delivery.per_destination_concurrency,
            new.delivery.per_destination_concurrency,
        ),
        ("[delivery] nameservers", old.delivery.nameservers, new.delivery.nameservers),
    ):
        if before != after:
            log.warning("reload: %s changes only on restart", name)
    running.inbound.apply(new, authenticator)
    running.scheduler.apply(new, router)
    if running.signer is not None:
        running.signer.replace(keyring)
    maillog.setup(new.log.format, new.log.level)
    for apply in running.on_reload:
        apply(new)
    for applier in appliers:
        applier()
    running.settings = new
    log.info("configuration reloaded from %s", running.path)
    return True
