"""Presence, exactly as docs/protocol.md (Presence, Presence ordering) describes it."""

from __future__ import annotations

import asyncio

from srvkit import Conn, conn

from conftest import RunningServer

ROOM = "room/1"


def presence(joined: list[dict[str, object]] | None = None,
             left: list[dict[str, object]] | None = None, channel: str = ROOM) -> dict[str, object]:
    return {"type": "presence", "channel": channel, "joined": joined or [], "left": left or []}


async def test_ack_then_snapshot_even_when_empty(server: RunningServer) -> None:
    a = await conn(server.key_url())
    await a.send({"type": "subscribe", "channel": ROOM, "requestId": "s"})
    assert await a.recv() == {"type": "ack", "requestId": "s"}
    assert await a.recv() == presence()
    assert await a.drain() == []


async def test_snapshot_lists_members_and_others_hear_joined(server: RunningServer) -> None:
    a = await conn(server.key_url())
    b = await conn(server.key_url())
    c = await conn(server.key_url())
    await a.subscribe(ROOM)
    _, snap = await b.subscribe(ROOM)
    assert snap == presence([{"peerId": a.peer_id}])
    assert await a.recv() == presence([{"peerId": b.peer_id}])
    _, snap = await c.subscribe(ROOM)
    assert snap["left"] == []
    assert sorted(e["peerId"] for e in snap["joined"]) == sorted([a.peer_id, b.peer_id])
    for x in (a, b):
        assert await x.recv() == presence([{"peerId": c.peer_id}])
    for x in (a, b, c):
        assert await x.drain() == []


async def test_snapshot_without_subscribe_in_another_channel(server: RunningServer) -> None:
    a = await conn(server.key_url())
    b = await conn(server.key_url())
    await a.subscribe("room/a")
    _, snap = await b.subscribe("room/b")
    assert snap == presence(channel="room/b")
    assert await a.drain() == []


async def test_repeated_subscribe_sends_snapshot_again_without_second_joined(
    server: RunningServer,
) -> None:
    a = await conn(server.key_url())
    b = await conn(server.key_url())
    await a.subscribe(ROOM)
    await b.subscribe(ROOM)
    assert await a.recv() == presence([{"peerId": b.peer_id}])
    for _ in range(3):
        _, snap = await b.subscribe(ROOM)
        assert snap == presence([{"peerId": a.peer_id}])
    _, snap = await a.subscribe(ROOM)
    assert snap == presence([{"peerId": b.peer_id}])
    # Nobody heard a second joined.
    assert await a.drain() == []
    assert await b.drain() == []


async def test_repeated_subscribe_latest_include_sender_metadata_wins(
    server: RunningServer,
) -> None:
    sender = await conn(server.token_url("sender", peer_metadata={"name": "S"}))
    sub = await conn(server.key_url())
    await sub.subscribe(ROOM, includeSenderMetadata=True)
    await sender.ok({"type": "publish", "channel": ROOM, "data": 1})
    assert (await sub.recv_type("message"))["fromMetadata"] == {"name": "S"}
    await sub.subscribe(ROOM)
    await sender.ok({"type": "publish", "channel": ROOM, "data": 2})
    msg = await sub.recv_type("message")
    assert msg["data"] == 2 and "fromMetadata" not in msg
    await sub.subscribe(ROOM, includeSenderMetadata=True)
    await sender.ok({"type": "publish", "channel": ROOM, "data": 3})
    msg = await sub.recv_type("message")
    assert msg["data"] == 3 and msg["fromMetadata"] == {"name": "S"}
    await sub.subscribe(ROOM, includeSenderMetadata=False)
    await sender.ok({"type": "publish", "channel": ROOM, "data": 4})
    msg = await sub.recv_type("message")
    assert msg["data"] == 4 and "fromMetadata" not in msg


