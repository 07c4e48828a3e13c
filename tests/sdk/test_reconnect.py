"""Reconnect over real sockets: restarts, crashes, stalls, long outages, token expiry, every
terminal close code, and the budget running out."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from conftest import RunningServer, start_node
from roomwire.client import ClientState, ReconnectOptions, SignallingClient
from roomwire.client.signalling.transport import WebSocketConnection, websockets_factory
from waiting import quiet_period, wait_for

from .conftest import (
    FAST,
    FakeServer,
    Recorder,
    close_after_welcome,
    close_before_welcome,
    serve_normally,
    welcome,
)

S = ClientState


class Live:
    """A roomwire node that can be shut down, crashed and started again on the same port and
    data directory (so the keys stay valid)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = 0
        self.srv: RunningServer | None = None

    async def start(self) -> RunningServer:
        self.srv = await start_node(self.tmp_path, port=self.port, going_away_retry_after_ms=50,
                                    shutdown_drain=0.02)
        self.port = self.srv.node.port
        return self.srv

    @property
    def server(self) -> RunningServer:
        assert self.srv is not None
        return self.srv

    async def shutdown(self) -> None:
        """Graceful: going_away, then close 1001."""
        await self.server.node.shutdown()
        self.srv = None

    async def crash(self) -> None:
        """Abrupt: sockets dropped without a close frame."""
        await self.server.node.stop()
        self.srv = None

    async def close(self) -> None:
        if self.srv is not None:
            await self.srv.node.stop()


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    lv = Live(tmp_path)
    await lv.start()
    yield lv
    await lv.close()


def counting_factory() -> tuple[list[str], Callable[[str], Any]]:
    """The default factory, counting the connect attempts."""
    urls: list[str] = []
    inner = websockets_factory()

    async def factory(url: str) -> WebSocketConnection:
        urls.append(url)
        return await inner(url)

    return urls, factory


async def assert_delivery(server: RunningServer, client: Recorder, channel: str,
                          data: Any) -> None:
    """A fresh publisher's message on ``channel`` reaches the recorded client."""
    pub = SignallingClient(url=server.url, api_key=server.pk)
    async with pub:
        await pub.publish(channel, data)
        await client.wait("message", lambda e: e.data == data)


async def test_graceful_restart_reconnects_and_resubscribes(
        live: Live, clients: list[SignallingClient]) -> None:
    c = SignallingClient(url=live.server.url, api_key=live.server.pk, reconnect=FAST)
    clients.append(c)
    rec = Recorder(c)
    first = await c.connect()
    await c.subscribe("room/a")
    await c.subscribe("room/b", include_sender_metadata=True)
    await assert_delivery(live.server, rec, "room/a", "before")

    await live.shutdown()
    assert (await rec.wait("going-away")).retry_after_ms == 50
    d = await rec.wait("disconnected")
    assert (d.code, d.will_reconnect) == (1001, True)
    assert c.state is S.RECONNECTING
    await live.start()
    again = await rec.wait("connected", lambda e: e.is_reconnect)
    assert again.peer_id != first.peer_id  # publishable keys get a fresh id per connect
    # The replayed subscribes answer with fresh roster snapshots ...
    await rec.wait("presence", lambda e: e.channel == "room/a", count=2)
    await rec.wait("presence", lambda e: e.channel == "room/b", count=2)
    # ... and delivery works again on both channels.
    await assert_delivery(live.server, rec, "room/a", "after-a")
    await assert_delivery(live.server, rec, "room/b", "after-b")
    assert c.subscriptions == {"room/a": False, "room/b": True}
    assert rec.terminal() == []


async def test_crash_then_restart(live: Live, clients: list[SignallingClient]) -> None:
    c = SignallingClient(url=live.server.url, api_key=live.server.pk, reconnect=FAST)
    clients.append(c)
    rec = Recorder(c)
    await c.connect()
    await c.subscribe("room")
    await live.crash()
    d = await rec.wait("disconnected")
    assert d.will_reconnect and d.code == 1006
    await live.start()
    await rec.wait("connected", lambda e: e.is_reconnect)
    await rec.wait("presence", count=2)
    await assert_delivery(live.server, rec, "room", "back")


