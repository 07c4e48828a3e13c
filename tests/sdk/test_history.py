"""SignallingClient and roomwire's history extension: it resumes from the last position it saw
after any reconnect, reports ``recovered``, and can be told not to."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from conftest import RunningServer, start_node
from roomwire.client import SignallingClient
from roomwire.client.signalling.transport import WebSocketConnection, websockets_factory
from roomwire.protocol import CloseCode
from roomwire.protocol.history import Position

from .conftest import FAST, Recorder, welcome

RULES = [{"channels": "small/**", "size": 5, "ttl": 60},
         {"channels": "chat/**", "size": 200, "ttl": 60}]


@pytest.fixture
async def hsrv(tmp_path: Path) -> AsyncIterator[RunningServer]:
    srv = await start_node(tmp_path, history=RULES)
    try:
        yield srv
    finally:
        await srv.stop()


class Gate:
    """A connect factory whose reconnects wait until ``open()``: the test decides what
    happens while the client is away."""

    def __init__(self) -> None:
        self.inner = websockets_factory()
        self.attempts = 0
        self.allowed = asyncio.Event()
        self.allowed.set()

    def close(self) -> None:
        self.allowed.clear()

    def open(self) -> None:
        self.allowed.set()

    async def __call__(self, url: str) -> WebSocketConnection:
        self.attempts += 1
        await self.allowed.wait()
        return await self.inner(url)


def drop(srv: RunningServer, peer_id: str) -> None:
    """Close the peer's sockets from the server with 1011 (the client reconnects)."""
    for link in srv.node.hub.peer_links(srv.app_id, peer_id):
        link.close(CloseCode.INTERNAL_ERROR, "test drops the connection")


def client(srv: RunningServer, gate: Gate, sub: str = "bob", **kw: Any) -> SignallingClient:
    return SignallingClient(url=srv.url, token_provider=lambda: srv.token(sub),
                            reconnect=FAST, web_socket_factory=gate, **kw)


async def publish(srv: RunningServer, channel: str, values: range) -> None:
    pub = SignallingClient(url=srv.url, api_key=srv.pk)
    async with pub:
        for v in values:
            await pub.publish(channel, v)


def datas(rec: Recorder, channel: str) -> list[Any]:
    return [e.data for e in rec.of("message") if e.channel == channel]


async def away_then_back(srv: RunningServer, c: SignallingClient, rec: Recorder, gate: Gate,
                         during: Callable[[], Any]) -> Any:
    """Drop the client, run ``during`` while it cannot reconnect, let it back in; returns the
    resubscribed event."""
    drops = len(rec.of("disconnected")) + 1
    resubscribes = len(rec.of("resubscribed")) + 1
    gate.close()
    assert c.peer_id is not None
    drop(srv, c.peer_id)
    await rec.wait("disconnected", lambda e: e.will_reconnect, count=drops)
    await during()
    gate.open()
    return await rec.wait("resubscribed", count=resubscribes)


async def test_the_client_recovers_the_50_it_missed_then_live_ones(hsrv: RunningServer) -> None:
    gate = Gate()
    c = client(hsrv, gate)
    rec = Recorder(c)
    async with c:
        await c.subscribe("chat/a")
        await publish(hsrv, "chat/a", range(3))
        await rec.wait("message", lambda e: e.data == 2)
        await c.publish("chat/a", "own")  # never comes back; the ack moves the position on
        event = await away_then_back(hsrv, c, rec, gate,
                                     lambda: publish(hsrv, "chat/a", range(3, 53)))
        assert event.channel == "chat/a" and event.recovered is True, event
        assert event.position is not None and event.position.offset == 54
        await publish(hsrv, "chat/a", range(53, 56))
        await rec.wait("message", lambda e: e.data == 55)
        assert datas(rec, "chat/a") == list(range(56))
        offsets = [e.position.offset for e in rec.of("message")]
        assert offsets == [1, 2, 3, *range(5, 58)]
        # resubscribed comes before the replayed messages, so the app knows what they are.
        names = [(e.name, getattr(e, "data", None)) for e in rec.events
                 if e.name in ("resubscribed", "message")]
        assert names.index(("resubscribed", None)) == names.index(("message", 3)) - 1, names


async def test_overflow_reports_recovered_false_and_then_recovers_again(
        hsrv: RunningServer) -> None:
    gate = Gate()
    c = client(hsrv, gate)
    rec = Recorder(c)
    async with c:
        await c.subscribe("small/a")
        event = await away_then_back(hsrv, c, rec, gate,
                                     lambda: publish(hsrv, "small/a", range(6)))
        assert event.recovered is False, event
        assert datas(rec, "small/a") == []
        # The resume point is now the channel's position: the next outage recovers.
        event = await away_then_back(hsrv, c, rec, gate,
                                     lambda: publish(hsrv, "small/a", range(6, 8)))
        assert event.recovered is True, rec.of("resubscribed")
        await rec.wait("message", lambda e: e.data == 7)
        assert datas(rec, "small/a") == [6, 7]