async def test_no_other_presence_between_ack_and_snapshot(server: RunningServer) -> None:
    """A newcomer's first presence frame for the channel after its ack is the snapshot, even
    while other peers come and go."""
    a = await conn(server.key_url())
    await a.subscribe(ROOM)
    churn = [await conn(server.key_url()) for _ in range(5)]
    newcomer = await conn(server.key_url())
    await newcomer.send({"type": "subscribe", "channel": ROOM, "requestId": "s"})
    await asyncio.gather(*(x.send({"type": "subscribe", "channel": ROOM}) for x in churn))
    assert await newcomer.recv() == {"type": "ack", "requestId": "s"}
    snap = await newcomer.recv()
    assert snap["type"] == "presence" and snap["left"] == []
    known = {e["peerId"] for e in snap["joined"]}
    assert a.peer_id in known
    # Whatever follows is deltas for peers the snapshot did not already list.
    for f in await newcomer.drain():
        assert f["type"] == "presence" and f["left"] == []
        for e in f["joined"]:
            assert e["peerId"] not in known
            known.add(e["peerId"])
    assert known == {a.peer_id, *(x.peer_id for x in churn)}


async def test_newcomer_joined_reaches_members_before_newcomer_can_act(
    server: RunningServer,
) -> None:
    """The members hear ``joined`` before anything the newcomer sends after its ack (the SDKs
    drop signals from peers they do not know yet)."""
    members = [await conn(server.token_url(f"m{i}")) for i in range(3)]
    for m in members:
        await m.subscribe(ROOM)
    for m in members:
        await m.drain(0.05)
    newcomer = await conn(server.token_url("new"))
    await newcomer.subscribe(ROOM)
    for m in members:
        await newcomer.send({"type": "send", "to": m.welcome["peerId"], "data": "offer"})
    await newcomer.send({"type": "publish", "channel": ROOM, "data": "hello"})
    for m in members:
        assert await m.recv() == presence([{"peerId": "new"}])
        assert await m.recv() == {"type": "direct", "from": "new", "data": "offer"}
        assert await m.recv() == {"type": "message", "channel": ROOM, "from": "new",
                                  "data": "hello"}


async def test_newcomer_joined_precedes_pipelined_frames(server: RunningServer) -> None:
    """Same guarantee when the newcomer does not even wait for its ack."""
    member = await conn(server.token_url("member"))
    await member.subscribe(ROOM)
    newcomer = await conn(server.token_url("new"))
    await newcomer.send({"type": "subscribe", "channel": ROOM, "requestId": "s"})
    await newcomer.send({"type": "send", "to": "member", "data": "offer", "requestId": "d"})
    assert await member.recv() == presence([{"peerId": "new"}])
    assert await member.recv() == {"type": "direct", "from": "new", "data": "offer"}
    assert [f["type"] for f in await newcomer.drain()] == ["ack", "presence", "ack"]


async def test_metadata_in_entries_only_for_token_peers(server: RunningServer) -> None:
    alice_md = {"name": "Alice", "tags": ["a", 1], "nested": {"x": None}}
    alice = await conn(server.token_url("alice", peer_metadata=alice_md))
    bob = await conn(server.token_url("bob"))  # a token without peerMetadata
    anon = await conn(server.key_url())
    await alice.subscribe(ROOM)
    _, snap = await bob.subscribe(ROOM)
    assert snap == presence([{"peerId": "alice", "metadata": alice_md}])
    assert await alice.recv() == presence([{"peerId": "bob"}])
    _, snap = await anon.subscribe(ROOM)
    by_id = {e["peerId"]: e for e in snap["joined"]}
    assert by_id == {"alice": {"peerId": "alice", "metadata": alice_md},
                     "bob": {"peerId": "bob"}}
    assert await alice.recv() == presence([{"peerId": anon.peer_id}])
    assert await bob.recv() == presence([{"peerId": anon.peer_id}])
    await alice.close()
    assert await bob.recv() == presence(left=[{"peerId": "alice", "metadata": alice_md}])
    await anon.ok({"type": "unsubscribe", "channel": ROOM})
    assert await bob.recv() == presence(left=[{"peerId": anon.peer_id}])