async def test_kill_9_of_a_server_process(tmp_path: Path) -> None:
    env = {**os.environ, "ROOMWIRE_CONNECT_RATE_LIMIT": "0"}
    data = str(tmp_path / "data")

    async def spawn(port: int) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "roomwire", "serve", "--port", str(port), "--data-dir", data,
            "--json", "--log-level", "warning", env=env, stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        return proc, json.loads(line)

    proc, info = await spawn(0)
    c = SignallingClient(url=info["url"], api_key=info["publishableKey"], reconnect=FAST)
    rec = Recorder(c)
    try:
        await c.connect()
        await c.subscribe("room")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        d = await rec.wait("disconnected")
        assert d.will_reconnect and d.code == 1006
        proc, _ = await spawn(info["port"])
        await rec.wait("connected", lambda e: e.is_reconnect, timeout=10)
        await rec.wait("presence", count=2)
        pub = SignallingClient(url=info["url"], api_key=info["publishableKey"])
        async with pub:
            await pub.publish("room", "survived")
        await rec.wait("message", lambda e: e.data == "survived")
    finally:
        await c.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()


async def test_server_down_for_several_backoff_steps(
        live: Live, clients: list[SignallingClient]) -> None:
    urls, factory = counting_factory()
    c = SignallingClient(url=live.server.url, api_key=live.server.pk, web_socket_factory=factory,
                         reconnect=ReconnectOptions(initial_delay=0.02, max_delay=0.08,
                                                    jitter=0.2, max_attempts=100),
                         rng=lambda: 0.5)
    clients.append(c)
    rec = Recorder(c)
    await c.connect()
    await c.subscribe("room")
    await live.crash()
    # The first connect, then 6 failed attempts.
    await wait_for(lambda: len(urls), 5, "6 reconnect attempts", until=lambda n: n >= 7)
    assert c.state is S.RECONNECTING
    await live.start()
    await rec.wait("connected", lambda e: e.is_reconnect)
    await rec.wait("presence", count=2)
    await assert_delivery(live.server, rec, "room", "patience")
    assert [e.will_reconnect for e in rec.of("disconnected")] == [True]
    assert [e.new for e in rec.of("state-change")] == [
        S.CONNECTING, S.CONNECTED, S.RECONNECTING, S.CONNECTED]


async def test_budget_running_out_ends_in_one_terminal_event(live: Live) -> None:
    urls, factory = counting_factory()
    c = SignallingClient(url=live.server.url, api_key=live.server.pk, web_socket_factory=factory,
                         reconnect=ReconnectOptions(initial_delay=0.02, max_delay=0.05,
                                                    max_attempts=3))
    rec = Recorder(c)
    stream = c.events()
    await c.connect()
    await live.crash()
    names = [e.name async for e in stream]  # the stream ends when the client gives up
    assert names[-2:] == ["state-change", "disconnected"]
    [term] = rec.terminal()
    assert term.cause == "reconnect_exhausted" and term.code == 1006
    assert [e.will_reconnect for e in rec.of("disconnected")] == [True, False]
    assert c.state is S.CLOSED and len(urls) == 4
    await live.start()
    # Nothing runs after giving up: a stray attempt would come within the 0.05 s max delay.
    await asyncio.sleep(quiet_period(0.05))
    assert len(urls) == 4 and c.state is S.CLOSED
    await c.close()
    assert len(rec.terminal()) == 1  # close() after the give-up adds nothing


async def test_token_refresh_after_4002(live: Live, clients: list[SignallingClient]) -> None:
    minted: list[int] = []

    def provider() -> str:
        ttl = 2 if not minted else 600  # the first token expires almost at once
        minted.append(ttl)
        return live.server.token("erin", ttl=ttl)

    c = SignallingClient(url=live.server.url, token_provider=provider, reconnect=FAST)
    clients.append(c)
    rec = Recorder(c)
    await c.connect()
    await c.subscribe("room")
    d = await rec.wait("disconnected", timeout=5)
    assert (d.code, d.will_reconnect) == (4002, True)
    again = await rec.wait("connected", lambda e: e.is_reconnect)
    assert again.peer_id == "erin" and minted == [2, 600]
    await rec.wait("presence", count=2)
    await assert_delivery(live.server, rec, "room", "fresh token")


