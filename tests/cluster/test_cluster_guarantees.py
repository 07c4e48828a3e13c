"""Single-node semantics across nodes (issue 13, point 5): what an ack or a welcome promises
holds whatever nodes the clients are on, every time, with no waiting in the test."""

from __future__ import annotations

import json

from srvkit import conn

from waiting import wait_equal

from .conftest import Cluster

TRIALS = 100
ROOM_CHURN = "churn/1"


async def test_publish_right_after_a_cross_node_ack_arrives(cluster: Cluster) -> None:
    """B subscribes on another node than the publisher; the moment B's ack is in, A
    publishes. Each trial uses a new channel, so B's node is a first holder every time (the
    path that has to subscribe the channel in Redis before acking)."""
    clients = [await conn(cluster[i].key_url()) for i in range(3)]
    misses: list[int] = []
    for n in range(TRIALS):
        pub, sub = clients[n % 3], clients[(n + 1) % 3]
        channel = f"trial/{n}"
        rid = f"s{n}"
        await sub.send({"type": "subscribe", "channel": channel, "requestId": rid})
        assert await sub.recv() == {"type": "ack", "requestId": rid}
        await pub.send({"type": "publish", "channel": channel, "data": n})
        snap = await sub.recv()
        assert snap["type"] == "presence" and snap["channel"] == channel, snap
        try:
            frame = await sub.recv(timeout=2)
        except TimeoutError:
            misses.append(n)
            continue
        assert frame == {"type": "message", "channel": channel, "from": pub.peer_id,
                         "data": n}, frame
    assert misses == [], f"{len(misses)} of {TRIALS} publishes after the ack were lost"


async def test_publish_right_after_a_cross_node_pattern_ack_arrives(cluster: Cluster) -> None:
    """The same for pattern subscriptions: each trial subscribes a new pattern and drops it
    after, so B's node starts following the app anew every time (the path that waits for
    Redis to confirm the PSUBSCRIBE on every shard before acking)."""
    clients = [await conn(cluster[i].key_url()) for i in range(3)]
    misses: list[int] = []
    for n in range(TRIALS):
        pub, sub = clients[n % 3], clients[(n + 1) % 3]
        pattern = f"ptrial/{n}/*"
        rid = f"p{n}"
        await sub.send({"type": "subscribe", "channel": pattern, "requestId": rid})
        assert await sub.recv() == {"type": "ack", "requestId": rid}
        await pub.send({"type": "publish", "channel": f"ptrial/{n}/x", "data": n})
        try:
            frame = await sub.recv(timeout=2)
        except TimeoutError:
            misses.append(n)
        else:
            assert frame == {"type": "message", "channel": f"ptrial/{n}/x",
                             "from": pub.peer_id, "data": n}, frame
        rid = f"u{n}"
        await sub.send({"type": "unsubscribe", "channel": pattern, "requestId": rid})
        while (await sub.recv()) != {"type": "ack", "requestId": rid}:
            pass
    assert misses == [], f"{len(misses)} of {TRIALS} publishes after a pattern ack were lost"


async def test_direct_right_after_a_cross_node_welcome(cluster: Cluster) -> None:
    """A peer connects to one node; the moment its welcome is in, a peer on another node
    sends to it: the send is acked (never peer_not_found) and the direct arrives."""
    senders = [await conn(cluster[i].key_url()) for i in range(3)]
    misses: list[tuple[int, object]] = []
    for n in range(TRIALS):
        sender = senders[n % 3]
        target = await conn(cluster[(n + 1) % 3].token_url(f"target-{n}"))
        rid = f"d{n}"
        await sender.send({"type": "send", "to": f"target-{n}", "data": n, "requestId": rid})
        reply = await sender.recv()
        if reply != {"type": "ack", "requestId": rid}:
            misses.append((n, reply))
        else:
            try:
                frame = await target.recv(timeout=2)
            except TimeoutError:
                misses.append((n, "no direct"))
            else:
                assert frame == {"type": "direct", "from": sender.peer_id, "data": n}, frame
        await target.close()
    assert misses == [], f"{len(misses)} of {TRIALS} directs after the welcome failed: {misses}"


async def test_joined_reaches_other_nodes_before_the_newcomers_messages(
        cluster: Cluster) -> None:
    """Presence ordering (PROTOCOL-FACTS section 8, rule 4) across nodes: a member on
    another node hears the newcomer's `joined` before what the newcomer publishes right
    after its ack, trial after trial."""
    member = await conn(cluster[0].key_url())
    for n in range(20):
        channel = f"order/{n}"
        await member.subscribe(channel)
        newcomer = await conn(cluster[1 + n % 2].key_url())
        await newcomer.subscribe(channel)
        await newcomer.send({"type": "publish", "channel": channel, "data": n})
        frames = await member.frames_until(lambda fs: len(fs) >= 2, 3, "joined then message")
        assert frames == [
            {"type": "presence", "channel": channel, "joined": [{"peerId": newcomer.peer_id}],
             "left": []},
            {"type": "message", "channel": channel, "from": newcomer.peer_id, "data": n},
        ], frames
        await newcomer.close()
        await member.recv_type("presence")
        await member.ok({"type": "unsubscribe", "channel": channel})


async def test_a_node_follows_only_the_channels_it_holds(cluster: Cluster) -> None:
    """Interest-based routing: a node with no member of a channel does no work for it."""
    from .test_cluster_failures import broker

    a = await conn(cluster[0].key_url())
    await a.subscribe("only/here")
    assert broker(cluster[0]).channels_held() == [(cluster[0].app_id, "only/here")]
    assert broker(cluster[1]).channels_held() == []
    assert broker(cluster[2]).channels_held() == []
    await a.ok({"type": "unsubscribe", "channel": "only/here"})
    assert broker(cluster[0]).channels_held() == []


async def test_pipelined_churn_leaves_consistent_presence(cluster: Cluster) -> None:
    """Subscribe/unsubscribe pipelined without waiting, by two sockets of one peer on one
    node, while the channel is new to that node: every join and leave reaches Redis in
    order, so the counts end right and the other node agrees."""
    obs = await conn(cluster[1].token_url("obs"))
    await obs.subscribe(ROOM_CHURN)
    x1 = await conn(cluster[0].token_url("x"))
    x2 = await conn(cluster[0].token_url("x"))
    for _ in range(10):
        for x in (x1, x2):
            await x.send({"type": "subscribe", "channel": ROOM_CHURN})
            await x.send({"type": "unsubscribe", "channel": ROOM_CHURN})
    await x1.ok({"type": "subscribe", "channel": ROOM_CHURN})
    await x2.ok({"type": "unsubscribe", "channel": ROOM_CHURN})

    async def members(i: int) -> list[str]:
        srv = cluster[i]
        got = await srv.node.hub.members_everywhere(srv.app_id, ROOM_CHURN)
        return sorted(json.loads(e)["peerId"] for e in got)

    for i in range(3):
        await wait_equal(lambda i=i: members(i), ["obs", "x"], 3,  # type: ignore[misc]
                         f"node {i} lists obs and x")
    await x1.close()
    await wait_equal(lambda: members(1), ["obs"], 3, "x left once its last socket went")
    await wait_equal(lambda: members(2), ["obs"], 3, "the hash agrees (node 2 holds none)")
    frames = await obs.drain(0.2)
    presence = [f for f in frames if f["type"] == "presence"]
    assert presence, frames
    assert presence[-1]["left"] == [{"peerId": "x"}], presence
