"""Webhooks from real client activity to a real receiver on 127.0.0.1: every event type, the
grace that hides a reconnect, and delivery through a receiver that fails, times out or is down
for a while (every event arrives, in order per stream, none twice after dedup by id)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from conftest import RunningServer, start_node
from roomwire.protocol import CloseCode
from waiting import wait_for

from .conftest import GRACE, client, webhook_settings
from .receiver import Receiver, check_streams

#: Waits derive from the grace and the retry settings of ``webhook_settings`` with a margin
#: for a loaded 2-core machine.
DELIVERY = GRACE + 10.0


async def test_every_event_type_from_client_activity(hooked: RunningServer,
                                                     receiver: Receiver) -> None:
    alice = await client(hooked, "alice", peer_metadata={"name": "Alice"})
    await alice.subscribe("room")
    bob = await client(hooked, "bob")
    await bob.subscribe("room")
    await alice.request({"type": "publish", "channel": "room", "data": {"text": "hi"}})
    await bob.ws.close(code=4000, reason="bye now")
    await alice.request({"type": "unsubscribe", "channel": "room"})
    await wait_for(lambda: receiver.types("room"), DELIVERY, "the room's events",
                   until=lambda t: "channel_vacated" in t)
    assert receiver.types("room") == [
        "channel_occupied", "peer_joined", "peer_joined", "message_published", "peer_left",
        "peer_left", "channel_vacated"]
    joined = receiver.of("peer_joined", "room")
    assert [(e["peerId"], e["data"]["metadata"], e["data"]["members"]) for e in joined] == [
        ("alice", {"name": "Alice"}, 1), ("bob", None, 2)]
    published = receiver.of("message_published")[0]
    assert published["peerId"] == "alice" and published["data"]["data"] == {"text": "hi"}
    assert [e["peerId"] for e in receiver.of("peer_left")] == ["bob", "alice"]
    await wait_for(lambda: receiver.of("peer_disconnected"), DELIVERY, "bob's disconnect")
    gone = receiver.of("peer_disconnected")[0]
    assert gone["peerId"] == "bob" and gone["channel"] is None
    assert (gone["data"]["code"], gone["data"]["reason"]) == (4000, "bye now")
    assert [e["peerId"] for e in receiver.of("peer_connected")] == ["alice", "bob"]
    check_streams(receiver.events)
    assert receiver.refused == [] and receiver.duplicates == 0
    ids = [e["id"] for e in receiver.events]
    assert len(set(ids)) == len(ids)
    await alice.close()


async def test_server_close_code_reaches_peer_disconnected(hooked: RunningServer,
                                                           receiver: Receiver) -> None:
    carol = await client(hooked, "carol")
    # The app's backend disconnects her through the REST API.
    auth = {"Authorization": f"Bearer {hooked.sk.id}:{hooked.sk.secret}"}
    async with aiohttp.ClientSession() as http, http.delete(
            f"http://127.0.0.1:{hooked.node.port}/v1/peers/carol", headers=auth) as resp:
        assert resp.status == 200, await resp.text()
    code, reason = await carol.closed()
    await wait_for(lambda: receiver.of("peer_disconnected"), DELIVERY, "carol's disconnect")
    gone = receiver.of("peer_disconnected")[0]["data"]
    assert (gone["code"], gone["reason"]) == (code, reason)
    assert code == CloseCode.ADMIN_DISCONNECT


async def test_reconnect_within_grace_sends_nothing(hooked: RunningServer,
                                                    receiver: Receiver) -> None:
    alice = await client(hooked, "alice")
    await alice.subscribe("room")
    await wait_for(lambda: receiver.types("room"), DELIVERY, "the room's first events",
                   until=lambda t: t == ["channel_occupied", "peer_joined"])
    await alice.close()
    again = await client(hooked, "alice")
    await again.subscribe("room")
    # A marker: a leave held after the room's would-be leave is released after it, and one
    # endpoint's events are delivered in order, so once it arrives the room's would have.
    await again.subscribe("marker")
    await again.request({"type": "unsubscribe", "channel": "marker"})
    await wait_for(lambda: receiver.of("channel_vacated", "marker"), DELIVERY, "the marker")
    assert receiver.types("room") == ["channel_occupied", "peer_joined"]
    await again.close()


async def _traffic(srv: RunningServer, rounds: int) -> None:
    """A peer connects, joins its own channel, leaves it and disconnects: 6 events."""
    for i in range(rounds):
        c = await client(srv, f"p{i}")
        await c.subscribe(f"ch{i}")
        await c.request({"type": "unsubscribe", "channel": f"ch{i}"})
        await c.close()


def _complete(receiver: Receiver, rounds: int) -> bool:
    return len(receiver.of("peer_disconnected")) == rounds and \
        len(receiver.of("channel_vacated")) == rounds


async def _delivered_through(srv: RunningServer, receiver: Receiver, rounds: int) -> None:
    await wait_for(lambda: len(receiver.events), DELIVERY + 20, "every event delivered",
                   until=lambda _: _complete(receiver, rounds))
    check_streams(receiver.events)
    assert len(receiver.of("peer_joined")) == rounds
    assert receiver.refused == []


async def test_receiver_failing_then_back(hooked: RunningServer, receiver: Receiver) -> None:
    receiver.mode = "fail"
    await _traffic(hooked, 6)
    service = hooked.node.webhooks
    await wait_for(lambda: sum(service.stats.retried.values()), DELIVERY, "retries",
                   until=lambda n: n >= 2)
    assert receiver.events == []
    receiver.mode = "ok"
    await _delivered_through(hooked, receiver, 6)
    assert receiver.requests > len(receiver.events) // 100 + 2


async def test_receiver_timing_out_then_back(tmp_path: Path, receiver: Receiver) -> None:
    srv = await start_node(tmp_path, **webhook_settings(receiver, webhook_timeout=0.3))
    try:
        receiver.mode = "slow"
        receiver.slow_for = 2.0
        await _traffic(srv, 4)
        service = srv.node.webhooks
        await wait_for(lambda: [a.error for a in service.stats.attempts.get(
            next(iter(service.endpoints)), ())], DELIVERY, "a timed-out attempt",
            until=lambda errs: "timeout" in errs)
        receiver.mode = "ok"
        # Answers that came after the timeout may have been kept by the receiver too: dedup
        # by id is what makes that harmless, and check_streams sees each id once.
        await _delivered_through(srv, receiver, 4)
    finally:
        await srv.stop()


async def test_receiver_down_then_back(hooked: RunningServer, receiver: Receiver) -> None:
    port = receiver.port
    await receiver.stop()
    await _traffic(hooked, 5)
    service = hooked.node.webhooks
    await wait_for(lambda: [a.error for a in next(iter(service.stats.attempts.values()), ())],
                   DELIVERY, "a failed connect", until=lambda errs: "connect_failed" in errs)
    await receiver.start(port)
    await _delivered_through(hooked, receiver, 5)
    metrics = hooked.node.render_metrics()
    assert "roomwire_webhook_events_delivered_total" in metrics
    assert receiver.secret not in metrics


async def test_slow_endpoint_does_not_delay_messages_or_others(
        tmp_path: Path, receiver: Receiver) -> None:
    fast = Receiver()
    await fast.start()
    settings: dict[str, Any] = webhook_settings(receiver, webhook_timeout=5.0)
    settings["webhooks"].append({"url": fast.url, "secret": fast.secret})
    srv = await start_node(tmp_path, **settings)
    try:
        receiver.mode = "slow"
        receiver.slow_for = 4.0
        a = await client(srv, "a")
        b = await client(srv, "b")
        await a.subscribe("room")
        await b.subscribe("room")
        await wait_for(lambda: fast.of("peer_joined"), 3.0, "the fast endpoint's events",
                       until=lambda j: len(j) == 2)
        await a.request({"type": "publish", "channel": "room", "data": 1})
        assert (await b.recv_type("message", timeout=1.0))["data"] == 1
        assert receiver.events == []  # still stuck on its first request
    finally:
        await srv.stop()
        await fast.stop()