async def test_unsubscribe_and_disconnect_produce_left(server: RunningServer) -> None:
    a = await conn(server.key_url())
    b = await conn(server.key_url())
    c = await conn(server.key_url())
    for x in (a, b, c):
        await x.subscribe(ROOM)
    await a.drain(0.1)
    await b.drain(0.05)
    await b.ok({"type": "unsubscribe", "channel": ROOM})
    assert await a.recv() == presence(left=[{"peerId": b.peer_id}])
    assert await c.recv() == presence(left=[{"peerId": b.peer_id}])
    # b left: it hears nothing about the channel any more.
    await c.close()
    assert await a.recv() == presence(left=[{"peerId": c.peer_id}])
    assert await b.drain() == []
    # Abrupt disconnect (no close handshake) is noticed too.
    d = await conn(server.key_url())
    await d.subscribe(ROOM)
    assert await a.recv() == presence([{"peerId": d.peer_id}])
    d.ws.transport.abort()
    assert await a.recv() == presence(left=[{"peerId": d.peer_id}])


async def test_rejoin_after_unsubscribe_is_a_new_joined(server: RunningServer) -> None:
    a = await conn(server.key_url())
    b = await conn(server.key_url())
    await a.subscribe(ROOM)
    await b.subscribe(ROOM)
    assert await a.recv() == presence([{"peerId": b.peer_id}])
    await b.ok({"type": "unsubscribe", "channel": ROOM})
    assert await a.recv() == presence(left=[{"peerId": b.peer_id}])
    _, snap = await b.subscribe(ROOM)
    assert snap == presence([{"peerId": a.peer_id}])
    assert await a.recv() == presence([{"peerId": b.peer_id}])


async def test_presence_is_per_channel(server: RunningServer) -> None:
    a = await conn(server.key_url())
    b = await conn(server.key_url())
    await a.subscribe("x")
    await a.subscribe("y")
    await b.subscribe("x")
    assert await a.recv() == presence([{"peerId": b.peer_id}], channel="x")
    await b.close()
    assert await a.recv() == presence(left=[{"peerId": b.peer_id}], channel="x")
    assert await a.drain() == []


# ---------------------------------------------------------------------------------------------
# One peerId on several sockets: presence is reference counted per (channel, peerId)


async def test_same_sub_on_two_sockets_is_reference_counted(server: RunningServer) -> None:
    md = {"device": "x"}
    obs = await conn(server.key_url())
    await obs.subscribe(ROOM)
    s1 = await conn(server.token_url("twin", peer_metadata=md))
    s2 = await conn(server.token_url("twin", peer_metadata=md))
    assert s1.peer_id == s2.peer_id == "twin"
    _, snap1 = await s1.subscribe(ROOM)
    assert snap1 == presence([{"peerId": obs.peer_id}])
    assert await obs.recv() == presence([{"peerId": "twin", "metadata": md}])
    _, snap2 = await s2.subscribe(ROOM)
    # The snapshot does not list the socket's own peerId, and nobody hears a second joined.
    assert snap2 == presence([{"peerId": obs.peer_id}])
    assert await obs.drain() == []
    assert await s1.drain() == []

    # send reaches both sockets.
    await obs.ok({"type": "send", "to": "twin", "data": "both"})
    for s in (s1, s2):
        assert await s.recv() == {"type": "direct", "from": obs.peer_id, "data": "both"}

    # publish skips only the publishing socket.
    await s1.ok({"type": "publish", "channel": ROOM, "data": "from s1"})
    expected = {"type": "message", "channel": ROOM, "from": "twin", "data": "from s1"}
    assert await s2.recv() == expected
    assert await obs.recv() == expected
    assert await s1.drain() == []

    # left only when the last socket leaves.
    await s1.close()
    assert await obs.drain(0.3) == []
    await s2.ok({"type": "unsubscribe", "channel": ROOM})
    assert await obs.recv() == presence(left=[{"peerId": "twin", "metadata": md}])


