"""MeteredPeer and roomwire's history extension: broadcasts sent while a peer was away are
delivered after its reconnect, and the ``recovery`` event says so."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import RunningServer, start_node
from roomwire.client.signalling.options import ReconnectOptions
from roomwire.client.signalling.transport import WebSocketConnection, websockets_factory
from roomwire.protocol import CloseCode

from .conftest import MakePeer
from .kit import wait_until

ROOM = "room/history"
QUICK = ReconnectOptions(initial_delay=0.05, max_delay=0.2, jitter=0.0, max_attempts=50)


@pytest.fixture
async def hsrv(tmp_path: Path) -> AsyncIterator[RunningServer]:
    srv = await start_node(tmp_path, history=[{"channels": "room/**", "size": 100, "ttl": 60}])
    try:
        yield srv
    finally:
        await srv.stop()


class Gate:
    """Reconnects wait until ``open()``."""

    def __init__(self) -> None:
        self.inner = websockets_factory()
        self.allowed = asyncio.Event()
        self.allowed.set()

    async def __call__(self, url: str) -> WebSocketConnection:
        await self.allowed.wait()
        return await self.inner(url)


@pytest.mark.parametrize("recover", [True, False])
async def test_broadcasts_missed_during_a_reconnect_arrive_after_it(
        hsrv: RunningServer, make_peer: MakePeer, recover: bool) -> None:
    gate = Gate()
    alice = make_peer("alice", srv=hsrv)
    bob = make_peer("bob", srv=hsrv, reconnect=QUICK, web_socket_factory=gate, recover=recover)
    await alice.join(ROOM)
    await bob.join(ROOM)
    tap: Any = bob.tap  # type: ignore[attr-defined]
    await wait_until(lambda: [p.id for p in bob.remote_peers] == ["alice"])
    await alice.send({"seq": 0})
    await tap.log.wait("data", count=1)
    gate.allowed.clear()
    for link in hsrv.node.hub.peer_links(hsrv.app_id, "bob"):
        link.close(CloseCode.INTERNAL_ERROR, "test drops the connection")
    await wait_until(lambda: bob.state == "reconnecting")
    for n in range(1, 6):
        await alice.send({"seq": n})
    gate.allowed.set()
    (event,) = await tap.log.wait("recovery", timeout=10)
    assert event.channel == ROOM and event.recovered is (True if recover else None), event
    await wait_until(lambda: bob.state == "joined", 10)
    await alice.send({"seq": 6})
    await tap.log.wait("data", lambda e: e.data == {"seq": 6})
    seqs = [e.data["seq"] for e in tap.log.of("data")]
    assert seqs == (list(range(7)) if recover else [0, 6]), seqs
