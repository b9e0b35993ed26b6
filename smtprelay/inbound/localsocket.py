"""The local submission socket itself: binding it, and who is at the other end.

``[server] local_socket`` is a Unix socket made by the main process at start (mode
``local_socket_mode``, group ``local_socket_group``; a stale file left by a killed daemon
is replaced, a live one is not) and removed at stop (:mod:`.local`). The caller of each
connection is the uid the kernel reports (``SO_PEERCRED``), never anything the client
says. Errors name the configuration key.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import grp
import logging
import os
import pwd
import socket
import stat
import struct

from smtprelay.config import Settings
from smtprelay.units import Endpoint

log = logging.getLogger("smtprelay")


def peer_uid(transport: asyncio.BaseTransport) -> int | None:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


@functools.lru_cache(maxsize=64)
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


class SocketEndpoint(Endpoint):
    """A Unix socket in the listener lists (``/status``, the start-up line): its path."""

    def __str__(self) -> str:
        return self.host


def bind(path: str, mode: int, group: str) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode`` (and ``group``); a stale socket
    file left by a killed daemon is replaced, a live one is not. OSError names the key."""
    key = "[server] local_socket"
    try:
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError:
        raise OSError(errno.EINVAL, f"[server] local_socket_group: no group {group!r}") from None
    directory = os.path.dirname(path)
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory)
            # Made here (not by systemd's RuntimeDirectory=): anyone may reach the socket;
            # its own mode decides who may connect.
            os.chmod(directory, 0o755)
        _remove_stale(path)
    except OSError as e:
        raise OSError(e.errno, f"{key} {path}: {e.strerror or e}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        try:
            # Before listen(): until then a connect is refused, so nobody gets in
            # under the mode the umask gave the new file.
            os.chmod(path, mode)
            if gid != -1:
                os.chown(path, -1, gid)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            os.unlink(path)
            raise
    except OSError as e:
        sock.close()
        what = "[server] local_socket_group" if e.errno == errno.EPERM and gid != -1 else key
        raise OSError(e.errno, f"{what} {path}: {e.strerror or e}") from None
    return sock


def _remove_stale(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # nobody listens: left by a daemon that was killed
            return
    raise OSError(errno.EADDRINUSE, "another process is listening on it")


def bind_socket(settings: Settings) -> socket.socket | None:
    """The listening ``[server] local_socket``, or None when it is ``""``. Left at its
    default, a socket that cannot be made (``make run`` as a user who may not write
    /run) is a warning and None; set explicitly, an OSError that stops the start."""
    server = settings.server
    if not server.local_socket:
        return None
    try:
        return bind(server.local_socket, server.local_socket_mode, server.local_socket_group)
    except OSError as e:
        if "local_socket" not in server.model_fields_set and e.errno in (
            errno.EACCES,
            errno.EPERM,
            errno.EROFS,
        ):
            log.warning(
                "local submission off: %s (set [server] local_socket to a path "
                'this user may create, or to "" to turn it off)',
                e.strerror,
            )
            return None
        raise
