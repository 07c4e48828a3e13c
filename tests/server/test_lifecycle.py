"""Limits and connection lifecycle (docs/protocol.md, Limits and lifecycle)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from srvkit import Conn, HandClient, close_received, conn, refused

from conftest import RunningServer, start_node, start_server
from waiting import quiet_period

ROOM = "room/1"
LIMIT = 65536 + 4096  # maxMessageSize + the envelope allowance (docs/protocol.md, Frame size)


def publish_frame_of_size(size: int, channel: str = ROOM) -> str:
    """A publish frame whose UTF-8 length is exactly ``size``."""
    base = json.dumps({"type": "publish", "channel": channel, "data": ""})
    frame = json.dumps({"type": "publish", "channel": channel, "data": "x" * (size - len(base))})
    assert len(frame.encode()) == size
    return frame


# ---------------------------------------------------------------------------------------------
# Frame size


async def test_frame_at_the_limit_is_accepted(server: RunningServer) -> None:
    sub = await conn(server.key_url())
    await sub.subscribe(ROOM)
    c = await conn(server.key_url())
    await c.send(publish_frame_of_size(LIMIT))
    await c.alive()
    msg = await sub.recv()
    assert msg["type"] == "message" and len(msg["data"]) > 65536


async def test_max_message_size_data_fits(server: RunningServer) -> None:
    """A ``data`` of exactly maxMessageSize (what the SDKs' pre-check allows) goes through."""
    sub = await conn(server.key_url())
    await sub.subscribe(ROOM)
    c = await conn(server.key_url())
    data = "y" * (c.welcome["maxMessageSize"] - 2)  # the quotes count
    assert len(json.dumps(data)) == 65536
    await c.ok({"type": "publish", "channel": ROOM, "data": data})
    await c.ok({"type": "send", "to": sub.peer_id, "data": data})
    assert (await sub.recv())["data"] == data
    assert (await sub.recv())["data"] == data


async def test_frame_over_the_limit_closes_1009(server: RunningServer) -> None:
    other = await conn(server.key_url())
    c = await conn(server.key_url())
    await c.send(publish_frame_of_size(LIMIT + 1))
    assert (await c.closed())[0] == 1009
    await other.alive()


async def test_fragmented_message_over_the_limit_closes_1009(server: RunningServer) -> None:
    c = await conn(server.key_url())
    frame = publish_frame_of_size(LIMIT + 1)
    await c.ws.send([frame[:40000], frame[40000:]])
    assert (await c.closed())[0] == 1009


async def test_huge_binary_frame_closes_1009(server: RunningServer) -> None:
    c = await conn(server.key_url())
    await c.send(b"\x00" * (LIMIT + 1))
    assert (await c.closed())[0] == 1009


# ---------------------------------------------------------------------------------------------
# Fragmentation and early frames


async def test_fragmented_text_is_reassembled(server: RunningServer) -> None:
    sub = await conn(server.key_url())
    await sub.subscribe(ROOM)
    c = await conn(server.key_url())
    text = json.dumps({"type": "publish", "channel": ROOM, "data": "héllo ☃ " * 50,
                       "requestId": "f"})
    await c.ws.send([text[:5], text[5:17], text[17:100], text[100:]])
    assert await c.recv() == {"type": "ack", "requestId": "f"}
    assert (await sub.recv())["data"] == "héllo ☃ " * 50
    # A fragmented message up to the limit is accepted too; each frame counts 32 bytes on
    # top of its payload (docs/protocol.md, "Frame size"), and websockets sends the three
    # pieces and then an empty final frame.
    frame = publish_frame_of_size(LIMIT - 4 * 32)
    await c.ws.send([frame[:30000], frame[30000:60000], frame[60000:]])
    await c.alive()
    assert len((await sub.recv())["data"]) > 65536


async def test_hand_made_fragments_with_a_ping_in_between(server: RunningServer) -> None:
    hc = await HandClient.connect(server, f"key={server.pk}")
    await hc.read_json()  # welcome
    text = json.dumps({"type": "ping", "requestId": "frag"}).encode()
    # A UTF-8 character split across fragments is fine once reassembled.
    text2 = json.dumps({"type": "unknown-é", "requestId": "u"}, ensure_ascii=False).encode()
    cut = text2.index("é".encode()) + 1
    hc.writer.write(
        hc.frame(text[:4], opcode=0x1, fin=False)
        + hc.frame(b"", opcode=0x9)  # a control frame between fragments
        + hc.frame(text[4:], opcode=0x0, fin=True)
        + hc.frame(text2[:cut], opcode=0x1, fin=False)
        + hc.frame(text2[cut:], opcode=0x0, fin=True)
    )
    assert await hc.read_json() == {"type": "pong", "requestId": "frag"}
    err = await hc.read_json()
    assert err["code"] == "unknown_type" and err["requestId"] == "u"
    hc.abort()


async def test_fragmented_binary_is_malformed(server: RunningServer) -> None:
    hc = await HandClient.connect(server, f"key={server.pk}")
    await hc.read_json()
    hc.writer.write(hc.frame(b"ab", opcode=0x2, fin=False) + hc.frame(b"cd", opcode=0x0))
    err = await hc.read_json()
    assert err["type"] == "error" and err["code"] == "malformed_message"
    await hc.send_text(json.dumps({"type": "ping"}))
    assert await hc.read_json() == {"type": "pong"}
    hc.abort()


async def test_continuation_without_start_closes_1002(server: RunningServer) -> None:
    hc = await HandClient.connect(server, f"key={server.pk}")
    await hc.read_json()
    hc.writer.write(hc.frame(b'{"type":"ping"}', opcode=0x0, fin=True))
    assert await hc.close_code() == 1002


async def test_frames_before_the_welcome_are_processed_after_it(server: RunningServer) -> None:
    member = await conn(server.key_url())
    await member.subscribe(ROOM)
    early = b"".join(HandClient.frame(json.dumps(f).encode()) for f in (
        {"type": "subscribe", "channel": ROOM, "requestId": "s"},
        {"type": "publish", "channel": ROOM, "data": "early", "requestId": "p"},
        {"type": "ping", "requestId": "z"},
    ))
    hc = await HandClient.connect(server, f"key={server.pk}", early=early)
    welcome = await hc.read_json()
    assert welcome["type"] == "welcome"
    assert await hc.read_json() == {"type": "ack", "requestId": "s"}
    assert await hc.read_json() == {"type": "presence", "channel": ROOM,
                                    "joined": [{"peerId": member.peer_id}], "left": []}
    assert await hc.read_json() == {"type": "ack", "requestId": "p"}
    assert await hc.read_json() == {"type": "pong", "requestId": "z"}
    assert (await member.recv())["joined"] == [{"peerId": welcome["peerId"]}]
    assert await member.recv() == {"type": "message", "channel": ROOM,
                                   "from": welcome["peerId"], "data": "early"}
    hc.abort()


async def test_frames_sent_before_reading_the_welcome(server: RunningServer) -> None:
    c = await conn(server.key_url(), welcome=False)
    await c.send({"type": "subscribe", "channel": ROOM, "requestId": "s"})
    await c.send({"type": "ping"})
    assert (await c.recv())["type"] == "welcome"
    assert await c.recv() == {"type": "ack", "requestId": "s"}
    assert (await c.recv())["type"] == "presence"
    assert await c.recv() == {"type": "pong"}


# ---------------------------------------------------------------------------------------------
# Rate limit: 100/s, burst 200, close 4011; ping does not count


async def test_burst_of_200_requests_is_allowed(server: RunningServer) -> None:
    c = await conn(server.key_url())
    for i in range(200):
        await c.send({"type": "publish", "channel": ROOM, "data": i, "requestId": f"p{i}"})
    for i in range(200):
        assert await c.recv() == {"type": "ack", "requestId": f"p{i}"}
    await c.alive()


@pytest.mark.parametrize(
    "frame",
    [{"type": "publish", "channel": ROOM, "data": 1}, {"type": "subscribe", "channel": ROOM},
     {"type": "send", "to": "nobody", "data": 1}, {"type": "nope"}, "garbage", b"\x00"],
    ids=["publish", "subscribe", "send-error", "unknown-type", "malformed", "binary"],
)
async def test_burst_over_200_closes_4011(server: RunningServer, frame: Any) -> None:
    bystander = await conn(server.key_url())
    c = await conn(server.key_url())
    for _ in range(300):
        await c.send(frame)
    assert (await c.closed())[0] == 4011
    await bystander.alive()
    # A new connection gets a fresh bucket.
    d = await conn(server.key_url())
    for i in range(150):
        await d.send({"type": "publish", "channel": ROOM, "data": i})
    await d.alive()


async def test_pings_do_not_count_toward_the_rate_limit(tmp_path: Path) -> None:
    """Pings have their own budget (a burst of 10, see test_exhaustion.py), and spending it
    leaves the request bucket untouched. A request bucket of 20 refilling at 1/s makes the
    difference show: were the 10 pings charged to it, the 20 publishes would close 4011."""
    srv = await start_server(tmp_path, rate_limit=1.0, rate_burst=20)
    try:
        c = await conn(srv.key_url())
        for _ in range(10):
            await c.send({"type": "ping"})
        for i in range(20):
            await c.send({"type": "publish", "channel": ROOM, "data": i, "requestId": f"p{i}"})
        assert [await c.recv() for _ in range(10)] == [{"type": "pong"}] * 10
        for i in range(20):
            assert await c.recv() == {"type": "ack", "requestId": f"p{i}"}
    finally:
        await srv.stop()


# ---------------------------------------------------------------------------------------------
# Slow consumers: a bounded outbound queue, then close 1008


class Flood:
    """A slow consumer (a hand-made client that stops reading, with a small receive buffer),
    a well-behaved subscriber that reads everything, and a publisher, on one channel."""

    def __init__(self, srv: RunningServer) -> None:
        self.srv = srv
        self.got: list[dict[str, Any]] = []
        self.sent = 0

    async def start(self) -> None:
        srv = self.srv
        self.slow = await HandClient.connect(srv, f"key={srv.pk}", rcvbuf=4096)
        self.slow_id = (await self.slow.read_json())["peerId"]
        await self.slow.send_text(json.dumps({"type": "subscribe", "channel": ROOM}))
        assert (await self.slow.read_json())["type"] == "presence"
        self.slow.pause_reading()  # from here on the slow client reads nothing
        self.other = await conn(srv.key_url())
        await self.other.subscribe(ROOM)
        self.reader = asyncio.create_task(self._consume())
        self.pub = await conn(srv.key_url())

    async def _consume(self) -> None:
        while True:
            self.got.append(await self.other.recv(timeout=30))

    async def stop(self) -> None:
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        if hasattr(self, "slow"):
            self.slow.abort()

    def messages(self) -> int:
        return sum(f["type"] == "message" for f in self.got)

    async def until_overflow(self, timeout: float = 5.0) -> None:
        """Publish 32 KB bursts, each only after the well-behaved subscriber has received the
        previous one (so it never lags), until the server reports a queue overflow. The
        overflow counter only bounds the flood; the assertions are on what clients see."""
        deadline = time.monotonic() + timeout
        payload = "z" * 8000
        while self.srv.node.metrics.queue_overflows == 0:
            assert time.monotonic() < deadline, "no outbound queue ever overflowed"
            for _ in range(4):
                await self.pub.send({"type": "publish", "channel": ROOM, "data": payload})
            self.sent += 4
            while self.messages() < self.sent:
                assert time.monotonic() < deadline, "the other subscriber stopped receiving"
                await asyncio.sleep(0.001)


async def test_slow_consumer_is_closed_1008_and_others_keep_going(tmp_path: Path) -> None:
    srv = await start_server(tmp_path, outbound_queue_bytes=65536, rate_limit=0)
    flood = Flood(srv)
    try:
        await flood.start()
        await flood.until_overflow()
        # The publisher and the other subscriber are unaffected.
        await flood.pub.ok({"type": "publish", "channel": ROOM, "data": "after"})
        await flood.pub.alive()
        deadline = time.monotonic() + 3
        while not flood.got or flood.got[-1].get("data") != "after":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert flood.messages() == flood.sent + 1
        await flood.other.send({"type": "ping", "requestId": "o"})
        while flood.got[-1] != {"type": "pong", "requestId": "o"}:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        # When the slow client reads again it finds a 1008 close after what was queued.
        flood.slow.resume_reading()
        assert await flood.slow.close_code(timeout=5) == 1008
        # ... and then the others hear it leave.
        deadline = time.monotonic() + 3
        while not any(f["type"] == "presence" for f in flood.got):
            assert time.monotonic() < deadline, "no left for the slow consumer"
            await asyncio.sleep(0.01)
        assert [f for f in flood.got if f["type"] == "presence"] == [
            {"type": "presence", "channel": ROOM, "joined": [],
             "left": [{"peerId": flood.slow_id}]}]
    finally:
        await flood.stop()
        await srv.stop()


async def test_slow_consumer_that_never_reads_again_is_dropped(tmp_path: Path) -> None:
    """A closed slow consumer must leave its channels even if it never reads again: the
    others hear ``left`` within a couple of seconds."""
    srv = await start_server(tmp_path, outbound_queue_bytes=65536, rate_limit=0)
    flood = Flood(srv)
    try:
        await flood.start()
        await flood.until_overflow()
        deadline = time.monotonic() + 2.5
        while not any(f["type"] == "presence" for f in flood.got):
            assert time.monotonic() < deadline, "the slow consumer is still present"
            await asyncio.sleep(0.02)
        assert [f for f in flood.got if f["type"] == "presence"] == [
            {"type": "presence", "channel": ROOM, "joined": [],
             "left": [{"peerId": flood.slow_id}]}]
    finally:
        await flood.stop()
        await srv.stop()


# ---------------------------------------------------------------------------------------------
# Server keepalive: WebSocket ping every 30 s, close 1011 after a 10 s grace


async def test_keepalive_closes_unresponsive_clients_1011(tmp_path: Path) -> None:
    interval, grace = 0.5, 0.5
    srv = await start_server(tmp_path, ping_interval=interval, ping_grace=grace)
    try:
        deaf = await HandClient.connect(srv, f"key={srv.pk}")
        await deaf.read_json()
        lively = await conn(srv.key_url())  # websockets answers pings by itself
        await lively.subscribe(ROOM)
        t0 = time.monotonic()
        pings = 0
        code = None
        while code is None:
            op, payload = await deaf.read_frame(timeout=3)
            if op == 0x9:
                pings += 1  # never answered
            elif op == 0x8:
                code = int.from_bytes(payload[:2], "big")
        assert code == 1011
        assert pings >= 1
        # A ping after the interval, the close after the grace; 1.5 s more for a loaded box.
        assert time.monotonic() - t0 < interval + grace + 1.5
        # The well-behaved client stays through several more ping rounds.
        await asyncio.sleep(quiet_period(interval))
        await lively.alive()
        assert await lively.drain(0.05) == []
    finally:
        await srv.stop()


# ---------------------------------------------------------------------------------------------
# Graceful shutdown: going_away, a short drain, then close 1001


@pytest.mark.single_node(reason="shuts down one node and expects its port to be closed")
async def test_graceful_shutdown_going_away_then_1001(tmp_path: Path) -> None:
    srv = await start_node(tmp_path)
    clients = [await conn(srv.key_url()), await conn(srv.token_url("alice"))]
    await clients[0].subscribe(ROOM)
    await clients[1].subscribe(ROOM)
    await clients[0].drain(0.05)
    shutdown = asyncio.create_task(srv.node.shutdown())
    for c in clients:
        assert await c.recv() == {"type": "going_away", "retryAfterMs": 1000}
        # Nothing else (not even presence left) comes before the close.
        with pytest.raises(websockets.ConnectionClosed):
            await c.recv(timeout=3)
        assert close_received(c.ws) == 1001
    await asyncio.wait_for(shutdown, 5)
    with pytest.raises(OSError):
        await conn(srv.key_url())


async def test_shutdown_unready_first_then_closes_spread_over_the_drain(tmp_path: Path) -> None:
    """SIGTERM's sequence (docs/operations.md, Rolling restarts): /readyz answers 503 at once
    while the node still serves and still takes sockets for ``shutdown_readiness_delay``; then
    every socket gets going_away, and the 1001 closes come one batch after another over
    ``shutdown_drain``, the last at that bound, with nobody hearing the others leave."""
    delay, drain = 2.0, 1.2
    srv = await start_node(tmp_path, shutdown_readiness_delay=delay, shutdown_drain=drain)
    http = f"http://127.0.0.1:{srv.node.port}/readyz"
    clients = [await conn(srv.token_url(f"p{i}")) for i in range(4)]
    for c in clients:
        await c.subscribe(ROOM)
    for c in clients:
        await c.drain(0.05)
    async with aiohttp.ClientSession() as session:
        async with session.get(http) as resp:
            assert resp.status == 200
        t0 = time.monotonic()
        shutdown = asyncio.create_task(srv.node.shutdown())
        await asyncio.sleep(0)
        async with session.get(http) as resp:
            assert resp.status == 503, "readyz still 200 after the shutdown began"
            assert (await resp.json())["status"] == "draining"
        # Still serving: a newcomer is welcomed and a publish reaches everyone.
        late = await conn(srv.token_url("late"))
        await late.subscribe(ROOM)
        assert (await clients[0].recv())["joined"] == [{"peerId": "late"}]
        await clients[0].send({"type": "publish", "channel": ROOM, "data": "still here"})
        for c in clients[1:]:
            got = [await c.recv() for _ in range(2)]
            assert got[-1]["type"] == "message", got
        assert (await late.recv())["data"] == "still here"
        assert time.monotonic() - t0 < delay, "the checks took longer than the readiness delay"
        everyone = [*clients, late]
        closed_at: list[float] = []
        for c in everyone:
            going = await c.recv(timeout=delay + 5)
            assert going == {"type": "going_away", "retryAfterMs": 1000}
            # The event loop's timers have millisecond resolution (uvloop): a few ms early.
            assert time.monotonic() - t0 >= delay - 0.02, "going_away before the readiness delay"
        # Upgrades are refused now (the load balancer has had its delay to notice).
        with pytest.raises(websockets.InvalidStatus) as refusal:
            await websockets.connect(srv.key_url(), ping_interval=None)
        assert refusal.value.response.status_code == 503

        async def closed(c: Conn) -> None:
            with pytest.raises(websockets.ConnectionClosed):
                frame = await c.recv(timeout=drain + 5)
                raise AssertionError(f"a frame between going_away and the close: {frame}")
            closed_at.append(time.monotonic() - t0)
            assert close_received(c.ws) == 1001

        await asyncio.gather(*(closed(c) for c in everyone))
        await asyncio.wait_for(shutdown, 5)
    closed_at.sort()
    # Five sockets over 1.2 s: batches 0.24 s apart; a loaded machine may bunch a couple.
    assert closed_at[-1] - closed_at[0] >= drain / 2, f"closes not spread: {closed_at}"
    assert closed_at[-1] <= delay + drain + 3, f"the drain overran its bound: {closed_at}"


# ---------------------------------------------------------------------------------------------
# Closing handshake


async def test_server_close_handshake_completes_promptly(server: RunningServer) -> None:
    """After a server-initiated close (here 4010) and the client's close reply, the server
    ends the TCP connection at once; a browser or websockets client only reports the close
    then (for a 4002 that is after ``exp``)."""
    server.store.update_limits(server.app_id, max_connections=0)
    server.reload()
    t0 = time.monotonic()
    ws = await websockets.connect(server.key_url(), ping_interval=None)
    with pytest.raises(websockets.ConnectionClosed):
        await ws.recv()
    elapsed = time.monotonic() - t0
    assert close_received(ws) == 4010
    assert elapsed < 0.5, f"the close took {elapsed:.2f} s"


async def test_refusal_close_handshake_completes_promptly(server: RunningServer) -> None:
    t0 = time.monotonic()
    code, got = await refused(server.key_url("pk_live_unknown"))
    assert (code, got) == (4001, [])
    assert time.monotonic() - t0 < 0.5


async def test_client_close_is_answered(server: RunningServer) -> None:
    c: Conn = await conn(server.key_url())
    t0 = time.monotonic()
    await c.ws.close(4321, "bye")
    assert close_received(c.ws) == 4321
    assert time.monotonic() - t0 < 0.5
