"""A roomwire MeteredPeer and the official ``metered-realtime`` MeteredPeer in one room on our
server: media and data both ways, metadata labels both ways, each side joining (and
offering) first in turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from conftest import RunningServer
from roomwire.client import SignallingClient
from roomwire.client.media import AudioSource, VideoSource
from roomwire.client.rtc.events import MediaStream
from roomwire.client.rtc.loopback import loopback_candidates
from roomwire.client.rtc.peer import MeteredPeer
from roomwire.client.rtc.signals import TRACK_META_KEY

from .official import DRIVERS, REPO, OfficialClient, _child_env, official_python

ROOM = "room/interop-peer"
RW_META = {"role": "camera", "label": "roomwire cam"}
OFF_META = {"role": "camera", "label": "official cam"}


class OfficialPeer(OfficialClient):
    """The official MeteredPeer in a driver process (drivers/metered_peer.py)."""

    @classmethod
    async def start(cls, url: str, token: str, name: str) -> OfficialPeer:
        proc = await asyncio.create_subprocess_exec(
            str(official_python()), str(DRIVERS / "metered_peer.py"), "--url", url,
            "--token", token, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=_child_env(), cwd=str(REPO), limit=8 * 2**20)
        peer = cls(proc, name)
        await peer.next("ready", timeout=15)
        return peer


@pytest.fixture(autouse=True)
def _loopback_only() -> Iterator[None]:
    with loopback_candidates("only"):
        yield


Start = Callable[[str], Awaitable[OfficialPeer]]


@pytest.fixture
async def official_peer(server: RunningServer) -> AsyncIterator[Start]:
    started: list[OfficialPeer] = []

    async def start(sub: str) -> OfficialPeer:
        p = await OfficialPeer.start(server.url, server.token(
            sub, peer_metadata={"name": sub}), f"official:{sub}")
        started.append(p)
        return p

    yield start
    for p in started:
        await p.stop()
    complaints = {p.name: p.complaints() for p in started if p.complaints()}
    assert not complaints, f"the official SDK complained: {complaints}"


class Seen:
    """What the roomwire peer saw of one remote peer."""

    def __init__(self) -> None:
        self.tracks: dict[str, Any] = {}
        self.streams: list[Any] = []
        self.data: list[Any] = []
        self.changed = asyncio.Event()

    async def until(self, pred: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                self.changed.clear()
                await self.changed.wait()


def watch(peer: MeteredPeer) -> Seen:
    seen = Seen()

    def joined(ev: Any) -> None:
        def on_track(t: Any) -> None:
            seen.tracks[t.kind] = t
            seen.changed.set()

        def on_stream(s: Any) -> None:
            seen.streams.append(s)
            seen.changed.set()

        ev.peer.on("track", on_track)
        ev.peer.on("stream-added", on_stream)

    def data(ev: Any) -> None:
        seen.data.append(ev)
        seen.changed.set()

    peer.on("peer-joined", joined)
    peer.on("data", data)
    return seen


async def decoded(track: Any, want: int = 5, timeout: float = 10.0) -> int:
    n = 0
    async with asyncio.timeout(timeout):
        while n < want:
            await track.recv()
            n += 1
    return n


async def join_in_turn(rw: MeteredPeer, off: OfficialPeer, first: str) -> None:
    """Both join ROOM, ``first`` ("roomwire" or "official") before the other."""
    if first == "roomwire":
        await rw.join(ROOM, include_sender_metadata=True)
        await off.ok("join", channel=ROOM, include_sender_metadata=True, timeout=10)
    else:
        await off.ok("join", channel=ROOM, include_sender_metadata=True, timeout=10)
        await rw.join(ROOM, include_sender_metadata=True)


@pytest.mark.parametrize("first", ["roomwire", "official"])
async def test_roomwire_and_official_peers_share_a_room(
        server: RunningServer, official_peer: Start, first: str) -> None:
    # Politeness is by peer id: the side that joins first is also the impolite one, so it
    # is the side that offers first.
    rw_id, off_id = ("z-rw", "a-off") if first == "roomwire" else ("a-rw", "z-off")
    rw = MeteredPeer(token_provider=lambda: server.token(rw_id, peer_metadata={"name": rw_id}),
                     url=server.url)
    seen = watch(rw)
    stream = MediaStream([AudioSource(), VideoSource(320, 240)])
    rw.add_stream(stream, RW_META)
    off = await official_peer(off_id)
    await off.ok("add_stream", metadata=OFF_META)
    try:
        await join_in_turn(rw, off, first)

        # Official -> roomwire: tracks with their metadata label, frames decoded.
        await seen.until(lambda: {"audio", "video"} <= set(seen.tracks))
        for kind in ("audio", "video"):
            assert seen.tracks[kind].metadata == OFF_META, seen.tracks[kind]
            assert await decoded(seen.tracks[kind].track) == 5
        await seen.until(lambda: bool(seen.streams))
        assert seen.streams[0].metadata == OFF_META

        # Roomwire -> official: same.
        for kind in ("audio", "video"):
            def is_kind(e: dict[str, Any], k: str = kind) -> bool:
                return bool(e["kind"] == k)

            tr = await off.next("track", peer_id=rw_id, timeout=15, where=is_kind)
            assert tr["metadata"] == RW_META, tr
            assert tr["stream_id"] == stream.id
            await off.next("frames", peer_id=rw_id, timeout=15, where=is_kind)
        added = await off.next("stream_added", peer_id=rw_id)
        assert added["metadata"] == RW_META and added["kinds"]

        # Data both ways, broadcast and direct, with sender metadata.
        await rw.send({"hello": "everyone"})
        await rw.send_to(off_id, {"hello": "you"})
        b = await off.next("data", where=lambda e: e["kind"] == "broadcast")
        assert (b["from"], b["data"], b["sender_metadata"]) == (
            rw_id, {"hello": "everyone"}, {"name": rw_id})
        d = await off.next("data", where=lambda e: e["kind"] == "direct")
        assert (d["from"], d["data"]) == (rw_id, {"hello": "you"})
        await off.ok("send", data={"back": "all"})
        await off.ok("send_to", to=rw_id, data={"back": "you"})
        await seen.until(lambda: len(seen.data) >= 2)
        got = sorted((e.kind, e.sender_peer_id, str(e.data), str(e.sender_metadata))
                     for e in seen.data)
        assert got == [("broadcast", off_id, "{'back': 'all'}", f"{{'name': '{off_id}'}}"),
                       ("direct", off_id, "{'back': 'you'}", f"{{'name': '{off_id}'}}")]

        # Leaving: the official side sees peer_left.
        await rw.close()
        await off.next("peer_left", peer_id=rw_id)
    finally:
        await rw.close()


RW_SCREEN = {"role": "screen", "label": "roomwire screen"}


async def official_sees_labels(off: OfficialPeer, rw_id: str,
                               want: dict[str, tuple[dict[str, Any], set[str]]],
                               timeout: float = 15.0) -> None:
    """The official peer's next ``track`` events for ``rw_id`` of every stream in ``want``
    (``{stream id: (label, kinds)}``) and its ``stream_added`` carry the stream's label, and
    the tracks' frames decode. Events are taken in order, so an unlabelled one is seen."""
    for sid, (label, kinds) in want.items():
        for kind in sorted(kinds):
            def match(e: dict[str, Any], s: str = sid, k: str = kind) -> bool:
                return bool(e["stream_id"] == s and e["kind"] == k)

            tr = await off.next("track", peer_id=rw_id, timeout=timeout, where=match)
            assert tr["metadata"] == label, tr
            await off.next("frames", peer_id=rw_id, timeout=timeout, track_id=tr["track_id"])
        added = await off.next("stream_added", peer_id=rw_id, timeout=timeout,
                               where=lambda e, s=sid: bool(e["stream_id"] == s))
        assert added["metadata"] == label, added


