"""Pub/sub, presence and direct messages as the official SignallingClient sees them."""

from __future__ import annotations

from conftest import RawClient, RunningServer

from .conftest import Launch

PAYLOAD = {"text": "héllo ✓", "n": 3, "f": 1.5, "ok": True, "none": None, "list": [1, "two"]}


async def test_presence_shows_others_joining_and_leaving(server: RunningServer,
                                                         official: Launch) -> None:
    a = await official(server.url, key=server.pk)
    await a.connected()
    snap = await a.subscribe("room/p")
    assert snap["joined"] == [] and snap["left"] == []

    raw = await RawClient.connect(server.key_url())
    await raw.subscribe("room/p")
    ev = await a.next("presence", channel="room/p")
    assert ev["joined"] == [{"peer_id": raw.peer_id, "metadata": None}]
    assert ev["left"] == []

    other = await official(server.url, key=server.pk, name="other")
    await other.connected()
    snap = await other.subscribe("room/p")
    assert {p["peer_id"] for p in snap["joined"]} == {a.peer_id, raw.peer_id}
    ev = await a.next("presence", channel="room/p")
    assert ev["joined"] == [{"peer_id": other.peer_id, "metadata": None}]

    await raw.close()
    ev = await a.next("presence", channel="room/p")
    assert ev["joined"] == [] and ev["left"] == [{"peer_id": raw.peer_id, "metadata": None}]

    await other.ok("unsubscribe", channel="room/p")
    ev = await a.next("presence", channel="room/p")
    assert ev["left"] == [{"peer_id": other.peer_id, "metadata": None}]

    await other.stop()
    await a.expect_none("presence", within=0.3)


async def test_publish_reaches_the_other_side_with_sender_and_data(
        server: RunningServer, official: Launch) -> None:
    a = await official(server.url, key=server.pk, name="a")
    b = await official(server.url, key=server.pk, name="b")
    await a.connected()
    await b.connected()
    raw = await RawClient.connect(server.key_url())
    await a.subscribe("room/m")
    await b.subscribe("room/m")
    await raw.subscribe("room/m")

    await a.ok("publish", channel="room/m", data=PAYLOAD)
    ev = await b.next("message", channel="room/m")
    assert ev["from"] == a.peer_id
    assert ev["data"] == PAYLOAD
    assert ev["sender_metadata"] is None
    frame = await raw.recv_type("message")
    assert frame == {"type": "message", "channel": "room/m", "from": a.peer_id, "data": PAYLOAD}
    await a.expect_none("message", within=0.3)  # no echo to the publisher


async def test_receives_messages_from_a_raw_client(server: RunningServer,
                                                   official: Launch) -> None:
    a = await official(server.url, key=server.pk)
    await a.connected()
    await a.subscribe("room/r")
    await a.subscribe("room/other")
    raw = await RawClient.connect(server.key_url())
    for data in (PAYLOAD, None, "plain", 0, [], {}):
        reply = await raw.request({"type": "publish", "channel": "room/r", "data": data})
        assert reply["type"] == "ack", reply
        ev = await a.next("message")
        assert (ev["channel"], ev["from"], ev["data"]) == ("room/r", raw.peer_id, data)

    await a.ok("unsubscribe", channel="room/r")
    await raw.request({"type": "publish", "channel": "room/r", "data": "after unsubscribe"})
    await raw.request({"type": "publish", "channel": "room/other", "data": "still here"})
    ev = await a.next("message")
    assert (ev["channel"], ev["data"]) == ("room/other", "still here")


async def test_publish_without_subscribing(server: RunningServer, official: Launch) -> None:
    a = await official(server.url, key=server.pk)
    await a.connected()
    raw = await RawClient.connect(server.key_url())
    await raw.subscribe("room/x")
    await a.ok("publish", channel="room/x", data={"k": 1})
    assert (await raw.recv_type("message"))["data"] == {"k": 1}


