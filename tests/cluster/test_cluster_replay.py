"""The operator's replay across nodes (docs/protocol.md, "Replay for the official SDKs"):
the mark is in Redis, so a token identity that drops off one node and subscribes again on
another gets what it missed, with bare protocol clients that behave as the official SDKs do
(the official SDKs themselves: tests/interop/test_replay.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from srvkit import Conn, conn

from waiting import wait_for as _bounded

from .conftest import Cluster, running_cluster

HISTORY = [{"channels": "small/**", "size": 5, "ttl": 60},
           {"channels": "chat/**", "size": 1000, "ttl": 60}]
REPLAY = [{"channels": "small/**", "window": 30}, {"channels": "chat/**", "window": 30}]


@pytest.fixture
async def rcluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, history=HISTORY, replay=REPLAY, rate_limit=0) as c:
        yield c


async def wait_for(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    await _bounded(cond, timeout, what)


async def cut(c: Cluster, i: int, sub: str) -> None:
    hub = c[i].node.hub
    for link in hub.peer_links(c[i].app_id, sub):
        link.drop()  # type: ignore[attr-defined]
    await wait_for(lambda: not hub.peer_links(c[i].app_id, sub), f"{sub} detached")


async def plain_subscribe(c: Conn, channel: str) -> None:
    ack, snap = await c.subscribe(channel)
    assert set(ack) == {"type", "requestId"}, ack
    assert snap["type"] == "presence", snap


async def test_returning_to_another_node_while_publishes_go_on(rcluster: Cluster) -> None:
    """The publisher on node 2 keeps going while bob, cut from node 0, subscribes again on
    node 1: his new socket gets every message published since the cut exactly once, in
    order, the replayed ones then the live ones, whatever was in flight at the seam."""
    pub = await conn(rcluster[2].token_url("pub"))
    bob = await conn(rcluster[0].token_url("bob"))
    await plain_subscribe(bob, "chat/race")
    await pub.ok({"type": "publish", "channel": "chat/race", "data": -1})
    assert (await bob.recv())["data"] == -1
    await cut(rcluster, 0, "bob")
    total = 300
    published = 0

    async def publish() -> None:
        nonlocal published
        for n in range(total):
            await pub.ok({"type": "publish", "channel": "chat/race", "data": n})
            published += 1

    task = asyncio.create_task(publish())
    try:
        await wait_for(lambda: published >= 40, "40 published while bob is away")
        back = await conn(rcluster[1].token_url("bob"))
        await plain_subscribe(back, "chat/race")
        assert published < total, "the publisher finished before bob came back"
        got = await back.frames_until(lambda fs: len(fs) >= total, timeout=20,
                                      what="every message since the cut")
    finally:
        await task
    assert all(f["type"] == "message" and "offset" not in f for f in got), got[:3]
    assert [f["data"] for f in got] == list(range(total))
    await back.expect_silence(0.3)
    assert rcluster[1].node.hub.replay is not None
    assert rcluster[1].node.hub.replay.outcomes["replayed"] == 1


async def test_a_gap_no_longer_in_redis_replays_nothing_and_is_counted(
        rcluster: Cluster) -> None:
    pub = await conn(rcluster[2].token_url("pub"))
    bob = await conn(rcluster[0].token_url("bob"))
    await plain_subscribe(bob, "small/a")
    await cut(rcluster, 0, "bob")
    for n in range(6):  # the stream keeps 5: the first missed one is gone
        await pub.ok({"type": "publish", "channel": "small/a", "data": n})
    back = await conn(rcluster[1].token_url("bob"))
    await plain_subscribe(back, "small/a")
    await pub.ok({"type": "publish", "channel": "small/a", "data": "live"})
    assert (await back.recv())["data"] == "live"
    replay = rcluster[1].node.hub.replay
    assert replay is not None and replay.outcomes["gap_lost"] == 1


async def test_two_connections_of_one_sub_on_two_nodes_each_get_everything(
        rcluster: Cluster) -> None:
    pub = await conn(rcluster[2].token_url("pub"))
    tab1 = await conn(rcluster[0].token_url("bob"))
    tab2 = await conn(rcluster[1].token_url("bob"))
    await plain_subscribe(tab1, "chat/two")
    await plain_subscribe(tab2, "chat/two")
    await cut(rcluster, 0, "bob")
    await pub.ok({"type": "publish", "channel": "chat/two", "data": "a"})
    assert (await tab2.recv())["data"] == "a"
    await cut(rcluster, 1, "bob")
    await pub.ok({"type": "publish", "channel": "chat/two", "data": "b"})
    for node in (2, 0):
        back = await conn(rcluster[node].token_url("bob"))
        await plain_subscribe(back, "chat/two")
        assert await back.messages(2) == ["a", "b"]
    third = await conn(rcluster[1].token_url("bob"))
    await plain_subscribe(third, "chat/two")
    await third.expect_silence(0.3)


async def test_the_mark_expires_in_redis_after_the_window(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, nodes=2, history=HISTORY,
                               replay=[{"channels": "chat/**", "window": 1}]) as c:
        pub = await conn(c[1].token_url("pub"))
        bob = await conn(c[0].token_url("bob"))
        await plain_subscribe(bob, "chat/w")
        await cut(c, 0, "bob")
        await pub.ok({"type": "publish", "channel": "chat/w", "data": 1})
        r: Any = await _redis()
        try:
            key = f"{c.prefix}rp:{c[0].app_id}\0chat/w\0bob"
            ttl = await r.pttl(key)
            assert 0 < ttl <= 1000, ttl
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while await r.exists(key):
                assert loop.time() < deadline, "the mark outlived its window"
                await asyncio.sleep(0.05)
        finally:
            await r.aclose()
        back = await conn(c[1].token_url("bob"))
        await plain_subscribe(back, "chat/w")
        await back.expect_silence(0.3)


async def _redis() -> Any:
    from .conftest import redis_client

    return await redis_client()


async def test_a_rolling_restart_hands_the_mark_over_before_presence_lingers_out(
        rcluster: Cluster) -> None:
    """A graceful shutdown closes the sockets (1001) but keeps their peers in their channels
    for a moment, so a client back on another node never appears to leave: the mark is
    written at the close, not when the node lets go of the presence, so the client that is
    back first already finds it."""
    pub = await conn(rcluster[2].token_url("pub"))
    bob = await conn(rcluster[0].token_url("bob"))
    await plain_subscribe(bob, "chat/roll")
    stopping = asyncio.create_task(rcluster[0].node.shutdown())
    try:
        code, _ = await bob.closed(timeout=10)
        assert code == 1001, code
        for n in range(5):
            await pub.ok({"type": "publish", "channel": "chat/roll", "data": n})
        back = await conn(rcluster[1].token_url("bob"))
        await plain_subscribe(back, "chat/roll")
        assert not stopping.done(), "node 0 stopped before bob was back: no overlap tested"
        assert await back.messages(5) == [0, 1, 2, 3, 4]
    finally:
        await stopping
