"""The transport: one TCP port for WebSocket (picows) and plain HTTP (aiohttp).

A small front protocol reads the request head of each new TCP connection. A WebSocket upgrade
is handed to picows, the fast path; anything else to aiohttp, which serves REST, metrics,
health and static pages. Outbound frames are framed once (a broadcast is the same bytes for
every subscriber) and coalesced per socket within one event-loop turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlsplit

import picows
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from ..protocol import CloseCode
from .auth import AuthFailure, Principal
from .session import Session

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("roomwire.gateway")
_picows_log = logging.getLogger("roomwire.picows")
_picows_log.setLevel(logging.WARNING)

_MAX_HEAD = 16 * 1024
_TEXT = picows.WSMsgType.TEXT
_BINARY = picows.WSMsgType.BINARY
_CONT = picows.WSMsgType.CONTINUATION
_CLOSE = picows.WSMsgType.CLOSE
_PONG = picows.WSMsgType.PONG


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame (what a server sends)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class Outbox:
    """Write coalescing: the frames queued for one socket go out in one ``write()``.

    A session flushes after the last frame of each read buffer (picows hands over every frame
    of one read in a row), so a burst of publishes costs each subscriber one syscall and a
    lone publish is written without waiting for the next loop iteration. Frames queued from
    anywhere else (timers, REST, the cluster broker) are flushed by a ``call_soon`` at the end
    of the loop turn; that callback also catches anything a read left behind.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[WsSession] = []
        self._scheduled = False

    def mark(self, conn: WsSession) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()


class WsSession(Session, picows.WSListener):
    """A session on a picows WebSocket."""

    def __init__(self, node: Node, principal: Principal) -> None:
        Session.__init__(self, node, principal)
        self.node = node
        self._out: list[bytes] = []
        self._outbox = node.outbox
        self._ws: Any = None
        self._raw: Any = None
        self._fragments: list[bytes] | None = None
        self._fragment_size = 0
        self._fragment_binary = False
        self.last_seen = time.monotonic()
        self.opened_at = self.last_seen
        self._expiry: asyncio.TimerHandle | None = None
        self._closing = False

    # picows callbacks ----------------------------------------------------------------------

    def on_ws_connected(self, transport: Any) -> None:
        self._ws = transport
        self._raw = transport.underlying_transport
        self._raw.set_write_buffer_limits(high=self.node.config.outbound_queue_bytes)
        if not self.node.admit(self):
            return
        self.opened()
        self.send(self.welcome_frame(int(time.time()), self.node.ice_servers_for(self)))
        exp = self.principal.expires_at
        if exp is not None:
            delay = exp - time.time() - self.node.config.token_expiry_margin
            self._expiry = self.node.loop.call_later(
                max(0.0, delay), self.close, CloseCode.TOKEN_EXPIRED, "token expired"
            )

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        self.last_seen = time.monotonic()
        mt = frame.msg_type
        if self._closing:
            # We sent a close frame; the peer's close reply ends the connection at once.
            if mt is _CLOSE:
                transport.disconnect()
            return
        if mt is _TEXT:
            if frame.fin:
                self.handle_text(frame.get_payload_as_bytes())
                if frame.last_in_buffer:
                    self._outbox.flush()
            else:
                self._begin_fragments(frame, binary=False)
        elif mt is _CONT:
            self._continue_fragments(frame)
        elif mt is _BINARY:
            if frame.fin:
                self.handle_binary()
            else:
                self._begin_fragments(frame, binary=True)
        elif mt is _CLOSE:
            self._closing = True
            self.flush()
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        # PING is answered by picows itself; PONG only refreshes last_seen.

    def _begin_fragments(self, frame: Any, binary: bool) -> None:
        self._fragments = [frame.get_payload_as_bytes()]
        self._fragment_size = frame.payload_size
        self._fragment_binary = binary

    def _continue_fragments(self, frame: Any) -> None:
        if self._fragments is None:
            self.close(1002, "continuation frame without a start")
            return
        self._fragment_size += frame.payload_size
        if self._fragment_size > self.node.config.max_frame_size:
            self.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return
        self._fragments.append(frame.get_payload_as_bytes())
        if frame.fin:
            payload = b"".join(self._fragments)
            self._fragments = None
            if self._fragment_binary:
                self.handle_binary()
            else:
                self.handle_text(payload)

    def on_ws_disconnected(self, transport: Any) -> None:
        self._closing = True
        self._out.clear()
        if self._expiry is not None:
            self._expiry.cancel()
        self.node.forget(self)
        self.ended()

    def pause_writing(self) -> None:
        # The socket's outbound queue passed its bound: this reader cannot keep up.
        self.node.metrics.queue_overflows += 1
        self.close(CloseCode.POLICY_VIOLATION, "slow consumer")

    def resume_writing(self) -> None:
        return None

    # Session transport -------------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        self.send_wire(ws_text_frame(payload))

    def send_wire(self, wire: bytes) -> None:
        if self._closing:
            return
        out = self._out
        if not out:
            self._outbox.mark(self)
        out.append(wire)

    def flush(self) -> None:
        out = self._out
        if not out or self._raw is None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.node.metrics.frames_out += 1
        self._raw.write(data)

    def close(self, code: int, reason: str, *, leave: bool = True) -> None:
        """Send a close frame and stop delivering. ``leave=False`` defers leaving the channels
        to the caller (a shutdown closes everyone first so nobody hears the others leave)."""
        if self._closing or self._ws is None:
            return
        self.flush()
        self._closing = True
        self.node.metrics.count_close(code)
        try:
            self._ws.send_close(picows.WSCloseCode(code), reason.encode()[:120])
        except ValueError:
            self._ws.send_close(picows.WSCloseCode.POLICY_VIOLATION, reason.encode()[:120])
        # Leave every channel now: the others hear `left` without waiting for the TCP close.
        if leave:
            self.ended()
        # Give the peer a moment to answer the close, then drop the connection even if its
        # unread outbound buffer never drains (a slow consumer that stopped reading).
        self.node.loop.call_later(1.0, self._ws.disconnect, False)

    def send_ping(self) -> None:
        if not self._closing and self._ws is not None:
            self._ws.send_ping()


