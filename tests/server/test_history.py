"""roomwire's history and recovery extension (docs/protocol.md, "roomwire extension: history
and recovery"): on one node, and with ``ROOMWIRE_TEST_CLUSTER=3`` on 3 nodes sharing Redis
(history in Redis), consecutive clients of a test landing on different nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from srvkit import Conn, conn, opt_in

from conftest import RunningServer, start_server
from roomwire.server.config import ServerConfig
from waiting import wait_for

RULES = [{"channels": "small/**", "size": 5, "ttl": 60},
         {"channels": "chat/**", "size": 200, "ttl": 60}]


@pytest.fixture
async def hsrv(tmp_path: Path) -> AsyncIterator[RunningServer]:
    srv = await start_server(tmp_path, history=RULES)
    try:
        yield srv
    finally:
        await srv.stop()


async def publish_many(c: Conn, channel: str, values: range) -> None:
    for v in values:
        await c.ok({"type": "publish", "channel": channel, "data": v})


async def recorded(srv: RunningServer, channel: str, offset: int) -> None:
    """Wait until the channel's history holds ``offset``. One node records a publish before
    its ack; in a cluster a publisher that did not opt in is acked at once (as on any
    channel) and Redis records it a moment later, so a test that counts on it waits."""
    ch = srv.node.hub.cluster_history
    if ch is None:
        return
    rule = ch.rule(srv.app_id, channel)
    assert rule is not None

    async def top() -> int:
        return (await ch.read(srv.app_id, channel, rule, 0, start=False, count=0)).top

    await wait_for(top, 5, f"{channel}'s history in Redis reaches {offset} (top)",
                   until=lambda t: t >= offset)


async def test_a_subscriber_that_comes_back_gets_the_50_it_missed_then_live_ones(
        hsrv: RunningServer) -> None:
    pub = await conn(hsrv.key_url())
    sub = await conn(hsrv.token_url("bob"))
    ack, _ = await opt_in(sub, "chat/a", history=True)
    epoch = ack["history"]["epoch"]
    assert ack["history"] == {"epoch": epoch, "offset": 0} and "recovered" not in ack
    await publish_many(pub, "chat/a", range(3))
    seen = [f for f in await sub.frames_until(
        lambda fs: len(fs) >= 3, what="the first 3 messages")]
    assert [(f["data"], f["offset"], f["epoch"]) for f in seen] == [
        (0, 1, epoch), (1, 2, epoch), (2, 3, epoch)]
    await sub.ws.close()

    await publish_many(pub, "chat/a", range(3, 53))
    await recorded(hsrv, "chat/a", 53)
    back = await conn(hsrv.token_url("bob"))
    ack, _ = await opt_in(back, "chat/a", recover={"epoch": epoch, "offset": 3})
    assert ack["history"] == {"epoch": epoch, "offset": 53} and ack["recovered"] is True, ack
    await publish_many(pub, "chat/a", range(53, 56))
    got = await back.frames_until(lambda fs: len(fs) >= 53, what="50 replayed and 3 live")
    assert all(f["type"] == "message" for f in got), got
    assert [f["data"] for f in got] == list(range(3, 56))
    assert [f["offset"] for f in got] == list(range(4, 57))
    await back.expect_silence(0.3)


async def test_no_gap_and_no_duplicate_while_publishes_race_the_resubscribe(
        hsrv: RunningServer) -> None:
    """A publisher keeps going while the subscriber comes back: every offset exactly once."""
    pub = await conn(hsrv.key_url())
    sub = await conn(hsrv.key_url())
    ack, _ = await opt_in(sub, "chat/race", history=True)
    epoch = ack["history"]["epoch"]
    await sub.ws.close()
    await publish_many(pub, "chat/race", range(20))
    stop = asyncio.Event()

    async def keep_publishing() -> int:
        n = 20
        while not stop.is_set():
            await pub.ok({"type": "publish", "channel": "chat/race", "data": n})
            n += 1
        return n

    task = asyncio.create_task(keep_publishing())
    back = await conn(hsrv.key_url())
    ack, _ = await opt_in(back, "chat/race", recover={"epoch": epoch, "offset": 0})
    assert ack["recovered"] is True, ack
    got = await back.frames_until(lambda fs: len(fs) >= ack["history"]["offset"] + 10,
                                  what="the replay and 10 live messages")
    stop.set()
    total = await task
    got += await back.frames_until(lambda fs: len(got) + len(fs) >= total,
                                   what="every message published")
    assert [f["offset"] for f in got] == list(range(1, total + 1))
    assert [f["data"] for f in got] == list(range(total))


async def test_overflow_gives_recovered_false_and_no_replay(hsrv: RunningServer) -> None:
    pub = await conn(hsrv.key_url())
    sub = await conn(hsrv.key_url())
    ack, _ = await opt_in(sub, "small/a", history=True)
    epoch = ack["history"]["epoch"]
    await sub.ws.close()
    await publish_many(pub, "small/a", range(6))  # the ring keeps 5: message 1 is gone
    await recorded(hsrv, "small/a", 6)
    back = await conn(hsrv.key_url())
    ack, _ = await opt_in(back, "small/a", recover={"epoch": epoch, "offset": 0})
    assert ack["recovered"] is False and ack["history"] == {"epoch": epoch, "offset": 6}, ack
    await pub.ok({"type": "publish", "channel": "small/a", "data": "live"})
    assert await back.recv() == {"type": "message", "channel": "small/a", "from": pub.peer_id,
                                 "data": "live", "offset": 7, "epoch": epoch}
    # From offset 1 the remaining 5 are all kept: that one recovers.
    again = await conn(hsrv.key_url())
    ack, _ = await opt_in(again, "small/a", recover={"epoch": epoch, "offset": 2})
    assert ack["recovered"] is True
    assert await again.messages(5) == [2, 3, 4, 5, "live"]


async def test_ttl_and_a_changed_epoch_give_recovered_false(hsrv: RunningServer) -> None:
    skew = 0.0
    for node in hsrv.nodes:  # publishers' and the recovering subscriber's clocks alike
        real = node.hub.clock
        node.hub.clock = lambda real=real: real() + skew  # type: ignore[misc]
    pub = await conn(hsrv.key_url())
    sub = await conn(hsrv.key_url())
    ack, _ = await opt_in(sub, "chat/ttl", history=True)
    epoch = ack["history"]["epoch"]
    await sub.ws.close()
    await publish_many(pub, "chat/ttl", range(3))
    await recorded(hsrv, "chat/ttl", 3)
    skew = 61.0  # the rule's ttl is 60 s: every missed message has expired
    back = await conn(hsrv.key_url())
    ack, _ = await opt_in(back, "chat/ttl", recover={"epoch": epoch, "offset": 0})
    # (The node's sweep may also have forgotten the idle channel meanwhile: a new epoch.)
    assert ack["recovered"] is False and ack["history"]["offset"] in (0, 3), ack
    ack, _ = await opt_in(back, "chat/ttl", recover={"epoch": "not-it", "offset": 3})
    assert ack["recovered"] is False, ack
    await back.expect_silence(0.3)


async def test_subscribers_that_do_not_opt_in_see_the_frames_of_before(
        hsrv: RunningServer) -> None:
    pub = await conn(hsrv.key_url())
    plain = await conn(hsrv.key_url())
    meta = await conn(hsrv.token_url("carol"))
    opted = await conn(hsrv.key_url())
    await plain.subscribe("chat/mix")
    await meta.subscribe("chat/mix", includeSenderMetadata=True)
    ack, _ = await opt_in(opted, "chat/mix", history=True)
    for c in (plain, meta):
        await c.drain(0.2)  # presence of the others
    await pub.ok({"type": "publish", "channel": "chat/mix", "data": {"n": 1}})
    expected = {"type": "message", "channel": "chat/mix", "from": pub.peer_id, "data": {"n": 1}}
    assert await plain.recv() == expected
    assert await meta.recv() == expected  # a publishable key has no peerMetadata
    assert await opted.recv() == {**expected, "offset": 1, "epoch": ack["history"]["epoch"]}


async def test_the_publish_ack_of_an_opted_in_socket_carries_its_position(
        hsrv: RunningServer) -> None:
    a = await conn(hsrv.key_url())
    ack, _ = await opt_in(a, "chat/own", history=True)
    epoch = ack["history"]["epoch"]
    rid = a.rid()
    await a.send({"type": "publish", "channel": "chat/own", "data": 1, "requestId": rid})
    assert await a.recv() == {"type": "ack", "requestId": rid, "offset": 1, "epoch": epoch}
    # A socket that did not opt in gets the plain ack.
    b = await conn(hsrv.key_url())
    await b.subscribe("chat/own")
    rid = b.rid()
    await b.send({"type": "publish", "channel": "chat/own", "data": 2, "requestId": rid})
    assert await b.recv() == {"type": "ack", "requestId": rid}
    # A repeated subscribe without the extension turns positions off.
    await a.drain(0.2)
    await a.subscribe("chat/own")
    await b.ok({"type": "publish", "channel": "chat/own", "data": 3})
    assert await a.recv() == {"type": "message", "channel": "chat/own", "from": b.peer_id,
                              "data": 3}


async def test_channels_without_history_and_patterns(hsrv: RunningServer) -> None:
    c = await conn(hsrv.key_url())
    pub = await conn(hsrv.key_url())
    ack, _ = await opt_in(c, "lobby", history=True)
    assert ack == {"type": "ack", "requestId": ack["requestId"], "history": None}
    ack, _ = await opt_in(c, "lobby2", recover={"epoch": "e", "offset": 1})
    assert ack == {"type": "ack", "requestId": ack["requestId"], "history": None,
                   "recovered": False}
    await pub.ok({"type": "publish", "channel": "lobby", "data": 1})
    assert await c.recv() == {"type": "message", "channel": "lobby", "from": pub.peer_id,
                              "data": 1}
    rid = c.rid()
    await c.send({"type": "subscribe", "channel": "chat/*", "requestId": rid, "history": True})
    assert await c.recv() == {"type": "ack", "requestId": rid}


@pytest.mark.parametrize("recover", [
    "e:1", {"epoch": "e"}, {"epoch": "", "offset": 1}, {"epoch": "e", "offset": -1},
    {"epoch": "e", "offset": "1"},
])
async def test_a_malformed_recover_is_refused_and_changes_nothing(
        hsrv: RunningServer, recover: Any) -> None:
    c = await conn(hsrv.key_url())
    err = await c.error({"type": "subscribe", "channel": "chat/x", "recover": recover})
    assert err["code"] == "malformed_message" and "recover" in err["message"], err
    pub = await conn(hsrv.key_url())
    await pub.ok({"type": "publish", "channel": "chat/x", "data": 1})
    await c.expect_silence(0.3)


async def test_rest_history(hsrv: RunningServer) -> None:
    pub = await conn(hsrv.token_url("dave"))
    await publish_many(pub, "chat/rest", range(4))
    await recorded(hsrv, "chat/rest", 4)
    sk = hsrv.sk
    auth = {"Authorization": f"Bearer {sk.id}:{sk.secret}"}
    base = hsrv.url.replace("ws://", "http://")

    async with aiohttp.ClientSession() as http:
        async def get(path: str, headers: dict[str, str] = auth) -> tuple[int, Any]:
            async with http.get(base + path, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)

        status, body = await get("/v1/channels/chat%2Frest/history")
        assert status == 200, body
        assert body["offset"] == 4 and body["complete"] is True
        assert [(m["offset"], m["data"], m["from"]) for m in body["messages"]] == [
            (1, 0, "dave"), (2, 1, "dave"), (3, 2, "dave"), (4, 3, "dave")]
        assert all(isinstance(m["time"], float) for m in body["messages"])
        status, body = await get("/v1/channels/chat%2Frest/history?since=1&limit=2&reverse=true")
        assert [m["offset"] for m in body["messages"]] == [4, 3], body
        status, body = await get("/v1/channels/lobby/history")
        assert (status, body["error"]) == (404, "history_not_enabled"), body
        status, body = await get("/v1/channels/chat%2Fnothing/history")
        assert status == 200 and body["messages"] == [] and body["epoch"] is None, body
        for bad in ("limit=0", "limit=1001", "since=-1", "since=x", "reverse=maybe"):
            status, body = await get(f"/v1/channels/chat%2Frest/history?{bad}")
            assert (status, body["error"]) == (400, "invalid_request"), (bad, body)
        status, body = await get("/v1/channels/chat%2Frest/history", headers={})
        assert status == 401
        narrow = hsrv.store.create_key(hsrv.app_id, "secret", channel_patterns=["other/**"])
        nosub = hsrv.store.create_key(hsrv.app_id, "secret", actions=["publish"])
        hsrv.reload()
        for key, code in ((narrow, "channel_not_authorized"), (nosub, "action_not_permitted")):
            status, body = await get("/v1/channels/chat%2Frest/history",
                                     {"Authorization": f"Bearer {key.id}:{key.secret}"})
            assert (status, body["error"]) == (403, code), body


def test_history_is_accepted_in_a_cluster_and_bad_rules_refused_at_start() -> None:
    ServerConfig(history=RULES, redis_url="redis://127.0.0.1:6379/9").validate()
    with pytest.raises(ValueError, match="history rule 1"):
        ServerConfig(history=[{"size": 0, "ttl": 1}]).validate()


async def test_a_gap_too_large_for_the_socket_is_not_replayed(hsrv: RunningServer) -> None:
    """Half the outbound bound (512 KiB): 150 messages of 4 KB are over it, 100 are not."""
    pub = await conn(hsrv.key_url())
    sub = await conn(hsrv.key_url())
    ack, _ = await opt_in(sub, "chat/big", history=True)
    epoch = ack["history"]["epoch"]
    await sub.ws.close()
    blob = "x" * 4000
    for _ in range(150):
        await pub.ok({"type": "publish", "channel": "chat/big", "data": blob})
    await recorded(hsrv, "chat/big", 150)
    back = await conn(hsrv.key_url())
    ack, _ = await opt_in(back, "chat/big", recover={"epoch": epoch, "offset": 0})
    assert ack["recovered"] is False, ack
    ack, _ = await opt_in(back, "chat/big", recover={"epoch": epoch, "offset": 50})
    assert ack["recovered"] is True, ack
    got = await back.frames_until(lambda fs: len(fs) >= 100, what="100 replayed messages")
    assert [f["offset"] for f in got] == list(range(51, 151))
    await back.alive()


async def test_a_server_without_history_answers_the_extension_honestly(
        server: RunningServer) -> None:
    """The default server (no history setting; in the cluster pass, a cluster): an
    opted-in subscribe gets ``history: null``, a recover ``recovered: false``, and the
    messages carry no position. The subscribe still acks, then the snapshot."""
    c = await conn(server.key_url())
    pub = await conn(server.key_url())
    ack, snap = await opt_in(c, "chat/none", history=True)
    assert ack == {"type": "ack", "requestId": ack["requestId"], "history": None}
    assert snap["joined"] == []
    ack, _ = await opt_in(c, "chat/none", recover={"epoch": "e", "offset": 3})
    assert ack == {"type": "ack", "requestId": ack["requestId"], "history": None,
                   "recovered": False}
    await pub.ok({"type": "publish", "channel": "chat/none", "data": 1})
    assert await c.recv(5) == {"type": "message", "channel": "chat/none", "from": pub.peer_id,
                               "data": 1}
