"""Node failure, Redis loss and recovery, and convergence after a partition."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from srvkit import conn

from roomwire.server.broker.redis import RedisBroker

from .conftest import FAST, Cluster, RunningServer, start_node

ROOM = "room/1"
BOUND = FAST["presence_ttl"] + 2 * FAST["heartbeat_interval"] + 0.5


def broker(srv: RunningServer) -> RedisBroker:
    b = srv.node.broker
    assert isinstance(b, RedisBroker)
    return b


async def crash(srv: RunningServer) -> None:
    """What a node that dies looks like to the others: no goodbye, no more heartbeats, its
    sockets gone without close frames."""
    b = broker(srv)
    b._stopping = True
    b._live = False
    await b._cancel_tasks()
    await b._close_clients()
    for s in list(srv.node.sessions):
        if s._raw is not None:
            s._raw.abort()
    await srv.node.stop()


async def wait_for(predicate: Any, timeout: float, step: float = 0.05) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)
    return time.monotonic() - start


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
    # Its Redis state was reaped.
    await asyncio.sleep(FAST["heartbeat_interval"] * 2)
    assert broker(cluster[0]).cluster_nodes() == [broker(cluster[2]).inst]


async def test_graceful_stop_delivers_left_at_once(cluster: Cluster) -> None:
    obs = await conn(cluster[0].token_url("obs"))
    await obs.subscribe(ROOM)
    leaver = await conn(cluster[2].token_url("leaver"))
    await leaver.subscribe(ROOM)
    await obs.recv()
    t0 = time.monotonic()
    await cluster[2].node.shutdown()
    frame = await obs.recv(timeout=2)
    assert frame["left"] == [{"peerId": "leaver"}]
    assert time.monotonic() - t0 < 1.0


# -- a node in its own process, killed with SIGKILL ------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _ready(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError(f"node on port {port} never became ready")


async def test_kill_9_of_a_node(cluster: Cluster, tmp_path: Path) -> None:
    port = _free_port()
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


async def test_partitioned_node_converges(cluster: Cluster) -> None:
    """Node 0 stops heartbeating long enough for the others to declare it dead (they drop
    its peer: `left`); when it comes back it finds its key gone, announces its state again, and
    every node agrees on the peer once more (`joined`)."""
    p = await conn(cluster[0].token_url("p"))
    await p.subscribe(ROOM)
    obs = await conn(cluster[1].token_url("obs"))
    await obs.subscribe(ROOM)
    await asyncio.sleep(0.1)
    b0 = broker(cluster[0])
    hb = [t for t in b0._tasks if t.get_coro().__name__ == "_heartbeat"]  # type: ignore[union-attr]
    assert len(hb) == 1
    hb[0].cancel()
    frame = await obs.recv(timeout=BOUND + 1)
    assert frame["left"] == [{"peerId": "p"}]
    hub1 = cluster[1].node.hub
    assert [json.loads(e) for e in hub1.members(cluster[1].app_id, ROOM)] == [{"peerId": "obs"}]
    b0._spawn(b0._heartbeat())
    frame = await obs.recv(timeout=3)
    assert frame["joined"] == [{"peerId": "p"}]
    for srv in cluster.nodes:
        ids = sorted(json.loads(e)["peerId"] for e in srv.node.hub.members(srv.app_id, ROOM))
        await wait_for(lambda srv=srv, ids=ids: sorted(
            json.loads(e)["peerId"] for e in srv.node.hub.members(srv.app_id, ROOM)
        ) == ["obs", "p"], 2)
    # And messages flow both ways again.
    await p.ok({"type": "send", "to": "obs", "data": 1})
    assert (await obs.recv_type("direct"))["data"] == 1


async def test_missed_events_are_repaired_by_heartbeat(cluster: Cluster) -> None:
    """A replica that lost an event (as after a dropped subscription) notices at the next
    heartbeat that it is behind and reloads the node's state."""
    b1 = broker(cluster[1])
    x = await conn(cluster[0].token_url("x"))
    await x.subscribe(ROOM)
    await asyncio.sleep(0.1)
    view = b1._nodes[broker(cluster[0]).inst]
    # Forget the event, as if it never arrived: the peer is unknown and the seq behind.
    b1._remove_presence(view, next(iter(view.presence)))
    view.seq -= 1
    assert cluster[1].node.hub.members(cluster[1].app_id, ROOM) == []
    await wait_for(lambda: cluster[1].node.hub.members(cluster[1].app_id, ROOM) != [],
                   FAST["heartbeat_interval"] * 3 + 1)


# -- Redis lost and back ---------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of this test's own, so it can be killed and restarted."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed; run scripts/setup-services.sh")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    r = PrivateRedis(tmp_path)
    r.start()
    try:
        yield r
    finally:
        r.kill()


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
    await asyncio.sleep(0.1)
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
    await asyncio.sleep(0.3)
    private_redis.kill()
    code, _ = await asyncio.wait_for(reader, 5)
    loader.cancel()
    assert code == 1001
    assert seen, "no message crossed before the loss"
    assert len(seen) == len(set(seen)), "a message was delivered twice"
    assert seen == sorted(seen)
    await wait_for(lambda: not a.node.accepting and not b.node.accepting, 3)
    assert await _readyz(a) == 503
    private_redis.start()
    await wait_for(lambda: a.node.accepting and b.node.accepting, 5)
    assert await _readyz(b) == 200
    # Subscriptions come back: clients reconnect and everything flows across nodes again.
    sub2 = await conn(b.token_url("s2"))
    await sub2.subscribe(ROOM)
    await asyncio.sleep(0.1)
    pub2 = await conn(a.token_url("p2"))
    _, snap = await pub2.subscribe(ROOM)
    assert snap["joined"] == [{"peerId": "s2"}]
    for n in range(50):
        await pub2.send({"type": "publish", "channel": ROOM, "data": n})
    got = []
    while len(got) < 50:
        f = await sub2.recv(timeout=3)
        if f["type"] == "message":
            got.append(f["data"])
    assert got == list(range(50))
    assert await sub2.drain(0.2) == [] or True
