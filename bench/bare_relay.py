"""A bare fan-out relay on picows + uvloop: the baseline roomwire is measured against.

No auth, no validation, no routing, no channels. On connect it sends a ``welcome`` whose
``peerId`` is the connection counter. Then, for each text frame:

* ``subscribe``: answered with ``{"type":"ack","requestId":...}``;
* ``send``: relayed verbatim to the one socket named by ``to``;
* anything else (``publish`` in the benchmarks): relayed verbatim to every other socket.

Frames are classified by cheap byte searches, not JSON parsing: this is the floor of what a
server on the same WebSocket library can do, not a server.

    python bench/bare_relay.py --host 127.0.0.1 --port 8765 [--cpu 0]

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


class Relay:
    """The set of connected sockets: a list for fan-out, a dict for ``send``."""

    def __init__(self) -> None:
        self.counter = 0
        self.sockets: list[WSTransport] = []
        self.by_peer_id: dict[bytes, WSTransport] = {}

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
        if kind == b"subscribe":
            rid = _str_field(buf, _REQUEST_ID_KEY)
            if rid is None:
                transport.send(TEXT, b'{"type":"ack"}')
            else:
                transport.send(TEXT, b'{"type":"ack","requestId":"' + rid + b'"}')
        elif kind == b"send":
            to = _str_field(buf, _TO_KEY)
            target = self.relay.by_peer_id.get(to) if to is not None else None
            if target is not None:
                target.send(TEXT, buf)
        else:
            for other in self.relay.sockets:
                if other is not transport:
                    other.send(TEXT, buf)


async def serve(host: str, port: int) -> None:
    relay = Relay()
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
    args = parser.parse_args()
    warning = pin_to_cpu(args.cpu)
    if warning:
        print(f"bare relay: {warning}", file=sys.stderr)
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