@pytest.mark.parametrize("first", ["roomwire", "official"])
async def test_every_roomwire_stream_is_labelled_for_the_official_peer_also_after_a_reconnect(
        server: RunningServer, official_peer: Start, first: str) -> None:
    """Issue 15, part 1, with the official Python SDK as the remote peer: its camera on from
    the start, a roomwire camera (audio and video), a screen added on the live connection,
    then the roomwire peer's socket cut (it reconnects and rejoins by itself): every track
    and stream event the official SDK fires carries the label of its stream."""
    rw_id, off_id = ("z-rw", "a-off") if first == "roomwire" else ("a-rw", "z-off")
    rw = MeteredPeer(token_provider=lambda: server.token(rw_id, peer_metadata={"name": rw_id}),
                     url=server.url)
    cam = MediaStream([AudioSource(), VideoSource(320, 240)])
    rw.add_stream(cam, RW_META)
    off = await official_peer(off_id)
    await off.ok("add_stream", metadata=OFF_META)
    screen_video = VideoSource(320, 240, fps=15)
    try:
        await join_in_turn(rw, off, first)
        camera = {cam.id: (RW_META, {"audio", "video"})}
        await official_sees_labels(off, rw_id, camera)

        screen = MediaStream([screen_video])
        rw.add_stream(screen, RW_SCREEN)
        await official_sees_labels(off, rw_id, {screen.id: (RW_SCREEN, {"video"})})

        # A network blip: the socket is cut without a close handshake.
        link = rw.signalling._link
        assert link is not None
        link.conn.transport.abort()
        await official_sees_labels(off, rw_id, camera | {screen.id: (RW_SCREEN, {"video"})},
                                   timeout=30.0)
    finally:
        screen_video.stop()
        await rw.close()


