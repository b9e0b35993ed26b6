"""The relay's exception tree: every error it raises on purpose is a :class:`RelayError`.

Two branches matter to whoever catches them:

* :class:`ConfigError`: the operator's configuration, or a file it names (certificate,
  users file), is wrong; the message names the key or file. The command line turns it
  into exit code 2 or 1 (``cli.main``), a reload into "refused, the running configuration
  stays" (``inbound/reload.py`` ``prepare``, the one place a reload catches it), and the
  daemon's start into ``cannot start`` (``app.py``).
* everything else: faults and signals of one stage (the spool, a connection, delivery,
  the HTTP API), caught where that stage decides what the client or the log is told.

The classes of the top-level modules' configuration live here; those of one stage stay
in the stage's own module and subclass :class:`RelayError` there (``SpoolError`` in
``spool/store.py``, ``DeliveryError`` in ``delivery/errors.py``, ...), so a stage does not
import another to name its errors.
"""

from __future__ import annotations

__all__ = ["ConfigError", "RelayError", "TLSError", "UsersFileError"]


class RelayError(Exception):
    """Raised by the relay on purpose (not a bug); the message is for a person."""


class ConfigError(RelayError):
    """Configuration is unusable; the message names the file or key and what is wrong."""


class TLSError(ConfigError):
    """The certificate or key cannot be used; the message names the file."""


class UsersFileError(ConfigError):
    """The users file is unusable; the message names the file and line."""
