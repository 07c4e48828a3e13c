"""The operator's replay (docs/protocol.md, "Replay for the official SDKs") with the real,
unmodified official SignallingClients: metered-realtime (Python) and @metered-ca/realtime
(JS, in Node). Authenticated by a JWT ``sub`` and subscribed to a channel the ``replay``
setting covers, the client's socket is cut server-side; 50 messages are published while it is
away; it reconnects and resubscribes by itself, and its message handler gets exactly those 50
in order, then the live ones, none twice. A direct sent meanwhile is not replayed, a channel
without replay behaves as before, and past the window nothing is replayed.

The same in a cluster of 3 nodes sharing Redis: the client's reconnect reaches another node
than the one it dropped from (a proxy stands for the load balancer), which takes its mark
from Redis. The tests start the nodes they need whatever ``ROOMWIRE_TEST_CLUSTER`` says."""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from conftest import (
    CLUSTER_SETTINGS,
    REDIS_URL,
    RawClient,
    RunningServer,
    _delete_redis_prefix,
    start_node,
)
from waiting import wait_for as _bounded

from .conftest import Launch
from .official import OfficialClient
from .test_history import _RID, tap_writes

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


@pytest.fixture
async def start_client(official: Launch) -> AsyncIterator[Callable[..., Any]]:
    """``await start_client(kind, setup)``: the official client of ``kind`` ("python" or
    "js"), connected through ``setup.url`` with a JWT for "bob" and subscribed to CHANNEL
    and LOBBY."""
    js: list[JsClient] = []

    async def start(kind: str, setup: Setup) -> Client:
        token = setup.entry.token("bob")
        if kind == "python":
            py: OfficialClient = await official(setup.url, tokens=[token], name="python")
            await py.connected()
            await py.subscribe(CHANNEL)
            await py.subscribe(LOBBY)
            return py
        client = await JsClient.launch(setup.url, token, [CHANNEL, LOBBY])
        js.append(client)
        await client.next("ready", timeout=15)
        return client

    yield start
    for client in js:
        await client.stop()