async def test_direct_messages_both_ways(server: RunningServer, official: Launch) -> None:
    a = await official(server.url, key=server.pk, name="a")
    b = await official(server.url, tokens=[server.token("bob")], name="b")
    await a.connected()
    await b.connected()
    raw = await RawClient.connect(server.key_url())

    await a.ok("send", to="bob", data=PAYLOAD)
    ev = await b.next("direct")
    assert (ev["from"], ev["data"], ev["sender_metadata"]) == (a.peer_id, PAYLOAD, None)

    await b.ok("send", to=a.peer_id, data="hi a")
    ev = await a.next("direct")
    assert (ev["from"], ev["data"]) == ("bob", "hi a")

    await a.ok("send", to=raw.peer_id, data=[1, 2, 3])
    frame = await raw.recv_type("direct")
    assert frame["from"] == a.peer_id and frame["data"] == [1, 2, 3]

    reply = await raw.request({"type": "send", "to": a.peer_id, "data": {"from": "raw"}})
    assert reply["type"] == "ack", reply
    ev = await a.next("direct")
    assert (ev["from"], ev["data"]) == (raw.peer_id, {"from": "raw"})


async def test_peer_not_found_is_the_request_error(server: RunningServer,
                                                   official: Launch) -> None:
    a = await official(server.url, key=server.pk)
    await a.connected()
    res = await a.command("send", to="nobody-home", data={"x": 1})
    assert res["ok"] is False
    assert (res["error"], res["code"]) == ("ServerRequestError", "peer_not_found")
    await a.expect_none("server_error", within=0.2)  # correlated, not a stray error
    # The connection is still usable.
    assert (await a.ok("state"))["value"] == "connected"
    await a.subscribe("room/after")


async def test_channel_outside_the_token_scope_is_refused(server: RunningServer,
                                                          official: Launch) -> None:
    a = await official(server.url, tokens=[server.token("carol", channels=["room/*"])])
    await a.connected()
    await a.subscribe("room/ok")
    res = await a.command("subscribe", channel="secret/x")
    assert (res["ok"], res["code"]) == (False, "channel_not_authorized"), res
    res = await a.command("publish", channel="secret/x", data=1)
    assert (res["ok"], res["code"]) == (False, "channel_not_authorized"), res
    assert (await a.ok("state"))["value"] == "connected"


async def test_unsubscribe_is_idempotent(server: RunningServer, official: Launch) -> None:
    a = await official(server.url, key=server.pk)
    await a.connected()
    await a.ok("unsubscribe", channel="room/never-joined")
    await a.subscribe("room/u")
    await a.ok("unsubscribe", channel="room/u")
    await a.ok("unsubscribe", channel="room/u")


async def test_reserved_channel_is_refused(server: RunningServer, official: Launch) -> None:
    a = await official(server.url, key=server.pk)
    await a.connected()
    # The server refuses each reserved prefix, in any case, with the code the SDK types.
    for channel in ("_metered/x", "_Internal/y", "_SYSTEM/z"):
        res = await a.command("subscribe", channel=channel)
        assert (res["ok"], res["error"], res["code"]) == (
            False, "ServerRequestError", "channel_reserved"), res
    assert (await a.ok("state"))["value"] == "connected"


async def test_payload_of_max_message_size_is_delivered(server: RunningServer,
                                                        official: Launch) -> None:
    a = await official(server.url, key=server.pk, name="a")
    b = await official(server.url, key=server.pk, name="b")
    size = (await a.connected())["max_message_size"]
    await b.connected()
    await b.subscribe("room/big")
    data = "x" * (size - 2)  # serialized with its quotes: exactly max_message_size bytes
    await a.ok("publish", channel="room/big", data=data)
    ev = await b.next("message", channel="room/big")
    assert ev["data"] == data
    await a.ok("send", to=b.peer_id, data=data)
    assert (await b.next("direct"))["data"] == data
