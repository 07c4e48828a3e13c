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
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl, urlsplit

import picows
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from ..protocol import CloseCode
from .auth import AuthFailure, Principal
from .config import ServerConfig
from .limits import ConnectionSlots, ConnectLimiter, TokenBucket, default_http_connection_cap
from .metrics import Metrics
from .session import Services, Session

log = logging.getLogger("roomwire.gateway")
_picows_log = logging.getLogger("roomwire.picows")
_picows_log.setLevel(logging.WARNING)

_MAX_HEAD = 16 * 1024
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

#: Codes of the closes that answer a flood. Reading stops at once so the flooder's bytes
#: queue up in its own socket instead of costing the event loop until the TCP close.
_FLOOD_CLOSES = frozenset({CloseCode.OVER_MESSAGE_RATE, CloseCode.MESSAGE_TOO_BIG})

#: A refused connection is answered once its request head arrived, or after this many seconds.
_REFUSAL_LINGER = 1.0

#: At most one log line per cap per this many seconds while connections are being refused.
_CAP_LOG_INTERVAL = 10.0


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame (what a server sends)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class GatewayContext(Services, Protocol):
    """What the transport needs from its node: admission and the session's services."""

    @property
    def metrics(self) -> Metrics: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def http_caps(self) -> ConnectionCaps: ...

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


class WsSession(Session, picows.WSListener):
    """A session on a picows WebSocket."""

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
        self._closing = True
        self._out.clear()
        self._fragments = None
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


class _Refusal(picows.WSListener):
    """Upgrade, then close with a code: what the SDKs need to see for auth failures."""

    def __init__(self, node: GatewayContext, code: int, reason: str) -> None:
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


def _http_response(status: int, reason: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    ).encode() + body


class ConnectionCaps:
    """The caps on connections that are not WebSockets (per source IP and in total), with
    the metric and a rate-limited log line for every refusal."""

    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        total = config.http_max_connections or default_http_connection_cap()
        self.slots = ConnectionSlots(config.http_max_connections_per_ip, total)
        self._metrics = metrics
        self._last_log: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def acquire(self, address: str) -> str | None:
        """Take a slot; None when taken, else the full cap (``per_ip`` or ``total``)."""
        full = self.slots.acquire(address)
        if full is not None:
            self._metrics.http_refused[full] += 1
            self._log(full, address)
        return full

    def release(self, address: str) -> None:
        self.slots.release(address)

    def _log(self, cap: str, address: str) -> None:
        # An attack refuses thousands of connections a second: one line per cap per interval
        # says it is happening, and how much, without flooding the log.
        now = time.monotonic()
        if now - self._last_log.get(cap, -_CAP_LOG_INTERVAL) < _CAP_LOG_INTERVAL:
            self._unlogged[cap] = self._unlogged.get(cap, 0) + 1
            return
        self._last_log[cap] = now
        more = self._unlogged.pop(cap, 0)
        since = f"; {more} more refused in the last {_CAP_LOG_INTERVAL:g} s" if more else ""
        if cap == "per_ip":
            log.warning("connection cap reached: refused a connection from %s, which already "
                        "has %d open (http_max_connections_per_ip)%s", address,
                        self.slots.held_by(address), since)
        else:
            log.warning("connection cap reached: refused a connection from %s, %d connections "
                        "are open (http_max_connections)%s", address, self.slots.open, since)


class HttpGuard(asyncio.Protocol):
    """Stands between the transport and aiohttp's protocol for the whole life of an HTTP
    connection: it gives the connection's slot back when it ends, and closes it when a
    request body misses its deadline (aiohttp only times out idle connections)."""

    def __init__(self, node: GatewayContext, inner: asyncio.Protocol, address: str,
                 transport: asyncio.Transport) -> None:
        self._node = node
        self._inner = inner
        self._address = address
        self._transport: asyncio.Transport | None = transport
        self._body_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_body_timer()
        if self._transport is not None:
            self._transport = None
            self._node.http_caps.release(self._address)
        self._inner.connection_lost(exc)

    def expect_body(self, body: Any) -> None:
        """A request's handler starts; ``body`` (its payload stream) must be complete within
        ``http_body_timeout``, whoever reads it (the handler, or aiohttp draining it)."""
        self._cancel_body_timer()
        if not body.is_eof():
            self._body_timer = self._node.loop.call_later(
                self._node.config.http_body_timeout, self._body_deadline, body)

    def request_done(self, body: Any) -> None:
        if body.is_eof():
            self._cancel_body_timer()

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_deadline(self, body: Any) -> None:
        self._body_timer = None
        transport = self._transport
        if body.is_eof() or transport is None or transport.is_closing():
            return
        self._node.metrics.http_timeouts["body"] += 1
        log.info("closed an HTTP connection from %s: its request body did not arrive "
                 "within http_body_timeout (%g s)", self._address,
                 self._node.config.http_body_timeout)
        # abort, not close: the peer is not reading either, and its answer would only wait
        # in the buffer.
        transport.abort()