async def _wait_for(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    await _bounded(cond, timeout, what)


def _bob_subscribed(hub: Any, app_id: str, channel: str) -> bool:
    t = hub.tenants.get(app_id)
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


@dataclass
class Setup:
    """Where each party of a scenario connects. One node: all the same server. A cluster:
    bob through ``entry`` (a proxy) to ``first``, then back to ``back``; the publisher and
    the watcher on ``other``."""

    entry: RunningServer
    first: RunningServer
    back: RunningServer
    other: RunningServer
    switch: Callable[[], None] = lambda: None
    """Called once bob is cut: where ``entry`` leads from then on."""
    url: str = ""
    others: list[bytes] = field(default_factory=list)
    """The frames written to bob's new socket that are not about CHANNEL (welcome left out,
    request ids blanked)."""

    @classmethod
    def one(cls, srv: RunningServer) -> Setup:
        return cls(srv, srv, srv, srv, url=srv.url)


async def _scenario(kind: str, setup: Setup, start: Callable[..., Any], *,
                    skew: float = 0.0) -> tuple[Client, list[Event], list[int], list[bytes],
                                                list[str]]:
    """Cut bob, publish MISSED messages (and one on LOBBY, and a direct) while he is away,
    let him come back, publish one live message on each channel. Returns the client, its
    message events from the cut on, the sizes of the replays the returning node gave, the
    message frames written to his new socket for CHANNEL, and those a watcher that stayed
    got."""
    first, back = setup.first.node.hub, setup.back.node.hub
    app_id = setup.first.app_id
    real_clock = back.clock
    replays: list[int] = []
    clustered = back.cluster_ledger is not None
    written: list[bytes] = []
    others = setup.others

    def on_payload(p: bytes) -> None:
        if p.startswith(b'{"type":"message","channel":"' + CHANNEL.encode()):
            written.append(p)
        elif b'"channel":"' + CHANNEL.encode() not in p and not p.startswith(
                b'{"type":"welcome"'):
            others.append(_RID.sub(b'"requestId":"-"', p))

    def tap(link: Any) -> None:
        tap_writes(link, on_payload)

    if clustered:
        finish_missed = back.finish_missed

        def counting_finish(link: Any, channel: str, mark: Any, read: Any) -> Any:
            snapshot, out = finish_missed(link, channel, mark, read)
            if mark is not None:
                replays.append(len(out))
            return snapshot, out

        back.finish_missed = counting_finish  # type: ignore[method-assign]
    else:
        replay_missed = back.replay_missed

        def counting(link: Any, channel: str, include: bool) -> list[bytes]:
            out = replay_missed(link, channel, include)
            replays.append(len(out))
            return out

    attach = back.attach

    def tapping_attach(link: Any) -> Any:
        if link.peer_id == "bob":
            tap(link)
        return attach(link)

    client = await start(kind, setup)
    pub = await RawClient.connect(setup.other.token_url("pub"))
    watcher = await RawClient.connect(setup.other.key_url())
    await watcher.subscribe(CHANNEL)
    reply = await pub.request({"type": "publish", "channel": CHANNEL, "data": "before"})
    assert reply["type"] == "ack", reply
    await client.next("message", channel=CHANNEL, where=lambda e: e["data"] == "before")
    await _raw_texts(watcher, 1)
    mark = len(client.history)

    back.attach = tapping_attach  # type: ignore[method-assign]
    if not clustered:
        back.replay_missed = counting  # type: ignore[method-assign]
    setup.switch()
    for link in first.peer_links(app_id, "bob"):
        link.drop()  # type: ignore[attr-defined]
    await _wait_for(lambda: not first.peer_links(app_id, "bob"), "bob detached")
    if skew:
        back.clock = lambda: real_clock() + skew
    err = await pub.request({"type": "send", "to": "bob", "data": {"sdp": "stale"}})
    assert (err["type"], err.get("code")) == ("error", "peer_not_found"), err
    await _publish_fast(pub, CHANNEL, [{"n": n} for n in range(MISSED)])
    await _publish_fast(pub, LOBBY, ["lobby missed"])
    live = [t.encode() for t in await _raw_texts(watcher, MISSED)]

    came = await client.next("connected", is_reconnect=True, timeout=15)
    assert came["event"] == "connected"
    await _wait_for(lambda: _bob_subscribed(back, app_id, CHANNEL)
                    and _bob_subscribed(back, app_id, LOBBY),
                    "bob subscribed again by himself", timeout=10)
    await _publish_fast(pub, CHANNEL, ["live"])
    await _publish_fast(pub, LOBBY, ["lobby live"])
    live += [t.encode() for t in await _raw_texts(watcher, 1)]
    await client.next("message", channel=CHANNEL, where=lambda e: e["data"] == "live")
    await client.next("message", channel=LOBBY, where=lambda e: e["data"] == "lobby live")
    # A duplicate or a stray replay would reach the handler before a later publication on
    # the same channel (one socket, one order): a last marker on each bounds what came.
    await _publish_fast(pub, CHANNEL, ["end"])
    await _publish_fast(pub, LOBBY, ["lobby end"])
    await client.next("message", channel=CHANNEL, where=lambda e: e["data"] == "end")
    await client.next("message", channel=LOBBY, where=lambda e: e["data"] == "lobby end")
    live += [t.encode() for t in await _raw_texts(watcher, 1)]
    events = [e for e in client.history[mark:] if e["event"] in ("message", "direct")
              and e.get("data") not in ("end", "lobby end")]
    await pub.close()
    await watcher.close()
    return client, events, replays, written, [x.decode() for x in live]


def _check_the_50(client: Client, events: list[Event], replays: list[int],
                  written: list[bytes], live: list[str], clustered: bool) -> None:
    on_channel = [e["data"] for e in events if e["event"] == "message"
                  and e["channel"] == CHANNEL]
    assert on_channel == [{"n": n} for n in range(MISSED)] + ["live"], client.describe(80)
    assert all(e["from"] == "pub" for e in events if e["event"] == "message")
    # The 50 came as the replay of the resubscribe (not live: he was away), once; LOBBY's
    # subscribe is owed nothing (one node: asked and empty; a cluster: never asked).
    assert sorted(replays) == ([MISSED] if clustered else [0, MISSED]), replays
    # Byte for byte what a subscriber that never left got.
    assert [w.decode() for w in written] == live
    # The direct sent while he was away is gone; LOBBY (no replay) only has the live one.
    assert [e for e in events if e["event"] == "direct"] == []
    assert [e["data"] for e in events if e["event"] == "message"
            and e["channel"] == LOBBY] == ["lobby live"]


@pytest.mark.parametrize("kind", ["python", "js"])
async def test_an_official_client_gets_the_50_it_missed_in_order_then_live_ones(
        tmp_path: Path, start_client: Callable[..., Any], kind: str) -> None:
    srv = await start_node(tmp_path / "on", history=HISTORY, replay=REPLAY)
    try:
        setup = Setup.one(srv)
        got = await _scenario(kind, setup, start_client)
    finally:
        await srv.stop()
    _check_the_50(*got, clustered=False)
    # LOBBY, which no rule covers, got the frames a server without replay sends.
    srv = await start_node(tmp_path / "off", history=HISTORY)
    try:
        before = Setup.one(srv)
        _, events, _, _, _ = await _scenario(kind, before, start_client)
    finally:
        await srv.stop()
    assert [e["data"] for e in events if e["event"] == "message"] == ["live", "lobby live"]
    kinds = [json.loads(f)["type"] for f in before.others]
    assert kinds.count("message") == 2 and "presence" in kinds, before.others  # live, end
    assert setup.others == before.others


@pytest.mark.parametrize("kind", ["python", "js"])
async def test_past_the_window_an_official_client_gets_nothing_replayed(
        tmp_path: Path, start_client: Callable[..., Any], kind: str) -> None:
    srv = await start_node(tmp_path, history=HISTORY, replay=REPLAY)
    try:
        client, events, replays, _, _ = await _scenario(kind, Setup.one(srv), start_client,
                                                        skew=WINDOW + 1)
        assert srv.node.hub.replay is not None
        assert srv.node.hub.replay.outcomes["expired"] == 1
    finally:
        await srv.stop()
    assert [(e["channel"], e["data"]) for e in events if e["event"] == "message"] == [
        (CHANNEL, "live"), (LOBBY, "lobby live")], client.describe(80)
    assert replays == [0, 0]


class Switch:
    """A TCP proxy to one node or another: what the official clients' one URL leads to (a
    load balancer that sends the reconnect elsewhere)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     ) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        for task in (asyncio.create_task(pipe(reader, up_w)),
                     asyncio.create_task(pipe(up_r, writer))):
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._pipes):
            task.cancel()
        if self.server is not None:
            await self.server.wait_closed()


async def _start_cluster(tmp_path: Path) -> tuple[list[RunningServer], str]:
    prefix = f"rwtest:{secrets.token_hex(4)}:"
    settings = {"redis_url": REDIS_URL, "redis_prefix": prefix, **CLUSTER_SETTINGS,
                "history": HISTORY, "replay": REPLAY}
    nodes: list[RunningServer] = []
    for i in range(3):
        nodes.append(await start_node(tmp_path, node_id=f"n{i}", **settings))
    await _wait_for(lambda: all(len(s.node.broker.nodes()) >= 2  # type: ignore[attr-defined]
                                for s in nodes), "every node knows the other two")
    return nodes, prefix


@pytest.mark.parametrize("kind", ["python", "js"])
async def test_in_a_cluster_the_client_returning_to_another_node_gets_the_50(
        tmp_path: Path, start_client: Callable[..., Any], kind: str) -> None:
    """3 nodes: bob on node 0 (through a proxy), the publisher on node 2; bob's socket is
    cut and his SDK's reconnect reaches node 1, which takes his mark from Redis."""
    nodes, prefix = await _start_cluster(tmp_path)
    switch = Switch(nodes[0].node.port)
    try:
        url = await switch.start()

        def to_node_1() -> None:
            switch.port = nodes[1].node.port

        setup = Setup(nodes[0], nodes[0], nodes[1], nodes[2], to_node_1, url)
        got = await _scenario(kind, setup, start_client)
    finally:
        await switch.stop()
        for srv in nodes:
            await srv.node.stop()
        await _delete_redis_prefix(prefix)
    _check_the_50(*got, clustered=True)
    assert nodes[1].node.hub.replay is not None
    assert nodes[1].node.hub.replay.outcomes["replayed"] == 1


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
