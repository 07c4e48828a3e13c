"""Pattern subscriptions (docs/protocol.md, Pattern subscriptions). In the cluster pass the
clients of one test sit on different nodes: the same guarantees hold across nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from srvkit import Conn, claims_for, conn, new_app, signed, token_url

from conftest import RunningServer, start_server


async def subscribe_pattern(c: Conn, pattern: str, **kw: Any) -> None:
    """Subscribe to a pattern: an ack and nothing else (no presence snapshot)."""
    rid = c.rid()
    await c.send({"type": "subscribe", "channel": pattern, "requestId": rid, **kw})
    assert await c.recv() == {"type": "ack", "requestId": rid}


async def next_message(c: Conn) -> dict[str, Any]:
    """The next frame, which must be a message: nothing (presence, other channels) comes
    before it."""
    frame = await c.recv(5)
    assert frame["type"] == "message", frame
    return frame


async def test_a_pattern_delivers_the_channels_it_matches(server: RunningServer) -> None:
    sub = await conn(server.key_url())
    deep = await conn(server.key_url())
    pub = await conn(server.key_url())
    await subscribe_pattern(sub, "devices/*/events")
    await subscribe_pattern(deep, "devices/**")
    for channel in ("devices/a/events", "devices/a/b/events", "devices/a/state", "other/x",
                    "devices/b/events", "devices/*/events"):
        await pub.ok({"type": "publish", "channel": channel, "data": channel})
    for channel in ("devices/a/events", "devices/b/events", "devices/*/events"):
        assert await next_message(sub) == {"type": "message", "channel": channel,
                                           "from": pub.peer_id, "data": channel}
    for channel in ("devices/a/events", "devices/a/b/events", "devices/a/state",
                    "devices/b/events", "devices/*/events"):
        assert (await next_message(deep))["channel"] == channel
    # The publisher's own publishes never come back, through a pattern either.
    await subscribe_pattern(pub, "devices/**")
    await pub.ok({"type": "publish", "channel": "devices/c/events", "data": 1})
    await sub.ok({"type": "publish", "channel": "devices/d/events", "data": 2})
    assert (await next_message(pub))["data"] == 2


async def test_a_pattern_subscriber_is_no_member(server: RunningServer) -> None:
    """No presence either way: the pattern subscriber hears no joined/left, and is in no
    channel's snapshot."""
    watcher = await conn(server.key_url())
    await subscribe_pattern(watcher, "rooms/*")
    member = await conn(server.key_url())
    _, snap = await member.subscribe("rooms/1")
    assert snap["joined"] == [], snap
    other = await conn(server.key_url())
    _, snap = await other.subscribe("rooms/1")
    assert [e["peerId"] for e in snap["joined"]] == [member.peer_id]
    await other.close()
    await member.ok({"type": "publish", "channel": "rooms/1", "data": "marker"})
    assert (await next_message(watcher))["data"] == "marker"


async def test_each_message_arrives_once_per_connection(server: RunningServer) -> None:
    """A connection subscribed to a channel and to two patterns matching it gets one copy,
    with the sender's metadata when any of its subscriptions asked for it."""
    c = await conn(server.key_url())
    await c.subscribe("feeds/a")
    await subscribe_pattern(c, "feeds/*")
    await subscribe_pattern(c, "feeds/**", includeSenderMetadata=True)
    pub = await conn(server.token_url("alice", peer_metadata={"name": "Alice"}))
    for n, channel in enumerate(("feeds/a", "feeds/b", "feeds/b/c")):
        await pub.ok({"type": "publish", "channel": channel, "data": n})
    got = [await next_message(c) for _ in range(3)]
    assert [(m["channel"], m["data"]) for m in got] == [
        ("feeds/a", 0), ("feeds/b", 1), ("feeds/b/c", 2)]
    # Through the channel subscription (no metadata asked), then through the patterns.
    assert "fromMetadata" not in got[0]
    assert got[1]["fromMetadata"] == {"name": "Alice"} == got[2]["fromMetadata"]
    await c.ok({"type": "publish", "channel": "elsewhere", "data": "x"})
    await pub.ok({"type": "publish", "channel": "feeds/a", "data": "last"})
    assert (await next_message(c))["data"] == "last"


