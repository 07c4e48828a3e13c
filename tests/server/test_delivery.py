"""Message delivery (docs/protocol.md, Delivery)."""

from __future__ import annotations

import asyncio

from srvkit import Conn, conn, new_app, token_url

from conftest import RunningServer
from roomwire.server.auth import mint_token

ROOM = "room/1"


async def test_publish_reaches_every_subscriber_but_the_sender(server: RunningServer) -> None:
    sender = await conn(server.key_url())
    subs = [await conn(server.key_url()) for _ in range(3)]
    outsider = await conn(server.key_url())
    await sender.subscribe(ROOM)
    for s in subs:
        await s.subscribe(ROOM)
    await outsider.subscribe("room/2")
    await sender.drain(0.05)
    for s in subs:
        await s.drain(0.05)
    await sender.ok({"type": "publish", "channel": ROOM, "data": {"n": 1}})
    for s in subs:
        assert await s.recv() == {"type": "message", "channel": ROOM, "from": sender.peer_id,
                                  "data": {"n": 1}}
    assert await sender.drain() == []
    assert await outsider.drain() == []


async def test_publisher_need_not_be_subscribed(server: RunningServer) -> None:
    sub = await conn(server.key_url())
    await sub.subscribe(ROOM)
    pub = await conn(server.key_url())
    await pub.ok({"type": "publish", "channel": ROOM, "data": "x"})
    assert await sub.recv() == {"type": "message", "channel": ROOM, "from": pub.peer_id,
                                "data": "x"}


async def test_publish_to_empty_channel_is_acked(server: RunningServer) -> None:
    pub = await conn(server.key_url())
    await pub.ok({"type": "publish", "channel": "nobody/here", "data": 1})


async def test_from_metadata_only_for_opted_in_subscribers(server: RunningServer) -> None:
    md = {"name": "Alice", "avatar": "a.png"}
    alice = await conn(server.token_url("alice", peer_metadata=md))
    anon = await conn(server.key_url())
    plain = await conn(server.key_url())
    wants = await conn(server.key_url())
    await plain.subscribe(ROOM)
    await wants.subscribe(ROOM, includeSenderMetadata=True)
    # includeSenderMetadata must be exactly true; truthy non-booleans do not opt in.
    odd = await conn(server.key_url())
    await odd.subscribe(ROOM, includeSenderMetadata="yes")
    for x in (plain, wants, odd):
        await x.drain(0.05)

    await alice.ok({"type": "publish", "channel": ROOM, "data": 1})
    assert await wants.recv() == {"type": "message", "channel": ROOM, "from": "alice",
                                  "data": 1, "fromMetadata": md}
    assert await plain.recv() == {"type": "message", "channel": ROOM, "from": "alice", "data": 1}
    assert await odd.recv() == {"type": "message", "channel": ROOM, "from": "alice", "data": 1}

    # A sender without peerMetadata: no fromMetadata even for those who asked.
    await anon.ok({"type": "publish", "channel": ROOM, "data": 2})
    assert await wants.recv() == {"type": "message", "channel": ROOM, "from": anon.peer_id,
                                  "data": 2}
    assert await plain.recv() == {"type": "message", "channel": ROOM, "from": anon.peer_id,
                                  "data": 2}


async def test_direct_carries_from_metadata_when_sender_has_it(server: RunningServer) -> None:
    md = {"name": "Alice"}
    alice = await conn(server.token_url("alice", peer_metadata=md))
    bob = await conn(server.token_url("bob"))
    anon = await conn(server.key_url())
    await alice.ok({"type": "send", "to": "bob", "data": {"sdp": "x"}})
    assert await bob.recv() == {"type": "direct", "from": "alice", "data": {"sdp": "x"},
                                "fromMetadata": md}
    await anon.ok({"type": "send", "to": "bob", "data": 5})
    assert await bob.recv() == {"type": "direct", "from": anon.peer_id, "data": 5}
    await bob.ok({"type": "send", "to": anon.peer_id, "data": 6})
    assert await anon.recv() == {"type": "direct", "from": "bob", "data": 6}


async def test_send_to_self_is_delivered(server: RunningServer) -> None:
    me = await conn(server.token_url("me", peer_metadata={"k": 1}))
    await me.send({"type": "send", "to": "me", "data": "echo", "requestId": "d"})
    got = [await me.recv(), await me.recv()]
    assert {"type": "ack", "requestId": "d"} in got
    assert {"type": "direct", "from": "me", "data": "echo", "fromMetadata": {"k": 1}} in got
    anon = await conn(server.key_url())
    await anon.send({"type": "send", "to": anon.peer_id, "data": "echo", "requestId": "d"})
    got = [await anon.recv(), await anon.recv()]
    assert {"type": "ack", "requestId": "d"} in got
    assert {"type": "direct", "from": anon.peer_id, "data": "echo"} in got


async def test_send_reaches_a_peer_subscribed_to_nothing(server: RunningServer) -> None:
    lonely = await conn(server.key_url())
    sender = await conn(server.key_url())
    await sender.subscribe(ROOM)
    await sender.ok({"type": "send", "to": lonely.peer_id, "data": [1, 2, 3]})
    assert await lonely.recv() == {"type": "direct", "from": sender.peer_id, "data": [1, 2, 3]}