@pytest.mark.parametrize("label", [OFF_META, None], ids=["labelled", "unlabelled"])
async def test_what_a_polite_official_peer_sends_before_its_deferred_offer(
        server: RunningServer, official_peer: Start, label: dict[str, Any] | None) -> None:
    """What roomwire's impolite side relies on to skip its first-offer hold for a Python
    remote (docs/sdk-peer.md, "Negotiation with browsers and other SDKs"): the official
    Python SDK, polite,
    defers its first offer, and before it sends ``__meteredTrackMeta`` with ``kind`` and
    ``streamId`` for each labelled track. Without a label it sends no metadata at all (the
    impolite side then holds its offer as for a browser). Seen by a bare signalling client
    that never offers, so the official peer's deferral runs out."""
    off = await official_peer("a-off")
    added = await off.ok("add_stream", metadata=label)
    seen: list[tuple[float, Any]] = []
    got = asyncio.Event()

    def on_direct(ev: Any) -> None:
        seen.append((time.monotonic(), ev.data))
        got.set()

    def offer_at() -> float | None:
        return next((t for t, d in seen if isinstance(d, dict)
                     and d.get("type") == "rtc-description"
                     and d["description"]["type"] == "offer"), None)

    raw = SignallingClient(url=server.url, token_provider=lambda: server.token("z-raw"))
    raw.on("direct", on_direct)
    async with raw:
        await raw.subscribe(ROOM)
        joining = time.monotonic()
        await off.ok("join", channel=ROOM, timeout=10)
        async with asyncio.timeout(15):
            while offer_at() is None:
                got.clear()
                await got.wait()
    offered = offer_at()
    assert offered is not None
    # It deferred its offer (the official SDK waits 2 s for the impolite side's).
    assert offered - joining > 1.0, seen
    metas = {d[TRACK_META_KEY]["trackId"]: d[TRACK_META_KEY] for t, d in seen
             if t < offered and isinstance(d, dict) and TRACK_META_KEY in d}
    if label is None:
        assert metas == {}, seen
        return
    stream_id = added["value"]["stream_id"]
    want = {tid: (kind, stream_id, label) for tid, kind in zip(
        added["value"]["track_ids"], ("audio", "video"), strict=True)}
    assert {tid: (m.get("kind"), m.get("streamId"), m.get("metadata"))
            for tid, m in metas.items()} == want, seen


@pytest.mark.parametrize("first", ["roomwire", "official"])
async def test_an_unlabelled_roomwire_stream_reaches_the_official_peer_unlabelled(
        server: RunningServer, official_peer: Start, first: str) -> None:
    """A roomwire stream added without metadata sends, for each of its tracks, a metadata
    clear with ``kind``/``streamId`` (how roomwire peers recognise each other). The official
    SDK takes it as a clear of nothing: the unlabelled track arrives unlabelled, the labelled
    stream keeps its label, and no ``data`` event reaches the application."""
    rw_id, off_id = ("z-rw", "a-off") if first == "roomwire" else ("a-rw", "z-off")
    rw = MeteredPeer(token_provider=lambda: server.token(rw_id, peer_metadata={"name": rw_id}),
                     url=server.url)
    cam = MediaStream([AudioSource(), VideoSource(320, 240)])
    bare = MediaStream([VideoSource(160, 120)])
    rw.add_stream(cam, RW_META)
    rw.add_stream(bare, None)
    off = await official_peer(off_id)
    await off.ok("add_stream", metadata=OFF_META)
    try:
        if first == "roomwire":
            await rw.join(ROOM)
            await off.ok("join", channel=ROOM, timeout=10)
        else:
            await off.ok("join", channel=ROOM, timeout=10)
            await rw.join(ROOM)
        await official_sees_labels(off, rw_id, {cam.id: (RW_META, {"audio", "video"})})
        tr = await off.next("track", peer_id=rw_id, timeout=15,
                            where=lambda e: bool(e["stream_id"] == bare.id))
        assert tr["kind"] == "video" and tr["metadata"] is None, tr
        await off.next("frames", peer_id=rw_id, timeout=15, track_id=tr["track_id"])
        await rw.send_to(off_id, {"after": "media"})
        d = await off.next("data", timeout=10)
        assert (d["from"], d["data"]) == (rw_id, {"after": "media"}), d  # the first data event
    finally:
        await rw.close()
