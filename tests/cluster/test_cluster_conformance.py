"""The key conformance behaviours with the clients spread over 3 nodes sharing Redis."""

from __future__ import annotations

import aiohttp
from srvkit import conn, new_app

from waiting import wait_for

from .conftest import Cluster

ROOM = "room/1"


def presence(joined: list[dict[str, object]] | None = None,
             left: list[dict[str, object]] | None = None, channel: str = ROOM) -> dict[str, object]:
    return {"type": "presence", "channel": channel, "joined": joined or [], "left": left or []}


async def test_snapshot_and_joined_across_nodes(cluster: Cluster) -> None:
    a = await conn(cluster[0].key_url())
    b = await conn(cluster[1].key_url())
    c = await conn(cluster[2].key_url())
    await a.subscribe(ROOM)
    _, snap = await b.subscribe(ROOM)
    assert snap == presence([{"peerId": a.peer_id}])
    assert await a.recv() == presence([{"peerId": b.peer_id}])
    _, snap = await c.subscribe(ROOM)
    assert sorted(e["peerId"] for e in snap["joined"]) == sorted([a.peer_id, b.peer_id])
    for x in (a, b):
        assert await x.recv() == presence([{"peerId": c.peer_id}])
    await b.close()
    for x in (a, c):
        assert await x.recv() == presence(left=[{"peerId": b.peer_id}])
    for x in (a, c):
        assert await x.drain() == []


async def test_presence_carries_peer_metadata_across_nodes(cluster: Cluster) -> None:
    a = await conn(cluster[0].token_url("alice", peer_metadata={"name": "A"}))
    await a.subscribe(ROOM)
    b = await conn(cluster[1].token_url("bob"))
    _, snap = await b.subscribe(ROOM)
    assert snap == presence([{"peerId": "alice", "metadata": {"name": "A"}}])


async def test_newcomer_known_remotely_before_it_can_send(cluster: Cluster) -> None:
    """A member on another node hears the newcomer's `joined` before anything the newcomer
    sends after its ack (the SDKs drop signals from peers they do not know)."""
    a = await conn(cluster[0].token_url("alice"))
    await a.subscribe(ROOM)
    for i in range(5):
        b = await conn(cluster[1 + i % 2].token_url(f"bob{i}"))
        await b.subscribe(ROOM)
        await b.ok({"type": "send", "to": "alice", "data": {"i": i}})
        await b.ok({"type": "publish", "channel": ROOM, "data": i})
        first = await a.recv()
        assert first == presence([{"peerId": f"bob{i}"}]), first
        assert (await a.recv())["type"] == "direct"
        assert (await a.recv())["type"] == "message"
        await b.close()
        assert await a.recv() == presence(left=[{"peerId": f"bob{i}"}])


async def test_publish_fans_out_to_every_node_once(cluster: Cluster) -> None:
    subs = [await conn(cluster[i % 3].key_url()) for i in range(6)]
    for s in subs:
        await s.subscribe(ROOM)
    pub = await conn(cluster[0].token_url("pub"))
    for s in subs:
        await s.drain(0.05)  # the `joined` of the later subscribers
    for n in range(20):
        await pub.ok({"type": "publish", "channel": ROOM, "data": n})
    for s in subs:
        got = await s.messages(20)
        assert got == list(range(20)), got
    # Once: no node delivers a second copy (every copy would be on its way by now).
    for s in subs:
        assert [f for f in await s.drain(0.1) if f["type"] == "message"] == []
    assert await pub.drain(0.1) == []


async def test_sender_metadata_variant_across_nodes(cluster: Cluster) -> None:
    sender = await conn(cluster[0].token_url("sender", peer_metadata={"name": "S"}))
    plain = await conn(cluster[1].key_url())
    meta = await conn(cluster[2].key_url())
    await plain.subscribe(ROOM)
    await meta.subscribe(ROOM, includeSenderMetadata=True)
    await sender.ok({"type": "publish", "channel": ROOM, "data": 1})
    m1 = await plain.recv_type("message")
    m2 = await meta.recv_type("message")
    assert "fromMetadata" not in m1 and m1["from"] == "sender"
    assert m2["fromMetadata"] == {"name": "S"}


async def test_send_reaches_every_socket_of_a_peer_on_every_node(cluster: Cluster) -> None:
    b0 = await conn(cluster[0].token_url("bob"))
    b1 = await conn(cluster[1].token_url("bob"))
    b2 = await conn(cluster[1].token_url("bob"))
    a = await conn(cluster[2].token_url("alice"))
    await a.ok({"type": "send", "to": "bob", "data": "hi"})
    for b in (b0, b1, b2):
        d = await b.recv()
        assert d == {"type": "direct", "from": "alice", "data": "hi"}
        assert await b.drain(0.1) == []
    err = await a.error({"type": "send", "to": "nobody", "data": 1})
    assert err["code"] == "peer_not_found"
    for b in (b0, b1, b2):
        await b.close()
    # Each node notices its sockets closing, then tells the others: ask until they agree.
    reply = await wait_for(lambda: a.request({"type": "send", "to": "bob", "data": 1}), 5,
                           "a send to bob, whose sockets all closed, is refused",
                           until=lambda r: r.get("code") == "peer_not_found")
    assert reply["type"] == "error", reply


