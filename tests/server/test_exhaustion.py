"""Resource exhaustion: floods and hogs from one client must not cost the others (issue 11).

Each attack is bounded (a few thousand frames, a handful of sockets). While it runs, a client
of *another app* keeps making round trips (a protocol ping once a second, within the ping
budget, and an acked no-op request every 20 ms in between); the server must answer every one
within ``VICTIM_BOUND`` seconds, a bound a loaded 2-core machine meets easily and that the
unfixed server blew through under the full-size attacks (seconds of stall).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from srvkit import HandClient, conn, new_app

from conftest import RunningServer, start_server
from waiting import wait_for

pytestmark = pytest.mark.single_node(reason="limits and counters of one node's front door")

ROOM = "room/1"
LIMIT = 65536 + 4096  # maxMessageSize + the envelope allowance (docs/protocol.md, Frame size)
VICTIM_BOUND = 1.0
#: Margin on top of a configured deadline before a connection must be seen closed.
MARGIN = 3.0


class Victim:
    """A client of another app that pings all along and records each round trip."""

    def __init__(self, srv: RunningServer) -> None:
        self.srv = srv
        self.rtts: list[float] = []
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Victim:
        _app, pk, _sk = new_app(self.srv, "victim")
        self.c = await conn(self.srv.key_url(pk.id))
        self._task = asyncio.create_task(self._run())
        await wait_for(lambda: len(self.rtts), 5, "the victim's first pongs",
                       until=lambda n: n >= 3)
        return self

    async def _run(self) -> None:
        n = 0
        while not self._stop:
            n += 1
            t = time.perf_counter()
            if n % 50 == 1:  # one ping a second: what the budget allows for ever
                rid = f"v{n}"
                await self.c.send({"type": "ping", "requestId": rid})
                expected: dict[str, Any] = {"type": "pong", "requestId": rid}
            else:
                rid = f"u{n}"
                await self.c.send({"type": "unsubscribe", "channel": "nothing", "requestId": rid})
                expected = {"type": "ack", "requestId": rid}
            reply = await self.c.recv(timeout=10)
            assert reply == expected, reply
            self.rtts.append(time.perf_counter() - t)
            await asyncio.sleep(0.02)

    async def __aexit__(self, *exc: object) -> None:
        self._stop = True
        assert self._task is not None
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, 15)

    def check(self) -> None:
        assert self.rtts, "the victim got no answer at all"
        worst = max(self.rtts)
        assert worst < VICTIM_BOUND, (
            f"the other tenant waited {worst * 1000:.0f} ms for an answer "
            f"(median {sorted(self.rtts)[len(self.rtts) // 2] * 1000:.1f} ms)")


async def read_until_close(hc: HandClient, timeout: float = 5.0) -> tuple[int | None, bytes,
                                                                            dict[int, int]]:
    """Read server frames until the close frame: (code, reason, frames seen per opcode)."""
    seen: dict[int, int] = {}
    async with asyncio.timeout(timeout):
        while True:
            try:
                op, payload = await hc.read_frame(timeout)
            except asyncio.IncompleteReadError:
                return None, b"", seen
            seen[op] = seen.get(op, 0) + 1
            if op == 0x8:
                code = int.from_bytes(payload[:2], "big") if payload else None
                return code, payload[2:], seen


# ---------------------------------------------------------------------------------------------
# Item 2: fragments


async def test_empty_continuation_flood_closes_1009_and_others_keep_going(
        server: RunningServer) -> None:
    async with Victim(server) as victim:
        hc = await HandClient.connect(server, f"key={server.pk}")
        await hc.read_json()  # welcome
        empty = hc.frame(b"", opcode=0x0, fin=False)
        hc.writer.write(hc.frame(b'{"type":"pi', opcode=0x1, fin=False) + empty * 5000)
        code, reason, _ = await read_until_close(hc)
        hc.abort()
    assert code == 1009, (code, reason)
    assert b"fragments" in reason, reason
    victim.check()
    # The flooder is gone from the server, its half-built message with it.
    await wait_for(lambda: len(server.node.sessions), 3, "sessions left (the victim's)",
                   until=lambda n: n == 1)


async def test_fragment_count_is_bounded_at_64(server: RunningServer) -> None:
    """64 frames make a message (accepted); a 65th frame closes the socket with 1009."""
    ok = await HandClient.connect(server, f"key={server.pk}")
    await ok.read_json()
    text = json.dumps({"type": "nope", "requestId": "x" * 62}).encode()
    assert len(text) >= 64
    pieces = [text[i:i + 1] for i in range(63)] + [text[63:]]
    ok.writer.write(b"".join(
        ok.frame(p, opcode=0x1 if i == 0 else 0x0, fin=i == len(pieces) - 1)
        for i, p in enumerate(pieces)))
    err = await ok.read_json()
    assert err["code"] == "unknown_type" and err["requestId"] == "x" * 62
    ok.abort()

    bad = await HandClient.connect(server, f"key={server.pk}")
    await bad.read_json()
    pieces = [text[i:i + 1] for i in range(64)] + [text[64:]]
    bad.writer.write(b"".join(
        bad.frame(p, opcode=0x1 if i == 0 else 0x0, fin=i == len(pieces) - 1)
        for i, p in enumerate(pieces)))
    code, reason, seen = await read_until_close(bad)
    bad.abort()
    assert code == 1009, (code, reason)
    assert seen.get(0x1, 0) == 0, "the 65-frame message was processed"


async def test_fragment_overhead_counts_toward_the_frame_limit(server: RunningServer) -> None:
    """Payload alone under the limit, payload plus 32 bytes per frame over it: 1009."""
    hc = await HandClient.connect(server, f"key={server.pk}")
    await hc.read_json()
    frames = 40
    total = LIMIT - frames * 32 + 1
    base = json.dumps({"type": "publish", "channel": ROOM, "data": ""})
    text = json.dumps({"type": "publish", "channel": ROOM,
                       "data": "x" * (total - len(base))}).encode()
    assert len(text) == total and total < LIMIT
    step = -(-total // frames)
    pieces = [text[i:i + step] for i in range(0, total, step)]
    assert len(pieces) == frames
    hc.writer.write(b"".join(
        hc.frame(p, opcode=0x1 if i == 0 else 0x0, fin=i == frames - 1)
        for i, p in enumerate(pieces)))
    code, reason, _ = await read_until_close(hc)
    hc.abort()
    assert (code, reason) == (1009, b"message too big")


async def test_every_fragment_is_charged_to_the_rate_limit(server: RunningServer) -> None:
    """150 requests of 2 frames each are 300 frames: over the burst of 200, so 4011 (with
    one charge per message they would be 150 and pass)."""
    hc = await HandClient.connect(server, f"key={server.pk}")
    await hc.read_json()
    text = json.dumps({"type": "nope"}).encode()
    one = hc.frame(text[:3], opcode=0x1, fin=False) + hc.frame(text[3:], opcode=0x0)
    hc.writer.write(one * 150)
    code, reason, seen = await read_until_close(hc)
    hc.abort()
    assert code == 4011, (code, reason)
    assert seen.get(0x1, 0) < 150, seen


# ---------------------------------------------------------------------------------------------
# Item 9: pings


async def test_websocket_ping_flood_closes_4011(server: RunningServer) -> None:
    before = server.node.metrics.pings_over_budget["websocket"]
    async with Victim(server) as victim:
        hc = await HandClient.connect(server, f"key={server.pk}")
        await hc.read_json()
        hc.writer.write(hc.frame(b"hi", opcode=0x9) * 3000)
        code, reason, seen = await read_until_close(hc)
        hc.abort()
    assert (code, reason) == (4011, b"ping rate limit exceeded")
    # The budget (a burst of 10, 1 more per second) was answered, the flood was not.
    assert 1 <= seen.get(0xA, 0) <= 15, seen
    assert server.node.metrics.pings_over_budget["websocket"] == before + 1
    victim.check()


async def test_protocol_ping_flood_closes_4011(server: RunningServer) -> None:
    async with Victim(server) as victim:
        hc = await HandClient.connect(server, f"key={server.pk}")
        await hc.read_json()
        hc.writer.write(hc.frame(b'{"type":"ping"}') * 3000)
        code, reason, seen = await read_until_close(hc)
        hc.abort()
    assert (code, reason) == (4011, b"ping rate limit exceeded")
    assert 1 <= seen.get(0x1, 0) <= 15, seen
    assert server.node.metrics.pings_over_budget["protocol"] == 1
    victim.check()
    text = server.node.render_metrics()
    assert 'roomwire_pings_over_budget_total{kind="protocol"} 1' in text


async def test_pings_within_the_budget_are_all_answered(tmp_path: Path) -> None:
    """A client pinging steadily at the refill rate is never closed: here a budget of 20/s
    with a burst of 2, and 15 pings of each kind at about 10/s."""
    srv = await start_server(tmp_path, ping_rate=20.0, ping_burst=2)
    try:
        c = await conn(srv.key_url())
        for i in range(15):
            pong = await c.ws.ping()
            async with asyncio.timeout(3):
                await pong
            await c.send({"type": "ping", "requestId": f"p{i}"})
            assert await c.recv() == {"type": "pong", "requestId": f"p{i}"}
            await asyncio.sleep(0.1)  # pacing, not waiting for anything
    finally:
        await srv.stop()


# ---------------------------------------------------------------------------------------------
# Item 3: HTTP connections: deadlines and caps


async def open_raw(srv: RunningServer, data: bytes = b"") -> tuple[asyncio.StreamReader,
                                                                    asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.node.port)
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer


async def read_response(reader: asyncio.StreamReader, timeout: float = 3.0) -> tuple[int, bytes]:
    """(status, body) of one HTTP response with a Content-Length."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return status, await reader.readexactly(length)


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> tuple[float, bytes]:
    """Wait (bounded) for the server to end the connection; (seconds taken, bytes read)."""
    t0 = time.monotonic()
    got = b""
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += chunk
    except TimeoutError:
        raise AssertionError(f"the connection was still open after {timeout:g} s; "
                             f"read {got[:200]!r}") from None
    except ConnectionResetError:
        pass
    return time.monotonic() - t0, got


GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_idle_keepalive_connection_is_closed(tmp_path: Path) -> None:
    srv = await start_server(tmp_path, http_keepalive_timeout=0.5)
    try:
        reader, writer = await open_raw(srv, GET)
        assert (await read_response(reader))[0] == 200
        # Keep-alive works: a second request on the same connection is served ...
        writer.write(GET)
        assert (await read_response(reader))[0] == 200
        # ... and then the idle connection is closed.
        await closed_within(reader, 0.5 + MARGIN)
        writer.close()
    finally:
        await srv.stop()


async def test_half_sent_second_head_is_closed(tmp_path: Path) -> None:
    srv = await start_server(tmp_path, http_keepalive_timeout=0.5)
    try:
        reader, writer = await open_raw(srv, GET)
        assert (await read_response(reader))[0] == 200
        writer.write(b"GET /healthz HTTP/1.1\r\nHo")
        await closed_within(reader, 0.5 + MARGIN)
        writer.close()
    finally:
        await srv.stop()


async def test_silent_and_trickled_first_heads_are_closed(tmp_path: Path) -> None:
    srv = await start_server(tmp_path, http_head_timeout=0.5)
    try:
        silent_r, silent_w = await open_raw(srv)
        _, got = await closed_within(silent_r, 0.5 + MARGIN)
        assert got == b""  # nothing was asked, nothing is answered
        silent_w.close()

        reader, writer = await open_raw(srv)
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200

        async def trickle() -> None:
            for byte in head:
                writer.write(bytes((byte,)))
                await asyncio.sleep(0.05)

        task = asyncio.create_task(trickle())
        try:
            _, got = await closed_within(reader, 0.5 + MARGIN)
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        assert got.startswith(b"HTTP/1.1 408 "), got
        writer.close()
        assert srv.node.metrics.http_timeouts["head"] == 2
    finally:
        await srv.stop()