class _Refusal(picows.WSListener):
    """Upgrade, then close with a code: what the SDKs need to see for auth failures."""

    def __init__(self, node: Node, code: int, reason: str) -> None:
        self._node = node
        self._code = code
        self._reason = reason

    def on_ws_connected(self, transport: Any) -> None:
        self._node.metrics.count_close(self._code)
        transport.send_close(picows.WSCloseCode(self._code), self._reason.encode()[:120])
        self._node.loop.call_later(1.0, transport.disconnect)

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type is _CLOSE:
            transport.disconnect()


def _http_response(status: int, reason: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class FrontProtocol(asyncio.Protocol):
    """Reads the first request head and hands the connection to picows or aiohttp."""

    def __init__(self, node: Node, http_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._node = node
        self._http_factory = http_factory
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        self._timer = self._node.loop.call_later(
            self._node.config.handshake_timeout, transport.close
        )

    def data_received(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HEAD:
                self._reject(431, "Request Header Fields Too Large", b"request head too large\n")
            return
        if self._timer is not None:
            self._timer.cancel()
        head = bytes(self._buf[:end]).lower()
        if b"\r\nupgrade:" in head and b"websocket" in head:
            self._to_websocket()
        else:
            self._to_http()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _reject(self, status: int, reason: str, body: bytes) -> None:
        assert self._transport is not None
        self._transport.write(_http_response(status, reason, body))
        self._transport.close()

    def _peer_ip(self) -> str:
        assert self._transport is not None
        peer = self._transport.get_extra_info("peername")
        return str(peer[0]) if peer else "?"

    def _to_websocket(self) -> None:
        node = self._node
        assert self._transport is not None
        if not node.accepting:
            self._reject(503, "Service Unavailable", b"server is shutting down\n")
            return
        if not node.connect_limiter.allow(self._peer_ip()):
            node.metrics.upgrades_rate_limited += 1
            self._reject(429, "Too Many Requests", b"too many connection attempts\n")
            return
        cfg = node.config
        proto = WSProtocol(
            None, None, False, node.listener_factory, _picows_log, True,
            cfg.handshake_timeout, False, 20.0, 20.0,
            picows.WSAutoPingStrategy.PING_WHEN_IDLE, True, cfg.max_frame_size, None, 16 * 1024,
        )
        self._hand_over(proto)

    def _to_http(self) -> None:
        self._hand_over(self._http_factory())

    def _hand_over(self, proto: asyncio.BaseProtocol) -> None:
        transport = self._transport
        assert transport is not None
        transport.set_protocol(proto)
        proto.connection_made(transport)
        data = bytes(self._buf)
        self._buf.clear()
        if isinstance(proto, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buf = memoryview(proto.get_buffer(len(view)))
                n = min(len(buf), len(view))
                if n == 0:
                    break
                buf[:n] = view[:n]
                proto.buffer_updated(n)
                view = view[n:]
        else:
            cast(asyncio.Protocol, proto).data_received(data)


def parse_upgrade_target(path: bytes) -> tuple[str, dict[str, str]] | None:
    """The path and query of an upgrade request; None when the target is unreadable."""
    try:
        parts = urlsplit(path.decode("latin-1"))
    except ValueError:
        return None
    query: dict[str, str] = {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in query:
            # A repeated credential is ambiguous: refuse rather than pick one.
            query[k] = "\x00ambiguous"
        else:
            query[k] = v
    return parts.path, query


def upgrade_listener(node: Node, request: Any) -> Any:
    """picows listener factory: route, authenticate, and answer or refuse the upgrade."""
    target = parse_upgrade_target(request.path)
    if target is None or target[0].rstrip("/") != "/v1":
        return None  # picows answers 404
    _path, query = target
    origin = request.headers.get("Origin")
    result = node.authenticate(query, origin)
    if isinstance(result, AuthFailure):
        if result.http_status:
            resp = picows.WSUpgradeResponse.create_error_response(
                result.http_status, result.message.encode()
            )
            return picows.WSUpgradeResponseWithListener(resp, None)
        return _Refusal(node, result.close_code, result.message)
    assert isinstance(result, Principal)
    return WsSession(node, result)
