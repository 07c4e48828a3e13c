"""Shared fixtures: an in-process roomwire node and a raw WebSocket client."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets

sys.path.insert(0, str(Path(__file__).parent))

from roomwire.server.auth import mint_token
from roomwire.server.config import ServerConfig
from roomwire.server.node import Node
from roomwire.server.store import Key


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    """Run the tests on uvloop, the loop `roomwire serve` uses in production."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


@dataclass
class RunningServer:
    node: Node
    url: str
    app_id: str
    pk: str
    sk: Key
    data_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return f"{self.url}/v1"

    def token(self, sub: str, *, key: Key | None = None, ttl: int | None = 600,
              **claims: Any) -> str:
        token, _ = mint_token(key or self.sk, sub, ttl=ttl, **claims)
        return token

    def key_url(self, key: str | None = None) -> str:
        return f"{self.ws_url}?key={key or self.pk}"

    def token_url(self, sub: str, **kw: Any) -> str:
        return f"{self.ws_url}?token={self.token(sub, **kw)}"

    @property
    def store(self) -> Any:
        return self.node.store

    def reload(self) -> None:
        """Apply store changes now rather than waiting for the poll."""
        self.node.reload_keyring()


async def start_node(tmp_path: Path, **overrides: Any) -> RunningServer:
    settings: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "data_dir": tmp_path / "data",
        "connect_rate_limit": 0, "store_poll_interval": 0.2,
    }
    settings.update(overrides)
    node = Node(ServerConfig(**settings))
    await node.start()
    pk = next(k for k in node.default_keys if k.kind == "publishable")
    sk = next(k for k in node.default_keys if k.kind == "secret")
    return RunningServer(node, f"ws://127.0.0.1:{node.port}", node.default_app.id, pk.id, sk,
                         tmp_path / "data")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    srv = await start_node(tmp_path)
    try:
        yield srv
    finally:
        await srv.node.stop()


class RawClient:
    """A bare protocol client: JSON frames over a websockets connection."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}
        self._n = 0

    @classmethod
    async def connect(cls, url: str, *, welcome: bool = True, **kw: Any) -> RawClient:
        ws = await websockets.connect(url, max_size=2**20, ping_interval=None, **kw)
        c = cls(ws)
        if welcome:
            c.welcome = await c.recv(timeout=5)
            assert c.welcome["type"] == "welcome", c.welcome
        return c

    @property
    def peer_id(self) -> str:
        return str(self.welcome["peerId"])

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def recv(self, timeout: float = 3.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        out: dict[str, Any] = json.loads(raw)
        return out

    async def recv_type(self, kind: str, timeout: float = 3.0) -> dict[str, Any]:
        """The next frame of ``kind``, skipping others."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if frame.get("type") == kind:
                return frame

    async def expect_silence(self, timeout: float = 0.3) -> None:
        try:
            frame = await self.recv(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"expected no frame, got {frame}")

    def rid(self) -> str:
        self._n += 1
        return f"r{self._n}"

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send with a fresh requestId and return the correlated ack or error."""
        rid = self.rid()
        await self.send({**frame, "requestId": rid})
        while True:
            reply = await self.recv()
            if reply.get("requestId") == rid and reply["type"] in ("ack", "error"):
                return reply

    async def subscribe(self, channel: str, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Subscribe; returns (ack, snapshot) and asserts the ack comes first."""
        rid = self.rid()
        await self.send({"type": "subscribe", "channel": channel, "requestId": rid, **kw})
        ack = await self.recv()
        assert ack == {"type": "ack", "requestId": rid}, ack
        snap = await self.recv()
        assert snap["type"] == "presence" and snap["channel"] == channel, snap
        return ack, snap

    async def closed(self, timeout: float = 3.0) -> tuple[int | None, str]:
        """Wait for the server to close; returns (code, reason)."""
        try:
            async with asyncio.timeout(timeout):
                async for _ in self.ws:
                    pass
        except websockets.ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code if rcvd else None, rcvd.reason if rcvd else "")

    async def close(self) -> None:
        await self.ws.close()


@pytest.fixture
def connect(server: RunningServer) -> Any:
    clients: list[RawClient] = []

    async def _connect(url: str | None = None, **kw: Any) -> RawClient:
        c = await RawClient.connect(url or server.key_url(), **kw)
        clients.append(c)
        return c

    yield _connect
    # Sockets are closed by the server fixture's stop.
