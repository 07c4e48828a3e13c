"""The classes picows calls: the listener of a WebSocket session, which forwards picows'
callbacks to the session, and the listener of a refused upgrade.

Kept apart from ``websocket.py`` and never compiled: a compiled class cannot derive from
``picows.WSListener`` (another extension type), so the session holds none of picows' layout and
these small classes are the ones picows sees (docs/operations.md, "Compiled modules").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import picows


class ListenerTarget(Protocol):
    """What a session must answer for picows."""

    def on_ws_connected(self, transport: Any) -> None: ...

    def on_ws_frame(self, transport: Any, frame: Any) -> None: ...

    def on_ws_disconnected(self, transport: Any) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


class SessionListener(picows.WSListener):
    """picows' listener for one session."""

    __slots__ = ("session",)

    def __init__(self, session: ListenerTarget) -> None:
        self.session = session

    def on_ws_connected(self, transport: Any) -> None:
        self.session.on_ws_connected(transport)

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        self.session.on_ws_frame(transport, frame)

    def on_ws_disconnected(self, transport: Any) -> None:
        self.session.on_ws_disconnected(transport)

    def pause_writing(self) -> None:
        self.session.pause_writing()

    def resume_writing(self) -> None:
        self.session.resume_writing()


class Refusal(picows.WSListener):
    """Upgrade, then close with a code: what the SDKs need to see for auth failures."""

    __slots__ = ("_code", "_counted", "_loop", "_reason")

    def __init__(self, loop: asyncio.AbstractEventLoop, count_close: Callable[[int], None],
                 code: int, reason: str) -> None:
        self._loop = loop
        self._counted = count_close
        self._code = code
        self._reason = reason

    def on_ws_connected(self, transport: Any) -> None:
        self._counted(self._code)
        transport.send_close(picows.WSCloseCode(self._code), self._reason.encode()[:120])
        self._loop.call_later(1.0, transport.disconnect)

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type is picows.WSMsgType.CLOSE:
            transport.disconnect()
