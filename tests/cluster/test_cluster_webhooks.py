"""Webhooks from a 3-node cluster: each lifecycle event is sent once, by the node whose Redis
script made the transition, whichever nodes the members are on; the grace holds across nodes
(a peer that leaves on one node and is back on another within it shows nothing); sequence
numbers are cluster-wide per stream (no gap, no repeat)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.webhooks.receiver import SECRET, Receiver

from conftest import RawClient, RunningServer
from roomwire.server.webhooks.service import outbox_name
from waiting import wait_for

from .conftest import Cluster
from .test_cluster_failures import crash

GRACE = 1.0
#: Delivery waits: the grace, a batch delay, Redis round trips, with a wide margin.
DELIVERY = GRACE + 10.0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def hooked(empty_cluster: Cluster, receiver: Receiver) -> Cluster:
    for _ in range(3):
        await empty_cluster.add(
            webhooks=[{"url": receiver.url, "secret": SECRET}],
            webhook_allowed_networks=["127.0.0.0/8"], webhook_grace=GRACE,
            webhook_batch_delay=0.02)
    return empty_cluster


async def _client(srv: RunningServer, peer: str) -> RawClient:
    return await RawClient.connect(srv.token_url(peer))


async def _marked(cluster: Cluster, receiver: Receiver, tag: str) -> None:
    """Wait until every node has delivered what it emitted so far: a join on a channel of
    its own is reported after every earlier presence change of that node (one Redis
    connection, in order) and an endpoint's events leave a node in order."""
    for i, srv in enumerate(cluster.nodes):
        if not srv.node.accepting:
            continue
        c = await _client(srv, f"marker-{tag}-{i}")
        await c.subscribe(f"marker-{tag}-{i}")
        await wait_for(lambda i=i: receiver.of("peer_joined", f"marker-{tag}-{i}"), DELIVERY,
                       f"node {i}'s marker")
        await c.close()


def _room(receiver: Receiver) -> Counter[tuple[str, str | None]]:
    return Counter((e["type"], e["peerId"]) for e in receiver.events
                   if e["channel"] == "room")


def _numbered_once(receiver: Receiver, channel: str) -> None:
    seqs = sorted(e["seq"] for e in receiver.events if e["channel"] == channel)
    assert seqs == list(range(1, len(seqs) + 1)), seqs


async def test_each_event_once_from_three_nodes(hooked: Cluster, receiver: Receiver) -> None:
    a0 = await _client(hooked[0], "alice")
    a1 = await _client(hooked[1], "alice")  # alice twice, on two nodes
    bob = await _client(hooked[1], "bob")
    carol = await _client(hooked[2], "carol")
    for c in (a0, a1, bob, carol):
        await c.subscribe("room")
    await a0.request({"type": "unsubscribe", "channel": "room"})  # alice still on node 1
    for c in (a1, bob, carol):
        await c.request({"type": "unsubscribe", "channel": "room"})
    await wait_for(lambda: receiver.of("channel_vacated", "room"), DELIVERY, "the vacated room")
    await _marked(hooked, receiver, "a")
    assert _room(receiver) == Counter({
        ("channel_occupied", None): 1, ("channel_vacated", None): 1,
        ("peer_joined", "alice"): 1, ("peer_joined", "bob"): 1, ("peer_joined", "carol"): 1,
        ("peer_left", "alice"): 1, ("peer_left", "bob"): 1, ("peer_left", "carol"): 1})
    _numbered_once(receiver, "room")
    # Connection events come from the node holding the socket: one per socket.
    assert Counter(e["peerId"] for e in receiver.of("peer_connected")
                   if not e["peerId"].startswith("marker")) == Counter(
        {"alice": 2, "bob": 1, "carol": 1})
    assert receiver.duplicates == 0 and receiver.refused == []
    for c in (a0, a1, bob, carol):
        await c.close()


async def test_grace_holds_across_nodes(hooked: Cluster, receiver: Receiver) -> None:
    alice = await _client(hooked[0], "alice")
    await alice.subscribe("room")
    await wait_for(lambda: _room(receiver)[("peer_joined", "alice")], DELIVERY, "alice joined")
    await alice.close()  # leaves on node 0 ...
    again = await _client(hooked[2], "alice")  # ... and is back on node 2 within the grace
    await again.subscribe("room")
    await _marked(hooked, receiver, "b")
    # The markers were joined after the grace of alice's leave began; wait the grace out on
    # the node that holds it, then look again.
    await wait_for(lambda: hooked[0].node.webhooks.grace, GRACE * 3 + 5, "node 0's grace over",
                   until=lambda g: len(g) == 0)
    await _marked(hooked, receiver, "c")
    assert _room(receiver) == Counter({("channel_occupied", None): 1,
                                       ("peer_joined", "alice"): 1})
    await again.close()


async def test_reaped_node_members_leave_once(hooked: Cluster, receiver: Receiver) -> None:
    bob = await _client(hooked[1], "bob")
    await bob.subscribe("room")
    await wait_for(lambda: _room(receiver)[("peer_joined", "bob")], DELIVERY, "bob joined")
    # Node 1 dies without saying goodbye: a survivor reaps it and reports bob's leave.
    await crash(hooked[1])
    await wait_for(lambda: receiver.of("channel_vacated", "room"), DELIVERY + 10,
                   "the room vacated by the reaper")
    await _marked(hooked, receiver, "d")
    assert _room(receiver) == Counter({
        ("channel_occupied", None): 1, ("peer_joined", "bob"): 1, ("peer_left", "bob"): 1,
        ("channel_vacated", None): 1})
    _numbered_once(receiver, "room")
    await bob.ws.close()



async def test_rolling_restart_does_not_flap(hooked: Cluster, receiver: Receiver,
                                             tmp_path: Path) -> None:
    alice = await _client(hooked[0], "alice")
    await alice.subscribe("room")
    await wait_for(lambda: _room(receiver)[("peer_joined", "alice")], DELIVERY, "alice joined")
    # Node 0 is deployed: going_away, its sockets close, alice comes back on node 1 (as an
    # SDK does after retryAfterMs) while node 0 is still shutting down.
    stopping = asyncio.get_running_loop().create_task(hooked[0].node.shutdown())
    assert (await alice.recv_type("going_away", timeout=5.0))["type"] == "going_away"
    code, _ = await alice.closed(timeout=5.0)
    assert code == 1001  # her socket on node 0 is gone: her leave is held there now
    # She is back late: node 0 has already left the cluster (its broker stopped), only its
    # webhook service is still finishing.
    await wait_for(lambda: hooked[0].node.broker.healthy, DELIVERY, "node 0 out of Redis",
                   until=lambda up: not up)
    again = await _client(hooked[1], "alice")
    await again.subscribe("room")
    await asyncio.wait_for(stopping, GRACE + 10)
    await _marked(hooked, receiver, "e")
    assert _room(receiver) == Counter({("channel_occupied", None): 1,
                                       ("peer_joined", "alice"): 1})
    # Nor is the leave waiting in node 0's outbox for its next start.
    with sqlite3.connect(tmp_path / "data" / outbox_name("n0")) as db:
        rows = db.execute("SELECT event FROM deliveries").fetchall()
    assert [json.loads(r[0])["type"] for r in rows if "room" in r[0]] == []
    await again.close()
