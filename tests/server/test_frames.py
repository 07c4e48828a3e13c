"""Client requests, acks and every error code (docs/protocol.md: Requests, Error codes).

Every test that provokes an error frame also checks that the connection is still open and in
sync afterwards (``alive``: a ping is answered by the very next frame).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from srvkit import Conn, conn

from conftest import RunningServer
from waiting import wait_for


@pytest.fixture
async def c(server: RunningServer) -> Conn:
    return await conn(server.key_url())


async def expect_error(c: Conn, frame: dict[str, Any] | str | bytes, code: str,
                       request_id: str | None) -> dict[str, Any]:
    await c.send(frame)
    err = await c.recv()
    assert err["type"] == "error", err
    assert err["code"] == code, err
    assert isinstance(err.get("message", ""), str)
    if request_id is None:
        assert "requestId" not in err, err
    else:
        assert err["requestId"] == request_id, err
    await c.alive()
    return err


# ---------------------------------------------------------------------------------------------
# Successful requests


async def test_subscribe_unsubscribe_acks(c: Conn) -> None:
    _, snap = await c.subscribe("room/1")
    assert snap == {"type": "presence", "channel": "room/1", "joined": [], "left": []}
    assert await c.request({"type": "unsubscribe", "channel": "room/1"}) == {
        "type": "ack", "requestId": "r2"}
    await c.alive()


async def test_unsubscribe_is_idempotent(c: Conn) -> None:
    await c.ok({"type": "unsubscribe", "channel": "never/joined"})
    await c.subscribe("room")
    await c.ok({"type": "unsubscribe", "channel": "room"})
    await c.ok({"type": "unsubscribe", "channel": "room"})
    await c.alive()


async def test_publish_and_send_ack(c: Conn, server: RunningServer) -> None:
    await c.ok({"type": "publish", "channel": "room", "data": {"a": [1, 2]}})
    other = await conn(server.key_url())
    await c.ok({"type": "send", "to": other.peer_id, "data": "hi"})
    assert await other.recv() == {"type": "direct", "from": c.peer_id, "data": "hi"}
    await other.close()


async def test_requests_without_request_id_get_no_ack(c: Conn, server: RunningServer) -> None:
    other = await conn(server.key_url())
    await other.subscribe("room")
    await c.send({"type": "subscribe", "channel": "room"})
    snap = await c.recv()
    assert snap["type"] == "presence" and snap["joined"] == [{"peerId": other.peer_id}]
    await c.send({"type": "publish", "channel": "room", "data": 1})
    await c.send({"type": "send", "to": other.peer_id, "data": 2})
    await c.send({"type": "unsubscribe", "channel": "room"})
    await c.alive()
    frames = await other.drain()
    assert [f["type"] for f in frames] == ["presence", "message", "direct", "presence"]
    await other.close()


async def test_acks_and_errors_correlate_in_order(c: Conn) -> None:
    await c.send({"type": "subscribe", "channel": "a", "requestId": "s1"})
    await c.send({"type": "publish", "channel": "a", "requestId": "p1"})  # no data
    await c.send({"type": "publish", "channel": "a", "data": None, "requestId": "p2"})
    await c.send({"type": "send", "to": "ghost", "data": 1, "requestId": "d1"})
    await c.send({"type": "unsubscribe", "channel": "a", "requestId": "u1"})
    got = [await c.recv() for _ in range(6)]
    assert got == [
        {"type": "ack", "requestId": "s1"},
        {"type": "presence", "channel": "a", "joined": [], "left": []},
        {"type": "error", "requestId": "p1", "code": "missing_data",
         "message": got[2]["message"]},
        {"type": "ack", "requestId": "p2"},
        {"type": "error", "requestId": "d1", "code": "peer_not_found",
         "message": got[4]["message"]},
        {"type": "ack", "requestId": "u1"},
    ]
    await c.alive()


async def test_ping_pong(c: Conn) -> None:
    await c.send({"type": "ping"})
    assert await c.recv() == {"type": "pong"}
    await c.send({"type": "ping", "requestId": "abc"})
    assert await c.recv() == {"type": "pong", "requestId": "abc"}
    # No ack follows the pong.
    assert await c.drain() == []


async def test_unknown_extra_fields_are_ignored(c: Conn, server: RunningServer) -> None:
    other = await conn(server.key_url())
    await other.subscribe("room")
    # A subscriber that asked for sender metadata: a spoofed `fromMetadata` must not reach it.
    meta = await conn(server.key_url())
    await meta.subscribe("room", includeSenderMetadata=True)
    assert await other.recv() == {"type": "presence", "channel": "room",
                                  "joined": [{"peerId": meta.peer_id}], "left": []}
    rid = c.rid()
    await c.send({"type": "subscribe", "channel": "room", "requestId": rid, "x": {"y": [1]},
                  "priority": "high", "from": "spoofed"})
    assert await c.recv() == {"type": "ack", "requestId": rid}
    assert (await c.recv())["type"] == "presence"
    await c.ok({"type": "publish", "channel": "room", "data": 7, "from": "spoofed",
                "fromMetadata": {"evil": True}, "extra": None})
    await c.ok({"type": "send", "to": other.peer_id, "data": 8, "channel": "ignored",
                "from": "spoofed", "fromMetadata": {"evil": True}})
    await c.send({"type": "ping", "junk": [1, 2, 3]})
    assert await c.recv() == {"type": "pong"}
    joined = {"type": "presence", "channel": "room", "joined": [{"peerId": c.peer_id}],
              "left": []}
    # The sender is who the server says it is, whatever the frame claimed.
    assert await other.frames_until(lambda fs: len(fs) >= 3) == [
        joined,
        {"type": "message", "channel": "room", "from": c.peer_id, "data": 7},
        {"type": "direct", "from": c.peer_id, "data": 8},
    ]
    # c connected with a key: it has no metadata, so none is attached, spoofed or not.
    assert await meta.frames_until(lambda fs: len(fs) >= 2) == [
        joined,
        {"type": "message", "channel": "room", "from": c.peer_id, "data": 7},
    ]
    assert await other.drain(0.1) == [] and await meta.drain(0.05) == []
    await other.close()


async def test_null_data_is_data(c: Conn, server: RunningServer) -> None:
    other = await conn(server.key_url())
    await other.subscribe("room")
    await c.ok({"type": "publish", "channel": "room", "data": None})
    await c.ok({"type": "send", "to": other.peer_id, "data": None})
    assert await other.recv() == {"type": "message", "channel": "room", "from": c.peer_id,
                                  "data": None}
    assert await other.recv() == {"type": "direct", "from": c.peer_id, "data": None}
    await other.close()


async def test_data_is_relayed_exactly(c: Conn, server: RunningServer) -> None:
    other = await conn(server.key_url())
    await other.subscribe("room")
    values: list[Any] = [0, -1.5, 1e300, "é ☃ \u0000 😀", [], {}, {"a": {"b": [None]}},
                         True, False, "x" * 1000, 12345678901234567890]
    for v in values:
        await c.ok({"type": "publish", "channel": "room", "data": v})
        msg = await other.recv()
        assert msg["data"] == v and type(msg["data"]) is type(v), (v, msg)
    await other.close()


async def test_channel_edge_values_are_valid(c: Conn) -> None:
    for channel in ("a", "x" * 256, "é" * 128, "with space/and?star", "UPPER/lower",
                    "_metered", "metered/x", "__system/x", "x/_system/y", "💬" * 64):
        _, snap = await c.subscribe(channel)
        assert snap["channel"] == channel


# ---------------------------------------------------------------------------------------------
# malformed_message


@pytest.mark.parametrize(
    "payload",
    ["hello", "", " ", "{", '{"type":"ping"', "[]", '["subscribe"]', "1", "null", '"ping"',
     "true", '{"type":"ping"} {}', "{'type': 'ping'}", "\ufeff{}"],
    ids=lambda p: repr(p)[:20],
)
async def test_non_object_frames_are_malformed(c: Conn, payload: str) -> None:
    await expect_error(c, payload, "malformed_message", None)


@pytest.mark.parametrize(
    "frame",
    [{"requestId": "q"}, {"type": None, "requestId": "q"}, {"type": 5, "requestId": "q"},
     {"type": ["ping"], "requestId": "q"}, {"type": {"x": 1}, "requestId": "q"},
     {"type": True, "requestId": "q"}],
    ids=["missing", "null", "number", "array", "object", "bool"],
)
async def test_type_must_be_a_string(c: Conn, frame: dict[str, Any]) -> None:
    await expect_error(c, frame, "malformed_message", "q")


@pytest.mark.parametrize(
    "rid",
    [5, 1.5, True, [], {}, "", "x" * 129],
    ids=["int", "float", "bool", "list", "dict", "empty", "129-chars"],
)
@pytest.mark.parametrize("kind", ["subscribe", "publish", "send", "unsubscribe"])
async def test_bad_request_ids_are_malformed(c: Conn, rid: Any, kind: str) -> None:
    frame = {"type": kind, "channel": "room", "to": "bob", "data": 1, "requestId": rid}
    await expect_error(c, frame, "malformed_message", None)


async def test_request_id_of_128_chars_is_fine(c: Conn) -> None:
    rid = "r" * 128
    await c.send({"type": "publish", "channel": "room", "data": 1, "requestId": rid})
    assert await c.recv() == {"type": "ack", "requestId": rid}


async def test_request_id_null_means_absent(c: Conn) -> None:
    await c.send({"type": "publish", "channel": "room", "data": 1, "requestId": None})
    await c.alive()


async def test_binary_frame_is_malformed_and_connection_stays(c: Conn) -> None:
    await expect_error(c, b'{"type":"ping"}', "malformed_message", None)
    await expect_error(c, b"\x00\x01\x02", "malformed_message", None)


# ---------------------------------------------------------------------------------------------
# unknown_type


@pytest.mark.parametrize("kind", ["hello", "auth", "PING", "Subscribe", "leave", "", "ack",
                                  "welcome", "message", "direct", "presence"])
async def test_unknown_type(c: Conn, kind: str) -> None:
    await expect_error(c, {"type": kind, "requestId": "u"}, "unknown_type", "u")


async def test_unknown_type_without_request_id(c: Conn) -> None:
    await expect_error(c, {"type": "hello"}, "unknown_type", None)


# ---------------------------------------------------------------------------------------------
# invalid_channel and channel_reserved

BAD_CHANNELS: list[Any] = [
    "", "x" * 257, "é" * 129, "💬" * 65, "a\x00b", "tab\there", "new\nline", "del\x7f",
    "c1\x85", "c1\x9f", 5, None, ["a"], {"a": 1}, True,
]


@pytest.mark.parametrize("channel", BAD_CHANNELS, ids=lambda v: repr(v)[:16])
@pytest.mark.parametrize("kind", ["subscribe", "publish", "unsubscribe"])
async def test_invalid_channel(c: Conn, channel: Any, kind: str) -> None:
    frame = {"type": kind, "channel": channel, "data": 1, "requestId": "q"}
    await expect_error(c, frame, "invalid_channel", "q")


@pytest.mark.parametrize("kind", ["subscribe", "publish"])
async def test_missing_channel_is_invalid(c: Conn, kind: str) -> None:
    await expect_error(c, {"type": kind, "data": 1, "requestId": "q"}, "invalid_channel", "q")


@pytest.mark.parametrize(
    "channel",
    ["_metered/x", "_internal/x", "_system/x", "_METERED/x", "_Internal/y", "_sYsTeM/",
     "_system/deep/er"],
)
@pytest.mark.parametrize("kind", ["subscribe", "publish"])
async def test_channel_reserved(c: Conn, channel: str, kind: str) -> None:
    frame = {"type": kind, "channel": channel, "data": 1, "requestId": "q"}
    await expect_error(c, frame, "channel_reserved", "q")


# ---------------------------------------------------------------------------------------------
# channel_not_authorized and action_not_permitted


async def test_channel_not_authorized(server: RunningServer) -> None:
    pk = server.store.create_key(server.app_id, "publishable", channel_patterns=["room/*"])
    server.reload()
    c = await conn(server.key_url(pk.id))
    await c.subscribe("room/1")
    for frame in ({"type": "subscribe", "channel": "room/1/x"},
                  {"type": "subscribe", "channel": "Room/1"},
                  {"type": "publish", "channel": "lobby", "data": 1}):
        await expect_error(c, {**frame, "requestId": "q"}, "channel_not_authorized", "q")


async def test_publishable_key_default_actions_exclude_send(server: RunningServer) -> None:
    pk = server.store.create_key(server.app_id, "publishable")
    server.reload()
    c = await conn(server.key_url(pk.id))
    other = await conn(server.key_url())
    await expect_error(c, {"type": "send", "to": other.peer_id, "data": 1, "requestId": "q"},
                       "action_not_permitted", "q")
    await c.subscribe("room")
    await c.ok({"type": "publish", "channel": "room", "data": 1})
    assert await other.drain() == []
    await other.close()


@pytest.mark.parametrize(
    ("actions", "frame"),
    [
        (["publish"], {"type": "subscribe", "channel": "room"}),
        (["subscribe"], {"type": "publish", "channel": "room", "data": 1}),
        (["subscribe", "publish"], {"type": "send", "to": "bob", "data": 1}),
    ],
    ids=["no-subscribe", "no-publish", "no-send"],
)
async def test_action_not_permitted(server: RunningServer, actions: list[str],
                                    frame: dict[str, Any]) -> None:
    pk = server.store.create_key(server.app_id, "publishable", actions=actions)
    server.reload()
    c = await conn(server.key_url(pk.id))
    await expect_error(c, {**frame, "requestId": "q"}, "action_not_permitted", "q")


async def test_token_permissions_gate_actions(server: RunningServer) -> None:
    c = await conn(server.token_url("alice", permissions=["subscribe"]))
    await expect_error(c, {"type": "publish", "channel": "r", "data": 1, "requestId": "q"},
                       "action_not_permitted", "q")
    await expect_error(c, {"type": "send", "to": "alice", "data": 1, "requestId": "q"},
                       "action_not_permitted", "q")


# ---------------------------------------------------------------------------------------------
# channel_limit_exceeded


async def test_channel_limit_exceeded_at_101(c: Conn) -> None:
    for i in range(100):
        await c.send({"type": "subscribe", "channel": f"ch/{i}", "requestId": f"s{i}"})
    for i in range(100):
        assert await c.recv() == {"type": "ack", "requestId": f"s{i}"}
        assert (await c.recv())["channel"] == f"ch/{i}"
    await expect_error(c, {"type": "subscribe", "channel": "ch/100", "requestId": "q"},
                       "channel_limit_exceeded", "q")
    # Re-subscribing to a held channel is not a new subscription.
    await c.subscribe("ch/5")
    await c.ok({"type": "unsubscribe", "channel": "ch/0"})
    await c.subscribe("ch/100")
    await expect_error(c, {"type": "subscribe", "channel": "ch/101", "requestId": "q2"},
                       "channel_limit_exceeded", "q2")


# ---------------------------------------------------------------------------------------------
# send: invalid_peer_id and peer_not_found


@pytest.mark.parametrize(
    "to",
    ["", "x" * 129, "álice", "a\x00b", "tab\t", "del\x7f", 5, None, ["bob"], {"id": "bob"}],
    ids=lambda v: repr(v)[:16],
)
async def test_invalid_peer_id(c: Conn, to: Any) -> None:
    await expect_error(c, {"type": "send", "to": to, "data": 1, "requestId": "q"},
                       "invalid_peer_id", "q")


async def test_missing_to_is_invalid_peer_id(c: Conn) -> None:
    await expect_error(c, {"type": "send", "data": 1, "requestId": "q"}, "invalid_peer_id", "q")


async def test_peer_not_found(c: Conn, server: RunningServer) -> None:
    await expect_error(c, {"type": "send", "to": "nobody", "data": 1, "requestId": "q"},
                       "peer_not_found", "q")
    gone = await conn(server.token_url("gone"))
    await gone.close()
    # The server drops "gone" once it has handled the close; ask until it has.
    reply = await wait_for(lambda: c.request({"type": "send", "to": "gone", "data": 1}), 5,
                           "a send to a peer that disconnected is refused",
                           until=lambda r: r["type"] == "error")
    assert reply["code"] == "peer_not_found"
    await c.alive()


async def test_peer_ids_are_case_sensitive(c: Conn, server: RunningServer) -> None:
    bob = await conn(server.token_url("bob"))
    await expect_error(c, {"type": "send", "to": "BOB", "data": 1, "requestId": "q"},
                       "peer_not_found", "q")
    await bob.close()


# ---------------------------------------------------------------------------------------------
# missing_data


@pytest.mark.parametrize(
    "frame",
    [{"type": "publish", "channel": "room"}, {"type": "send", "to": "SELF"}],
    ids=["publish", "send"],
)
async def test_missing_data(c: Conn, frame: dict[str, Any]) -> None:
    frame = {k: (c.peer_id if v == "SELF" else v) for k, v in frame.items()}
    await expect_error(c, {**frame, "requestId": "q"}, "missing_data", "q")


# ---------------------------------------------------------------------------------------------
# over_message_quota


async def test_over_message_quota(server: RunningServer) -> None:
    server.store.update_limits(server.app_id, max_messages_per_period=3)
    server.reload()
    c = await conn(server.key_url())
    other = await conn(server.key_url())
    await other.subscribe("room")
    await c.ok({"type": "publish", "channel": "room", "data": 1})
    await c.ok({"type": "send", "to": other.peer_id, "data": 2})
    await c.ok({"type": "publish", "channel": "room", "data": 3})
    await expect_error(c, {"type": "publish", "channel": "room", "data": 4, "requestId": "q"},
                       "over_message_quota", "q")
    await expect_error(c, {"type": "send", "to": other.peer_id, "data": 5, "requestId": "q"},
                       "over_message_quota", "q")
    # Without a requestId the soft drop is still reported, uncorrelated.
    await expect_error(c, {"type": "publish", "channel": "room", "data": 6},
                       "over_message_quota", None)
    # Subscribing is not a message; the quota is per app.
    await c.subscribe("room")
    d = await conn(server.key_url())
    await server.settle()  # cluster mode: the nodes share message counts every sync interval
    await expect_error(d, {"type": "publish", "channel": "room", "data": 7, "requestId": "q"},
                       "over_message_quota", "q")
    frames = await other.drain()
    assert [f.get("data") for f in frames if f["type"] != "presence"] == [1, 2, 3]
    # Inbound delivery is never blocked by the quota: presence still flows.
    assert [f["type"] for f in frames if f["type"] == "presence"] == ["presence"]
    await other.close()


async def test_quota_edits_reach_open_connections(server: RunningServer) -> None:
    """A quota set, lowered or lifted while a connection is open applies to its next
    message (the session keeps the quota rather than looking it up per message)."""
    c = await conn(server.key_url())
    other = await conn(server.key_url())
    await c.ok({"type": "send", "to": other.peer_id, "data": 1, "requestId": "a"})
    server.store.update_limits(server.app_id, max_messages_per_period=1)
    server.reload()
    await expect_error(c, {"type": "send", "to": other.peer_id, "data": 2, "requestId": "q"},
                       "over_message_quota", "q")
    server.store.update_limits(server.app_id, max_messages_per_period=1000)
    server.reload()
    await c.ok({"type": "send", "to": other.peer_id, "data": 3, "requestId": "b"})
    frames = await other.drain()
    assert [f.get("data") for f in frames if f["type"] == "direct"] == [1, 3]
    await other.close()


async def test_errors_leave_the_connection_usable(c: Conn, server: RunningServer) -> None:
    other = await conn(server.key_url())
    await other.subscribe("room")
    bad: list[Any] = [
        "nope", "[]", {"type": 1}, {"type": "x"}, {"type": "subscribe", "channel": ""},
        {"type": "subscribe", "channel": "_system/a"}, {"type": "send", "to": ""},
        {"type": "send", "to": "ghost", "data": 1}, {"type": "publish", "channel": "room"},
        b"\x01",
    ]
    for frame in bad:
        await c.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))
    replies = [await c.recv() for _ in bad]
    assert all(r["type"] == "error" for r in replies), replies
    await c.ok({"type": "publish", "channel": "room", "data": "still here"})
    msgs = [f for f in await other.drain() if f["type"] == "message"]
    assert [m["data"] for m in msgs] == ["still here"]
    await other.close()
