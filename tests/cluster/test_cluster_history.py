"""History and recovery across nodes (docs/cluster.md, "History in Redis"): publisher and
subscriber on different nodes, the subscriber coming back to yet another node, publishes
racing the recovery from two nodes, history lost in Redis, and ``read_after``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from srvkit import Conn, conn, opt_in

from roomwire.protocol.history import Position
from roomwire.server.broker.routing import Keys, shard_of
from waiting import wait_equal

from .conftest import (
    FAST,
    REDIS_URL,
    Cluster,
    PrivateRedis,
    redis_client,
    running_cluster,
)

RULES = [{"channels": "small/**", "size": 5, "ttl": 60},
         {"channels": "chat/**", "size": 500, "ttl": 60}]


@pytest.fixture
async def hcluster(empty_cluster: Cluster) -> AsyncIterator[Cluster]:
    for _ in range(3):
        await empty_cluster.add(history=RULES)
    yield empty_cluster


async def publisher(url: str, channel: str) -> Conn:
    """A publisher that opted in on ``channel``: its acks come once Redis recorded the
    message (one that did not opt in is acked at once, as on any channel)."""
    c = await conn(url)
    await opt_in(c, channel, history=True)
    return c


async def publish_many(c: Conn, channel: str, values: Any) -> None:
    for v in values:
        await c.ok({"type": "publish", "channel": channel, "data": v})


async def test_50_missed_come_back_in_order_on_another_node_then_live_ones(
        hcluster: Cluster) -> None:
    """Publisher on node 0, subscriber on node 1; it drops, 50 are published, it comes back
    to node 2: the 50 in order, then live ones, none twice."""
    pub = await publisher(hcluster[0].key_url(), "chat/a")
    sub = await conn(hcluster[1].token_url("bob"))
    ack, _ = await opt_in(sub, "chat/a", history=True)
    epoch = ack["history"]["epoch"]
    assert ack["history"] == {"epoch": epoch, "offset": 0} and "recovered" not in ack
    await publish_many(pub, "chat/a", range(3))
    seen = await sub.frames_until(lambda fs: len(fs) >= 3, what="the first 3 messages")
    assert [(f["data"], f["offset"], f["epoch"]) for f in seen] == [
        (0, 1, epoch), (1, 2, epoch), (2, 3, epoch)]
    await sub.ws.close()

    await publish_many(pub, "chat/a", range(3, 53))
    back = await conn(hcluster[2].token_url("bob"))
    ack, _ = await opt_in(back, "chat/a", recover={"epoch": epoch, "offset": 3})
    assert ack["history"] == {"epoch": epoch, "offset": 53} and ack["recovered"] is True, ack
    await publish_many(pub, "chat/a", range(53, 56))
    got = await back.frames_until(lambda fs: len(fs) >= 53, what="50 replayed and 3 live")
    assert all(f["type"] == "message" for f in got), got
    assert [f["data"] for f in got] == list(range(3, 56))
    assert [f["offset"] for f in got] == list(range(4, 57))
    assert await back.drain(0.3) == []


@pytest.mark.parametrize("back_on", [2, 0], ids=["third-node", "a-publishers-node"])
async def test_publishes_from_two_nodes_racing_the_recovery_leave_no_gap_and_no_duplicate(
        hcluster: Cluster, back_on: int) -> None:
    """Two publishers (nodes 0 and 1) keep going while the subscriber recovers (on node 2,
    or on node 0, where its own node's publishes come back from Redis too): every offset
    exactly once, in order, and each publisher's messages in its order."""
    pubs = [await publisher(hcluster[i].key_url(), "chat/race") for i in (0, 1)]
    sub = await conn(hcluster[2].key_url())
    ack, _ = await opt_in(sub, "chat/race", history=True)
    epoch = ack["history"]["epoch"]
    await sub.ws.close()
    for n in range(10):
        await pubs[n % 2].ok({"type": "publish", "channel": "chat/race", "data": [n % 2, n]})
    stop = asyncio.Event()
    sent = [0, 0]

    async def keep_publishing(i: int) -> None:
        while not stop.is_set():
            await pubs[i].ok({"type": "publish", "channel": "chat/race",
                              "data": [i, 1000 + sent[i]]})
            sent[i] += 1

    tasks = [asyncio.create_task(keep_publishing(i)) for i in (0, 1)]
    try:
        # Both are publishing when the subscriber comes back.
        await wait_equal(lambda: min(sent) > 0, True, 5, "both publishers under way")
        back = await conn(hcluster[back_on].key_url())
        ack, _ = await opt_in(back, "chat/race", recover={"epoch": epoch, "offset": 0})
        assert ack["recovered"] is True, ack
        top = ack["history"]["offset"]
        got = await back.frames_until(lambda fs: len(fs) >= top + 30,
                                      what="the replay and 30 live messages")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    total = 10 + sum(sent)
    got += await back.frames_until(lambda fs: len(got) + len(fs) >= total,
                                   what="every message published")
    assert await back.drain(0.3) == []
    assert all(f["type"] == "message" and f["epoch"] == epoch for f in got), got
    assert [f["offset"] for f in got] == list(range(1, total + 1))
    for i in (0, 1):
        mine = [f["data"][1] for f in got if f["data"][0] == i]
        assert mine == [n for n in range(10) if n % 2 == i] + [1000 + k for k in range(sent[i])]


async def test_overflow_across_nodes_gives_recovered_false(hcluster: Cluster) -> None:
    pub = await publisher(hcluster[0].key_url(), "small/a")
    sub = await conn(hcluster[1].key_url())
    epoch = (await opt_in(sub, "small/a", history=True))[0]["history"]["epoch"]
    await sub.ws.close()
    await publish_many(pub, "small/a", range(6))  # 5 kept: offset 1 is gone
    back = await conn(hcluster[2].key_url())
    ack, _ = await opt_in(back, "small/a", recover={"epoch": epoch, "offset": 0})
    assert ack["recovered"] is False and ack["history"] == {"epoch": epoch, "offset": 6}, ack
    again = await conn(hcluster[1].key_url())
    ack, _ = await opt_in(again, "small/a", recover={"epoch": epoch, "offset": 1})
    assert ack["recovered"] is True, ack
    assert await again.messages(5) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("lost", ["hm", "hs"], ids=["meta-deleted", "stream-deleted"])
async def test_history_lost_in_redis_starts_a_new_epoch(hcluster: Cluster, lost: str) -> None:
    pub = await publisher(hcluster[0].key_url(), "chat/lost")
    sub = await conn(hcluster[1].key_url())
    epoch = (await opt_in(sub, "chat/lost", history=True))[0]["history"]["epoch"]
    await publish_many(pub, "chat/lost", range(3))
    assert len(await sub.messages(3)) == 3
    await sub.ws.close()
    stream, meta = Keys(hcluster.prefix).history(hcluster[0].app_id, "chat/lost")
    r = await redis_client()
    try:
        assert await r.delete(meta if lost == "hm" else stream) == 1
    finally:
        await r.aclose()
    await pub.ok({"type": "publish", "channel": "chat/lost", "data": "after"})
    back = await conn(hcluster[2].key_url())
    ack, _ = await opt_in(back, "chat/lost", recover={"epoch": epoch, "offset": 3})
    assert ack["recovered"] is False, ack
    assert ack["history"]["epoch"] != epoch and ack["history"]["offset"] == 1, ack
    assert await back.drain(0.3) == []


async def test_read_after_is_what_a_recovering_subscriber_would_get(hcluster: Cluster) -> None:
    """The API the replay of missed broadcasts builds on."""
    pub = await publisher(hcluster[0].key_url(), "chat/api")
    await publish_many(pub, "chat/api", range(10))
    node = hcluster[1].node
    ch = node.hub.cluster_history
    assert ch is not None
    app = hcluster[0].app_id
    top = await ch.read(app, "chat/api", ch.rule(app, "chat/api"), 0, start=False, count=0)
    assert top.top == 10 and top.epoch is not None
    now = node.hub.clock()
    ok, entries = await ch.read_after(app, "chat/api", Position(top.epoch, 4), None, now)
    assert ok is True
    assert [(e.offset, e.data) for e in entries] == [(o, str(o - 1).encode())
                                                     for o in range(5, 11)]
    assert await ch.read_after(app, "chat/api", Position(top.epoch, 10), None, now) == (True,
                                                                                        [])
    # Over the byte bound, another epoch, a channel without history: not recoverable.
    assert await ch.read_after(app, "chat/api", Position(top.epoch, 0), 300, now) == (False,
                                                                                      [])
    assert await ch.read_after(app, "chat/api", Position("other", 4), None, now) == (False,
                                                                                     [])
    assert await ch.read_after(app, "lobby", Position(top.epoch, 0), None, now) == (False, [])
    # Entries older than the rule's ttl count as gone.
    assert await ch.read_after(app, "chat/api", Position(top.epoch, 4), None,
                               now + 61) == (False, [])


async def test_reads_longer_than_a_chunk_come_whole_and_in_order(
        empty_cluster: Cluster) -> None:
    """The read script pages through the stream 100 entries at a time."""
    hcluster = empty_cluster
    for _ in range(2):
        await hcluster.add(history=RULES, rate_limit=0)  # 250 publishes at once
    pub = await publisher(hcluster[0].key_url(), "chat/many")
    for n in range(250):
        await pub.send({"type": "publish", "channel": "chat/many", "data": n,
                        "requestId": f"p{n}"})
    frames = await pub.frames_until(lambda fs: sum(f.get("requestId") == "p249" for f in fs),
                                    what="the 250 publish acks")
    assert [f["offset"] for f in frames if f["type"] == "ack"] == list(range(1, 251))
    epoch = frames[-1]["epoch"]
    ch = hcluster[1].node.hub.cluster_history
    assert ch is not None
    app = hcluster[0].app_id
    ok, entries = await ch.read_after(app, "chat/many", Position(epoch, 0), None,
                                      hcluster[1].node.hub.clock())
    assert ok is True and [e.offset for e in entries] == list(range(1, 251))
    newest = await ch.read(app, "chat/many", ch.rule(app, "chat/many"), 0, start=False,
                           count=150, newest_first=True)
    assert [e.offset for e in newest.entries] == list(range(250, 100, -1))


async def test_reads_serve_exactly_the_size_newest_of_an_approximately_trimmed_stream(
        empty_cluster: Cluster) -> None:
    """The append trims by whole stream nodes (MAXLEN ~): Redis keeps more than the rule's
    size, yet a recovery, a page and a byte bound see exactly the 5 newest."""
    hcluster = empty_cluster
    await hcluster.add(history=RULES, rate_limit=0)
    pub = await publisher(hcluster[0].key_url(), "small/trim")
    await publish_many(pub, "small/trim", range(40))
    stream, _ = Keys(hcluster.prefix).history(hcluster[0].app_id, "small/trim")
    r = await redis_client()
    try:
        assert await r.xlen(stream) > 5
    finally:
        await r.aclose()
    ch = hcluster[0].node.hub.cluster_history
    assert ch is not None
    app, now = hcluster[0].app_id, hcluster[0].node.hub.clock()
    rule = ch.rule(app, "small/trim")
    assert rule is not None
    oldest = await ch.read(app, "small/trim", rule, 0, start=False, count=50)
    assert oldest.top == 40 and [e.offset for e in oldest.entries] == [36, 37, 38, 39, 40]
    assert oldest.epoch is not None and oldest.anchor_time is None  # offset 1: trimmed
    newest = await ch.read(app, "small/trim", rule, 0, start=False, count=50,
                           newest_first=True)
    assert [e.offset for e in newest.entries] == [40, 39, 38, 37, 36]
    epoch = oldest.epoch
    assert await ch.read_after(app, "small/trim", Position(epoch, 34), None, now) == (False,
                                                                                      [])
    ok, entries = await ch.read_after(app, "small/trim", Position(epoch, 35), None, now)
    assert ok is True and [e.data for e in entries] == [b"35", b"36", b"37", b"38", b"39"]
    # The script counts an entry's bytes as the node does (Entry.size).
    weight = sum(e.size for e in entries)
    assert (await ch.read_after(app, "small/trim", Position(epoch, 35), weight, now))[0] is True
    assert await ch.read_after(app, "small/trim", Position(epoch, 35), weight - 1,
                               now) == (False, [])


async def test_keys_expire_a_ttl_after_the_last_publication_renewed_or_not(
        hcluster: Cluster) -> None:
    """A node renews a channel's expiry once a second (to ttl + 1 s); the appends between
    leave it, except one that had to create the stream again."""
    pub = await publisher(hcluster[0].key_url(), "chat/ttl")
    stream, meta = Keys(hcluster.prefix).history(hcluster[0].app_id, "chat/ttl")
    r = await redis_client()
    try:
        await publish_many(pub, "chat/ttl", range(3))
        ttls = [await r.pttl(stream), await r.pttl(meta)]
        assert all(60_000 - 2_000 < t <= 61_000 for t in ttls), ttls
        assert await r.delete(stream) == 1
        await publish_many(pub, "chat/ttl", range(3, 5))
        assert 60_000 - 2_000 < await r.pttl(stream) <= 61_000
    finally:
        await r.aclose()


async def test_channels_without_a_rule_keep_nothing_in_redis(hcluster: Cluster) -> None:
    pub = await conn(hcluster[0].key_url())
    sub = await conn(hcluster[1].key_url())
    await sub.subscribe("lobby")
    await pub.ok({"type": "publish", "channel": "lobby", "data": 1})
    assert await sub.recv() == {"type": "message", "channel": "lobby", "from": pub.peer_id,
                                "data": 1}
    r = await redis_client()
    try:
        kept = [k async for k in r.scan_iter(match=hcluster.prefix + "h[sm]:*", count=500)]
    finally:
        await r.aclose()
    assert kept == []


# -- Redis restarted without persistence; two Redis servers -----------------------------------


async def test_a_redis_restart_without_persistence_gives_a_new_epoch(
        tmp_path: Path, private_redis: PrivateRedis) -> None:
    own_redis = private_redis
    c = Cluster(tmp_path, "rw:", **FAST)
    c.settings["redis_url"] = own_redis.url
    try:
        for _ in range(2):
            await c.add(history=RULES)
        pub = await conn(c[0].key_url())
        sub = await conn(c[1].key_url())
        epoch = (await opt_in(sub, "chat/r", history=True))[0]["history"]["epoch"]
        await publish_many(pub, "chat/r", range(3))
        assert len(await sub.messages(3)) == 3
        own_redis.kill()
        await wait_equal(lambda: [n.node.accepting for n in c.nodes], [False, False], 5,
                         "both nodes stop accepting without Redis (accepting per node)")
        own_redis.start()
        await wait_equal(lambda: [n.node.accepting for n in c.nodes], [True, True], 10,
                         "both nodes accept again once Redis is back (accepting per node)")
        back = await conn(c[0].key_url())
        ack, _ = await opt_in(back, "chat/r", recover={"epoch": epoch, "offset": 3})
        assert ack["recovered"] is False, ack
        assert ack["history"]["epoch"] != epoch and ack["history"]["offset"] == 0, ack
    finally:
        await c.stop()


async def test_histories_live_on_their_channels_shard(tmp_path: Path,
                                                     private_redis: PrivateRedis) -> None:
    """Two Redis servers: each channel's history is on the shard of its channel, and a
    subscriber recovers on another node whichever shard that is."""
    async with running_cluster(tmp_path, redis_url=f"{REDIS_URL},{private_redis.url}",
                               history=RULES) as c:
        app = c[0].app_id
        channels = [f"chat/s{i}" for i in range(6)]
        assert {shard_of(app, ch, 2) for ch in channels} == {0, 1}, "both shards in use"
        for n, ch in enumerate(channels):
            pub = await publisher(c[n % 3].key_url(), ch)
            sub = await conn(c[(n + 1) % 3].key_url())
            epoch = (await opt_in(sub, ch, history=True))[0]["history"]["epoch"]
            await sub.ws.close()
            await publish_many(pub, ch, range(4))
            back = await conn(c[(n + 2) % 3].key_url())
            ack, _ = await opt_in(back, ch, recover={"epoch": epoch, "offset": 1})
            assert ack["recovered"] is True, (ch, ack)
            assert await back.messages(3) == [1, 2, 3], ch
            stream, _ = Keys(c.prefix).history(app, ch)
            urls = [REDIS_URL, private_redis.url]
            r = aioredis.Redis.from_url(urls[shard_of(app, ch, 2)])
            other = aioredis.Redis.from_url(urls[1 - shard_of(app, ch, 2)])
            try:
                assert (await r.exists(stream), await other.exists(stream)) == (1, 0), ch
            finally:
                await r.aclose()
                await other.aclose()
