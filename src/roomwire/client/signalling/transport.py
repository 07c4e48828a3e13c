"""The WebSocket seam: what the client needs from a connection, and the default factory.

A ``web_socket_factory`` is an async callable taking the full connect URL (credential
included: never log it) and returning an open connection that satisfies
``WebSocketConnection``. The default one uses the ``websockets`` library. Tests and unusual
environments (a proxy, custom TLS, another library) pass their own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from ...extras import missing_extra
from ...protocol import limits
from ..log import ScrubbingAdapter

__all__ = [
    "DEFAULT_OPEN_TIMEOUT",
    "HandshakeRejected",
    "WebSocketConnection",
    "WebSocketFactory",
    "close_info",
    "websockets_factory",
]

DEFAULT_OPEN_TIMEOUT = 10.0
"""Seconds allowed to open the socket (TCP, TLS and the HTTP upgrade)."""

CLOSE_TIMEOUT = 1.0
"""Seconds the client waits for the server to answer its close frame."""


class WebSocketConnection(Protocol):
    """An open WebSocket, as the client uses it.

    * ``send(text)`` sends one text frame. It may be called by several tasks at once.
    * ``recv()`` returns the next message (``str`` for text, ``bytes`` for binary) and raises
      (any exception) once the connection is closed.
    * ``close(code, reason)`` closes it; it should not block for long (the client also bounds
      it) and must make a pending ``recv()`` raise.
    * ``close_code`` / ``close_reason``: once closed, the code and reason of the close frame
      received from the server (``close_code`` 1006 or None when none was received).

    ``websockets.asyncio.client.ClientConnection`` satisfies this protocol as is.
    """

    async def send(self, message: str, /) -> None: ...

    async def recv(self) -> str | bytes: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    @property
    def close_code(self) -> int | None: ...

    @property
    def close_reason(self) -> str | None: ...


WebSocketFactory = Callable[[str], Awaitable[WebSocketConnection]]
"""``async def factory(url: str) -> WebSocketConnection``."""


class HandshakeRejected(Exception):
    """A factory may raise this when the server refuses the upgrade with an HTTP status; the
    client then reports the status as the close code (e.g. 429). Factories built on
    ``websockets`` need not: its ``InvalidStatus`` is recognised too."""

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(f"upgrade refused with HTTP {status}")
        self.status = status
        self.reason = reason


def close_info(exc: BaseException) -> tuple[int, str]:
    """The (code, reason) a failed connect attempt is reported with."""
    if isinstance(exc, HandshakeRejected):
        return exc.status, exc.reason or f"upgrade refused with HTTP {exc.status}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status, f"upgrade refused with HTTP {status}"
    rcvd = getattr(exc, "rcvd", None)
    code = getattr(rcvd, "code", None)
    if isinstance(code, int):
        return code, str(getattr(rcvd, "reason", "") or "")
    return 1006, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def websockets_factory(
    open_timeout: float = DEFAULT_OPEN_TIMEOUT,
) -> Callable[[str], Awaitable[WebSocketConnection]]:
    """The default factory: ``websockets`` with a 1 MiB frame cap, no library-level pings (the
    client sends app-level pings), and bounded open and close handshakes."""

    async def connect(url: str) -> WebSocketConnection:
        try:
            from websockets.asyncio.client import connect as ws_connect
        except ImportError as exc:  # no web_socket_factory and no websockets installed
            raise missing_extra("client", exc) from exc
        return await ws_connect(
            url,
            max_size=limits.MAX_CLIENT_INBOUND_FRAME,
            ping_interval=None,
            open_timeout=open_timeout,
            close_timeout=CLOSE_TIMEOUT,
            logger=ScrubbingAdapter(logging.getLogger("websockets.client")),
        )

    return connect
