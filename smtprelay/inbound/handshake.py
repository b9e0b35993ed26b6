"""Server-side TLS handshakes (implicit TLS and STARTTLS) that always end.

asyncio's ``create_server(ssl=...)`` gives the SMTP session no word at all when a
handshake fails or is abandoned (its ``connection_made`` and ``connection_lost`` are
never called), and aiosmtpd's STARTTLS leaves the session behind when the handshake
stalls. Health checks, port scanners and old TLS clients would then hold connection
slots for ever. Both kinds of listener therefore accept plain TCP and put the TLS layer
in place themselves: the session is told the outcome either way, the handshake has a
time limit, and a failure becomes one short reason for the mail log.

The layer is put in place synchronously (:func:`begin`), not with ``loop.start_tls``:
uvloop starts reading a new connection right after ``connection_made``, so the client's
ClientHello could reach the SMTP protocol before an awaited ``start_tls`` took over.
This is what aiosmtpd itself does for STARTTLS, with asyncio's ``SSLProtocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from asyncio import sslproto

from smtprelay.errors import RelayError

# OpenSSL reasons worth plain words in the log, with the metric's kind.
_REASONS = {
    "UNSUPPORTED_PROTOCOL": (
        "protocol_version",
        "client offers no TLS version at or above min_version {min_version}",
    ),
    "UNSUPPORTED_SSL_VERSION": (
        "protocol_version",
        "client offers no TLS version at or above min_version {min_version}",
    ),
    "WRONG_VERSION_NUMBER": ("not_tls", "not a TLS handshake (a plaintext client?)"),
    "HTTP_REQUEST": ("not_tls", "an HTTP request, not a TLS handshake"),
    "NO_SHARED_CIPHER": ("no_shared_cipher", "no cipher in common with the client"),
    "UNEXPECTED_EOF_WHILE_READING": ("closed", "client closed the connection"),
}


class HandshakeFailed(RelayError):
    """The handshake did not complete; ``reason`` is for the log, ``kind`` the metric."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


class _ServerTLS(sslproto.SSLProtocol):
    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            # asyncio drops OpenSSL's alert (protocol_version, handshake_failure...) when
            # the handshake fails; send it, so the client is told why, then close.
            with contextlib.suppress(Exception):
                self._process_outgoing()  # type: ignore[attr-defined]
        super()._on_handshake_complete(handshake_exc)


class Handshake:
    """A handshake under way on a connection whose protocol is now the TLS layer."""

    def __init__(
        self,
        raw: asyncio.BaseTransport,
        app: asyncio.BaseProtocol,
        context: ssl.SSLContext,
        time_limit: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._raw = raw
        self._time_limit = time_limit
        self._done: asyncio.Future[None] = loop.create_future()
        self._tls = _ServerTLS(
            loop,
            app,
            context,
            self._done,
            server_side=True,
            call_connection_made=False,
            ssl_handshake_timeout=time_limit,  # type: ignore[arg-type]
        )
        raw.set_protocol(self._tls)
        self._tls.connection_made(raw)

    def feed(self, data: bytes) -> None:
        """Bytes that arrived before the handshake began (after a PROXY header)."""
        view = memoryview(data)
        while view:
            buffer = self._tls.get_buffer(len(view))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            self._tls.buffer_updated(n)
            view = view[n:]

    async def result(self, min_version: str) -> asyncio.Transport:
        """The TLS transport once the handshake is done, or HandshakeFailed (the
        connection is then closed)."""
        try:
            await self._done
        except ssl.SSLError as e:
            self._raw.abort()  # type: ignore[attr-defined]
            kind, text = _REASONS.get(e.reason or "", ("other", (e.reason or str(e)).lower()))
            raise HandshakeFailed(text.format(min_version=min_version), kind) from None
        except ConnectionAbortedError as e:
            self._raw.abort()  # type: ignore[attr-defined]
            if "longer than" in str(e):  # the TLS layer's handshake timeout
                raise HandshakeFailed(
                    f"no handshake within {self._time_limit:g}s", "timeout"
                ) from None
            raise HandshakeFailed("connection aborted", "closed") from None
        except ConnectionResetError:
            self._raw.abort()  # type: ignore[attr-defined]
            raise HandshakeFailed("client reset the connection", "closed") from None
        except OSError as e:
            self._raw.abort()  # type: ignore[attr-defined]
            raise HandshakeFailed(e.strerror or type(e).__name__, "other") from None
        tls = self._tls._get_app_transport()  # type: ignore[attr-defined]
        # A connection closed cleanly in mid-handshake ends the wait without an error.
        if self._raw.is_closing() or tls.is_closing():
            self._raw.abort()  # type: ignore[attr-defined]
            raise HandshakeFailed("client closed the connection", "closed")
        return tls  # type: ignore[no-any-return]