async def test_unsubscribe_ends_a_pattern(server: RunningServer) -> None:
    c = await conn(server.key_url())
    await subscribe_pattern(c, "news/*")
    await c.subscribe("marker")
    pub = await conn(server.key_url())
    await pub.ok({"type": "publish", "channel": "news/1", "data": 1})
    assert (await next_message(c))["data"] == 1
    await c.ok({"type": "unsubscribe", "channel": "news/*"})
    await pub.ok({"type": "publish", "channel": "news/2", "data": 2})
    await pub.ok({"type": "publish", "channel": "marker", "data": "marker"})
    assert (await next_message(c))["data"] == "marker"


async def test_a_pattern_counts_once_toward_the_channel_limit(tmp_path: Path) -> None:
    srv = await start_server(tmp_path, max_channels_per_connection=2)
    try:
        c = await conn(srv.key_url())
        await subscribe_pattern(c, "a/**")
        await c.subscribe("b")
        err = await c.error({"type": "subscribe", "channel": "c/*"})
        assert err["code"] == "channel_limit_exceeded", err
        await c.ok({"type": "unsubscribe", "channel": "a/**"})
        await subscribe_pattern(c, "c/*")
    finally:
        await srv.stop()


async def test_a_pattern_needs_a_scope_that_covers_it(server: RunningServer) -> None:
    """Every channel a pattern could match must be allowed: by the key's patterns and by a
    token's ``channels`` when it narrows them."""
    key = server.store.create_key(server.app_id, "secret", channel_patterns=["devices/**"],
                                  actions=["publish", "subscribe", "presence"])
    server.reload()
    c = await conn(token_url(server, signed(server, claims_for("ops"), key=key)))
    for ok in ("devices/*/events", "devices/**", "devices/sensor-*/telemetry"):
        await subscribe_pattern(c, ok)
    for denied in ("**", "dev*", "*/events", "devices*"):
        err = await c.error({"type": "subscribe", "channel": denied})
        assert err["code"] == "channel_not_authorized", (denied, err)
    narrow = await conn(token_url(server, signed(
        server, claims_for("ops2", channels=["devices/a/*"]), key=key)))
    await subscribe_pattern(narrow, "devices/a/*")
    for denied in ("devices/*/x", "devices/a/**"):
        err = await narrow.error({"type": "subscribe", "channel": denied})
        assert err["code"] == "channel_not_authorized", (denied, err)
    # Patterns never widen a publish: `*` in a publish channel is a character.
    err = await narrow.error({"type": "publish", "channel": "devices/*/x", "data": 1})
    assert err["code"] == "channel_not_authorized", err


async def test_bad_patterns_are_refused(server: RunningServer) -> None:
    c = await conn(server.key_url())
    for channel, code in (("a\\q*", "invalid_channel"),
                          ("/".join(["*"] * 33), "invalid_channel"),
                          ("_system/*", "channel_reserved"),
                          ("_Internal/**", "channel_reserved")):
        err = await c.error({"type": "subscribe", "channel": channel})
        assert err["code"] == code, (channel, err)
    _, pk, _ = new_app(server)
    no_sub = server.store.create_key(pk.app_id, "publishable", actions=["publish"])
    server.reload()
    d = await conn(server.key_url(no_sub.id))
    err = await d.error({"type": "subscribe", "channel": "x/*"})
    assert err["code"] == "action_not_permitted", err
    await c.alive()


async def test_backslash_without_a_wildcard_is_a_channel_name(server: RunningServer) -> None:
    """Escapes only mean something in a pattern: ``a\\*b`` has no wildcard, so it is the
    channel of that name (backslash included), as before patterns existed."""
    c = await conn(server.key_url())
    await c.subscribe("a\\*b")
    pub = await conn(server.key_url())
    await pub.ok({"type": "publish", "channel": "a*b", "data": 1})
    await pub.ok({"type": "publish", "channel": "a\\*b", "data": 2})
    assert (await next_message(c))["data"] == 2


async def test_narrowing_the_key_below_a_pattern_closes_4003(server: RunningServer) -> None:
    pk = server.store.create_key(server.app_id, "publishable", channel_patterns=["**"])
    server.reload()
    wide = await conn(server.key_url(pk.id))
    await subscribe_pattern(wide, "new/**/x")
    outside = await conn(server.key_url(pk.id))
    await subscribe_pattern(outside, "*/x")        # could match old/x
    server.store.update_key_scope(pk.id, channel_patterns=["new/**"])
    server.reload()
    assert (await outside.closed())[0] == 4003
    await wide.alive()