async def test_ttl_expiry_reports_recovered_false(hsrv: RunningServer) -> None:
    hub = hsrv.node.hub
    real = hub.clock
    skew = [0.0]
    hub.clock = lambda: real() + skew[0]
    gate = Gate()
    c = client(hsrv, gate)
    rec = Recorder(c)

    async def publish_and_age() -> None:
        await publish(hsrv, "chat/t", range(2))
        skew[0] = 61.0

    async with c:
        await c.subscribe("chat/t")
        event = await away_then_back(hsrv, c, rec, gate, publish_and_age)
        assert event.recovered is False, event


async def test_recover_false_sends_the_frames_of_the_official_clients(
        hsrv: RunningServer) -> None:
    gate = Gate()
    c = client(hsrv, gate, recover=False)
    rec = Recorder(c)
    async with c:
        await c.subscribe("chat/off")
        event = await away_then_back(hsrv, c, rec, gate,
                                     lambda: publish(hsrv, "chat/off", range(3)))
        assert event.recovered is None and event.position is None, event
        await publish(hsrv, "chat/off", range(3, 4))
        await rec.wait("message", lambda e: e.data == 3)
        assert datas(rec, "chat/off") == [3]
        assert all(e.position is None for e in rec.of("message"))


async def test_a_channel_without_history_resubscribes_without_recovery(
        hsrv: RunningServer) -> None:
    gate = Gate()
    c = client(hsrv, gate)
    rec = Recorder(c)
    async with c:
        await c.subscribe("lobby")
        event = await away_then_back(hsrv, c, rec, gate, lambda: publish(hsrv, "lobby", range(2)))
        assert event.recovered is None and event.position is None, event


def test_recover_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="recover"):
        SignallingClient(url="ws://127.0.0.1:1", api_key="pk_x", recover="yes")  # type: ignore[arg-type]


def test_positions_bookkeeping() -> None:
    from roomwire.client.signalling.positions import Positions
    from roomwire.protocol.frames import Ack

    p = Positions()
    p.saw("c", Position("e", 3))
    p.saw("c", Position("e", 2))  # never backwards within an epoch
    assert p.get("c") == Position("e", 3)
    p.saw("c", Position("f", 1))  # a new epoch replaces the old one
    assert p.get("c") == Position("f", 1)
    assert p.subscribed("c", Ack("r", Position("f", 9), True, True), Position("f", 1)) is True
    assert p.get("c") == Position("f", 1)  # the replay moves it on
    assert p.subscribed("c", Ack("r", Position("g", 4), True, False), Position("f", 1)) is False
    assert p.get("c") == Position("g", 4)
    assert p.subscribed("c", Ack("r", None, True, False), Position("g", 4)) is False
    assert p.get("c") is None
    assert p.subscribed("c", Ack("r", Position("h", 0), True), None) is None
    assert p.get("c") == Position("h", 0)


async def test_a_server_restart_loses_history_and_says_so(tmp_path: Path) -> None:
    """History is kept in memory: after a restart the epoch is new, so the client gets
    recovered False (and from then on the new epoch's positions)."""
    srv = await start_node(tmp_path, history=RULES)
    port = srv.node.port
    c = SignallingClient(url=srv.url, token_provider=lambda: srv.token("bob"), reconnect=FAST)
    rec = Recorder(c)
    try:
        async with c:
            await c.subscribe("chat/r")
            await publish(srv, "chat/r", range(2))
            first = await rec.wait("message", lambda e: e.data == 1)
            await srv.stop()
            srv = await start_node(tmp_path, port=port, history=RULES)
            event = await rec.wait("resubscribed", timeout=10)
            assert event.recovered is False, event
            assert event.position is not None and event.position.epoch != first.position.epoch
            await publish(srv, "chat/r", range(2, 3))
            live = await rec.wait("message", lambda e: e.data == 2)
            assert live.position == Position(event.position.epoch, 1)
    finally:
        await srv.stop()


async def test_against_a_server_without_the_extension(fake_server: Any) -> None:
    """A server that acks plainly (Metered's, which ignores extra fields): the client asks
    with ``history: true``, never sends ``recover`` (it was given no position), and reports
    ``recovered=None``."""
    subscribes: list[dict[str, Any]] = []

    def behaviour(close_after_subscribe: bool) -> Any:
        async def run(ws: ServerConnection) -> None:
            await ws.send(welcome("bob"))
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") == "ping":
                    await ws.send('{"type":"pong"}')
                    continue
                await ws.send(json.dumps({"type": "ack", "requestId": frame["requestId"]}))
                if frame["type"] == "subscribe":
                    subscribes.append(frame)
                    await ws.send(json.dumps({"type": "presence", "channel": frame["channel"],
                                              "joined": [], "left": []}))
                    await ws.send(json.dumps({"type": "message", "channel": frame["channel"],
                                              "from": "x", "data": 1}))
                    if close_after_subscribe:
                        await ws.close(1011, "bye")
        return run

    srv = await fake_server(behaviour(True), behaviour(False))
    c = SignallingClient(url=srv.url, api_key="pk_test", reconnect=FAST)
    rec = Recorder(c)
    async with c:
        await c.subscribe("chat/a")
        event = await rec.wait("resubscribed")
        assert event.recovered is None and event.position is None, event
    assert [(f.get("history"), "recover" in f) for f in subscribes] == [(True, False)] * 2
    assert all(e.position is None for e in rec.of("message"))