class FrontProtocol(asyncio.Protocol):
    """Reads the first request head and hands the connection to picows or aiohttp.

    Until then the connection holds one of the capped slots (``ConnectionCaps``) and must
    finish its head within ``http_head_timeout``; a WebSocket gives the slot back when it is
    handed over, an HTTP connection keeps it until it ends (``HttpGuard``)."""

    def __init__(self, node: GatewayContext,
                 http_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._node = node
        self._http_factory = http_factory
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._address = "?"
        self._holds_slot = False
        self._refusal: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        node = self._node
        self._address = self._peer_ip()
        full = node.http_caps.acquire(self._address)
        if full is not None:
            self._refuse_over_cap(full)
            return
        self._holds_slot = True
        self._timer = node.loop.call_later(node.config.http_head_timeout, self._head_timeout)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if self._refusal is not None:
            # Answered once the head is in: clients expect the response after their request
            # (websockets trips over an early one), and closing with unread bytes would
            # reset the connection and could destroy the answer.
            if end >= 0 or len(self._buf) > _MAX_HEAD:
                self._send_refusal()
            return
        if end < 0:
            if len(self._buf) > _MAX_HEAD:
                self._reject(431, "Request Header Fields Too Large", b"request head too large\n")
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        head = bytes(self._buf[:end]).lower()
        if b"\r\nupgrade:" in head and b"websocket" in head:
            self._to_websocket()
        else:
            self._to_http()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._give_back_slot()

    def _give_back_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self._node.http_caps.release(self._address)

    def _refuse_over_cap(self, cap: str) -> None:
        if cap == "per_ip":
            self._refusal = _http_response(429, "Too Many Requests",
                                           b"too many open connections from your address\n",
                                           "Retry-After: 1\r\n")
        else:
            self._refusal = _http_response(
                503, "Service Unavailable",
                b"the server is at its connection limit; retry shortly\n", "Retry-After: 1\r\n")
        self._timer = self._node.loop.call_later(_REFUSAL_LINGER, self._send_refusal)

    def _send_refusal(self) -> None:
        transport = self._transport
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._refusal is None or transport is None or transport.is_closing():
            return
        self._buf.clear()
        transport.write(self._refusal)
        transport.close()

    def _head_timeout(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._node.metrics.http_timeouts["head"] += 1
        if self._buf:
            # Only a client that started a request gets an answer; a silent socket (a
            # browser's preconnect, a port scan) is just closed.
            transport.write(_http_response(408, "Request Timeout",
                                           b"the request head did not arrive in time\n"))
        transport.close()

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
        if not node.connect_limiter.allow(self._address):
            node.metrics.upgrades_rate_limited += 1
            self._reject(429, "Too Many Requests", b"too many connection attempts\n")
            return
        cfg = node.config
        # Pings are answered by WsSession (enable_auto_pong off), under a budget.
        proto = WSProtocol(
            None, None, False, lambda request: upgrade_listener(node, request), _picows_log, True,
            cfg.handshake_timeout, False, 20.0, 20.0,
            picows.WSAutoPingStrategy.PING_WHEN_IDLE, False, cfg.max_frame_size, None,
            16 * 1024,
        )
        self._give_back_slot()
        self._hand_over(proto, proto)

    def _to_http(self) -> None:
        transport = self._transport
        assert transport is not None
        inner = cast(asyncio.Protocol, self._http_factory())
        guard = HttpGuard(self._node, inner, self._address, transport)
        self._holds_slot = False  # the guard gives it back when the connection ends
        self._hand_over(guard, inner)

    def _hand_over(self, proto: asyncio.BaseProtocol, inner: asyncio.BaseProtocol) -> None:
        """Make ``proto`` the transport's protocol, start ``inner`` (the protocol doing the
        work: ``proto`` itself, or the one an ``HttpGuard`` wraps) and feed it what was read."""
        transport = self._transport
        assert transport is not None
        transport.set_protocol(proto)
        inner.connection_made(transport)
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
        return _Refusal(node, result.close_code, result.message)
    assert isinstance(result, Principal)
    return WsSession(node, result)
