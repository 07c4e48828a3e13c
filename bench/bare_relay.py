"""A bare fan-out relay on picows + uvloop: the baseline roomwire is measured against.

No auth, no validation, no routing, no channels. On connect it sends a ``welcome`` whose
``peerId`` is the connection counter. Then, for each text frame:

* ``subscribe``: answered with ``{"type":"ack","requestId":...}``;
* ``send``: relayed verbatim to the one socket named by ``to``;
* anything else (``publish`` in the benchmarks): relayed verbatim to every other socket.

Frames are classified by cheap byte searches, not JSON parsing: this is the floor of what a
server on the same WebSocket library can do, not a server.

With ``--coalesce`` the frames bound for one socket are queued while a read buffer is
processed and written with one ``write()`` after its last frame (or at the end of the loop
turn), the way roomwire writes: the fair floor for fan-out and pipelined traffic.

    python bench/bare_relay.py --host 127.0.0.1 --port 8765 [--cpu 0] [--coalesce]

``GET /healthz`` answers 200 so the benchmark can wait for the server like it does for roomwire.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import uvloop
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)
from procstat import pin_to_cpu

TEXT = WSMsgType.TEXT
_TYPE_KEY = b'"type":"'
_REQUEST_ID_KEY = b'"requestId":"'
_TO_KEY = b'"to":"'


def _str_field(buf: bytes, key: bytes) -> bytes | None:
    """The raw value of the first ``"key":"value"`` in buf (no unescaping), or None."""
    i = buf.find(key)
    if i < 0:
        return None
    i += len(key)
    j = buf.find(b'"', i)
    return buf[i:j] if j >= 0 else None


def _text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class Coalescer:
    """Per-socket queues of framed bytes, each flushed with one write."""

    def __init__(self) -> None:
        self.queues: dict[WSTransport, list[bytes]] = {}
        self.scheduled = False

    def send(self, transport: WSTransport, payload: bytes) -> None:
        q = self.queues.get(transport)
        if q is None:
            q = self.queues[transport] = []
            if not self.scheduled:
                self.scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
        q.append(_text_frame(payload))

    def flush(self) -> None:
        self.scheduled = False
        queues, self.queues = self.queues, {}
        for transport, q in queues.items():
            if not transport.is_disconnected:
                transport.underlying_transport.write(q[0] if len(q) == 1 else b"".join(q))


class Relay:
    """The set of connected sockets: a list for fan-out, a dict for ``send``."""

    def __init__(self, coalesce: bool = False) -> None:
        self.counter = 0
        self.sockets: list[WSTransport] = []
        self.by_peer_id: dict[bytes, WSTransport] = {}
        self.coalescer = Coalescer() if coalesce else None

    def listener_factory(
        self, request: WSUpgradeRequest
    ) -> WSListener | WSUpgradeResponseWithListener:
        if request.path.startswith(b"/healthz"):
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_ok_response(b"ok\n"), None
            )
        return RelayListener(self)


class RelayListener(WSListener):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.peer_id = b""

    def on_ws_connected(self, transport: WSTransport) -> None:
        relay = self.relay
        relay.counter += 1
        self.peer_id = str(relay.counter).encode()
        relay.sockets.append(transport)
        relay.by_peer_id[self.peer_id] = transport
        transport.send(
            TEXT,
            b'{"type":"welcome","peerId":"'
            + self.peer_id
            + b'","expiresAt":null,"serverTime":0,"maxMessageSize":65536}',
        )

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        relay = self.relay
        if relay.by_peer_id.get(self.peer_id) is transport:
            del relay.by_peer_id[self.peer_id]
        with contextlib.suppress(ValueError):
            relay.sockets.remove(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not TEXT:
            if frame.msg_type is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        buf = frame.get_payload_as_bytes()
        kind = _str_field(buf, _TYPE_KEY)
        co = self.relay.coalescer
        if kind == b"subscribe":
            rid = _str_field(buf, _REQUEST_ID_KEY)
            ack = b'{"type":"ack"}' if rid is None else b'{"type":"ack","requestId":"' + rid + b'"}'
            if co is None:
                transport.send(TEXT, ack)
            else:
                co.send(transport, ack)
        elif kind == b"send":
            to = _str_field(buf, _TO_KEY)
            target = self.relay.by_peer_id.get(to) if to is not None else None
            if target is not None:
                if co is None:
                    target.send(TEXT, buf)
                else:
                    co.send(target, buf)
        elif co is None:
            for other in self.relay.sockets:
                if other is not transport:
                    other.send(TEXT, buf)
        else:
            for other in self.relay.sockets:
                if other is not transport:
                    co.send(other, buf)
        if co is not None and frame.last_in_buffer:
            co.flush()


async def serve(host: str, port: int, coalesce: bool = False) -> None:
    relay = Relay(coalesce)
    server = await ws_create_server(
        relay.listener_factory,
        host,
        port,
        backlog=4096,
        max_frame_size=1 << 20,
        websocket_handshake_timeout=10,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname() if server.sockets else (host, port)
    print(f"bare relay listening on ws://{bound[0]}:{bound[1]}/", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()
    for transport in list(relay.sockets):
        transport.send_close(WSCloseCode.GOING_AWAY)
        transport.disconnect()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    parser.add_argument(
        "--coalesce", action="store_true", help="one write per socket per read batch"
    )
    args = parser.parse_args()
    warning = pin_to_cpu(args.cpu)
    if warning:
        print(f"bare relay: {warning}", file=sys.stderr)
    uvloop.run(serve(args.host, args.port, args.coalesce))


if __name__ == "__main__":
    main()
