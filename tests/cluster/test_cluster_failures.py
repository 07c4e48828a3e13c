"""Node failure, Redis loss and recovery, and convergence after a partition."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from srvkit import conn

from roomwire.server.broker.redis import RedisBroker
from roomwire.server.broker.wire import Leave
from waiting import wait_equal, wait_for

from .conftest import FAST, Cluster, PrivateRedis, RunningServer, free_port, start_node

ROOM = "room/1"
#: docs/cluster.md: a dead node's peers get `left` within presence_ttl + heartbeat_interval;
#: one more heartbeat for the reaper's own tick, and a second for a loaded 2-core machine.
BOUND = FAST["presence_ttl"] + 2 * FAST["heartbeat_interval"] + 1.0


def broker(srv: RunningServer) -> RedisBroker:
    b = srv.node.broker
    assert isinstance(b, RedisBroker)
    return b


async def crash(srv: RunningServer) -> None:
    """What a node that dies looks like to the others: no goodbye, no more heartbeats, its
    sockets gone without close frames."""
    await broker(srv).crash()
    for s in list(srv.node.sessions):
        if s._raw is not None:
            s._raw.abort()
    await srv.node.stop()


async def test_dead_node_members_leave_within_the_bound(cluster: Cluster) -> None:
    obs = await conn(cluster[0].token_url("obs"))
    await obs.subscribe(ROOM)
    victim = await conn(cluster[1].token_url("victim"))
    await victim.subscribe(ROOM)
    assert (await obs.recv())["joined"] == [{"peerId": "victim"}]
    t0 = time.monotonic()
    await crash(cluster[1])
    frame = await obs.recv(timeout=BOUND + 1)
    assert frame["left"] == [{"peerId": "victim"}], frame
    assert time.monotonic() - t0 < BOUND
    # The survivors no longer route to it, and a direct to the dead peer is refused.
    err = await obs.error({"type": "send", "to": "victim", "data": 1})
    assert err["code"] == "peer_not_found"
    # Its Redis state was reaped: the survivors forget it (within a heartbeat or two).
    await wait_equal(broker(cluster[0]).nodes, [broker(cluster[2]).inst],
                     BOUND, "node 0 knows only node 2 once node 1 died")
    # One survivor claimed the dead node and reaped it; the other left it alone.
    await wait_equal(
        lambda: broker(cluster[0]).stats["reaped"] + broker(cluster[2]).stats["reaped"], 1,
        BOUND, "dead nodes reaped by the survivors")
    assert await broker(cluster[0]).members(cluster[0].app_id, ROOM) == [b'{"peerId":"obs"}']


async def test_graceful_stop_delivers_left_at_once(empty_cluster: Cluster) -> None:
    """A node that shuts down says goodbye: its peers' `left` comes with the shutdown, not
    after the others give up on its heartbeats. A long presence_ttl tells the two apart."""
    ttl = 20.0
    for _ in range(3):
        await empty_cluster.add(presence_ttl=ttl, heartbeat_interval=0.5)
    cluster = empty_cluster
    await wait_for(lambda: [len(broker(srv).nodes()) for srv in cluster.nodes], 5,
                   "the nodes know each other (others known per node)",
                   until=lambda known: known == [2, 2, 2])
    obs = await conn(cluster[0].token_url("obs"))
    await obs.subscribe(ROOM)
    leaver = await conn(cluster[2].token_url("leaver"))
    await leaver.subscribe(ROOM)
    assert (await obs.recv())["joined"] == [{"peerId": "leaver"}]
    t0 = time.monotonic()
    await cluster[2].node.shutdown()
    frame = await obs.recv(timeout=ttl / 2)
    assert frame["left"] == [{"peerId": "leaver"}]
    assert time.monotonic() - t0 < ttl / 2, "`left` came only once the heartbeats expired"


# -- a node in its own process, killed with SIGKILL ------------------------------------------


async def _ready(port: int, timeout: float = 15.0) -> None:
    async with aiohttp.ClientSession() as http:

        async def status() -> int:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                return resp.status

        await wait_equal(status, 200, timeout, f"the node on port {port} reports ready")


async def test_kill_9_of_a_node(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, ROOMWIRE_REDIS_PREFIX=cluster.prefix, ROOMWIRE_CONNECT_RATE_LIMIT="0",
               ROOMWIRE_PRESENCE_TTL=str(FAST["presence_ttl"]),
               ROOMWIRE_HEARTBEAT_INTERVAL=str(FAST["heartbeat_interval"]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomwire", "serve", "--port", str(port), "--data-dir",
         str(cluster[0].data_dir), "--redis-url", cluster.settings["redis_url"]],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await _ready(port)
        obs = await conn(cluster[0].token_url("obs"))
        await obs.subscribe(ROOM)
        remote = await conn(f"ws://127.0.0.1:{port}/v1?token={cluster[0].token('remote')}")
        await remote.subscribe(ROOM)
        assert (await obs.recv())["joined"] == [{"peerId": "remote"}]
        t0 = time.monotonic()
        proc.kill()
        frame = await obs.recv(timeout=BOUND + 1)
        assert frame["left"] == [{"peerId": "remote"}]
        assert time.monotonic() - t0 < BOUND
        # The client reconnects to a surviving node: the others see it join again.
        again = await conn(cluster[2].token_url("remote"))
        await again.subscribe(ROOM)
        assert (await obs.recv())["joined"] == [{"peerId": "remote"}]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


# -- convergence after a partition -----------------------------------------------------------


async def _member_ids(srv: RunningServer) -> list[str]:
    members = await srv.node.hub.members_everywhere(srv.app_id, ROOM)
    return sorted(json.loads(e)["peerId"] for e in members)


async def test_partitioned_node_converges(cluster: Cluster) -> None:
    """Node 0 stops heartbeating long enough for the others to declare it dead (a survivor
    reaps its memberships: `left`). When it comes back it finds its entry gone and starts
    over as a new instance: its sockets get going_away + 1001, the client reconnects, and
    every node agrees on the peer once more (`joined`)."""
    p = await conn(cluster[0].token_url("p"))
    await p.subscribe(ROOM)
    obs = await conn(cluster[1].token_url("obs"))
    _, snap = await obs.subscribe(ROOM)
    assert snap["joined"] == [{"peerId": "p"}], snap
    assert await obs.drain(0.05) == []
    b0 = broker(cluster[0])
    old = b0.inst
    b0.pause_heartbeat()
    frame = await obs.recv(timeout=BOUND + 1)
    assert frame == {"type": "presence", "channel": ROOM, "joined": [],
                     "left": [{"peerId": "p"}]}, frame
    assert await _member_ids(cluster[1]) == ["obs"]
    b0.resume_heartbeat()
    going = await p.recv_type("going_away", timeout=3)
    assert going["type"] == "going_away"
    code, _ = await p.closed()
    assert code == 1001
    await wait_equal(lambda: cluster[0].node.accepting, True, 5,
                     "node 0 accepts sockets again")
    assert b0.inst != old, "node 0 came back as a new instance"
    p = await conn(cluster[0].token_url("p"))
    await p.subscribe(ROOM)
    frame = await obs.recv(timeout=3)
    assert frame["joined"] == [{"peerId": "p"}]
    for srv in cluster.nodes:
        await wait_equal(lambda srv=srv: _member_ids(srv), ["obs", "p"], 3,  # type: ignore[misc]
                         f"node {srv.node.port} lists both members again")
    # And messages flow both ways again.
    await p.ok({"type": "send", "to": "obs", "data": 1})
    assert (await obs.recv_type("direct"))["data"] == 1
    await obs.ok({"type": "publish", "channel": ROOM, "data": 2})
    assert (await p.recv_type("message"))["data"] == 2


async def test_missed_events_are_repaired(cluster: Cluster) -> None:
    """A node that lost a presence event (as after a dropped subscription) notices within
    two heartbeats that the channel moved on in Redis and reads it again."""
    b1 = broker(cluster[1])
    obs = await conn(cluster[1].token_url("obs"))
    heard = b1.stats["received"]
    await obs.subscribe(ROOM)
    # obs's own join comes back to node 1 through Redis as well: the event to lose is the one
    # after it (x's), so wait until that echo is in.
    await wait_for(lambda: b1.stats["received"], 3.0, "node 1 hears obs's own join back",
                   until=lambda n: n > heard)
    b1.lose_events(1)
    x = await conn(cluster[0].token_url("x"))
    await x.subscribe(ROOM)
    frame = await obs.recv(timeout=FAST["heartbeat_interval"] * 3 + 1)
    assert frame == {"type": "presence", "channel": ROOM, "joined": [{"peerId": "x"}],
                     "left": []}, frame
    assert await _member_ids(cluster[1]) == ["obs", "x"]
    assert b1.stats["reloads"] >= 1


async def test_a_leave_between_a_join_and_its_answer_is_not_undone(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The storm's lost `left` (bench/cluster_storm.py): a node newly holding a channel takes
    the members from its join's answer; a `Leave` that reaches its subscription before that
    answer (here the reaper's, for a node that died meanwhile) is held and replayed after
    the snapshot. The peer was in the snapshot and is gone after the replay: nobody on the
    node may see it present, now or later (the view's sequence number equals Redis's, so
    anti-entropy would never repair it)."""
    b1 = broker(cluster[1])
    # The answer of node 1's join waits until the test lets it go: what a busy command
    # connection does while the subscription connection runs ahead.
    answers: list[Any] = []
    send = b1._send

    def holding_send(shard: Any, args: tuple[Any, ...], then: Any = None) -> None:
        if then is not None and args[:2] == ("EVALSHA", shard.join_sha):
            answer = then

            def then(res: Any) -> None:
                answers.append((answer, res))
        send(shard, args, then)

    monkeypatch.setattr(b1, "_send", holding_send)
    victim = await conn(cluster[0].token_url("victim"))
    await victim.subscribe(ROOM)
    p = await conn(cluster[1].token_url("p"))
    await p.send({"type": "subscribe", "channel": ROOM, "requestId": "s"})
    await wait_equal(lambda: len(answers), 1, 3, "node 1's join answered (and held)")
    snapshot_peers = sorted(json.loads(v)["peerId"] for v in answers[0][1][1][1::2])
    assert snapshot_peers == ["p", "victim"], "the join's snapshot lists the victim"
    monkeypatch.setattr(b1, "_send", send)
    await crash(cluster[0])
    # The reaper's Leave reaches node 1, whose view still waits for the snapshot.
    view = b1._views[(cluster[1].app_id, ROOM)].view

    def buffered_leaves() -> list[str]:
        return [e.peer for e in view._buffer if isinstance(e, Leave)]

    await wait_equal(buffered_leaves, ["victim"], BOUND + 1,
                     "the victim's Leave reached node 1 before the join's answer")
    for answer, res in answers:
        answer(res)
    assert await p.recv() == {"type": "ack", "requestId": "s"}
    snap = await p.recv()
    assert snap == {"type": "presence", "channel": ROOM, "joined": [], "left": []}, snap
    assert await _member_ids(cluster[1]) == ["p"]
    # Not even a heartbeat or two later (anti-entropy has run) does the victim come back.
    await p.expect_silence(FAST["heartbeat_interval"] * 3)
    assert [json.loads(e)["peerId"] for e in cluster[1].node.hub.members(
        cluster[1].app_id, ROOM)] == ["p"]