async def test_same_sub_one_socket_unsubscribes_other_stays(server: RunningServer) -> None:
    obs = await conn(server.key_url())
    await obs.subscribe(ROOM)
    s1 = await conn(server.token_url("twin"))
    s2 = await conn(server.token_url("twin"))
    await s1.subscribe(ROOM)
    await s2.subscribe(ROOM)
    assert await obs.recv() == presence([{"peerId": "twin"}])
    await s1.ok({"type": "unsubscribe", "channel": ROOM})
    assert await obs.drain() == []
    # The unsubscribed socket no longer gets channel messages; the other one does.
    await obs.ok({"type": "publish", "channel": ROOM, "data": 1})
    assert (await s2.recv())["data"] == 1
    assert await s1.drain() == []
    # But a direct still reaches both sockets of the peer.
    await obs.ok({"type": "send", "to": "twin", "data": 2})
    assert (await s1.recv())["data"] == 2
    assert (await s2.recv())["data"] == 2
    # A new observer's snapshot still lists the peer once.
    late = await conn(server.key_url())
    _, snap = await late.subscribe(ROOM)
    assert sorted(e["peerId"] for e in snap["joined"]) == sorted([obs.peer_id, "twin"])
    assert await obs.recv() == presence([{"peerId": late.peer_id}])
    s2.ws.transport.abort()
    assert await obs.recv() == presence(left=[{"peerId": "twin"}])
    assert await late.recv_type("presence") == presence(left=[{"peerId": "twin"}])


# ---------------------------------------------------------------------------------------------
# The presence action gates receiving presence, not appearing in it


async def test_without_presence_action_no_presence_frames_but_still_visible(
    server: RunningServer,
) -> None:
    watcher = await conn(server.key_url())
    await watcher.subscribe(ROOM)
    blind = await conn(server.token_url("blind", permissions=["subscribe", "publish"]))
    rid = blind.rid()
    await blind.send({"type": "subscribe", "channel": ROOM, "requestId": rid})
    assert await blind.recv() == {"type": "ack", "requestId": rid}
    # ... and no snapshot,
    await blind.alive()
    # but the others see it come.
    assert await watcher.recv() == presence([{"peerId": "blind"}])
    other = await conn(server.key_url())
    _, snap = await other.subscribe(ROOM)
    assert sorted(e["peerId"] for e in snap["joined"]) == sorted([watcher.peer_id, "blind"])
    await other.close()
    assert await watcher.recv() == presence([{"peerId": other.peer_id}])
    assert await watcher.recv() == presence(left=[{"peerId": other.peer_id}])
    # No deltas either; messages still flow.
    await watcher.ok({"type": "publish", "channel": ROOM, "data": "hi"})
    assert await blind.recv() == {"type": "message", "channel": ROOM,
                                  "from": watcher.peer_id, "data": "hi"}
    # A repeated subscribe gives no snapshot.
    await blind.ok({"type": "subscribe", "channel": ROOM})
    assert await blind.drain() == []
    await blind.close()
    assert await watcher.recv() == presence(left=[{"peerId": "blind"}])


async def test_presence_frames_are_well_formed(server: RunningServer) -> None:
    """Every presence frame carries both arrays (``Conn`` checks each frame it receives)."""
    clients: list[Conn] = [await conn(server.key_url()) for _ in range(4)]
    for c in clients:
        await c.subscribe(ROOM)
    for c in clients[1:]:
        await c.close()
    frames = await clients[0].drain()
    assert len(frames) == 6
    for f in frames:
        assert set(f) == {"type", "channel", "joined", "left"}
        assert len(f["joined"]) + len(f["left"]) == 1
