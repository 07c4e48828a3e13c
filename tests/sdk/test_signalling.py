"""SignallingClient against a real roomwire server over real sockets: connect, pub/sub,
presence, direct messages, server-side refusals."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import RunningServer, start_node
from roomwire.client import (
    ClientState,
    OversizedError,
    ServerRequestError,
    SignallingClient,
    SignallingConnectError,
)
from roomwire.server.auth import mint_token

from .conftest import Recorder

S = ClientState


def pk_client(server: RunningServer, clients: list[SignallingClient], **kw: Any
              ) -> SignallingClient:
    c = SignallingClient(url=server.url, api_key=server.pk, **kw)
    clients.append(c)
    return c


def token_client(server: RunningServer, clients: list[SignallingClient], sub: str, **kw: Any
                 ) -> SignallingClient:
    claims = kw.pop("claims", {})
    c = SignallingClient(url=server.url, token_provider=lambda: server.token(sub, **claims),
                         **kw)
    clients.append(c)
    return c


async def test_connect_with_a_publishable_key(server: RunningServer,
                                              clients: list[SignallingClient]) -> None:
    c = pk_client(server, clients)
    ev = await c.connect()
    assert c.state is S.CONNECTED and len(ev.peer_id) == 36
    assert ev.expires_at is None and ev.max_message_size == 65536 and not ev.is_reconnect
    assert abs(ev.server_time - time.time()) < 5


async def test_connect_with_a_token_provider(server: RunningServer,
                                             clients: list[SignallingClient]) -> None:
    calls = []

    async def provider() -> str:
        calls.append(1)
        return server.token("alice", ttl=600, metadata={"role": "agent"})

    c = SignallingClient(url=server.url, token_provider=provider)
    clients.append(c)
    ev = await c.connect()
    assert ev.peer_id == "alice" == c.peer_id and len(calls) == 1
    assert ev.expires_at is not None and ev.expires_at > time.time() + 500
    assert ev.metadata == {"role": "agent"}


async def test_pubsub_presence_and_direct(server: RunningServer,
                                          clients: list[SignallingClient]) -> None:
    alice = token_client(server, clients, "alice", claims={"peer_metadata": {"name": "A"}})
    bob = token_client(server, clients, "bob")
    ra, rb = Recorder(alice), Recorder(bob)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(alice.connect())
        tg.create_task(bob.connect())
    await alice.subscribe("room/1")
    snap = await ra.wait("presence")
    assert (snap.channel, snap.joined, snap.left) == ("room/1", (), ())
    await bob.subscribe("room/1", include_sender_metadata=True)
    snap_b = await rb.wait("presence")
    assert [(p.peer_id, p.metadata) for p in snap_b.joined] == [("alice", {"name": "A"})]
    joined = await ra.wait("presence", count=2)
    assert [p.peer_id for p in joined.joined] == ["bob"]

    await alice.publish("room/1", {"text": "hi", "n": [1, 2.5, None, True]})
    msg = await rb.wait("message")
    assert (msg.channel, msg.sender_peer_id, msg.data, msg.sender_metadata) == (
        "room/1", "alice", {"text": "hi", "n": [1, 2.5, None, True]}, {"name": "A"})
    await bob.publish("room/1", "no metadata asked")
    msg2 = await ra.wait("message")
    assert (msg2.data, msg2.sender_metadata) == ("no metadata asked", None)

    await bob.send("alice", "psst")
    direct = await ra.wait("direct")
    assert (direct.sender_peer_id, direct.data) == ("bob", "psst")

    await bob.unsubscribe("room/1")
    left = await ra.wait("presence", count=3)
    assert [p.peer_id for p in left.left] == ["bob"]
    assert bob.subscriptions == {} and alice.subscriptions == {"room/1": False}
    # No echo to the sender. A socket's frames arrive in the order the server wrote them, and
    # an echo would be written while its publish is handled: so before a direct sent later.
    await alice.send("bob", "mark")
    await bob.send("alice", "mark")
    await ra.wait("direct", lambda e: e.data == "mark")
    await rb.wait("direct", lambda e: e.data == "mark")
    assert ra.of("message") == [msg2] and rb.of("message") == [msg]


async def test_server_refusals_are_typed(server: RunningServer,
                                         clients: list[SignallingClient]) -> None:
    c = token_client(server, clients, "carol", claims={"channels": ["allowed/*"]})
    rec = Recorder(c)
    await c.connect()
    with pytest.raises(ServerRequestError) as e1:
        await c.send("nobody-here", 1)
    assert e1.value.code == "peer_not_found" and e1.value.request_id
    with pytest.raises(ServerRequestError) as e2:
        await c.subscribe("forbidden/x")
    assert e2.value.code == "channel_not_authorized"
    assert c.subscriptions == {}
    await c.subscribe("allowed/x")
    assert c.state is S.CONNECTED and rec.of("server-error") == []


async def test_oversize_is_refused_before_sending(tmp_path: Path,
                                                  clients: list[SignallingClient]) -> None:
    srv = await start_node(tmp_path, max_message_size=2048)
    try:
        c = pk_client(srv, clients)
        ev = await c.connect()
        assert ev.max_message_size == 2048
        with pytest.raises(OversizedError) as err:
            await c.publish("room", "x" * 3000)
        assert (err.value.size, err.value.cap) == (3002, 2048)
        await c.publish("room", "x" * 2046)  # exactly at the cap: accepted
        assert c.state is S.CONNECTED
    finally:
        for cl in clients:
            await cl.close()
        await srv.node.stop()


async def test_context_manager_and_event_stream(server: RunningServer) -> None:
    other = SignallingClient(url=server.url, api_key=server.pk)
    async with SignallingClient(url=server.url, api_key=server.pk) as c, other:
        assert c.state is S.CONNECTED
        async with c.events("message") as stream:
            await c.subscribe("room")
            for i in range(3):
                await other.publish("room", i)
            got = []
            async for ev in stream:
                got.append(ev.data)
                if len(got) == 3:
                    break
        assert got == [0, 1, 2]
    assert c.state is S.CLOSED and other.state is S.CLOSED


async def test_first_connect_with_a_bad_token_raises_4001(server: RunningServer) -> None:
    c = SignallingClient(url=server.url, token_provider=lambda: "not-a-jwt")
    with pytest.raises(SignallingConnectError) as err:
        await c.connect()
    assert err.value.close_code == 4001 and c.state is S.CLOSED


async def test_first_connect_with_an_expired_token_raises_4002(server: RunningServer) -> None:
    old, _ = mint_token(server.sk, "late", ttl=60, now=time.time() - 3600)
    c = SignallingClient(url=server.url, token_provider=lambda: old)
    with pytest.raises(SignallingConnectError) as err:
        await c.connect()
    assert err.value.close_code == 4002


async def test_refused_upgrade_gives_the_http_status(tmp_path: Path) -> None:
    srv = await start_node(tmp_path, connect_rate_limit=1)
    try:
        first = SignallingClient(url=srv.url, api_key=srv.pk)
        await first.connect()
        second = SignallingClient(url=srv.url, api_key=srv.pk)
        with pytest.raises(SignallingConnectError) as err:
            await second.connect()
        assert err.value.close_code == 429
        await first.close()
    finally:
        await srv.node.stop()


async def test_credentials_never_reach_the_logs(server: RunningServer,
                                                caplog: pytest.LogCaptureFixture) -> None:
    token = server.token("dave")
    with caplog.at_level(logging.DEBUG):
        c = SignallingClient(url=server.url, token_provider=lambda: token)
        await c.connect()
        await c.subscribe("room")
        await c.close()
        k = SignallingClient(url=server.url, api_key=server.pk)
        await k.connect()
        await k.close()
    assert "GET /v1?token=***" in caplog.text  # the websockets debug log, scrubbed
    assert token not in caplog.text and server.pk not in caplog.text
