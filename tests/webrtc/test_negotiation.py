"""PeerNegotiator end to end: negotiators in one process, wired through in-memory signalling,
ICE on 127.0.0.1. Media is decoded (frames counted through iter_frames), not just announced."""

from __future__ import annotations

import asyncio
import math
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest
from aiortc import RTCDataChannel

from roomwire.client.media import AudioSource, Recorder, VideoSource, from_file, iter_frames
from roomwire.client.rtc.negotiation import (
    IceRecoveryExhaustedError,
    NegotiationTimings,
    PeerNegotiator,
    PeerState,
)
from roomwire.client.rtc.remote_events import (
    RemoteConnectionResetEvent,
    RemoteDataChannelEvent,
    RemoteNegotiationErrorEvent,
    RemoteStateChangeEvent,
    RemoteStreamAddedEvent,
    RemoteStreamRemovedEvent,
    TrackEvent,
)
from waiting import quiet_period, wait_for

from .harness import FAST, Mesh, Peer, count_frames

W, H = 160, 120


def media(peer: Peer, stream: str, role: str, *, audio: bool = True) -> list[Any]:
    """Attach a small test-pattern camera (and a tone) under ``stream``."""
    cam = VideoSource(W, H, fps=20)
    peer.neg.add_track(cam, stream, {"role": role, "owner": peer.id})
    out: list[Any] = [cam]
    if audio:
        mic = AudioSource(48_000, "stereo")
        mic.push_nowait(bytes(48_000 * 4 // 2))  # half a second of (silent) audio
        peer.neg.add_track(mic, stream, {"role": "mic", "owner": peer.id})
        out.append(mic)
    return out


async def connected(*peers: Peer, timeout: float = 5.0) -> None:
    await asyncio.gather(*(p.wait_state(PeerState.CONNECTED, timeout) for p in peers))


async def channel_message(channel: RTCDataChannel, timeout: float = 3.0) -> Any:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def on_message(msg: Any) -> None:
        if not fut.done():
            fut.set_result(msg)

    channel.on("message", on_message)
    try:
        return await asyncio.wait_for(fut, timeout)
    finally:
        channel.remove_listener("message", on_message)


def stop_all(*tracks: Any) -> None:
    for t in tracks:
        t.stop()


async def test_audio_video_and_data_both_ways(mesh_factory: Any) -> None:
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    assert a.neg.polite and not b.neg.polite
    src_a = media(a, "stream-a", "camera")
    src_b = media(b, "stream-b", "camera")
    chat = a.neg.create_data_channel("chat")
    ctl = b.neg.create_data_channel("ctl", ordered=False)
    await connected(a, b)

    # Tracks arrive with their metadata already resolved, ids as the sender's.
    for peer, sources, stream in ((a, src_b, "stream-b"), (b, src_a, "stream-a")):
        events = await peer.log.wait_for(TrackEvent, count=2)
        by_kind = {e.kind: e for e in events}
        assert by_kind["video"].track.id == sources[0].id
        assert by_kind["audio"].track.id == sources[1].id
        assert {s.id for e in events for s in e.streams} == {stream}
        assert by_kind["video"].stream is by_kind["audio"].stream  # one MediaStream
        assert by_kind["video"].metadata == {"role": "camera", "owner": peer.neg.remote_id}
        assert by_kind["audio"].metadata == {"role": "mic", "owner": peer.neg.remote_id}
        added = await peer.log.wait_for(RemoteStreamAddedEvent)
        assert added[0].stream is by_kind["video"].stream and added[0].metadata is not None
        assert set(added[0].stream.tracks) == {e.track for e in events}

    # Metadata went out before any description, on both sides.
    for src, dst in (("a", "b"), ("b", "a")):
        kinds = mesh.wires[src, dst].kinds(src, dst)
        first_sdp = min(kinds.index(k) for k in ("offer", "answer") if k in kinds)
        assert kinds[:2] == ["meta", "meta"] and first_sdp == 2, kinds

    # Decoded frames flow in all four directions.
    tracks = [e.track for p in (a, b) for e in p.tracks()]
    counts = await asyncio.gather(*(
        count_frames(t, 10 if t.kind == "video" else 20) for t in tracks))
    assert counts == [10 if t.kind == "video" else 20 for t in tracks], counts

    # Data channels both ways, each side's channel seen by the other.
    b_chat = (await b.log.wait_for(RemoteDataChannelEvent, lambda e: not e.local))[0].channel
    a_ctl = (await a.log.wait_for(RemoteDataChannelEvent, lambda e: not e.local))[0].channel
    assert (b_chat.label, a_ctl.label) == ("chat", "ctl")
    await a.log.wait_for(RemoteDataChannelEvent, lambda e: e.local and e.channel is chat)
    reply = asyncio.ensure_future(channel_message(chat))
    b_chat.on("message", lambda m: b_chat.send(f"echo:{m}"))
    chat.send("hello")
    assert await reply == "echo:hello"
    got = asyncio.ensure_future(channel_message(a_ctl))
    await b.log.wait_for(RemoteDataChannelEvent, lambda e: e.local and e.channel is ctl)
    ctl.send(b"\x01\x02")
    assert await got == b"\x01\x02"

    # The flicker filter: idle -> connecting -> connected, nothing else.
    for peer in (a, b):
        assert [(e.from_, e.to) for e in peer.log.of(RemoteStateChangeEvent)] == [
            ("idle", "connecting"), ("connecting", "connected")]
        assert not peer.log.of(RemoteNegotiationErrorEvent)
    stop_all(*src_a, *src_b)


async def test_second_stream_alongside_the_first(mesh_factory: Any) -> None:
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    cam = media(a, "cam", "camera", audio=False)
    await connected(a, b)
    await b.log.wait_for(RemoteStreamAddedEvent)
    screen = VideoSource(W, H, fps=20)
    a.neg.add_track(screen, "screen", {"role": "screen", "label": "shared window"})
    added = await b.log.wait_for(RemoteStreamAddedEvent, lambda e: e.stream.id == "screen")
    assert added[0].metadata == {"role": "screen", "label": "shared window"}
    videos = {s.id: e for e in b.tracks("video") for s in e.streams}
    assert set(videos) == {"cam", "screen"}
    assert videos["screen"].track.id == screen.id and b.neg.generation == 0
    counts = await asyncio.gather(*(count_frames(e.track, 10) for e in videos.values()))
    assert counts == [10, 10]
    assert not a.log.of(RemoteConnectionResetEvent) and not b.log.of(RemoteConnectionResetEvent)
    stop_all(*cam, screen)


async def test_a_camera_and_a_screen_from_the_start_and_after_a_reset(
        mesh_factory: Any) -> None:
    """Audio, video and a second video in one offer (a camera with its microphone and a
    screen, attached before connecting, or all re-attached after a reconnect): every track's
    media arrives. With aiortc's default bundle policy the second video m-line shared the
    first video m-line's transport, which BUNDLE then discarded: that track never sent."""
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    mic, cam, screen = AudioSource(48_000, "stereo"), VideoSource(W, H, fps=20), VideoSource(
        W, H, fps=20)
    mic.push_nowait(bytes(48_000 * 4))  # a second of (silent) audio
    # Audio first, as a MediaStream([microphone, camera]) is attached: the first video m-line
    # is then not BUNDLE's primary one.
    a.neg.add_track(mic, "cam", {"role": "mic"})
    a.neg.add_track(cam, "cam", {"role": "camera"})
    a.neg.add_track(screen, "screen", {"role": "screen"})
    src = [mic, cam]
    await connected(a, b)
    for round_ in ("first connection", "after a reset"):
        events = await b.log.wait_for(TrackEvent, on_current(b), count=3)
        by_stream = sorted((s.id, e.kind) for e in events for s in e.streams)
        assert by_stream == [("cam", "audio"), ("cam", "video"), ("screen", "video")], round_
        counts = await asyncio.gather(*(count_frames(e.track, 5) for e in events))
        assert counts == [5, 5, 5], (round_, by_stream, counts)
        if round_ == "first connection":
            await a.neg.reset()
            await b.log.wait_for(RemoteConnectionResetEvent)
            await connected(a, b)
    stop_all(*src, screen)


async def test_two_cameras_with_microphones_from_the_start(mesh_factory: Any) -> None:
    """Two audio and two video tracks before connecting: one kind's second m-line waits for
    the next offer (an aiortc remote would lose it in the first), and every track arrives."""
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    tracks: list[Any] = []
    for stream in ("one", "two"):
        mic, cam = AudioSource(48_000, "stereo"), VideoSource(W, H, fps=20)
        mic.push_nowait(bytes(48_000 * 4))
        a.neg.add_track(mic, stream, {"role": "mic"})
        a.neg.add_track(cam, stream, {"role": "camera"})
        tracks += [mic, cam]
    await connected(a, b)
    events = await b.log.wait_for(TrackEvent, on_current(b), count=4)
    got = sorted((s.id, e.kind, (e.metadata or {}).get("role")) for e in events for s in e.streams)
    assert got == [("one", "audio", "mic"), ("one", "video", "camera"),
                   ("two", "audio", "mic"), ("two", "video", "camera")]
    counts = await asyncio.gather(*(count_frames(e.track, 5) for e in events))
    assert counts == [5, 5, 5, 5], (got, counts)
    assert mesh.wires["a", "b"].kinds("a", "b").count("offer") == 2
    assert not a.log.of(RemoteConnectionResetEvent)
    stop_all(*tracks)


async def test_replace_track_without_renegotiation(mesh_factory: Any) -> None:
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    (cam,) = media(a, "cam", "camera", audio=False)
    await connected(a, b)
    (event,) = await b.log.wait_for(TrackEvent)
    assert await count_frames(event.track, 5) == 5
    wire = mesh.wires["a", "b"]
    descriptions_before = wire.kinds("a", "b").count("offer") + wire.kinds("a", "b").count(
        "answer")

    smaller = VideoSource(96, 64, fps=20)
    await a.neg.replace_track(cam, smaller)
    assert a.neg.local_tracks == [smaller]
    seen_new = False
    async with asyncio.timeout(5):
        async for frame in iter_frames(event.track):
            assert isinstance(frame, av.VideoFrame)
            if (frame.width, frame.height) == (96, 64):
                seen_new = True
                break
    assert seen_new
    kinds = wire.kinds("a", "b")
    assert kinds.count("offer") + kinds.count("answer") == descriptions_before
    # Metadata re-keyed: clear the old id, then set the new one.
    metas = [d["__meteredTrackMeta"] for s, _, d in wire.log
             if s == "a" and "__meteredTrackMeta" in d]
    assert metas[-2] == {"trackId": cam.id}
    assert metas[-1]["trackId"] == smaller.id and metas[-1]["metadata"]["role"] == "camera"
    with pytest.raises(ValueError):
        await a.neg.replace_track(smaller, AudioSource())
    with pytest.raises(KeyError):
        await a.neg.replace_track(cam, smaller)
    # Replacing with None silences the sender and forgets the track.
    await a.neg.replace_track(smaller, None)
    assert a.neg.local_tracks == []
    stop_all(cam, smaller)


async def test_remove_is_seen_by_the_other_side(mesh_factory: Any) -> None:
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    cam, mic = media(a, "s1", "camera")
    await connected(a, b)
    events = await b.log.wait_for(TrackEvent, count=2)
    video = next(e.track for e in events if e.kind == "video")
    audio = next(e.track for e in events if e.kind == "audio")
    stream = events[0].stream
    assert stream is not None and set(stream.tracks) == {video, audio}
    assert await count_frames(video, 3) == 3

    assert a.neg.remove_track(cam)
    assert not a.neg.remove_track(cam)
    # The ended track leaves its stream; the stream lives on with the mic.
    await wait_for(lambda: stream.tracks, 5, "the video track leaves its stream",
                   until=lambda tracks: tracks == [audio])
    # The consumer's iteration ends (after any frames still queued).
    async with asyncio.timeout(3):
        async for _ in iter_frames(video):
            pass
    assert video.readyState == "ended"
    assert not b.log.of(RemoteStreamRemovedEvent)  # the mic is still in s1
    assert cam.id not in b.neg.metadata_cache  # the sender cleared it

    a.neg.remove_track(mic)
    removed = await b.log.wait_for(RemoteStreamRemovedEvent)
    assert removed[0].stream is stream and stream.id == "s1" and stream.tracks == []
    assert b.neg.remote_tracks == []
    assert a.neg.state is PeerState.CONNECTED and b.neg.state is PeerState.CONNECTED
    stop_all(cam, mic)


async def test_glare_both_offer_at_once_converges(mesh_factory: Any) -> None:
    timings = NegotiationTimings(
        debounce=0.0, polite_offer_delay=0.0, rebuild_interval=0.2, answer_timeout=4.0,
        recovery_ladder=(0.0, 0.2), recovery_probe=4.0, close_timeout=1.0)
    mesh: Mesh = mesh_factory(["a", "b"], timings)
    a, b = mesh["a", "b"], mesh["b", "a"]
    src_a = media(a, "sa", "camera", audio=False)
    src_b = media(b, "sb", "camera", audio=False)
    chat = a.neg.create_data_channel("chat")  # on the polite side's doomed connection
    await connected(a, b)
    wire = mesh.wires["a", "b"]
    assert wire.kinds("a", "b").count("offer") >= 1 and wire.kinds("b", "a").count("offer") >= 1
    resets = a.log.of(RemoteConnectionResetEvent)
    assert [r.reason for r in resets] == ["glare"]
    before_reset = a.log.events[:a.log.events.index(resets[0])]
    assert not [e for e in before_reset if isinstance(e, RemoteStateChangeEvent)
                and e.to == "connected"]  # the glare hit a connection not yet connected
    assert not b.log.of(RemoteConnectionResetEvent)
    for peer in (a, b):
        (event,) = await peer.log.wait_for(TrackEvent, on_current(peer))
        assert await count_frames(event.track, 5) == 5
    # The polite side's unopened channel moved to the new connection and opens.
    remote_chat = await b.log.wait_for(RemoteDataChannelEvent, lambda e: e.channel.label == "chat")
    assert remote_chat and chat.readyState == "open"
    stop_all(*src_a, *src_b)


@pytest.mark.slow
async def test_glare_on_a_live_connection_converges(mesh_factory: Any) -> None:
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    src = media(a, "sa", "camera", audio=False) + media(b, "sb", "camera", audio=False)
    await connected(a, b)
    extra_a, extra_b = VideoSource(W, H, fps=20), VideoSource(W, H, fps=20)
    # Both renegotiate at the same moment.
    a.neg.add_track(extra_a, "xa", {"role": "screen"})
    b.neg.add_track(extra_b, "xb", {"role": "screen"})
    for peer in (a, b):
        await peer.log.wait_for(TrackEvent, on_current(peer, "xa", "xb"), timeout=8)
    await connected(a, b, timeout=8)
    # a (polite) replaced its connection for the glare and once more for b's fresh offer; b
    # replaced its own once. More would be the two sides replacing each other's connection
    # over and over (a follow-up offer answered from a rebuilt connection each time).
    resets = {p.id: [r.reason for r in p.log.of(RemoteConnectionResetEvent)] for p in (a, b)}
    assert len(resets["a"]) <= 2 and len(resets["b"]) <= 1, resets
    for peer in (a, b):
        live = [e for e in peer.tracks() if peer.is_current(e)]
        want = {"sb", "xb"} if peer is a else {"sa", "xa"}
        assert {s.id for e in live for s in e.streams} == want
        counts = await asyncio.gather(*(count_frames(e.track, 5) for e in live))
        assert counts == [5, 5]
        assert not [e for e in peer.log.of(RemoteNegotiationErrorEvent) if e.fatal]
    stop_all(*src, extra_a, extra_b)


def peak(frame: av.AudioFrame) -> float:
    """Peak amplitude of the first plane, on the s16 scale (no numpy needed)."""
    data = bytes(frame.planes[0])
    if frame.format.name.startswith("flt"):
        samples = array("f", data[: len(data) // 4 * 4])
        return max((abs(x) for x in samples), default=0.0) * 32768
    ints = array("h", data[: len(data) // 2 * 2])
    return float(max((abs(x) for x in ints), default=0))


def on_current(peer: Peer, *streams: str) -> Callable[[TrackEvent], bool]:
    """Matches track events of the peer's current connection (optionally of some streams)."""

    def match(event: TrackEvent) -> bool:
        return peer.is_current(event) and (
            not streams or any(s.id in streams for s in event.streams))

    return match


def state_of(neg: PeerNegotiator) -> PeerState:
    return neg.state  # (a call, so that the type checker does not pin a narrowed value)


def force_failure(peer: Peer) -> None:
    """Make the current connection report "failed" (as aioice would after consent loss)."""
    pc = peer.neg.pc
    pc.__dict__["_RTCPeerConnection__connectionState"] = "failed"
    pc.emit("connectionstatechange")


@pytest.mark.parametrize("side", ["impolite", "polite"])
async def test_ice_failure_rebuild_recovers_media(mesh_factory: Any, side: str) -> None:
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    src = media(a, "sa", "camera", audio=False) + media(b, "sb", "camera", audio=False)
    await connected(a, b)
    failing, other = (b, a) if side == "impolite" else (a, b)
    old_pc = failing.neg.pc
    force_failure(failing)
    await failing.log.wait_for(RemoteConnectionResetEvent)
    assert failing.neg.pc is not old_pc
    await failing.log.wait_for(
        RemoteStateChangeEvent, lambda e: e.to == PeerState.CONNECTED, count=2, timeout=6)
    await other.wait_state(PeerState.CONNECTED)
    states = [e.to for e in failing.log.of(RemoteStateChangeEvent)]
    assert states == [PeerState.CONNECTING, PeerState.CONNECTED, PeerState.RECONNECTING,
                      PeerState.CONNECTED], states  # no "connecting" flicker in between
    reasons = [r.reason for r in other.log.of(RemoteConnectionResetEvent)]
    assert reasons and set(reasons) <= {"remote-restart", "ice-closed", "connection-closed"}
    for peer in (a, b):
        fresh = await peer.log.wait_for(TrackEvent, on_current(peer))
        assert peer.neg.generation > 0  # a track of a rebuilt connection
        assert fresh[-1].metadata is not None and fresh[-1].metadata["role"] == "camera"
        assert await count_frames(fresh[-1].track, 5) == 5
    stop_all(*src)


async def test_reset_swaps_the_connection_and_the_remote_follows(mesh_factory: Any) -> None:
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    src = media(a, "sa", "camera", audio=False) + media(b, "sb", "camera", audio=False)
    await connected(a, b)
    first = (await a.log.wait_for(TrackEvent))[0]
    b.neg.hold_reconnecting()
    assert b.neg.state is PeerState.RECONNECTING
    sent_before = len(mesh.wires["a", "b"].kinds("b", "a"))
    await b.neg.reset()
    # a follows: either b's fresh offer (new ICE ufrag) or b's old connection closing (DTLS
    # close_notify) makes it rebuild too.
    (reset,) = await a.log.wait_for(RemoteConnectionResetEvent)
    assert reset.reason in ("remote-restart", "ice-closed", "connection-closed"), a.log.events
    await connected(a, b)
    fresh = await a.log.wait_for(TrackEvent, on_current(a))
    # The metadata was re-sent before the fresh offer.
    assert mesh.wires["a", "b"].kinds("b", "a")[sent_before:][:2] == ["meta", "offer"]
    assert fresh[0].track is not first.track and fresh[0].track.id == first.track.id
    assert await count_frames(fresh[0].track, 5) == 5
    # The old track ended with the old connection; no stream-removed for a swap.
    async with asyncio.timeout(2):
        async for _ in iter_frames(first.track):
            pass  # ends with the old connection
    assert not a.log.of(RemoteStreamRemovedEvent)
    assert len(a.log.of(RemoteStreamAddedEvent)) == 2
    stop_all(*src)


async def test_trickled_candidates_and_stale_answers(mesh_factory: Any) -> None:
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    wire = mesh.wires["a", "b"]
    stale: list[dict[str, Any]] = []

    def trickle(src: str, dst: str, data: dict[str, Any]) -> list[dict[str, Any]] | None:
        # Deliver a's descriptions like a browser would: no candidates in the SDP, each one
        # trickled (with the "candidate:" prefix), plus junk that must be ignored.
        if src != "a" or data.get("type") != "rtc-description":
            return None
        sdp = data["description"]["sdp"]
        lines = sdp.split("\r\n")
        cands = [ln[2:] for ln in lines if ln.startswith("a=candidate:")]
        ufrag = next(ln.split(":", 1)[1] for ln in lines if ln.startswith("a=ice-ufrag:"))
        stripped = "\r\n".join(ln for ln in lines if not ln.startswith(
            ("a=candidate:", "a=end-of-candidates")))
        if data["description"]["type"] == "answer":
            stale.append(data)
        out = [{"type": "rtc-description",
                "description": {"type": data["description"]["type"], "sdp": stripped}}]
        out.append({"type": "rtc-ice", "candidate": {"candidate": "garbage", "sdpMid": "0"}})
        out.append({"type": "rtc-ice", "candidate": {
            "candidate": cands[0], "sdpMid": "0", "sdpMLineIndex": 0,
            "usernameFragment": "someone-else"}})
        for c in cands:
            out.append({"type": "rtc-ice", "candidate": {
                "candidate": c, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": ufrag}})
        out.append({"type": "rtc-ice", "candidate": {"candidate": "", "sdpMid": "0",
                                                     "sdpMLineIndex": 0}})
        return out

    wire.filters.append(trickle)
    src = media(a, "sa", "camera", audio=False) + media(b, "sb", "camera", audio=False)
    await connected(a, b)
    assert stale  # a answered b's offer
    b.neg.on_remote_signal(stale[0])  # a stale answer: dropped quietly
    (event,) = await b.log.wait_for(TrackEvent)
    assert await count_frames(event.track, 5) == 5
    # The stale answer is handled at once; a wrong reaction would be logged by now.
    await asyncio.sleep(quiet_period(FAST.debounce))
    assert not b.log.of(RemoteNegotiationErrorEvent) and not b.log.of(RemoteConnectionResetEvent)
    stop_all(*src)


async def test_data_channel_only(mesh_factory: Any) -> None:
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    assert a.neg.state is PeerState.IDLE
    # Nothing to negotiate: nobody offers, not even after the polite side's wait.
    await asyncio.sleep(quiet_period(FAST.debounce + FAST.polite_offer_delay, periods=1.5))
    assert mesh.wires["a", "b"].log == []
    chan = a.neg.create_data_channel("only")  # polite side: offers after its short wait
    await connected(a, b)
    remote = (await b.log.wait_for(RemoteDataChannelEvent))[0].channel
    got = asyncio.ensure_future(channel_message(remote))
    await a.log.wait_for(RemoteDataChannelEvent, lambda e: e.local)
    chan.send("x")
    assert await got == "x"
    assert a.neg.pc.getTransceivers() == []


async def test_recovery_ladder_ends_with_one_fatal_error() -> None:
    sent: list[dict[str, Any]] = []

    async def nowhere(data: dict[str, Any]) -> None:
        sent.append(data)

    timings = NegotiationTimings(debounce=0.0, polite_offer_delay=0.0, answer_timeout=0.2,
                                 recovery_ladder=(0.0, 0.05, 0.05), recovery_probe=0.2,
                                 close_timeout=0.5)
    neg = PeerNegotiator("z", "y", nowhere, timings=timings)
    events: list[Any] = []
    neg.add_listener(events.append)
    neg.create_data_channel("c")
    await wait_for(lambda: [e for e in events if isinstance(e, RemoteNegotiationErrorEvent)], 5,
                   "the recovery ladder ends in an error")
    # One error, not one more per further answer timeout: let a few of them pass.
    await asyncio.sleep(quiet_period(timings.answer_timeout))
    fatal = [e for e in events if isinstance(e, RemoteNegotiationErrorEvent)]
    assert len(fatal) == 1 and fatal[0].fatal
    assert isinstance(fatal[0].error, IceRecoveryExhaustedError)
    assert [e.reason for e in events if isinstance(e, RemoteConnectionResetEvent)] == [
        "answer-timeout"] * 3
    assert neg.generation == 3 and neg.state is PeerState.CONNECTING
    # Every offer went out as full SDP followed by the end-of-candidates marker.
    offers = [i for i, d in enumerate(sent) if d.get("type") == "rtc-description"]
    assert len(offers) == 4 and all(sent[i + 1] == {"type": "rtc-ice", "candidate": None}
                                    for i in offers)
    await neg.close()
    await neg.close()
    assert state_of(neg) is PeerState.CLOSED
    with pytest.raises(RuntimeError):
        neg.create_data_channel("late")


@pytest.mark.slow
async def test_three_peers_share_one_source_through_relays(mesh_factory: Any) -> None:
    ids = ["a", "b", "c"]
    mesh: Mesh = mesh_factory(ids)
    sources = {i: VideoSource(W, H, fps=20) for i in ids}
    for x in ids:
        for y in ids:
            if x != y:
                mesh[x, y].neg.add_track(sources[x], f"cam-{x}", {"role": "camera", "of": x})
    await connected(*mesh.peers.values())
    events = [(await mesh[x, y].log.wait_for(TrackEvent))[0]
              for x in ids for y in ids if x != y]
    assert all(e.metadata == {"role": "camera", "of": (e.stream.id if e.stream else "?")[-1]}
               for e in events)
    # One source feeds two peers through one relay: each receiver gets every frame the
    # source makes (a track read by two senders directly would split its frames in half).
    await asyncio.sleep(0.3)
    before = {x: sources[x].frames_sent for x in ids}
    counts = await asyncio.gather(*(count_frames(e.track, 10**6, timeout=1.5) for e in events))
    produced = {x: sources[x].frames_sent - before[x] for x in ids}
    for event, got in zip(events, counts, strict=True):
        sender = event.stream.id[-1] if event.stream else "?"
        assert got >= 0.75 * produced[sender] > 10, (counts, produced)
    stop_all(*sources.values())


async def test_two_python_peers_connect_in_one_offer_round(mesh_factory: Any) -> None:
    """Both sides labelled, so each knows the other is a Python peer: the impolite side
    offers at once with sendrecv m-lines and the polite side's answer carries its tracks on
    them. One offer, one answer; every track arrives labelled, frames flow both ways."""
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    src_a = media(a, "sa", "camera")
    src_b = media(b, "sb", "camera")
    await connected(a, b)
    for peer, sources, stream in ((a, src_b, "sb"), (b, src_a, "sa")):
        events = await peer.log.wait_for(TrackEvent, count=2)
        by_kind = {e.kind: e for e in events}
        owner = peer.neg.remote_id
        assert (by_kind["video"].track.id, by_kind["video"].metadata) == (
            sources[0].id, {"role": "camera", "owner": owner}), by_kind
        assert (by_kind["audio"].track.id, by_kind["audio"].metadata) == (
            sources[1].id, {"role": "mic", "owner": owner}), by_kind
        assert {s.id for e in events for s in e.streams} == {stream}
    for peer in (a, b):
        directions = sorted((t.kind, t.currentDirection) for t in peer.neg.pc.getTransceivers())
        assert directions == [("audio", "sendrecv"), ("video", "sendrecv")], directions
    tracks = [e.track for p in (a, b) for e in p.tracks()]
    counts = await asyncio.gather(*(
        count_frames(t, 10 if t.kind == "video" else 20) for t in tracks))
    assert counts == [10 if t.kind == "video" else 20 for t in tracks], counts
    # Frames flowed for a while: a second round would have been offered by now.
    assert mesh.wires["b", "a"].kinds("b", "a").count("offer") == 1
    assert mesh.wires["a", "b"].kinds("a", "b").count("offer") == 0
    assert not a.log.of(RemoteNegotiationErrorEvent) and not b.log.of(RemoteNegotiationErrorEvent)
    stop_all(*src_a, *src_b)


async def test_late_track_gets_an_mline_of_its_own(mesh_factory: Any) -> None:
    """A track is never put on an m-line the remote created (a browser's receiver would not
    know the track's id there, so the official JS SDK could not find its label): it goes on
    a new m-line of our own offer, sendonly while the remote does not send on it."""
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    (cam_b,) = media(b, "sb", "camera", audio=False)
    await connected(a, b)
    assert len(a.neg.pc.getTransceivers()) == 1  # b's video, received only
    offers_before = mesh.wires["a", "b"].kinds("a", "b").count("offer")
    cam_a = VideoSource(W, H, fps=20)
    a.neg.add_track(cam_a, "sa", {"role": "camera"})
    (event,) = await b.log.wait_for(TrackEvent)
    assert event.stream is not None
    assert (event.stream.id, event.track.id, event.metadata) == ("sa", cam_a.id,
                                                                 {"role": "camera"})
    assert await count_frames(event.track, 5) == 5
    # a offered the new m-line itself; each side has b's m-line and a's.
    assert mesh.wires["a", "b"].kinds("a", "b").count("offer") == offers_before + 1
    directions = [(t.mid, t.currentDirection) for t in a.neg.pc.getTransceivers()]
    assert directions == [("0", "recvonly"), ("1", "sendonly")], directions
    assert [(t.mid, t.currentDirection) for t in b.neg.pc.getTransceivers()] == [
        ("0", "sendonly"), ("1", "recvonly")]
    (back,) = a.tracks()
    assert await count_frames(back.track, 5) == 5
    stop_all(cam_a, cam_b)


@pytest.mark.slow
async def test_record_a_remote_peer(mesh_factory: Any, tmp_path: Path) -> None:
    mesh: Mesh = mesh_factory(["a", "b"])
    a, b = mesh["a", "b"], mesh["b", "a"]
    cam = VideoSource(W, H, fps=20)
    voice = AudioSource(16_000)
    tone = bytes(b"".join(
        int(8000 * math.sin(2 * math.pi * 440 * i / 16_000)).to_bytes(2, "little", signed=True)
        for i in range(16_000)))
    await voice.push(tone)
    a.neg.add_track(cam, "sa", {"role": "camera"})
    a.neg.add_track(voice, "sa", {"role": "voice"})
    added = (await b.log.wait_for(RemoteStreamAddedEvent))[0]
    path = tmp_path / "call.mp4"
    async with Recorder(path, tracks=added.stream.tracks):
        # A second of both: the whole tone and 20 more frames handed to a's senders while
        # b records (a loaded machine makes that take longer, not fewer).
        start = cam.frames_sent
        await wait_for(lambda: (cam.frames_sent - start, voice.sent_seconds), 10.0,
                       "a second of video and the tone sent",
                       until=lambda v: v[0] >= 20 and v[1] >= 1.0)
    player = from_file(path)
    assert player.video is not None and player.audio is not None
    counts = {"video": 0, "loud": 0}

    async def read(track: Any) -> None:
        async for frame in iter_frames(track):
            if isinstance(frame, av.VideoFrame):
                counts["video"] += 1
            elif peak(frame) > 1000:
                counts["loud"] += 1

    async with asyncio.timeout(5):  # both at once: the player stops at the first EOF
        await asyncio.gather(read(player.video), read(player.audio))
    videos, loud = counts["video"], counts["loud"]
    assert videos >= 5 and loud >= 5, (videos, loud)
    stop_all(cam, voice)