async def test_send_is_not_channel_scoped(server: RunningServer) -> None:
    """A token confined to one channel may still send to any peer of the app."""
    narrow = await conn(server.token_url("narrow", channels=["only/this"]))
    far = await conn(server.key_url())
    await far.subscribe("elsewhere")
    await narrow.ok({"type": "send", "to": far.peer_id, "data": "hi"})
    assert await far.recv() == {"type": "direct", "from": "narrow", "data": "hi"}


async def test_per_connection_order_for_a_burst(server: RunningServer) -> None:
    server.store.update_limits(server.app_id, rate_limit=0)
    server.reload()
    pub = await conn(server.key_url())
    subs = [await conn(server.key_url()), await conn(server.key_url())]
    await subs[0].subscribe(ROOM)
    await subs[1].subscribe(ROOM, includeSenderMetadata=True)
    await subs[0].drain(0.05)
    n = 500
    for i in range(n):
        await pub.send({"type": "publish", "channel": ROOM, "data": {"i": i}})
    # Interleaved directs keep their place in the order too.
    await pub.send({"type": "send", "to": subs[0].peer_id, "data": "end"})
    for s in subs:
        got = [(await s.recv())["data"] for _ in range(n)]
        assert got == [{"i": i} for i in range(n)]
    assert (await subs[0].recv())["data"] == "end"
    await pub.alive()


async def test_two_publishers_each_keep_their_order(server: RunningServer) -> None:
    server.store.update_limits(server.app_id, rate_limit=0)
    server.reload()
    a = await conn(server.key_url())
    b = await conn(server.key_url())
    sub = await conn(server.key_url())
    await sub.subscribe(ROOM)

    async def burst(c: Conn, tag: str) -> None:
        for i in range(200):
            await c.send({"type": "publish", "channel": ROOM, "data": [tag, i]})

    await asyncio.gather(burst(a, "a"), burst(b, "b"))
    got = [(await sub.recv())["data"] for _ in range(400)]
    assert [i for t, i in got if t == "a"] == list(range(200))
    assert [i for t, i in got if t == "b"] == list(range(200))


# ---------------------------------------------------------------------------------------------
# Tenant isolation (docs/protocol.md, Apps and tenant isolation)


async def test_apps_are_isolated(server: RunningServer) -> None:
    _, other_pk, other_sk = new_app(server)
    # App 1: alice (token) and bob; app 2: another "alice" (same sub) and carol.
    alice1 = await conn(server.token_url("alice", peer_metadata={"app": 1}))
    bob1 = await conn(server.token_url("bob"))
    tok2, _ = mint_token(other_sk, "alice", ttl=600, peer_metadata={"app": 2})
    alice2 = await conn(token_url(server, tok2))
    tok_carol, _ = mint_token(other_sk, "carol", ttl=600)
    carol2 = await conn(token_url(server, tok_carol))
    anon2 = await conn(server.key_url(other_pk.id))

    await alice1.subscribe(ROOM)
    _, snap = await bob1.subscribe(ROOM)
    assert snap["joined"] == [{"peerId": "alice", "metadata": {"app": 1}}]
    assert (await alice1.recv())["joined"] == [{"peerId": "bob"}]

    # Same channel name in app 2: an empty room, and app 1 hears nothing.
    _, snap = await alice2.subscribe(ROOM)
    assert snap["joined"] == []
    _, snap = await carol2.subscribe(ROOM)
    assert snap["joined"] == [{"peerId": "alice", "metadata": {"app": 2}}]
    assert (await alice2.recv())["joined"] == [{"peerId": "carol"}]
    await anon2.subscribe(ROOM)
    await alice2.drain(0.05)
    await carol2.drain(0.05)
    assert await alice1.drain(0.05) == []
    assert await bob1.drain(0.05) == []

    # Messages stay in their app.
    await bob1.ok({"type": "publish", "channel": ROOM, "data": "app1"})
    assert await alice1.recv() == {"type": "message", "channel": ROOM, "from": "bob",
                                   "data": "app1"}
    await carol2.ok({"type": "publish", "channel": ROOM, "data": "app2"})
    assert await alice2.recv() == {"type": "message", "channel": ROOM, "from": "carol",
                                   "data": "app2"}

    # Directs to "alice" reach only the alice of the sender's app.
    await bob1.ok({"type": "send", "to": "alice", "data": "d1"})
    assert await alice1.recv() == {"type": "direct", "from": "bob", "data": "d1"}
    await carol2.ok({"type": "send", "to": "alice", "data": "d2"})
    assert await alice2.recv() == {"type": "direct", "from": "carol", "data": "d2"}
    assert await alice1.drain(0.05) == []
    # Sending across apps: the peer does not exist in this app.
    err = await carol2.error({"type": "send", "to": "bob", "data": 1})
    assert err["code"] == "peer_not_found"
    err = await bob1.error({"type": "send", "to": anon2.peer_id, "data": 1})
    assert err["code"] == "peer_not_found"
    err = await anon2.error({"type": "send", "to": bob1.peer_id, "data": 1})
    assert err["code"] == "peer_not_found"

    # Leaving in one app is not heard in the other.
    await alice2.close()
    assert (await carol2.recv())["left"] == [{"peerId": "alice", "metadata": {"app": 2}}]
    assert await bob1.drain() == []
    assert await alice1.drain() == []
    await alice1.close()
    assert (await bob1.recv())["left"] == [{"peerId": "alice", "metadata": {"app": 1}}]
    assert await carol2.drain() == []