@pytest.mark.parametrize("authorized", [True, False], ids=["signed-in", "anonymous"])
async def test_trickled_body_is_closed(tmp_path: Path, authorized: bool) -> None:
    """A REST body sent a byte at a time: closed once ``http_body_timeout`` has passed,
    whether the handler is reading it or aiohttp is draining it after a 401."""
    srv = await start_server(tmp_path, http_body_timeout=0.5)
    try:
        auth = f"Authorization: Bearer {srv.sk.id}:{srv.sk.secret}\r\n" if authorized else ""
        reader, writer = await open_raw(srv, (
            "POST /v1/channels/x/publish HTTP/1.1\r\nHost: x\r\n"
            f"{auth}Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        ).encode())

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b" ")
                    await asyncio.sleep(0.05)

        task = asyncio.create_task(trickle())
        try:
            await closed_within(reader, 0.5 + MARGIN)
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        writer.close()
        assert srv.node.metrics.http_timeouts["body"] == 1
        # A complete body on a fresh connection is still served at once.
        reader, writer = await open_raw(srv, (
            f"POST /v1/channels/x/publish HTTP/1.1\r\nHost: x\r\n{auth}"
            "Content-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"data\":1}\n"
        ).encode())
        status, _ = await read_response(reader)
        assert status == (200 if authorized else 401)
        writer.close()
    finally:
        await srv.stop()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def ws_ok(srv: RunningServer, key: str, source: str = "127.0.0.1") -> None:
    async with websockets.connect(srv.key_url(key), ping_interval=None,
                                  local_addr=(source, 0)) as ws:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 3))
        assert welcome["type"] == "welcome", welcome


