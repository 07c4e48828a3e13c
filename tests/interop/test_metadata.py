"""Sender metadata (JWT ``peerMetadata``) as the official SignallingClient sees it."""

from __future__ import annotations

from conftest import RawClient, RunningServer

from .conftest import Launch

ALICE = {"name": "Alice", "role": "host", "tags": ["a", "b"]}


async def test_opted_in_subscriber_sees_sender_metadata(server: RunningServer,
                                                        official: Launch) -> None:
    alice = await official(server.url, tokens=[server.token("alice", peer_metadata=ALICE)],
                           name="alice")
    opted = await official(server.url, key=server.pk, name="opted-in")
    plain = await official(server.url, key=server.pk, name="plain")
    for c in (alice, opted, plain):
        await c.connected()
    await opted.subscribe("room/meta", include_sender_metadata=True)
    await plain.subscribe("room/meta")

    snap = await alice.subscribe("room/meta")
    assert {p["peer_id"] for p in snap["joined"]} == {opted.peer_id, plain.peer_id}
    # Presence always carries peerMetadata, whatever the subscribe option.
    for c in (opted, plain):
        ev = await c.next("presence", channel="room/meta",
                          where=lambda e: any(p["peer_id"] == "alice" for p in e["joined"]))
        assert ev["joined"] == [{"peer_id": "alice", "metadata": ALICE}]

    await alice.ok("publish", channel="room/meta", data="hello")
    ev = await opted.next("message", channel="room/meta")
    assert (ev["from"], ev["data"], ev["sender_metadata"]) == ("alice", "hello", ALICE)
    ev = await plain.next("message", channel="room/meta")
    assert (ev["from"], ev["data"], ev["sender_metadata"]) == ("alice", "hello", None)


async def test_direct_always_carries_sender_metadata(server: RunningServer,
                                                     official: Launch) -> None:
    alice = await official(server.url, tokens=[server.token("alice", peer_metadata=ALICE)],
                           name="alice")
    bob = await official(server.url, key=server.pk, name="bob")
    await alice.connected()
    await bob.connected()
    await alice.ok("send", to=bob.peer_id, data={"q": 1})
    ev = await bob.next("direct")
    assert (ev["from"], ev["data"], ev["sender_metadata"]) == ("alice", {"q": 1}, ALICE)


async def test_jwt_raw_publisher_metadata_reaches_official_subscriber(
        server: RunningServer, official: Launch) -> None:
    sub = await official(server.url, key=server.pk)
    await sub.connected()
    await sub.subscribe("room/m2", include_sender_metadata=True)
    raw = await RawClient.connect(server.token_url("dave", peer_metadata={"name": "Dave"}))
    await raw.subscribe("room/m2")
    await raw.request({"type": "publish", "channel": "room/m2", "data": 42})
    ev = await sub.next("message", channel="room/m2")
    assert (ev["from"], ev["data"], ev["sender_metadata"]) == ("dave", 42, {"name": "Dave"})
    # Re-subscribing without the option turns it off ("last subscribe wins").
    await sub.ok("subscribe", channel="room/m2", include_sender_metadata=False)
    await raw.request({"type": "publish", "channel": "room/m2", "data": 43})
    ev = await sub.next("message", channel="room/m2", data=43)
    assert ev["sender_metadata"] is None
