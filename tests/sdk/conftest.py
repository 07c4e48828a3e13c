"""Helpers for the SDK tests: an event recorder, a scripted fake server on a real socket, and
an in-memory fake connection for driver tests without sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from roomwire.client import ReconnectOptions, SignallingClient
from roomwire.client.signalling.events import EVENT_TYPES, Event
from roomwire.protocol import frames

FAST = ReconnectOptions(initial_delay=0.02, multiplier=2.0, max_delay=0.1, jitter=0.0,
                        max_attempts=50)
"""Small delays so that reconnect tests take tens of milliseconds per step."""


class Recorder:
    """Records every event a client emits, in order."""

    def __init__(self, client: SignallingClient) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        for name in EVENT_TYPES:
            client.on(name, self._record)

    def _record(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, name: str) -> list[Any]:
        return [e for e in self.events if e.name == name]

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    async def wait(self, name: str, pred: Callable[[Any], bool] = lambda e: True,
                   timeout: float = 5.0, count: int = 1) -> Any:
        """The ``count``-th event named ``name`` that satisfies ``pred``."""
        async with asyncio.timeout(timeout):
            while True:
                hits = [e for e in self.of(name) if pred(e)]
                if len(hits) >= count:
                    return hits[count - 1]
                self._changed.clear()
                await self._changed.wait()

    def terminal(self) -> list[Any]:
        return [e for e in self.of("disconnected") if not e.will_reconnect]


def welcome(peer_id: str = "fake-peer", max_message_size: int = 65536,
            expires_at: int | None = None, metadata: dict[str, Any] | None = None) -> str:
    return frames.encode_welcome(peer_id, expires_at, int(time.time()), max_message_size,
                                 metadata).decode()


Behaviour = Callable[[ServerConnection], Awaitable[None]]


async def serve_normally(ws: ServerConnection, peer_id: str = "fake-peer") -> None:
    """Welcome, then answer pings and acknowledge every request (presence after subscribe)."""
    await ws.send(welcome(peer_id))
    async for raw in ws:
        frame = json.loads(raw)
        kind = frame.get("type")
        if kind == "ping":
            await ws.send('{"type":"pong"}')
        elif "requestId" in frame:
            await ws.send(json.dumps({"type": "ack", "requestId": frame["requestId"]}))
            if kind == "subscribe":
                await ws.send(json.dumps({"type": "presence", "channel": frame["channel"],
                                          "joined": [], "left": []}))


def close_after_welcome(code: int, reason: str = "") -> Behaviour:
    async def run(ws: ServerConnection) -> None:
        await ws.send(welcome())
        await asyncio.sleep(0.02)
        await ws.close(code, reason)
    return run


def close_before_welcome(code: int, reason: str = "") -> Behaviour:
    async def run(ws: ServerConnection) -> None:
        await ws.close(code, reason)
    return run


async def welcome_then_silent(ws: ServerConnection) -> None:
    """Welcome, then never send another frame (pings go unanswered)."""
    await ws.send(welcome())
    await ws.wait_closed()


class FakeServer:
    """A real WebSocket server that runs one scripted behaviour per connection: the i-th
    connection gets ``behaviours[i]`` (the last one repeats)."""

    def __init__(self, *behaviours: Behaviour) -> None:
        self.behaviours = list(behaviours)
        self.connections = 0
        self.paths: list[str] = []
        self._server: Server | None = None

    async def start(self) -> FakeServer:
        self._server = await serve(self._handle, "127.0.0.1", 0, ping_interval=None)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _handle(self, ws: ServerConnection) -> None:
        i = self.connections
        self.connections += 1
        self.paths.append(ws.request.path if ws.request else "")
        await self.behaviours[min(i, len(self.behaviours) - 1)](ws)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def fake_server() -> AsyncIterator[Callable[..., Awaitable[FakeServer]]]:
    servers: list[FakeServer] = []

    async def make(*behaviours: Behaviour) -> FakeServer:
        s = await FakeServer(*behaviours).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        await s.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[SignallingClient]]:
    """Clients to close at the end of a test, whatever happened."""
    made: list[SignallingClient] = []
    yield made
    for c in made:
        await c.close()


# -- in-memory connection (no sockets) -------------------------------------------------------


class MemoryConn:
    """A fake ``WebSocketConnection``: the test pushes inbound frames and reads what the client
    sent. ``drop(code)`` ends it as if the server had closed with ``code``."""

    def __init__(self) -> None:
        self.inbound: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.sent_event = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by_client: tuple[int, str] | None = None

    async def send(self, message: str, /) -> None:
        if self.close_code is not None:
            raise ConnectionError("closed")
        self.sent.append(json.loads(message))
        self.sent_event.set()

    async def recv(self) -> str | bytes:
        item = await self.inbound.get()
        if item is None:
            raise ConnectionError("closed")
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is None:
            self.closed_by_client = (code, reason)
            self.close_code, self.close_reason = code, reason
            self.inbound.put_nowait(None)

    def push(self, frame: dict[str, Any] | str | bytes) -> None:
        self.inbound.put_nowait(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    def drop(self, code: int = 1006, reason: str = "") -> None:
        self.close_code, self.close_reason = code, reason
        self.inbound.put_nowait(None)

    async def next_sent(self, kind: str, timeout: float = 2.0) -> dict[str, Any]:
        """The first frame of ``kind`` the client sent (waits for it)."""
        async with asyncio.timeout(timeout):
            while True:
                for f in self.sent:
                    if f.get("type") == kind and not f.get("_seen"):
                        f["_seen"] = True
                        return f
                self.sent_event.clear()
                await self.sent_event.wait()


class MemoryNetwork:
    """A factory of MemoryConn. Each connect pops the next scripted outcome: a MemoryConn
    (already holding its welcome unless ``welcome=False``), or an exception to raise."""

    def __init__(self) -> None:
        self.conns: list[MemoryConn] = []
        self.urls: list[str] = []
        self.script: list[BaseException | None] = []
        self.auto_welcome = True
        self._connected = asyncio.Event()

    async def factory(self, url: str) -> MemoryConn:
        self.urls.append(url)
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        conn = MemoryConn()
        if self.auto_welcome:
            conn.push(welcome(f"peer-{len(self.conns)}"))
        self.conns.append(conn)
        self._connected.set()
        return conn

    async def wait_conns(self, n: int, timeout: float = 3.0) -> MemoryConn:
        async with asyncio.timeout(timeout):
            while len(self.conns) < n:
                self._connected.clear()
                await self._connected.wait()
        return self.conns[n - 1]
