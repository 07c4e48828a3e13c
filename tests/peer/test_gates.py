"""Every state gate and error code of MeteredPeer (docs/sdk-peer.md, State machine and gates)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import roomwire.client.rtc.peer as peer_mod
from conftest import RawClient, RunningServer, start_node
from roomwire.client import (
    MediaStream,
    MeteredPeer,
    MeteredPeerOversizedError,
    MeteredPeerReplaceTrackError,
    MeteredPeerSendError,
    MeteredPeerStateError,
)
from roomwire.client.media import AudioSource, VideoSource
from roomwire.client.signalling.errors import SignallingConnectError
from roomwire.client.signalling.options import ReconnectOptions
from roomwire.client.signalling.transport import WebSocketConnection, websockets_factory

from .conftest import MakePeer
from .kit import Tap, wait_until
from .test_reconnect import QUICK, drop_socket

ROOM = "room/gates"


def tap(p: Any) -> Tap:
    t: Tap = p.tap
    return t


def code_of(exc: pytest.ExceptionInfo[Any]) -> str:
    return str(exc.value.code)


async def test_send_and_join_gates(make_peer: MakePeer) -> None:
    alice = make_peer("alice")
    with pytest.raises(MeteredPeerSendError) as e:
        await alice.send("x")
    assert code_of(e) == "not_joined"
    with pytest.raises(MeteredPeerSendError) as e:
        await alice.send_to("bob", "x")
    assert code_of(e) == "not_joined"
    for bad in ("_metered/x", "_INTERNAL/x", "_system/y"):
        with pytest.raises(MeteredPeerSendError) as e:
            await alice.join(bad)
        assert code_of(e) == "reserved_channel"
    with pytest.raises(MeteredPeerSendError) as e:
        await alice.join("")
    assert code_of(e) == "invalid_args"
    assert alice.state == "idle"

    await alice.join(ROOM)
    with pytest.raises(MeteredPeerStateError) as e:
        await alice.join(ROOM)
    assert (code_of(e), e.value.method, e.value.current_state) == (
        "invalid_state", "join", "joined")
    with pytest.raises(MeteredPeerSendError) as e:
        await alice.send_to("alice", "x")
    assert code_of(e) == "self_send"
    for bad_id in ("", "a\x00b", "x" * 200, 42):
        with pytest.raises(MeteredPeerSendError) as e:
            await alice.send_to(bad_id, "x")  # type: ignore[arg-type]
        assert code_of(e) == "invalid_args"
    with pytest.raises(MeteredPeerSendError) as e:
        await alice.send(float("nan"))
    assert code_of(e) == "invalid_args"
    with pytest.raises(MeteredPeerOversizedError) as over:
        await alice.send("x" * 70_000)
    assert over.value.cap == 65_536 and over.value.size == 70_002
    with pytest.raises(MeteredPeerOversizedError):
        await alice.send_to("bob", "x" * 70_000)

    await alice.close()
    with pytest.raises(MeteredPeerStateError) as e:
        await alice.join(ROOM)
    assert (code_of(e), e.value.current_state) == ("invalid_state", "closed")
    with pytest.raises(MeteredPeerSendError) as e:
        await alice.send("x")
    assert code_of(e) == "not_joined"


async def test_media_gates_and_tracking_map(make_peer: MakePeer) -> None:
    alice = make_peer("alice")
    audio, video = AudioSource(), VideoSource(64, 48)
    cam = MediaStream([audio, video])
    alice.add_stream(cam, {"role": "camera"})
    alice.add_stream(cam, {"role": "ignored"})  # per-track idempotent: first wins
    assert alice.get_track_metadata(video) == {"role": "camera"}
    alice.add_track(video, cam, {"role": "other"})  # same track and stream: no-op
    assert alice.get_stream_metadata(cam) == {"role": "camera"}
    other = MediaStream([video, VideoSource(64, 48)])
    with pytest.raises(MeteredPeerStateError) as e:
        alice.add_stream(other)  # all-or-nothing: nothing of `other` was added
    assert (code_of(e), e.value.current_state) == ("track_already_attached", None)
    assert other.get_tracks()[1] not in alice.local_tracks
    with pytest.raises(MeteredPeerStateError) as e:
        alice.add_track(audio)  # unaffiliated vs cam
    assert code_of(e) == "track_already_attached"
    big = VideoSource(64, 48)
    with pytest.raises(MeteredPeerOversizedError):
        alice.add_track(big, None, {"blob": "x" * 70_000})
    assert big not in alice.local_tracks
    alice.add_track(big, None, {"role": "file"})
    assert alice.get_stream_metadata(MediaStream()) is None

    # replace_track with no peers: the map is re-keyed (zero-peer case).
    new_video = VideoSource(64, 48)
    await alice.replace_track(video, new_video)
    assert alice.get_track_metadata(new_video) == {"role": "camera"}
    assert video not in alice.local_tracks and new_video in cam.get_tracks()
    with pytest.raises(MeteredPeerStateError) as e:
        await alice.replace_track(new_video, big)
    assert code_of(e) == "track_already_attached"
    with pytest.raises(ValueError):
        await alice.replace_track(new_video, AudioSource())
    await alice.replace_track(big, None)  # silence: dropped from the map
    assert big not in alice.local_tracks

    alice.remove_track(VideoSource(64, 48))  # not tracked: no-op
    alice.remove_stream(cam)
    assert alice.local_tracks == []

    await alice.close()
    calls: list[Callable[[], None]] = [
                 lambda: alice.add_track(VideoSource(64, 48)),
                 lambda: alice.add_stream(MediaStream()),
                 lambda: alice.remove_track(audio),
                 lambda: alice.remove_stream(cam)]
    for call in calls:
        with pytest.raises(MeteredPeerStateError) as e:
            call()
        assert (code_of(e), e.value.current_state) == ("invalid_state", "closed")
    with pytest.raises(MeteredPeerStateError) as e:
        await alice.replace_track(audio, None)
    assert (code_of(e), e.value.method) == ("invalid_state", "replace_track")


async def test_gates_while_reconnecting(make_peer: MakePeer) -> None:
    alice = make_peer("alice", reconnect=QUICK)
    bob = make_peer("bob")
    cam = VideoSource(64, 48)
    alice.add_track(cam, None, {"role": "camera"})
    await alice.join(ROOM)
    await bob.join(ROOM)
    await tap(alice).remote_peer("bob")
    drop_socket(alice)
    await wait_until(lambda: alice.state == "reconnecting")
    with pytest.raises(MeteredPeerStateError) as e:
        await alice.replace_track(cam, VideoSource(64, 48))
    assert (code_of(e), e.value.current_state) == ("invalid_state", "reconnecting")
    late = VideoSource(64, 48)
    alice.add_track(late, None, {"role": "late"})  # deferred, no error
    await wait_until(lambda: alice.state == "joined", 10)
    ev = await tap(bob).track("alice", "video", lambda e: (e.metadata or {}).get("role")
                              == "late", timeout=10)
    assert ev.metadata == {"role": "late"}


async def test_replace_track_partial_failure(make_peer: MakePeer) -> None:
    peers = [make_peer(n) for n in ("a", "b", "c")]
    a = peers[0]
    cam = VideoSource(64, 48)
    a.add_track(cam, None, {"role": "camera"})
    for p in peers:
        await p.join(ROOM)
    await wait_until(lambda: len(a.remote_peers) == 2)
    broken = a.get_remote_peer("c")
    assert broken is not None

    async def fail(old: Any, new: Any) -> None:
        raise RuntimeError("codec mismatch")

    broken.negotiator.replace_track = fail  # type: ignore[method-assign]
    new_cam = VideoSource(64, 48)
    with pytest.raises(MeteredPeerReplaceTrackError) as e:
        await a.replace_track(cam, new_cam)
    assert e.value.succeeded == ("b",)
    assert [f.peer_id for f in e.value.failed] == ["c"]
    assert isinstance(e.value.failed[0].err, RuntimeError)
    assert a.get_track_metadata(new_cam) == {"role": "camera"}  # one success: re-keyed


async def test_close_from_idle_fires_left_once_and_async_with() -> None:
    p = MeteredPeer(api_key="pk_test", url="ws://127.0.0.1:9")
    t = Tap(p)
    await p.close("not needed")
    await p.close()
    assert p.state == "closed"
    assert [(e.peer_id, e.channel, e.reason) for e in t.log.of("left")] == [
        (None, None, "not needed")]
    assert [(e.from_, e.to) for e in t.log.of("state-change")] == [("idle", "closed")]
    async with MeteredPeer(api_key="pk_test", url="ws://127.0.0.1:9") as q:
        t2 = Tap(q)
    assert q.state == "closed" and len(t2.log.of("left")) == 1


async def test_failed_join_returns_to_idle_and_may_retry(server: RunningServer) -> None:
    p = MeteredPeer(api_key=server.pk, url="ws://127.0.0.1:9")
    t = Tap(p)
    with pytest.raises(SignallingConnectError):
        await p.join(ROOM)
    assert p.state == "idle" and p.channel is None
    assert [(e.from_, e.to) for e in t.log.of("state-change")] == [
        ("idle", "joining"), ("joining", "idle")]
    await p.close()
    assert len(t.log.of("left")) == 1


async def test_data_only_from_peers_in_presence(make_peer: MakePeer,
                                                server: RunningServer) -> None:
    alice = make_peer("alice")
    await alice.join(ROOM)
    outsider = await RawClient.connect(server.token_url("outsider"))
    reply = await outsider.request({"type": "send", "to": "alice", "data": {"x": 1}})
    assert reply["type"] == "ack"
    reply = await outsider.request({"type": "publish", "channel": ROOM, "data": {"x": 2}})
    assert reply["type"] == "ack"
    insider = await RawClient.connect(server.token_url("insider"))
    await insider.subscribe(ROOM)
    await insider.request({"type": "send", "to": "alice", "data": {"x": 3}})
    # The outsider's frames reached alice's socket before the insider's (one server, one
    # socket, in order): once the insider's data is out, theirs was dropped or is there too.
    got = await tap(alice).log.wait("data")
    assert [(e.sender_peer_id, e.data, e.kind) for e in tap(alice).log.of("data")] == [
        ("insider", {"x": 3}, "direct")]
    assert got
    await outsider.close()
    await insider.close()


async def test_peer_cap(make_peer: MakePeer, server: RunningServer,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_mod, "MAX_PEERS", 2)
    alice = make_peer("alice")
    await alice.join(ROOM)
    raws = []
    for i in range(3):
        r = await RawClient.connect(server.token_url(f"raw{i}"))
        await r.subscribe(ROOM)
        raws.append(r)
    await tap(alice).log.wait("peer-joined", count=2)
    # raw2's `joined` went to alice's socket before this later direct from raw0.
    await raws[0].request({"type": "send", "to": "alice", "data": {"mark": 1}})
    await tap(alice).log.wait("data", lambda e: e.data == {"mark": 1})
    assert [p.id for p in alice.remote_peers] == ["raw0", "raw1"]
    assert len(tap(alice).log.of("peer-joined")) == 2
    for r in raws:
        await r.close()


async def test_reserved_key_warning(make_peer: MakePeer, caplog: pytest.LogCaptureFixture
                                    ) -> None:
    alice = make_peer("alice")
    bob = make_peer("bob")
    await alice.join(ROOM)
    await bob.join(ROOM)
    await tap(alice).remote_peer("bob")
    with caplog.at_level(logging.WARNING):
        await alice.send_to("bob", {"__meteredTrackMeta": {"trackId": "t"}, "x": 1})
    assert "__meteredTrackMeta" in caplog.text
    # A later plain message arrives after it, in order: then the first one was not data.
    await alice.send_to("bob", {"x": 2})
    await tap(bob).log.wait("data")
    assert [e.data for e in tap(bob).log.of("data")] == [{"x": 2}]  # the first: track metadata


async def test_terminal_close_code_gives_error_name(make_peer: MakePeer,
                                                    server: RunningServer) -> None:
    tokens = [server.token("alice"), "not-a-jwt"]

    def provider() -> str:
        return tokens.pop(0) if len(tokens) > 1 else tokens[0]

    alice = MeteredPeer(token_provider=provider, url=server.url, reconnect=QUICK)
    t = Tap(alice)
    await alice.join(ROOM)
    drop_socket(alice)
    await wait_until(lambda: alice.state == "closed", 10)
    errs = t.log.of("error")
    assert [(e.err.name, e.err.code) for e in errs] == [("invalid_token", "invalid_token")]
    assert len(t.log.of("left")) == 1
    await alice.close()


class _NoPresenceAfterReconnect:
    """A WebSocket factory whose later connections never deliver presence frames."""

    def __init__(self) -> None:
        self.connects = 0
        self.inner = websockets_factory()

    async def __call__(self, url: str) -> WebSocketConnection:
        self.connects += 1
        conn = await self.inner(url)
        if self.connects == 1:
            return conn
        real_recv = conn.recv

        async def recv() -> str | bytes:
            while True:
                raw = await real_recv()
                if '"presence"' not in str(raw) or json.loads(raw).get("type") != "presence":
                    return raw

        conn.recv = recv  # type: ignore[method-assign]
        return conn


async def test_never_stuck_reconnecting_without_a_roster(tmp_path: Path) -> None:
    srv = await start_node(tmp_path / "noroster")
    try:
        factory = _NoPresenceAfterReconnect()
        alice = MeteredPeer(token_provider=lambda: srv.token("alice"), url=srv.url,
                            reconnect=ReconnectOptions(initial_delay=0.05, max_delay=0.1),
                            web_socket_factory=factory, reconcile_timeout=0.3)
        t = Tap(alice)
        await alice.join(ROOM)
        drop_socket(alice)
        await wait_until(lambda: alice.state == "closed", 5)
        assert [e.err.name for e in t.log.of("error")] == ["reconcile_timeout"]
        assert len(t.log.of("left")) == 1
        assert factory.connects == 2
    finally:
        await srv.node.stop()


async def test_options_factories_ice_servers_loopback_and_no_auto_resubscribe(
        make_peer: MakePeer) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection

    from roomwire.client.rtc.loopback import loopback_mode

    configs: list[RTCConfiguration] = []

    def factory(config: RTCConfiguration) -> RTCPeerConnection:
        configs.append(config)
        return RTCPeerConnection(config)

    alice = make_peer("alice", rtc_peer_connection_factory=factory,
                      ice_servers=[{"urls": "stun:127.0.0.1:9"}], loopback_candidates="add",
                      auto_resubscribe=False, reconnect=QUICK)
    bob = make_peer("bob")
    before = loopback_mode()
    await alice.join(ROOM)
    assert loopback_mode() == "add"
    await bob.join(ROOM)
    await tap(alice).remote_peer("bob")
    assert configs and configs[0].iceServers is not None
    assert configs[0].iceServers[0].urls == "stun:127.0.0.1:9"
    drop_socket(alice)
    await wait_until(lambda: alice.state == "reconnecting")
    await wait_until(lambda: alice.state == "joined", 10)  # re-subscribed by the peer itself
    await alice.send("after")
    got = await tap(bob).log.wait("data")
    assert got[0].data == "after"
    await alice.close()
    assert loopback_mode() == before
