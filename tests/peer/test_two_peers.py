"""Two and three roomwire MeteredPeers through our server: media, metadata and data."""

from __future__ import annotations

import asyncio
from typing import Any

from roomwire.client.media import AudioSource, VideoSource
from roomwire.client.rtc.events import MediaStream

from .conftest import MakePeer
from .kit import Tap, count_frames, fresh_frames, wait_until

ROOM = "room/peer-media"


def tap(p: Any) -> Tap:
    t: Tap = p.tap
    return t


def camera(label: str) -> tuple[MediaStream, AudioSource, VideoSource]:
    audio = AudioSource()
    video = VideoSource(320, 240, fps=30)
    return MediaStream([audio, video]), audio, video


async def test_two_peers_media_metadata_and_data_both_ways(make_peer: MakePeer) -> None:
    alice = make_peer("alice", peer_metadata={"name": "Alice"})
    bob = make_peer("bob", peer_metadata={"name": "Bob"})
    a_stream, _, _ = camera("a")
    b_stream, _, _ = camera("b")
    alice.add_stream(a_stream, {"role": "camera", "label": "alice cam"})
    await alice.join(ROOM)
    assert alice.state == "joined" and alice.peer_id == "alice" and alice.channel == ROOM
    bob.add_stream(b_stream, {"role": "camera", "label": "bob cam"})
    await bob.join(ROOM, include_sender_metadata=True)

    a_bob = await tap(alice).remote_peer("bob")
    b_alice = await tap(bob).remote_peer("alice")
    assert a_bob.metadata == {"name": "Bob"} and b_alice.metadata == {"name": "Alice"}

    for me, other, label in ((alice, "bob", "bob cam"), (bob, "alice", "alice cam")):
        for kind in ("audio", "video"):
            ev = await tap(me).track(other, kind)
            # The metadata label is there when the track arrives.
            assert ev.metadata == {"role": "camera", "label": label}, ev
            assert ev.stream is not None
            assert await count_frames(ev.track, 5) == 5, (me.peer_id, kind)
        added = await tap(me).of(other).wait("stream-added")
        assert added[0].metadata == {"role": "camera", "label": label}
        assert {t.kind for t in added[0].stream.get_tracks()} == {"audio", "video"}
    # The stream id is the sender's.
    ev = await tap(bob).track("alice", "video")
    assert ev.stream.id == a_stream.id

    await wait_until(lambda: a_bob.state == "connected" and b_alice.state == "connected")

    # Data both ways: broadcast and direct, with kind and opt-in sender metadata.
    await alice.send({"text": "hello all"})
    await alice.send_to("bob", {"text": "psst"})
    await bob.send({"text": "hi alice"})
    await a_bob.send("via remote")
    got_b = await tap(bob).log.wait("data", count=3)
    assert [(e.kind, e.data, e.sender_peer_id) for e in got_b] == [
        ("broadcast", {"text": "hello all"}, "alice"),
        ("direct", {"text": "psst"}, "alice"),
        ("direct", "via remote", "alice"),
    ]
    assert got_b[0].sender_metadata == {"name": "Alice"}  # bob opted in
    assert got_b[1].sender_metadata == {"name": "Alice"}  # directs always carry it
    got_a = await tap(alice).log.wait("data")
    assert (got_a[0].kind, got_a[0].data) == ("broadcast", {"text": "hi alice"})
    assert got_a[0].sender_metadata is None  # alice did not opt in

    # A P2P data channel on the current connection.
    ch = a_bob.create_data_channel("chat")
    opened = await tap(bob).of("alice").wait("datachannel")
    remote_ch = opened[0].channel
    received: asyncio.Queue[str] = asyncio.Queue()
    remote_ch.on("message", received.put_nowait)
    await wait_until(lambda: ch.readyState == "open")
    ch.send("p2p hi")
    assert await asyncio.wait_for(received.get(), 5) == "p2p hi"

    # Orderly leave: the other side sees peer-left; left fires once.
    await bob.close("bye")
    left = await tap(alice).log.wait("peer-left")
    assert left[0].peer is a_bob and a_bob.state == "closed"
    assert [(e.peer_id, e.channel, e.reason) for e in tap(bob).log.of("left")] == [
        ("bob", ROOM, "bye")]
    states = [(e.from_, e.to) for e in tap(bob).log.of("state-change")]
    assert states == [("idle", "joining"), ("joining", "joined"), ("joined", "leaving"),
                      ("leaving", "closed")]


async def test_three_peers_screen_replace_and_remove(make_peer: MakePeer) -> None:
    peers = [make_peer(n) for n in ("p1", "p2", "p3")]
    cams = {}
    for p in peers:
        stream, audio, video = camera(p.tap.peer and "x")  # type: ignore[attr-defined]
        cams[id(p)] = (stream, audio, video)
        p.add_stream(stream, {"role": "camera"})
    for p in peers:
        await p.join(ROOM)
    p1, p2, p3 = peers
    # Everyone gets everyone's camera, decoded.
    for me in peers:
        for other in peers:
            if other is me:
                continue
            assert other.peer_id is not None
            ev = await tap(me).track(other.peer_id, "video")
            assert ev.metadata == {"role": "camera"}
            assert await count_frames(ev.track, 3) == 3

    # p1 adds a screen share next to its camera (after join: a renegotiation).
    screen = VideoSource(320, 240, fps=15)
    screen_stream = MediaStream([screen])
    p1.add_stream(screen_stream, {"role": "screen", "label": "shared window"})
    assert p1.get_stream_metadata(screen_stream) == {"role": "screen", "label": "shared window"}
    assert p1.get_track_metadata(screen) == {"role": "screen", "label": "shared window"}
    for other in (p2, p3):
        ev = await tap(other).track("p1", "video", lambda e: (e.metadata or {}).get("role")
                                    == "screen")
        assert ev.stream.id == screen_stream.id
        assert await count_frames(ev.track, 3) == 3
        added = await tap(other).of("p1").wait(
            "stream-added", lambda e: e.stream.id == screen_stream.id)
        assert added[0].metadata == {"role": "screen", "label": "shared window"}

    # replace_track: the camera video of p2 becomes another source, no renegotiation.
    _, _, p2_video = cams[id(p2)]
    new_video = VideoSource(320, 240, fps=30)
    await p2.replace_track(p2_video, new_video)
    assert p2.get_track_metadata(new_video) == {"role": "camera"}
    assert p2.get_track_metadata(p2_video) is None
    for other in (p1, p3):
        ev = await tap(other).track("p2", "video")
        assert await fresh_frames(ev.track, 5) == 5
    assert new_video.frames_sent >= 5  # the frames now come from the new source
    assert len(tap(p1).of("p2").of("track")) == 2  # no new track: no renegotiation

    # remove_track: p1's screen disappears on the other side.
    p1.remove_stream(screen_stream)
    assert p1.get_stream_metadata(screen_stream) is None
    for other in (p2, p3):
        removed = await tap(other).of("p1").wait(
            "stream-removed", lambda e: e.stream.id == screen_stream.id)
        assert removed
    # The camera is still flowing.
    ev = await tap(p2).track("p1", "video", lambda e: (e.metadata or {}).get("role")
                             == "camera")
    assert await count_frames(ev.track, 3) == 3