async def test_per_ip_cap_refuses_logs_counts_and_recovers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="roomwire.gateway")
    srv = await start_server(tmp_path, http_max_connections_per_ip=5,
                             http_keepalive_timeout=60.0)
    hogs: list[asyncio.StreamWriter] = []
    try:
        _app, other_pk, _sk = new_app(srv, "other")
        # Open WebSockets do not hold HTTP slots.
        async with Victim(srv) as victim:
            baseline = open_fds()
            for _ in range(5):
                reader, writer = await open_raw(srv, GET)
                assert (await read_response(reader))[0] == 200
                hogs.append(writer)
            assert srv.node.http_caps.slots.open == 5
            # A sixth connection, plain HTTP or WebSocket, gets a clear answer.
            reader, writer = await open_raw(srv, GET)
            status, body = await read_response(reader)
            assert (status, body) == (429, b"too many open connections from your address\n")
            await closed_within(reader, MARGIN)
            writer.close()
            with pytest.raises(websockets.InvalidStatus) as refused:
                await ws_ok(srv, other_pk.id)
            assert refused.value.response.status_code == 429
            assert srv.node.metrics.http_refused["per_ip"] == 2
            # Another address (all of 127/8 is loopback on Linux) is not held back.
            await ws_ok(srv, other_pk.id, source="127.0.0.2")
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.node.port,
                                                           local_addr=("127.0.0.2", 0))
            writer.write(GET)
            assert (await read_response(reader))[0] == 200
            writer.close()
            lines = [r.getMessage() for r in caplog.records
                     if "connection cap reached" in r.getMessage()]
            assert len(lines) == 1, lines  # rate limited: one line for the burst
            assert "127.0.0.1" in lines[0] and "http_max_connections_per_ip" in lines[0]
            # Closing the hogs lets new clients in; the server's sockets are released too.
            for w in hogs:
                w.close()
            hogs.clear()
            await wait_for(lambda: srv.node.http_caps.slots.open, 3,
                           "HTTP slots held after the hogs left", until=lambda n: n == 0)
            await ws_ok(srv, other_pk.id)
            reader, writer = await open_raw(srv, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            status, body = await read_response(reader)
            writer.close()
            assert status == 200
            assert 'roomwire_http_connections_refused_total{cap="per_ip"} 2' in body.decode()
            await wait_for(open_fds, 3, f"open fds (baseline {baseline})",
                           until=lambda n: n <= baseline)
        victim.check()
    finally:
        for w in hogs:
            w.close()
        await srv.stop()


async def test_total_cap_refuses_with_503(tmp_path: Path) -> None:
    srv = await start_server(tmp_path, http_max_connections=3, http_max_connections_per_ip=0)
    socks: list[socket.socket] = []
    try:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", srv.node.port))
            socks.append(s)
        await wait_for(lambda: srv.node.http_caps.slots.open, 3, "slots taken",
                       until=lambda n: n == 3)
        reader, writer = await open_raw(srv, GET)
        status, body = await read_response(reader)
        assert status == 503 and b"connection limit" in body
        writer.close()
        assert srv.node.metrics.http_refused["total"] == 1
        for s in socks:
            s.close()
        socks.clear()
        await wait_for(lambda: srv.node.http_caps.slots.open, 3, "slots held",
                       until=lambda n: n == 0)
        reader, writer = await open_raw(srv, GET)
        assert (await read_response(reader))[0] == 200
        writer.close()
    finally:
        for s in socks:
            s.close()
        await srv.stop()