async def test_a_heartbeat_timeout_says_what_timed_out(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A heartbeat round slower than the command timeout takes the node out (and back); the
    operator's log line names the cause (a bare TimeoutError has no text)."""
    b0 = broker(cluster[0])
    beat, timeout = b0._beat, b0.command_timeout
    stalls: list[int] = []

    async def slow_beat() -> None:
        if stalls:
            return await beat()
        stalls.append(1)
        await asyncio.Event().wait()  # a Redis that stops answering, once

    monkeypatch.setattr(b0, "command_timeout", 0.2)
    monkeypatch.setattr(b0, "_beat", slow_beat)
    caplog.set_level("WARNING", logger="roomwire.broker.redis")
    await wait_for(lambda: b0.stats["lost"], FAST["heartbeat_interval"] + 0.2 + 3,
                   "node 0 gave up on its stalled heartbeat", until=lambda n: n >= 1)
    b0.command_timeout = timeout
    lines = [r.getMessage() for r in caplog.records if "lost the cluster" in r.getMessage()]
    assert lines[0] == ("lost the cluster (a heartbeat round took longer than the 0.2 s "
                        "command timeout); closing this node's sockets until it is back"), lines
    assert stalls == [1]


# -- Redis lost and back ---------------------------------------------------------------------


@pytest.fixture
async def pair(tmp_path: Path, private_redis: PrivateRedis) -> AsyncIterator[
        list[RunningServer]]:
    nodes = [await start_node(tmp_path, redis_url=private_redis.url, node_id=f"r{i}", **FAST)
             for i in range(2)]
    try:
        yield nodes
    finally:
        for n in nodes:
            await n.node.stop()


async def _readyz(srv: RunningServer) -> int:
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{srv.node.port}/readyz") as resp:
        return resp.status


async def test_redis_restart_under_load(pair: list[RunningServer],
                                        private_redis: PrivateRedis) -> None:
    a, b = pair
    sub = await conn(b.key_url())
    await sub.subscribe(ROOM)
    pub = await conn(a.key_url())
    seen: list[Any] = []

    async def load() -> None:
        n = 0
        with contextlib.suppress(Exception):
            while True:
                await pub.send({"type": "publish", "channel": ROOM, "data": n})
                n += 1
                await asyncio.sleep(0.002)

    async def read() -> tuple[int | None, str]:
        while True:
            try:
                f = await sub.recv(timeout=5)
            except Exception:
                return None, ""
            if f["type"] == "message":
                seen.append(f["data"])
            if f["type"] == "going_away":
                return await sub.closed()

    loader = asyncio.create_task(load())
    reader = asyncio.create_task(read())
    # Kill Redis while messages are crossing, not before the first one did.
    await wait_for(lambda: len(seen), 5, "messages cross from node a to node b",
                   until=lambda n: n >= 20)
    private_redis.kill()
    code, _ = await asyncio.wait_for(reader, 5)
    loader.cancel()
    assert code == 1001
    assert seen, "no message crossed before the loss"
    assert len(seen) == len(set(seen)), "a message was delivered twice"
    assert seen == sorted(seen)
    await wait_equal(lambda: (a.node.accepting, b.node.accepting), (False, False), 3,
                     "both nodes stop accepting without Redis (accepting a, b)")
    assert await _readyz(a) == 503
    private_redis.start()
    await wait_equal(lambda: (a.node.accepting, b.node.accepting), (True, True), 5,
                     "both nodes accept again once Redis is back (accepting a, b)")
    assert await _readyz(b) == 200
    # Subscriptions come back: clients reconnect and everything flows across nodes again.
    sub2 = await conn(b.token_url("s2"))
    await sub2.subscribe(ROOM)
    pub2 = await conn(a.token_url("p2"))
    _, snap = await pub2.subscribe(ROOM)
    assert snap["joined"] == [{"peerId": "s2"}]
    for n in range(50):
        await pub2.send({"type": "publish", "channel": ROOM, "data": n})
    frames = await sub2.frames_until(
        lambda fs: sum(f["type"] == "message" for f in fs) >= 50, 5, "50 messages")
    assert frames[0] == {"type": "presence", "channel": ROOM, "joined": [{"peerId": "p2"}],
                         "left": []}, frames[0]
    assert [f["data"] for f in frames[1:]] == list(range(50)), frames
    # Nothing twice and nothing else: the resubscribed nodes deliver each publish once.
    assert await sub2.drain(0.2) == []
    assert await pub2.drain(0.05) == []
