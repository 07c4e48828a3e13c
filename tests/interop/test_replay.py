"""The operator's replay (docs/protocol.md, "Replay for the official SDKs") with the real,
unmodified official SignallingClients: metered-realtime (Python) and @metered-ca/realtime
(JS, in Node). Authenticated by a JWT ``sub`` and subscribed to a channel the ``replay``
setting covers, the client's socket is cut server-side; 50 messages are published while it is
away; it reconnects and resubscribes by itself, and its message handler gets exactly those 50
in order, then the live ones, none twice. A direct sent meanwhile is not replayed, a channel
without replay behaves as before, and past the window nothing is replayed.

History (which replay needs) is refused in a cluster, so these tests start a node of their own
whatever ``ROOMWIRE_TEST_CLUSTER`` says."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest

from conftest import RawClient, RunningServer, start_node

from .conftest import Launch
from .official import OfficialClient
from .test_history import tap_writes

WINDOW = 30.0
HISTORY = [{"channels": "chat/**", "size": 200, "ttl": 60}]
REPLAY = [{"channels": "chat/**", "window": WINDOW}]
CHANNEL = "chat/replay"
LOBBY = "lobby"  # no history, no replay: behaves as before
MISSED = 50
WEB = Path(__file__).resolve().parents[2] / "web"

Event = dict[str, Any]


class Client(Protocol):
    history: list[Event]

    async def next(self, kind: str, *, timeout: float = 5.0,
                   where: Callable[[Event], bool] | None = None, **match: Any) -> Event: ...

    def describe(self, last: int = 40) -> str: ...


class JsClient:
    """The official JS SignallingClient in Node (js/replay_client.mjs), seen through its
    events; the same ``next`` as ``OfficialClient``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.history: list[Event] = []
        self._seen = 0
        self._wake = asyncio.Event()
        self._stderr = b""
        self._pump = asyncio.create_task(self._read())

    @classmethod
    async def launch(cls, url: str, token: str, channels: list[str]) -> JsClient:
        node = shutil.which("node")
        sdk = WEB / "node_modules" / "@metered-ca" / "realtime"
        assert node is not None and sdk.is_dir(), (
            "the official JS SDK is needed: scripts/setup-browser.sh installs node and it")
        proc = await asyncio.create_subprocess_exec(
            node, "--experimental-websocket", "--no-warnings",
            str(Path(__file__).with_name("js") / "replay_client.mjs"), str(WEB), url, token,
            *channels, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            ev = json.loads(line)
            if ev["event"] == "connected":
                ev["is_reconnect"] = ev.pop("isReconnect")
            self.history.append(ev)
            self._wake.set()
        self._wake.set()

    def describe(self, last: int = 40) -> str:
        events = "\n  ".join(json.dumps(e) for e in self.history[-last:])
        return f"[js] last events:\n  {events or '(none)'}\n[js] stderr: {self._stderr!r}"

    async def next(self, kind: str, *, timeout: float = 5.0,
                   where: Callable[[Event], bool] | None = None, **match: Any) -> Event:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i in range(self._seen, len(self.history)):
                ev = self.history[i]
                if (ev["event"] == kind and all(ev.get(k) == v for k, v in match.items())
                        and (where is None or where(ev))):
                    self._seen = i + 1
                    return ev
            remaining = deadline - loop.time()
            if remaining <= 0 or self._pump.done():
                if self.proc.stderr is not None and self._pump.done():
                    self._stderr = await self.proc.stderr.read()
                raise AssertionError(f"js: no {kind} event matching {match} within "
                                     f"{timeout}s\n" + self.describe())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._pump.cancel()


Start = Callable[[RunningServer, str], Any]


@pytest.fixture
async def start_client(official: Launch) -> AsyncIterator[Callable[..., Any]]:
    """``await start_client(kind, srv)``: the official client of ``kind`` ("python" or
    "js"), connected with a JWT for "bob" and subscribed to CHANNEL and LOBBY."""
    js: list[JsClient] = []

    async def start(kind: str, srv: RunningServer) -> Client:
        if kind == "python":
            py: OfficialClient = await official(srv.url, tokens=[srv.token("bob")],
                                                name="python")
            await py.connected()
            await py.subscribe(CHANNEL)
            await py.subscribe(LOBBY)
            return py
        client = await JsClient.launch(srv.url, srv.token("bob"), [CHANNEL, LOBBY])
        js.append(client)
        await client.next("ready", timeout=15)
        return client

    yield start
    for client in js:
        await client.stop()


async def _wait_for(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)


def _bob_subscribed(srv: RunningServer, channel: str) -> bool:
    t = srv.node.hub.tenants.get(srv.app_id)
    room = t.rooms.get(channel) if t is not None else None
    return room is not None and any(link.peer_id == "bob" for link in room.subscribers())


async def _raw_texts(c: RawClient, n: int) -> list[str]:
    """The next ``n`` message frames as the raw text the server sent (presence skipped)."""
    out: list[str] = []
    while len(out) < n:
        text = await asyncio.wait_for(c.ws.recv(), 5)
        if text.startswith('{"type":"message"'):
            out.append(text)
    return out


async def _publish_fast(pub: RawClient, channel: str, values: list[Any]) -> None:
    """Publish ``values`` back to back (pipelined), then wait for every ack: done well
    inside the SDKs' first reconnect delay (0.5 s less 20 % jitter)."""
    rids = []
    for v in values:
        rid = pub.rid()
        rids.append(rid)
        await pub.send({"type": "publish", "channel": channel, "data": v, "requestId": rid})
    acked: set[str] = set()
    while len(acked) < len(rids):
        frame = await pub.recv(5)
        assert frame["type"] == "ack", frame
        acked.add(frame["requestId"])


async def _scenario(kind: str, srv: RunningServer, start: Callable[..., Any], *,
                    skew: float = 0.0) -> tuple[Client, list[Event], list[int], list[bytes],
                                                list[str]]:
    """Cut bob, publish MISSED messages (and one on LOBBY, and a direct) while he is away,
    let him come back, publish one live message on each channel. Returns the client, its
    message events from the cut on, the sizes of the replays the hub gave, the message
    frames written to his new socket for CHANNEL, and those a watcher that stayed got."""
    hub = srv.node.hub
    real_clock = hub.clock
    replays: list[int] = []
    replay_missed = hub.replay_missed

    def counting(link: Any, channel: str, include: bool) -> list[bytes]:
        out = replay_missed(link, channel, include)
        replays.append(len(out))
        return out

    written: list[bytes] = []
    attach = hub.attach

    def tapping_attach(link: Any) -> Any:
        if link.peer_id == "bob":
            tap_writes(link, lambda p: written.append(p) if (
                p.startswith(b'{"type":"message","channel":"' + CHANNEL.encode())) else None)
        return attach(link)

    client = await start(kind, srv)
    pub = await RawClient.connect(srv.token_url("pub"))
    watcher = await RawClient.connect(srv.key_url())
    await watcher.subscribe(CHANNEL)
    reply = await pub.request({"type": "publish", "channel": CHANNEL, "data": "before"})
    assert reply["type"] == "ack", reply
    await client.next("message", channel=CHANNEL, where=lambda e: e["data"] == "before")
    await _raw_texts(watcher, 1)
    mark = len(client.history)

    hub.attach = tapping_attach  # type: ignore[method-assign]
    hub.replay_missed = counting  # type: ignore[method-assign]
    for link in hub.peer_links(srv.app_id, "bob"):
        link.drop()  # type: ignore[attr-defined]
    await _wait_for(lambda: not hub.peer_links(srv.app_id, "bob"), "bob detached")
    if skew:
        hub.clock = lambda: real_clock() + skew
    err = await pub.request({"type": "send", "to": "bob", "data": {"sdp": "stale"}})
    assert (err["type"], err.get("code")) == ("error", "peer_not_found"), err
    await _publish_fast(pub, CHANNEL, [{"n": n} for n in range(MISSED)])
    await _publish_fast(pub, LOBBY, ["lobby missed"])
    live = [t.encode() for t in await _raw_texts(watcher, MISSED)]

    back = await client.next("connected", is_reconnect=True, timeout=15)
    assert back["event"] == "connected"
    await _wait_for(lambda: _bob_subscribed(srv, CHANNEL) and _bob_subscribed(srv, LOBBY),
                    "bob subscribed again by himself", timeout=10)
    await _publish_fast(pub, CHANNEL, ["live"])
    await _publish_fast(pub, LOBBY, ["lobby live"])
    live += [t.encode() for t in await _raw_texts(watcher, 1)]
    await client.next("message", channel=CHANNEL, where=lambda e: e["data"] == "live")
    await client.next("message", channel=LOBBY, where=lambda e: e["data"] == "lobby live")
    # Anything late (a duplicate, a stray replay) would come within this.
    await asyncio.sleep(0.5)
    events = [e for e in client.history[mark:] if e["event"] in ("message", "direct")]
    await pub.close()
    await watcher.close()
    return client, events, replays, written, [x.decode() for x in live]


@pytest.mark.parametrize("kind", ["python", "js"])
async def test_an_official_client_gets_the_50_it_missed_in_order_then_live_ones(
        tmp_path: Path, start_client: Callable[..., Any], kind: str) -> None:
    srv = await start_node(tmp_path, history=HISTORY, replay=REPLAY)
    try:
        client, events, replays, written, live = await _scenario(kind, srv, start_client)
    finally:
        await srv.stop()
    on_channel = [e["data"] for e in events if e["event"] == "message"
                  and e["channel"] == CHANNEL]
    assert on_channel == [{"n": n} for n in range(MISSED)] + ["live"], client.describe(80)
    assert all(e["from"] == "pub" for e in events if e["event"] == "message")
    # The 50 came as the replay of the resubscribe (not live: he was away), once.
    assert sorted(replays) == [0, MISSED], replays  # LOBBY's subscribe is owed nothing
    # Byte for byte what a subscriber that never left got.
    assert [w.decode() for w in written] == live
    # The direct sent while he was away is gone; LOBBY (no replay) only has the live one.
    assert [e for e in events if e["event"] == "direct"] == []
    assert [e["data"] for e in events if e["event"] == "message"
            and e["channel"] == LOBBY] == ["lobby live"]


@pytest.mark.parametrize("kind", ["python", "js"])
async def test_past_the_window_an_official_client_gets_nothing_replayed(
        tmp_path: Path, start_client: Callable[..., Any], kind: str) -> None:
    srv = await start_node(tmp_path, history=HISTORY, replay=REPLAY)
    try:
        client, events, replays, _, _ = await _scenario(kind, srv, start_client,
                                                        skew=WINDOW + 1)
        assert srv.node.hub.replay is not None
        assert srv.node.hub.replay.outcomes["expired"] == 1
    finally:
        await srv.stop()
    assert [(e["channel"], e["data"]) for e in events if e["event"] == "message"] == [
        (CHANNEL, "live"), (LOBBY, "lobby live")], client.describe(80)
    assert replays == [0, 0]


async def _ordering_server(frames_sent: list[str]) -> Any:
    """A scripted server: a welcome, and to every subscribe a message before its ack, the
    ack, the snapshot, and a message after the snapshot (the place roomwire's replay takes).
    Every other request is acknowledged."""
    from websockets.asyncio.server import ServerConnection, serve

    from roomwire.protocol import frames as wire

    async def handle(ws: ServerConnection) -> None:
        await ws.send(wire.encode_welcome("bob", None, 0, 65536, None).decode())
        async for raw in ws:
            frame = json.loads(raw)
            rid = frame.get("requestId")
            if frame.get("type") == "subscribe":
                ch = json.dumps(frame["channel"]).encode()
                script = [
                    wire.encode_message(ch, b'"pub"', b'"before the ack"'),
                    json.dumps({"type": "ack", "requestId": rid}).encode(),
                    wire.encode_presence(ch, [], []),
                    wire.encode_message(ch, b'"pub"', b'"after the snapshot"'),
                ]
                for payload in script:
                    frames_sent.append(payload.decode())
                    await ws.send(payload.decode())
            elif frame.get("type") == "ping":
                await ws.send('{"type":"pong"}')
            elif rid is not None:
                await ws.send(json.dumps({"type": "ack", "requestId": rid}))

    return await serve(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("kind", ["python", "js"])
async def test_the_official_clients_hand_on_a_message_before_the_ack_and_after_the_snapshot(
        official: Launch, kind: str) -> None:
    """What the SDKs accept, as black boxes: a ``message`` for a channel reaches the handler
    whether it arrives before the subscribe's ack or after its snapshot, in arrival order
    (so roomwire may put the replay after the snapshot, where Presence ordering wants it)."""
    sent: list[str] = []
    server = await _ordering_server(sent)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2ln"  # never checked by this server
    try:
        client: Client
        if kind == "python":
            py = await official(url, tokens=[token], name="python")
            await py.connected()
            await py.ok("subscribe", channel=CHANNEL)
            client = py
        else:
            js = await JsClient.launch(url, token, [CHANNEL])
            client = js
        try:
            first = await client.next("message", channel=CHANNEL, timeout=15)
            second = await client.next("message", channel=CHANNEL)
        finally:
            if isinstance(client, JsClient):
                await client.stop()
    finally:
        server.close()
        await server.wait_closed()
    assert [json.loads(f)["type"] for f in sent] == ["message", "ack", "presence", "message"]
    assert [first["data"], second["data"]] == ["before the ack", "after the snapshot"]
