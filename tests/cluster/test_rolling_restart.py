"""A rolling restart loses nobody (docs/operations.md, "Rolling restarts").

Three ``roomwire serve`` processes behind haproxy (deploy/haproxy/haproxy.cfg), clients of the
three kinds in several rooms spread over the nodes by the load balancer: roomwire's
SignallingClient, the official Python SDK (metered-realtime, in .venv-official) and the
official JS SDK (@metered-ca/realtime under Node, in web/node_modules), plus two roomwire
MeteredPeers exchanging audio and video. Each node in turn gets SIGTERM, drains, exits and is
started again. After each step every client that was moved is welcomed again, has
re-subscribed, and sees the complete roster of its room; the only close any of them saw is
1001; and in the end media flows between the two peers and a publish from everyone reaches
everyone in the room.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peer"))

from kit import FAST, Tap, fresh_frames
from lbcluster import REPO, LbCluster, haproxy_binary
from official import OfficialClient, unavailable_reason
from srvkit import conn

from roomwire.client import SignallingClient
from roomwire.client.media import AudioSource, VideoSource
from roomwire.client.rtc.events import MediaStream
from roomwire.client.rtc.loopback import loopback_candidates
from roomwire.client.rtc.peer import MeteredPeer
from roomwire.protocol import limits
from waiting import quiet_period, wait_for

from .conftest import REDIS_URL, Cluster, delete_prefix

JS_SDK = REPO / "web" / "node_modules" / "@metered-ca" / "realtime" / "dist" / "index.mjs"
JS_DRIVER = Path(__file__).resolve().parent / "drivers" / "js_clients.mjs"

#: A readiness delay longer than haproxy's detection (inter 1 s x fall 2), and a drain that
#: spreads the closes over 2 s.
SETTINGS = {"shutdown_readiness_delay": 3.0, "shutdown_drain": 2.0,
            "presence_ttl": 5.0, "heartbeat_interval": 0.5}
ROOMS = ["rolling/a", "rolling/b", "rolling/c"]
MEDIA_ROOM = "rolling/media"
#: A client closed at the end of the drain is back after its first backoff step (0.5 s
#: +20 %; roomwire's honours going_away's 1 s), a handshake through the LB and a resubscribe:
#: a few seconds on a loaded 2-core machine; twice the first backoff steps as margin.
BACK_MARGIN = 10.0 + 2 * (limits.RECONNECT_INITIAL_DELAY * (1 + limits.RECONNECT_JITTER) + 1.0)


class Member:
    """One client as the test sees it: its welcomes, closes and roster of its room. The first
    presence after a welcome is the full roster (the server sends the snapshot after the
    resubscribe's ack); later ones are changes."""

    def __init__(self, kind: str, name: str, room: str) -> None:
        self.kind, self.name, self.room = kind, name, room
        self.welcomes: list[float] = []
        self.reconnects = 0
        self.closes: list[int] = []
        self.roster: set[str] = set()
        self._snapshot_next = True
        self.messages: list[tuple[str, Any]] = []
        self.lefts_seen = 0

    def connected(self, is_reconnect: bool) -> None:
        self.welcomes.append(time.monotonic())
        self.reconnects += bool(is_reconnect)
        self._snapshot_next = True

    def presence(self, channel: str, joined: list[str], left: list[str]) -> None:
        if channel != self.room:
            return
        if self._snapshot_next:
            self.roster = set(joined) - {self.name}
            self._snapshot_next = False
            return
        self.lefts_seen += len(left)
        self.roster |= set(joined) - {self.name}
        self.roster -= set(left)

    def __repr__(self) -> str:
        return (f"{self.kind}:{self.name}@{self.room} welcomes={len(self.welcomes)} "
                f"closes={self.closes} roster={sorted(self.roster)}")


class JsClients:
    """The official JS SDK: several SignallingClients in one Node process."""

    def __init__(self, proc: asyncio.subprocess.Process, members: dict[str, Member]) -> None:
        self.proc = proc
        self.members = members
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._pumps = [asyncio.create_task(self._read()), asyncio.create_task(self._errors())]

    @classmethod
    async def launch(cls, url: str, members: dict[str, Member]) -> JsClients:
        proc = await asyncio.create_subprocess_exec(
            "node", "--experimental-websocket", str(JS_DRIVER), JS_SDK.as_uri(), url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        return cls(proc, members)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            ev = json.loads(line)
            self.events.append(ev)
            m = self.members.get(ev.get("client", ""))
            if m is None:
                continue
            kind = ev["event"]
            if kind == "connected":
                m.connected(ev["isReconnect"])
            elif kind == "disconnected":
                m.closes.append(ev["code"])
            elif kind == "presence":
                m.presence(ev["channel"], ev["joined"], ev["left"])
            elif kind == "message":
                m.messages.append((ev["from"], ev["data"]))

    async def _errors(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode(errors="replace").rstrip())

    async def command(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    def problems(self) -> list[Any]:
        return [e for e in self.events if e.get("event") == "error"] + self.stderr[-5:]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.command(op="close")
                await asyncio.wait_for(self.proc.wait(), 5)
            except (TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()
        for t in self._pumps:
            t.cancel()


def _official_python_events(client: OfficialClient, m: Member) -> Callable[[], None]:
    """Feed a Member from the official Python driver's event history (read incrementally)."""
    seen = 0

    def catch_up() -> None:
        nonlocal seen
        for ev in client.history[seen:]:
            kind = ev.get("event")
            if kind == "connected":
                m.connected(ev["is_reconnect"])
            elif kind == "disconnected":
                m.closes.append(ev["code"])
            elif kind == "presence":
                m.presence(ev["channel"], [p["peer_id"] for p in ev["joined"]],
                           [p["peer_id"] for p in ev["left"]])
            elif kind == "message":
                m.messages.append((ev["from"], ev["data"]))
        seen = len(client.history)

    return catch_up


def _roomwire_member(client: SignallingClient, m: Member) -> None:
    client.on("connected", lambda e: m.connected(e.is_reconnect))
    client.on("disconnected", lambda e: m.closes.append(e.code))
    client.on("presence", lambda e: m.presence(
        e.channel, [p.peer_id for p in e.joined], [p.peer_id for p in e.left]))
    client.on("message", lambda e: m.messages.append((e.sender_peer_id, e.data)))


def _node_problem() -> str | None:
    """Why Node.js cannot run the JS SDK here: it needs a global WebSocket (Node >= 20.10
    with --experimental-websocket, on by default from 22)."""
    node = shutil.which("node")
    if node is None:
        return "node not found (Debian: apt-get install nodejs; 20.10 or newer)"
    probe = subprocess.run([node, "--experimental-websocket", "-e",
                            "process.stdout.write(typeof WebSocket)"],
                           capture_output=True, text=True, timeout=30)
    if probe.stdout != "function":
        return (f"{node} has no WebSocket for the JS SDK (needs Node >= 20.10): "
                f"{probe.stdout or probe.stderr.strip()[-200:]}")
    return None


@pytest.fixture
async def lb_cluster(tmp_path: Path) -> AsyncIterator[LbCluster]:
    if haproxy_binary() is None:
        pytest.fail("haproxy is not installed: run scripts/setup-services.sh")
    prefix = f"rwtest:{secrets.token_hex(4)}:"
    c = LbCluster(tmp_path, REDIS_URL, prefix, dict(SETTINGS))
    try:
        await c.start()
        yield c
    finally:
        await c.stop()
        await delete_prefix(prefix)


async def _wait(what: str, cond: Callable[[], bool], timeout: float,
                seen: Callable[[], Any], refresh: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        refresh()
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.1f} s; seen:\n{seen()}")
        await asyncio.sleep(0.05)


async def test_rolling_restart_of_all_three_nodes_loses_nobody(lb_cluster: LbCluster) -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if not JS_SDK.exists():
        pytest.skip(f"{JS_SDK} missing: run scripts/setup-browser.sh")
    node_problem = _node_problem()
    if node_problem is not None:
        pytest.skip(node_problem)
    c = lb_cluster
    members: dict[str, Member] = {}
    rooms: dict[str, list[str]] = {r: [] for r in ROOMS}

    def member(kind: str, room: str) -> Member:
        name = f"{kind}-{len(members)}"
        m = Member(kind, name, room)
        members[name] = m
        rooms[room].append(name)
        return m

    ours: list[SignallingClient] = []
    officials: list[OfficialClient] = []
    refreshers: list[Callable[[], None]] = []
    js = await JsClients.launch(c.url, members)
    peers: list[MeteredPeer] = []
    with loopback_candidates("only"):
        try:
            for room in ROOMS:
                for _ in range(2):
                    m = member("rw", room)
                    client = SignallingClient(url=c.url, token_provider=lambda n=m.name:
                                              c.token(n))
                    _roomwire_member(client, m)
                    await client.connect()
                    await client.subscribe(room)
                    ours.append(client)
                m = member("py", room)
                off = await OfficialClient.launch(c.url, tokens=[c.token(m.name)], name=m.name)
                officials.append(off)
                refreshers.append(_official_python_events(off, m))
                await off.connected(timeout=15)
                await off.subscribe(room)
                for _ in range(2):
                    m = member("js", room)
                    await js.command(op="add", client=m.name, token=c.token(m.name), room=room)

            for name in ("alice", "bob"):
                peer = MeteredPeer(token_provider=lambda n=name: c.token(n), url=c.url,
                                   timings=FAST)
                peer.tap = Tap(peer)  # type: ignore[attr-defined]
                peer.add_stream(MediaStream([AudioSource(), VideoSource(320, 240)]),
                                {"role": "camera", "label": f"{name} cam"})
                await peer.join(MEDIA_ROOM)
                peers.append(peer)
            alice, bob = peers

            def refresh() -> None:
                for r in refreshers:
                    r()

            def expected(m: Member) -> set[str]:
                return set(rooms[m.room]) - {m.name}

            def everyone_complete() -> bool:
                return all(m.welcomes and m.roster == expected(m) for m in members.values())

            def incomplete() -> str:
                bad = [m for m in members.values() if m.roster != expected(m) or not m.welcomes]
                return "\n".join(f"  {m!r} expected {sorted(expected(m))}" for m in bad) + (
                    f"\n  js problems: {js.problems()}")

            await _wait("every client in its room with the full roster", everyone_complete,
                        30, incomplete, refresh)
            for me, other in ((alice, "bob"), (bob, "alice")):
                ev = await me.tap.track(other, "video", timeout=15)  # type: ignore[attr-defined]
                assert await fresh_frames(ev.track, 3, timeout=10) == 3

            peer_moves = {p: 0 for p in ("alice", "bob")}
            for p, name in ((alice, "alice"), (bob, "bob")):
                p.signalling.on("connected",
                                lambda e, n=name: peer_moves.__setitem__(n, peer_moves[n]
                                                                         + e.is_reconnect))
            for step in range(len(c.nodes)):
                before = {n: len(m.closes) for n, m in members.items()}
                t0 = time.monotonic()
                took = await c.terminate(step)
                assert took <= c.drain_bound + 5, f"node{step + 1} took {took:.1f} s to exit"
                refresh()
                moved = [m for n, m in members.items() if len(m.closes) > before[n]]
                assert moved, f"node{step + 1} held none of the clients: {list(members.values())}"

                def all_back(moved: list[Member] = moved, t0: float = t0) -> bool:
                    # Welcomed after the SIGTERM, and once more than it was closed.
                    return everyone_complete() and all(
                        m.welcomes[-1] > t0 and len(m.welcomes) > len(m.closes)
                        for m in moved)

                await _wait(f"after node{step + 1}'s restart, every moved client welcomed "
                            "again with its full roster", all_back,
                            c.drain_bound + BACK_MARGIN, incomplete, refresh)
                await c.bring_back(step)
                bad = {n: m.closes for n, m in members.items()
                       if any(code != 1001 for code in m.closes)}
                assert not bad, f"closes other than 1001 (1011? a timeout?): {bad}"

            # Media between the two roomwire peers flows after every node was restarted.
            assert alice.state == "joined" and bob.state == "joined", (alice.state, bob.state)
            assert peer_moves["alice"] + peer_moves["bob"] >= 1, "the peers never moved"
            for me, other in ((alice, "bob"), (bob, "alice")):
                ev = me.tap.of(other).of("track")[-1]  # type: ignore[attr-defined]
                assert await fresh_frames(ev.track, 5, timeout=15) == 5, (
                    f"no media from {other} to {me.peer_id} after the rolling restart")

            # Everyone re-subscribed: one publish from each member reaches its room.
            marker = secrets.token_hex(4)
            for client, name in zip(ours, [n for n in members if n.startswith("rw-")],
                                    strict=True):
                await client.publish(members[name].room, {"marker": marker, "from": name})
            for off in officials:
                assert off.name is not None
                await off.ok("publish", channel=members[off.name].room,
                             data={"marker": marker, "from": off.name})
            for name, m in members.items():
                if m.kind == "js":
                    await js.command(op="publish", client=name, room=m.room,
                                     data={"marker": marker, "from": name})

            def heard_all() -> bool:
                return all({d["from"] for _, d in m.messages
                            if isinstance(d, dict) and d.get("marker") == marker}
                           == expected(m) for m in members.values())

            await _wait("every member hears a publish from each of the others", heard_all, 15,
                        lambda: {n: sorted(d["from"] for _, d in m.messages
                                           if isinstance(d, dict) and d.get("marker") == marker)
                                 for n, m in members.items()}, refresh)
        finally:
            for p in peers:
                await p.close()
            for client in ours:
                await client.close()
            for off in officials:
                await off.stop()
            await js.stop()


async def test_a_peer_back_on_another_node_within_the_drain_never_left(
        empty_cluster: Cluster) -> None:
    """A draining node keeps its closed peers in their channels until shortly after its last
    close: a client that is back on another node by then is never seen to leave, and the
    others' rosters (and WebRTC connections) stay as they were."""
    cluster = empty_cluster
    for _ in range(3):
        await cluster.add(shutdown_drain=0.5)
    await wait_for(lambda: [len(srv.node.broker.nodes()) for srv in cluster.nodes], 5,
                   "the nodes know each other (others known per node)",
                   until=lambda known: known == [2, 2, 2])
    room = "rolling/held"
    obs = await conn(cluster[0].token_url("obs"))
    await obs.subscribe(room)
    mover = await conn(cluster[1].token_url("mover"))
    await mover.subscribe(room)
    assert (await obs.recv())["joined"] == [{"peerId": "mover"}]
    shutdown = asyncio.create_task(cluster[1].node.shutdown())
    assert (await mover.recv(timeout=5))["type"] == "going_away"
    with pytest.raises(websockets.ConnectionClosed):
        await mover.recv(timeout=5)
    again = await conn(cluster[2].token_url("mover"))
    _, snapshot = await again.subscribe(room)
    assert snapshot["joined"] == [{"peerId": "obs"}]
    await asyncio.wait_for(shutdown, 10)
    # The node has let go of its hold by now; a `left` would be on its way to obs.
    assert await obs.drain(quiet_period(0.2)) == [], "obs saw the mover leave or rejoin"
    # Presence still works for this peer: when it really goes, obs hears it.
    await again.close()
    assert (await obs.recv(timeout=5))["left"] == [{"peerId": "mover"}]
