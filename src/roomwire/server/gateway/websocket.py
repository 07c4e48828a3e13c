"""The WebSocket transport on picows: the upgrade (route, authenticate, answer or refuse),
``WsSession`` (one socket: fragments, pings, close, slow consumer) and ``Outbox``.

``front.py`` hands a connection here once its request head is an upgrade to ``/v1``, the fast
path. Outbound frames are framed once (a broadcast is the same bytes for
every subscriber) and coalesced per socket within one event-loop turn.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import picows
from multidict import CIMultiDict, CIMultiDictProxy

from ...protocol import CloseCode
from ..auth import AuthFailure, Principal
from ..limits import ConnectLimiter, TokenBucket
from ..metrics import Metrics
from ..session import SESSION_SLOTS, Services, Session
from .listener import Refusal, SessionListener

log = logging.getLogger("roomwire.gateway")

_TEXT = picows.WSMsgType.TEXT
_BINARY = picows.WSMsgType.BINARY
_CONT = picows.WSMsgType.CONTINUATION
_CLOSE = picows.WSMsgType.CLOSE
_PING = picows.WSMsgType.PING
_PONG = picows.WSMsgType.PONG

#: What each frame of a fragmented message costs toward the frame size limit on top of its
#: payload: a stream of empty continuation frames must not be free (each one is a list slot
#: and an object while the message is reassembled).
FRAGMENT_OVERHEAD = 32

_NO_HEADERS = CIMultiDictProxy(CIMultiDict[str]())

#: Codes of the closes that answer a flood. Reading stops at once so the flooder's bytes
#: queue up in its own socket instead of costing the event loop until the TCP close.
_FLOOD_CLOSES = frozenset({CloseCode.OVER_MESSAGE_RATE, CloseCode.MESSAGE_TOO_BIG})


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame (what a server sends)."""
    return ws_text_header(len(payload)) + payload


#: Headers of the text frames shorter than 126 bytes, whose length fits in the first two bytes.
_SHORT_HEADERS = tuple(bytes((0x81, n)) for n in range(126))
_header16 = struct.Struct(">BBH").pack
#: Headers of every text frame up to 4 KiB (ICE candidates, most SDP), looked up rather than
#: packed: a frame's header is built for every frame a client receives. About 150 KB once.
_TABLED = 4096
_HEADERS = _SHORT_HEADERS + tuple(_header16(0x81, 126, n) for n in range(126, _TABLED))


def ws_text_header(n: int) -> bytes:
    """The header of an unmasked, final WebSocket text frame of ``n`` payload bytes."""
    if n < 126:
        return _SHORT_HEADERS[n]
    if n < 65536:
        return _header16(0x81, 126, n)
    return b"\x81\x7f" + n.to_bytes(8, "big")


class GatewayContext(Services, Protocol):
    """What the transport needs from its node: admission and the session's services."""

    @property
    def metrics(self) -> Metrics: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def connect_limiter(self) -> ConnectLimiter: ...

    @property
    def accepting(self) -> bool:
        """False while starting, draining or cut off from the cluster: upgrades get 503."""
        ...

    def authenticate(self, query: Mapping[str, str], origin: str | None,
                     ) -> Principal | AuthFailure: ...

    def admit(self, session: WsSession) -> bool:
        """Whether the app takes this socket now; False after closing it with the reason."""
        ...

    def forget(self, session: WsSession) -> None: ...

    def ice_servers_for(self, session: WsSession) -> list[dict[str, object]] | None: ...


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


