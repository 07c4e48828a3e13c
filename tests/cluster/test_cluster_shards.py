"""Two Redis servers: channels and peers spread over them by hash (docs/cluster.md)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from srvkit import conn

from roomwire.server.broker.routing import shard_of
from roomwire.server.broker.wire import Message, encode

from .conftest import REDIS_URL, Cluster, PrivateRedis, delete_prefix, running_cluster
from .test_cluster_failures import broker


@pytest.fixture
async def sharded(tmp_path: Path) -> AsyncIterator[tuple[Cluster, PrivateRedis]]:
    second = PrivateRedis(tmp_path)
    second.start()
    try:
        async with running_cluster(tmp_path, redis_url=f"{REDIS_URL},{second.url}") as c:
            yield c, second
    finally:
        second.kill()


async def _keys(url: str, prefix: str) -> list[bytes]:
    import redis.asyncio as aioredis

    r: Any = aioredis.Redis.from_url(url)
    try:
        return [k async for k in r.scan_iter(match=prefix + "*", count=500)]
    finally:
        await r.aclose()


async def test_channels_and_peers_over_two_redis(
        sharded: tuple[Cluster, PrivateRedis]) -> None:
    cluster, second = sharded
    app = cluster[0].app_id
    channels = [f"room/{i}" for i in range(8)]
    assert {shard_of(app, ch, 2) for ch in channels} == {0, 1}, "both shards in use"
    subs = [await conn(cluster[i % 3].key_url()) for i in range(3)]
    pub = await conn(cluster[1].token_url("pub"))
    for n, ch in enumerate(channels):
        sub = subs[n % 3]
        _, snap = await sub.subscribe(ch)
        assert snap["joined"] == [], snap
        await pub.send({"type": "publish", "channel": ch, "data": n})
        assert await sub.recv() == {"type": "message", "channel": ch, "from": "pub",
                                    "data": n}
        # Presence crosses nodes on either shard.
        _, snap = await pub.subscribe(ch)
        assert snap["joined"] == [{"peerId": sub.peer_id}], snap
        assert (await sub.recv())["joined"] == [{"peerId": "pub"}]
    # Directs to peers that hash to either Redis.
    targets = [await conn(cluster[(i + 2) % 3].token_url(f"t{i}")) for i in range(6)]
    assert {shard_of(app, f"t{i}", 2) for i in range(6)} == {0, 1}
    for i, t in enumerate(targets):
        await pub.ok({"type": "send", "to": f"t{i}", "data": i})
        assert await t.recv() == {"type": "direct", "from": "pub", "data": i}
    err = await pub.error({"type": "send", "to": "nobody", "data": 0})
    assert err["code"] == "peer_not_found"
    # Presence state lives where the hash says.
    first, other = await _keys(REDIS_URL, cluster.prefix), await _keys(second.url,
                                                                       cluster.prefix)
    for ch in channels:
        members = f"{cluster.prefix}pm:{app}\x00{ch}".encode()
        assert (members in first, members in other) == (
            (True, False) if shard_of(app, ch, 2) == 0 else (False, True)), ch
    assert f"{cluster.prefix}nodes".encode() in first
    assert f"{cluster.prefix}nodes".encode() not in other
    assert all(broker(srv).healthy for srv in cluster.nodes)


async def test_patterns_over_two_redis_and_a_prefix_with_glob_characters(
        tmp_path: Path) -> None:
    """A pattern subscriber gets the publishes of channels on either shard (its node follows
    the app on every Redis), and a key prefix full of Redis glob characters still matches
    exactly this cluster's channels."""
    second = PrivateRedis(tmp_path)
    second.start()
    token = secrets.token_hex(2)
    prefix = f"rw*t?[{token}]\\:"
    c = Cluster(tmp_path, prefix, redis_url=f"{REDIS_URL},{second.url}")
    try:
        for _ in range(2):
            await c.add()
        app = c[0].app_id
        channels = [f"devices/d{i}/events" for i in range(8)]
        assert {shard_of(app, ch, 2) for ch in channels} == {0, 1}, "both shards in use"
        watcher = await conn(c[0].key_url())
        rid = "w"
        await watcher.send({"type": "subscribe", "channel": "devices/*/events",
                            "requestId": rid})
        assert await watcher.recv() == {"type": "ack", "requestId": rid}
        pub = await conn(c[1].token_url("pub"))
        for n, ch in enumerate(channels):
            await pub.ok({"type": "publish", "channel": ch, "data": n})
        got = [await watcher.recv() for _ in range(len(channels))]
        # Channels on different Redis arrive in either order (as for channel
        # subscriptions: each Redis keeps the order of its own channels).
        assert sorted((f["channel"], f["data"]) for f in got) == sorted(
            (ch, n) for n, ch in enumerate(channels)), got
        # A channel of another prefix that the glob would match if the prefix's glob
        # characters were not escaped (rw*t?[hex]\: read as a glob): never delivered here.
        import redis.asyncio as aioredis

        # On the Redis of the marker's channel below, so it would arrive before the marker.
        r: Any = aioredis.Redis.from_url(
            REDIS_URL if shard_of(app, channels[0], 2) == 0 else second.url)
        try:
            junk = encode(Message("elsewhere", b'"junk"', b'"intruder"', None))
            await r.publish(f"rwZZtQ{token[0]}:c:{app}\x00devices/zz/events", junk)
        finally:
            await r.aclose()
        # Nothing else arrives: the next frame is a marker sent after the junk.
        await pub.ok({"type": "publish", "channel": channels[0], "data": "last"})
        assert (await watcher.recv())["data"] == "last"
    finally:
        await c.stop()
        await delete_prefix(prefix)
        second.kill()
