"""The operator's replay for clients that cannot ask (docs/protocol.md, "Replay for the
official SDKs"), with bare protocol clients that behave as the official SDKs do: a token
identity that drops and subscribes again gets what it missed as plain ``message`` frames.
These tests start one node of their own whatever ``ROOMWIRE_TEST_CLUSTER`` says: they look
at its in-memory ledger (across nodes: tests/cluster/test_cluster_replay.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from srvkit import Conn, conn

from conftest import RunningServer, start_node
from roomwire.server.config import ServerConfig
from waiting import wait_for as _bounded

HISTORY = [{"channels": "small/**", "size": 5, "ttl": 60},
           {"channels": "chat/**", "size": 200, "ttl": 60},
           {"channels": "plain/**", "size": 200, "ttl": 60}]
REPLAY = [{"channels": "small/**", "window": 30}, {"channels": "chat/**", "window": 30}]
WINDOW = 30.0
META = {"name": "Pub"}


@pytest.fixture
async def rsrv(tmp_path: Path) -> AsyncIterator[RunningServer]:
    srv = await start_node(tmp_path, history=HISTORY, replay=REPLAY)
    try:
        yield srv
    finally:
        await srv.stop()


async def wait_for(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    await _bounded(cond, timeout, what)


async def cut(srv: RunningServer, sub: str) -> None:
    """Drop every socket of ``sub`` server-side without a close handshake, and wait until
    the node has let go of them (publishes after that are the ones it missed)."""
    hub = srv.node.hub
    for link in hub.peer_links(srv.app_id, sub):
        link.drop()  # type: ignore[attr-defined]
    await wait_for(lambda: not hub.peer_links(srv.app_id, sub), f"{sub} detached")


async def texts(c: Conn, n: int, timeout: float = 5.0) -> list[str]:
    """The next ``n`` frames as the raw text the server sent."""
    out = []
    for _ in range(n):
        out.append(await asyncio.wait_for(c.ws.recv(), timeout))
    return out


async def plain_subscribe(c: Conn, channel: str, **fields: object) -> None:
    """A subscribe as the official SDKs send it: ack, then the snapshot."""
    ack, snap = await c.subscribe(channel, **fields)
    assert set(ack) == {"type", "requestId"}, ack
    assert snap["type"] == "presence", snap


async def test_a_token_identity_that_comes_back_gets_the_50_it_missed_then_live_ones(
        rsrv: RunningServer) -> None:
    pub = await conn(rsrv.token_url("pub", peer_metadata=META))
    watcher = await conn(rsrv.key_url())  # stays connected: the frames live delivery sends
    await plain_subscribe(watcher, "chat/a")
    bob = await conn(rsrv.token_url("bob"))
    await plain_subscribe(bob, "chat/a")
    await watcher.drain(0.2)
    await pub.ok({"type": "publish", "channel": "chat/a", "data": "before"})
    assert (await bob.recv())["data"] == "before"
    await watcher.recv()
    await cut(rsrv, "bob")
    await watcher.drain(0.2)  # bob's left
    for n in range(50):
        await pub.ok({"type": "publish", "channel": "chat/a", "data": {"n": n}})
    live = await texts(watcher, 50)

    back = await conn(rsrv.token_url("bob"))
    await plain_subscribe(back, "chat/a")
    replayed = await texts(back, 50)
    # Byte for byte the frames a subscriber that never left got: no offset, no epoch.
    assert replayed == live
    assert '"offset"' not in replayed[0] and '"fromMetadata"' not in replayed[0]
    await pub.ok({"type": "publish", "channel": "chat/a", "data": "live"})
    assert (await back.recv())["data"] == "live"
    await back.expect_silence(0.3)
    assert rsrv.node.hub.replay is not None
    assert rsrv.node.hub.replay.outcomes["replayed"] == 1


async def test_replayed_frames_carry_sender_metadata_as_live_ones_do(
        rsrv: RunningServer) -> None:
    pub = await conn(rsrv.token_url("pub", peer_metadata=META))
    watcher = await conn(rsrv.key_url())
    await plain_subscribe(watcher, "chat/m", includeSenderMetadata=True)
    bob = await conn(rsrv.token_url("bob"))
    await plain_subscribe(bob, "chat/m", includeSenderMetadata=True)
    await cut(rsrv, "bob")
    await watcher.drain(0.2)
    for n in range(3):
        await pub.ok({"type": "publish", "channel": "chat/m", "data": n})
    live = await texts(watcher, 3)
    back = await conn(rsrv.token_url("bob"))
    await plain_subscribe(back, "chat/m", includeSenderMetadata=True)
    assert await texts(back, 3) == live
    assert '"fromMetadata":{"name":"Pub"}' in live[0]


async def test_the_replay_follows_the_ack_and_the_snapshot(rsrv: RunningServer) -> None:
    pub = await conn(rsrv.token_url("pub"))
    other = await conn(rsrv.token_url("olga"))
    await plain_subscribe(other, "chat/o")
    bob = await conn(rsrv.token_url("bob"))
    await plain_subscribe(bob, "chat/o")
    await cut(rsrv, "bob")
    await pub.ok({"type": "publish", "channel": "chat/o", "data": 1})
    back = await conn(rsrv.token_url("bob"))
    rid = back.rid()
    await back.send({"type": "subscribe", "channel": "chat/o", "requestId": rid})
    frames = [await back.recv() for _ in range(3)]
    assert [f["type"] for f in frames] == ["ack", "presence", "message"], frames
    assert frames[1]["joined"] == [{"peerId": "olga"}] and frames[2]["data"] == 1


async def test_directs_are_never_replayed(rsrv: RunningServer) -> None:
    pub = await conn(rsrv.token_url("pub"))
    bob = await conn(rsrv.token_url("bob"))
    await plain_subscribe(bob, "chat/d")
    await cut(rsrv, "bob")
    err = await pub.error({"type": "send", "to": "bob", "data": {"sdp": "stale"}})
    assert err["code"] == "peer_not_found", err
    await pub.ok({"type": "publish", "channel": "chat/d", "data": "broadcast"})
    back = await conn(rsrv.token_url("bob"))
    await plain_subscribe(back, "chat/d")
    assert await back.recv() == {"type": "message", "channel": "chat/d", "from": "pub",
                                 "data": "broadcast"}
    await back.expect_silence(0.3)


async def test_past_the_window_nothing_is_replayed(rsrv: RunningServer) -> None:
    hub = rsrv.node.hub
    real = hub.clock
    skew = 0.0
    hub.clock = lambda: real() + skew
    pub = await conn(rsrv.token_url("pub"))
    bob = await conn(rsrv.token_url("bob"))
    await plain_subscribe(bob, "chat/w")
    await cut(rsrv, "bob")
    await pub.ok({"type": "publish", "channel": "chat/w", "data": 1})
    skew = WINDOW + 1
    back = await conn(rsrv.token_url("bob"))
    await plain_subscribe(back, "chat/w")
    await back.expect_silence(0.3)
    assert hub.replay is not None and hub.replay.outcomes["expired"] == 1


async def test_a_gap_no_longer_in_history_replays_nothing_and_is_logged_and_counted(
        rsrv: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    pub = await conn(rsrv.token_url("pub"))
    bob = await conn(rsrv.token_url("bob"))
    await plain_subscribe(bob, "small/a")
    await cut(rsrv, "bob")
    for n in range(6):  # the ring keeps 5: the first missed one is gone
        await pub.ok({"type": "publish", "channel": "small/a", "data": n})
    back = await conn(rsrv.token_url("bob"))
    with caplog.at_level(logging.INFO, logger="roomwire.replay"):
        await plain_subscribe(back, "small/a")
    await pub.ok({"type": "publish", "channel": "small/a", "data": "live"})
    assert (await back.recv())["data"] == "live"  # nothing before the live one
    lines = [r.getMessage() for r in caplog.records if r.name == "roomwire.replay"]
    assert len(lines) == 1 and "gap_lost" in lines[0] and "6 messages" in lines[0], lines
    assert "bob" not in lines[0]
    base = rsrv.url.replace("ws://", "http://")
    async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as resp:
        text = await resp.text()
    assert 'roomwire_replays_total{outcome="gap_lost"} 1' in text, text
    assert 'roomwire_replays_total{outcome="replayed"} 0' in text


async def test_publishable_key_peers_and_uncovered_channels_get_nothing(
        rsrv: RunningServer) -> None:
    pub = await conn(rsrv.token_url("pub"))
    anon = await conn(rsrv.key_url())
    await plain_subscribe(anon, "chat/k")
    anon_id = anon.peer_id
    await anon.ws.close()
    await wait_for(lambda: not rsrv.node.hub.peer_links(rsrv.app_id, anon_id), "anon gone")
    bob = await conn(rsrv.token_url("bob"))
    await plain_subscribe(bob, "plain/x")  # history, but no replay rule
    await cut(rsrv, "bob")
    await pub.ok({"type": "publish", "channel": "chat/k", "data": 1})
    await pub.ok({"type": "publish", "channel": "plain/x", "data": 2})
    again = await conn(rsrv.key_url())  # a publishable key: a new peer id, nothing owed
    assert again.peer_id != anon_id
    await plain_subscribe(again, "chat/k")
    back = await conn(rsrv.token_url("bob"))
    await plain_subscribe(back, "plain/x")
    await again.expect_silence(0.3)
    await back.expect_silence(0.1)
    assert rsrv.node.hub.replay is not None
    assert len(rsrv.node.hub.replay.ledger) == 0
    # A pattern subscription (no history) leaves no mark either.
    pat = await conn(rsrv.token_url("pat"))
    ack = await pat.request({"type": "subscribe", "channel": "chat/*"})
    assert ack["type"] == "ack", ack
    await cut(rsrv, "pat")
    assert len(rsrv.node.hub.replay.ledger) == 0
    assert rsrv.node.hub.history is not None
    assert (rsrv.app_id, "chat/*") not in rsrv.node.hub.history.streams


async def test_a_repeated_subscribe_on_a_live_socket_replays_nothing(
        rsrv: RunningServer) -> None:
    """Only a socket that did not hold the channel is owed: a second tab of the sub that
    stayed keeps getting live messages and no copy of the replay."""
    pub = await conn(rsrv.token_url("pub"))
    tab1 = await conn(rsrv.token_url("bob"))
    tab2 = await conn(rsrv.token_url("bob"))
    await plain_subscribe(tab1, "chat/t")
    await plain_subscribe(tab2, "chat/t")
    # peer_links lists a peer's sockets in the order they attached: the first is tab1's.
    rsrv.node.hub.peer_links(rsrv.app_id, "bob")[0].drop()  # type: ignore[attr-defined]
    await wait_for(lambda: len(rsrv.node.hub.peer_links(rsrv.app_id, "bob")) == 1,
                   "the first tab detached")
    for n in range(3):
        await pub.ok({"type": "publish", "channel": "chat/t", "data": n})
    live = tab2
    assert await live.messages(3) == [0, 1, 2]
    await plain_subscribe(live, "chat/t")  # repeated subscribe: not fresh
    await live.expect_silence(0.3)
    back = await conn(rsrv.token_url("bob"))
    await plain_subscribe(back, "chat/t")
    assert await back.messages(3) == [0, 1, 2]
    await live.expect_silence(0.2)


async def test_two_dropped_connections_of_one_sub_each_get_everything(
        rsrv: RunningServer) -> None:
    """No message lost whichever comes back first: both get the replay from the earlier
    drop (the later one sees again what it saw between the two drops)."""
    pub = await conn(rsrv.token_url("pub"))
    tab1 = await conn(rsrv.token_url("bob"))
    await plain_subscribe(tab1, "chat/two")
    tab2 = await conn(rsrv.token_url("bob"))
    await plain_subscribe(tab2, "chat/two")
    hub = rsrv.node.hub
    hub.peer_links(rsrv.app_id, "bob")[0].drop()  # type: ignore[attr-defined]
    await wait_for(lambda: len(hub.peer_links(rsrv.app_id, "bob")) == 1, "one tab detached")
    await pub.ok({"type": "publish", "channel": "chat/two", "data": "a"})
    await cut(rsrv, "bob")
    await pub.ok({"type": "publish", "channel": "chat/two", "data": "b"})
    for _ in range(2):
        back = await conn(rsrv.token_url("bob"))
        await plain_subscribe(back, "chat/two")
        assert await back.messages(2) == ["a", "b"]
    third = await conn(rsrv.token_url("bob"))
    await plain_subscribe(third, "chat/two")
    await third.expect_silence(0.3)


def test_replay_without_history_on_its_channels_is_refused() -> None:
    with pytest.raises(ValueError, match="replay needs history on its channels"):
        ServerConfig(replay=[{"channels": "chat/**", "window": 30}]).validate()
    with pytest.raises(ValueError, match="replay rule 1: 'window'"):
        ServerConfig(history=HISTORY, replay=[{"channels": "chat/**", "window": 61}]).validate()
    ServerConfig(history=HISTORY, replay=REPLAY).validate()