class WsSession(Session):
    """A session on a picows WebSocket: picows calls it through a ``SessionListener``.

    Its listener holds it, rather than it deriving from ``picows.WSListener``, so that it can be
    compiled (docs/operations.md, "Compiled modules"): a compiled class cannot also derive
    from another extension type.
    """

    __slots__ = (
        *SESSION_SLOTS, "_closing", "_control_bucket", "_expiry", "_fragment_binary",
        "_fragment_count", "_fragment_size", "_fragments", "_out", "_outbox", "_raw", "_ws",
        "heard", "hold_presence", "node", "opened_at",
    )

    def __init__(self, node: GatewayContext, principal: Principal) -> None:
        Session.__init__(self, node, principal)
        self.node = node
        self._out: list[bytes] = []
        self._outbox = node.outbox
        self._ws: Any = None
        self._raw: Any = None
        self._fragments: list[bytes] | None = None
        self._fragment_size = 0
        self._fragment_count = 0
        self._fragment_binary = False
        cfg = node.config
        self._control_bucket = TokenBucket(cfg.ping_rate, cfg.ping_burst)
        self.heard = True
        """Whether any frame arrived since the keepalive's last ping (``Node._keepalive``)."""
        self.opened_at = time.monotonic()
        self._expiry: asyncio.TimerHandle | None = None
        self._closing = False
        self.hold_presence = False
        """Set by a draining node: the peer stays in its channels after the socket is gone,
        until the node lets go at the end of the drain (``ended()``), so a client that is
        back on another node by then never left its rooms in the others' eyes."""

    # picows callbacks ----------------------------------------------------------------------

    def on_ws_connected(self, transport: Any) -> None:
        self._ws = transport
        self._raw = transport.underlying_transport
        # picows keeps the upgrade request and response for the life of the connection, and
        # their header dicts are over a kilobyte; nothing reads them after the handshake.
        for message in (transport.request, transport.response):
            if message is not None:
                message.headers = _NO_HEADERS
        self._raw.set_write_buffer_limits(high=self.node.config.outbound_queue_bytes)
        if not self.node.admit(self):
            return
        # In a cluster the welcome waits until this node receives the peer's directs.
        self.opened(self._welcome)
        exp = self.principal.expires_at
        if exp is not None:
            delay = exp - time.time() - self.node.config.token_expiry_margin
            self._expiry = self.node.loop.call_later(
                max(0.0, delay), self.close, CloseCode.TOKEN_EXPIRED, "token expired"
            )

    def fresh_ice_servers(self) -> list[dict[str, object]] | None:
        return self.node.ice_servers_for(self)

    def _welcome(self) -> None:
        self.send(self.welcome_frame(int(time.time()), self.node.ice_servers_for(self)))

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        # A flag, not a clock read per frame: the keepalive clears it when it pings.
        self.heard = True
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
        elif mt is _PING:
            # Answered here rather than by picows so that pings have a budget and the pong
            # joins the socket's coalesced writes instead of costing a write() each.
            if self._control_bucket.take():
                payload = frame.get_payload_as_bytes()[:125]
                self.send_wire(bytes((0x8A, len(payload))) + payload)
                if frame.last_in_buffer:
                    self._outbox.flush()
            else:
                self.over_ping_budget("websocket")
        elif mt is _PONG:
            # Unsolicited pongs are allowed (RFC 6455 5.5.3) but share the pings' budget: the
            # server's keepalive asks for one every 30 s.
            if not self._control_bucket.take():
                self.over_ping_budget("websocket")
        elif mt is _CLOSE:
            self._closing = True
            if self.close_code is None:
                self.close_code = int(frame.get_close_code())
                message = frame.get_close_message() or b""
                self.close_reason = message[:123].decode("utf-8", "replace")
            self.flush()
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    # A fragmented message is charged one request token per frame (the frame that completes
    # it through the request it carries), and the frames' count and overhead are bounded, so
    # a stream of tiny continuation frames ends quickly (docs/protocol.md, "Frame size").

    def _begin_fragments(self, frame: Any, binary: bool) -> None:
        if not self._spend():
            return
        self._fragments = [frame.get_payload_as_bytes()]
        self._fragment_size = frame.payload_size + FRAGMENT_OVERHEAD
        self._fragment_count = 1
        self._fragment_binary = binary

    def _continue_fragments(self, frame: Any) -> None:
        if self._fragments is None:
            self.close(1002, "continuation frame without a start")
            return
        cfg = self.node.config
        self._fragment_count += 1
        if self._fragment_count > cfg.max_fragments_per_message:
            self._fragments = None
            self.close(CloseCode.MESSAGE_TOO_BIG,
                       f"message in more than {cfg.max_fragments_per_message} fragments")
            return
        self._fragment_size += frame.payload_size + FRAGMENT_OVERHEAD
        if self._fragment_size > cfg.max_frame_size:
            self._fragments = None
            self.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return
        if not frame.fin and not self._spend():
            self._fragments = None
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
        self.note_drop()
        self._closing = True
        if self.close_code is None:
            self.close_code = 1006
        self._out.clear()
        self._fragments = None
        if self._expiry is not None:
            self._expiry.cancel()
        self.node.forget(self)
        if not self.hold_presence:
            self.ended()

    def pause_writing(self) -> None:
        # The socket's outbound queue passed its bound: this reader cannot keep up.
        self.node.metrics.queue_overflows += 1
        self.close(CloseCode.POLICY_VIOLATION, "slow consumer")

    def resume_writing(self) -> None:
        return None

    # Session transport -------------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        # Header and payload are queued apart: the flush joins them, one copy in all.
        if self._closing:
            return
        out = self._out
        if not out:
            self._outbox.mark(self)
        n = len(payload)
        out.append(_HEADERS[n] if n < _TABLED else ws_text_header(n))
        out.append(payload)

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
        self.note_drop()
        self.close_code = code
        self.close_reason = reason[:120]
        self.node.metrics.count_close(code)
        if code in _FLOOD_CLOSES and self._raw is not None:
            self._raw.pause_reading()
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

    def over_ping_budget(self, kind: str) -> None:
        self.node.metrics.pings_over_budget[kind] += 1
        self.close(CloseCode.OVER_MESSAGE_RATE, "ping rate limit exceeded")

    def send_ping(self) -> None:
        if not self._closing and self._ws is not None:
            self._ws.send_ping()

    def drop(self) -> None:
        """Cut the connection now, without a close handshake (the node is stopping)."""
        if self._ws is not None:
            self._ws.disconnect(graceful=False)


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


def upgrade_listener(node: GatewayContext, request: Any) -> Any:
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
        return Refusal(node.loop, node.metrics.count_close, result.close_code, result.message)
    assert isinstance(result, Principal)
    return SessionListener(WsSession(node, result))