async def test_reference_counting_across_nodes(cluster: Cluster) -> None:
    obs = await conn(cluster[2].token_url("obs"))
    await obs.subscribe(ROOM)
    x0 = await conn(cluster[0].token_url("x"))
    x1 = await conn(cluster[1].token_url("x"))
    await x0.subscribe(ROOM)
    assert await obs.recv() == presence([{"peerId": "x"}])
    _, snap = await x1.subscribe(ROOM)
    assert snap == presence([{"peerId": "obs"}])
    assert await obs.drain(0.1) == []  # no second joined
    await x0.close()
    # Node 0 drops x's socket; the other nodes hear of it. Then silence must hold.
    await wait_for(lambda: cluster[0].node.hub.local_connections(), 5,
                   "node 0 notices x0 closing", until=lambda n: not n)
    assert await obs.drain(0.1) == []  # x still present on node 1
    await x1.ok({"type": "unsubscribe", "channel": ROOM})
    assert await obs.recv() == presence(left=[{"peerId": "x"}])
    assert await obs.drain(0.1) == []


async def test_tenants_are_isolated_across_nodes(cluster: Cluster) -> None:
    _app2, pk2, _sk2 = new_app(cluster[0])
    for srv in cluster.nodes[1:]:
        srv.reload()
    a = await conn(cluster[0].token_url("same"))
    b = await conn(cluster[1].key_url(pk2.id))
    await a.subscribe(ROOM)
    _, snap = await b.subscribe(ROOM)
    assert snap == presence()
    await b.ok({"type": "publish", "channel": ROOM, "data": 1})
    err = await b.error({"type": "send", "to": "same", "data": 1})
    assert err["code"] == "peer_not_found"
    assert await a.drain(0.3) == []


async def test_rest_kick_and_presence_listing_across_nodes(cluster: Cluster) -> None:
    victim = await conn(cluster[1].token_url("victim"))
    other = await conn(cluster[2].token_url("victim"))
    await victim.subscribe(ROOM)
    sk = cluster[0].sk
    auth = {"Authorization": f"Bearer {sk.id}:{sk.secret}"}
    base = f"http://127.0.0.1:{cluster[0].node.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/channels/room%2F1/peers", headers=auth) as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["peers"] == [{"peerId": "victim"}], body
        async with http.delete(f"{base}/v1/peers/victim", headers=auth) as resp:
            assert resp.status == 200
    for c in (victim, other):
        code, _ = await c.closed()
        assert code == 4020


async def test_hub_kick_counts_sockets_on_every_node(cluster: Cluster) -> None:
    socks = [await conn(cluster[i].token_url("k")) for i in (0, 1, 1, 2)]
    n = await cluster[0].node.hub.kick(cluster[0].app_id, "k", 4020, "kicked")
    assert n == 4
    for s in socks:
        code, _ = await s.closed()
        assert code == 4020


async def test_message_quota_holds_cluster_wide(cluster: Cluster) -> None:
    _app_id, pk, _sk = new_app(cluster[0], "quota", max_messages_per_period=10)
    for srv in cluster.nodes[1:]:
        srv.reload()
    pubs = [await conn(cluster[i].key_url(pk.id)) for i in range(3)]
    for i in range(9):
        await pubs[i % 3].ok({"type": "publish", "channel": ROOM, "data": i})
    # Counts travel with the usage sync (every usage_sync_interval); run it now, on every node.
    await cluster.settle()
    await pubs[0].ok({"type": "publish", "channel": ROOM, "data": 9})
    await cluster.settle()
    for p in pubs:
        err = await p.error({"type": "publish", "channel": ROOM, "data": "over"})
        assert err["code"] == "over_message_quota"


async def test_connection_limit_counts_other_nodes(cluster: Cluster) -> None:
    _app_id, pk, _sk = new_app(cluster[0], "limited", max_connections=2)
    for srv in cluster.nodes[1:]:
        srv.reload()
    await conn(cluster[0].key_url(pk.id))
    await conn(cluster[1].key_url(pk.id))
    # Connection counts travel with the heartbeats: wait until every node has them.
    await cluster.settle()
    from srvkit import refused

    code, _ = await refused(cluster[2].key_url(pk.id))
    assert code == 4010