@pytest.mark.parametrize("action, code, cause", [
    ("revoke", 4001, "invalid_token"),
    ("suspend", 4012, "account_suspended"),
    ("narrow", 4003, "channel_not_authorized"),
])
async def test_terminal_codes_from_the_server(live: Live, action: str, code: int,
                                              cause: str) -> None:
    srv = live.server
    urls, factory = counting_factory()
    c = SignallingClient(url=srv.url, api_key=srv.pk, web_socket_factory=factory, reconnect=FAST)
    rec = Recorder(c)
    await c.connect()
    await c.subscribe("room/1")
    t = asyncio.create_task(c.publish("room/1", "in flight"))
    if action == "revoke":
        srv.store.revoke_key(srv.pk)
    elif action == "suspend":
        srv.store.set_suspended(srv.app_id, True)
    else:
        srv.store.update_key_scope(srv.pk, channel_patterns=["other/**"])
    srv.reload()
    d = await rec.wait("disconnected")
    assert (d.code, d.will_reconnect, d.cause) == (code, False, cause)
    assert c.state is S.CLOSED
    await asyncio.gather(t, return_exceptions=True)
    await asyncio.sleep(quiet_period(FAST.max_delay))  # time for a wrong reconnect
    assert len(urls) == 1 and len(rec.of("disconnected")) == 1
    await c.close()
    assert len(rec.of("disconnected")) == 1


async def test_admin_disconnect_4020_is_terminal(fake_server: Any) -> None:
    fake: FakeServer = await fake_server(close_after_welcome(4020, "kicked"), serve_normally)
    c = SignallingClient(url=fake.url, api_key="pk_test", reconnect=FAST)
    rec = Recorder(c)
    await c.connect()
    d = await rec.wait("disconnected")
    assert (d.code, d.reason, d.will_reconnect, d.cause) == (4020, "kicked", False,
                                                             "admin_disconnect")
    await asyncio.sleep(quiet_period(FAST.max_delay))  # time for a wrong reconnect
    assert fake.connections == 1 and c.state is S.CLOSED
    assert fake.paths == ["/v1?key=pk_test"]


async def test_terminal_code_during_a_reconnect_attempt(fake_server: Any) -> None:
    fake: FakeServer = await fake_server(close_after_welcome(1011, "oops"),
                                         close_before_welcome(4001, "revoked"))
    c = SignallingClient(url=fake.url, api_key="pk_test", reconnect=FAST)
    rec = Recorder(c)
    await c.connect()
    term = await rec.wait("disconnected", lambda e: not e.will_reconnect)
    assert (term.code, term.reason, term.cause) == (4001, "revoked", "invalid_token")
    assert [e.code for e in rec.of("disconnected")] == [1011, 4001]
    await asyncio.sleep(quiet_period(FAST.max_delay))  # time for a wrong third attempt
    assert fake.connections == 2


async def test_stalled_connection_is_detected_and_replaced(fake_server: Any) -> None:
    received: list[str] = []

    async def silent(ws: ServerConnection) -> None:
        await ws.send(welcome("stalled"))
        async for raw in ws:  # reads, never answers
            received.append(str(raw))

    fake: FakeServer = await fake_server(silent, serve_normally)
    timeout = 0.3
    c = SignallingClient(url=fake.url, api_key="pk_test", reconnect=FAST,
                         inactivity_timeout=timeout)
    rec = Recorder(c)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await c.connect()
    d = await rec.wait("disconnected", timeout=timeout * 20)
    elapsed = loop.time() - t0
    assert (d.code, d.reason, d.will_reconnect) == (4000, "inactivity timeout", True)
    # Not before the timeout; and long before a client without a watchdog would notice
    # anything (never), with room for a loaded machine.
    assert timeout * 0.9 <= elapsed < timeout * 10, elapsed
    pings = await wait_for(lambda: received[:2], 2, "two pings reach the stalled server",
                           until=lambda r: len(r) == 2)
    assert pings == ['{"type":"ping"}', '{"type":"ping"}']  # at timeout / 3 and 2 / 3
    ev = await rec.wait("connected", lambda e: e.is_reconnect)
    assert ev.peer_id == "fake-peer"
    # The healthy server answers the pings: the client stays connected for three timeouts.
    await asyncio.sleep(quiet_period(timeout))
    assert c.state is S.CONNECTED and fake.connections == 2
    await c.close()
