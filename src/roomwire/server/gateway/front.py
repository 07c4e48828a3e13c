"""The front of the one port: reads the request head of each new TCP connection and hands
the connection to picows (a WebSocket upgrade, see ``websocket.py``) or to aiohttp (anything
else, see ``server.http``), with the caps and deadlines that hold until then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

import picows
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from ..config import ServerConfig
from ..limits import ConnectionSlots, default_http_connection_cap
from ..metrics import Metrics
from .websocket import GatewayContext, upgrade_listener

log = logging.getLogger("roomwire.gateway")
_picows_log = logging.getLogger("roomwire.picows")
_picows_log.setLevel(logging.WARNING)
#: What picows logs through. picows gives every connection a child ``logging.Logger`` of its
#: own (about 1 KiB each) unless the logger it gets is not a ``Logger``: an adapter is not.
_picows_adapter = logging.LoggerAdapter(_picows_log, {})

#: picows' initial read buffer per connection (its default is 16 KiB; it doubles the buffer
#: whenever a read fills it, so a busy socket grows its own and an idle one stays small).
READ_BUFFER_INIT = 2 * 1024

#: The longest request head read before a connection is handed on.
_MAX_HEAD = 16 * 1024

#: A refused connection is answered once its request head arrived, or after this many seconds.
_REFUSAL_LINGER = 1.0

#: At most one log line per cap per this many seconds while connections are being refused.
_CAP_LOG_INTERVAL = 10.0


class FrontContext(GatewayContext, Protocol):
    """What the front needs on top of the transport's context: the caps on connections that
    are not WebSockets yet."""

    @property
    def http_caps(self) -> ConnectionCaps: ...


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

    def __init__(self, node: FrontContext, inner: asyncio.Protocol, address: str,
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

    def __init__(self, node: FrontContext,
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
            None, None, False, lambda request: upgrade_listener(node, request), _picows_adapter,
            True, cfg.handshake_timeout, False, 20.0, 20.0,
            picows.WSAutoPingStrategy.PING_WHEN_IDLE, False, cfg.max_frame_size, None,
            READ_BUFFER_INIT,
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
