"""Whole-room recording: RoomRecorder / record_room / `roomwire record` against real peers on
our server (ICE on 127.0.0.1). Every file must pass ffprobe (scripts/setup-services.sh
installs ffmpeg), last as long as its stream was sent, and be described by the manifest."""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from conftest import RunningServer
from roomwire.client.media import AudioSource, VideoSource
from roomwire.client.recording import RoomRecorder, safe_name, track_offset
from roomwire.client.rtc.events import MediaStream, TrackEvent
from roomwire.client.signalling.options import ReconnectOptions
from waiting import wait_for

from .conftest import MakePeer

ROOM = "room/rec"
#: Media flows within seconds on loopback; generous for a loaded 2-core machine.
CONNECT = 30.0
FINALISE = 30.0
#: A child process imports aiortc and PyAV first: seconds on a loaded machine.
START_CHILD = 60.0
QUICK = ReconnectOptions(initial_delay=0.2, max_delay=0.5, jitter=0.2, max_attempts=30)


def drop_socket(peer: Any) -> None:
    """Cut the peer's WebSocket without a close handshake (as a network loss would)."""
    link = peer.signalling._link
    assert link is not None
    link.conn.transport.abort()


def probe(path: Path) -> dict[str, Any]:
    """ffprobe's view of a file; fails the test when ffprobe refuses it."""
    exe = shutil.which("ffprobe")
    assert exe is not None, "ffprobe is missing: scripts/setup-services.sh installs ffmpeg"
    done = subprocess.run(
        [exe, "-v", "error", "-show_entries",
         "format=duration,format_name:stream=codec_type,codec_name", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), (path, done.stderr)
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def tone(seconds: float, rate: int = 48_000) -> bytes:
    return b"".join(struct.pack("<h", int(6000 * math.sin(2 * math.pi * 440 * i / rate))) * 2
                    for i in range(int(seconds * rate)))


class Sender:
    """A peer sending one camera stream (a test pattern and a tone) and, on demand, more."""

    def __init__(self, make_peer: MakePeer, name: str) -> None:
        self.peer = make_peer(name, peer_metadata={"name": name.title()})
        self.video = VideoSource(160, 120, 15)
        self.audio = AudioSource(48_000, "stereo", max_buffered_seconds=120)
        self.stream = MediaStream([self.audio, self.video])
        self.peer.add_stream(self.stream, {"role": "camera", "label": f"{name} cam"})
        self.connected: float | None = None  # the recorder's connection came up (ours)
        self.peer.on("peer-joined", lambda ev: ev.peer.on("state-change", self._state))

    def _state(self, ev: Any) -> None:
        if ev.to == "connected" and self.connected is None:
            self.connected = time.monotonic()

    def sent_since(self, recorder_up: float | None) -> float:
        """Seconds of media that could reach the recorder: from when both ends of the
        connection were up (on a loaded machine one end's DTLS completes up to half a second
        after the other's, and what is sent in between is lost) until now."""
        assert self.connected is not None and recorder_up is not None, "never connected"
        return time.monotonic() - max(self.connected, recorder_up)

    async def start(self) -> None:
        await self.audio.push(tone(60))
        await self.peer.join(ROOM)

    def video_seconds(self) -> float:
        return self.video.frames_sent / self.video.fps


def files_of(manifest: dict[str, Any], peer_id: str) -> list[dict[str, Any]]:
    return [f for f in manifest["files"] if f["peer_id"] == peer_id]


def assert_duration(path: Path, sent: float) -> None:
    seconds = float(probe(path)["format"]["duration"])
    assert abs(seconds - sent) <= 0.05 * sent, (path.name, seconds, sent)


async def test_two_senders_one_leaving_and_a_stream_added_and_removed(
        make_peer: MakePeer, tmp_path: Path) -> None:
    recorder_peer = make_peer("recorder")
    up: dict[str, float] = {}  # when the recorder's connection to each sender came up

    def on_state(remote_id: str, ev: Any) -> None:
        if ev.to == "connected":
            up.setdefault(remote_id, time.monotonic())

    recorder_peer.on("peer-joined", lambda ev: ev.peer.on(
        "state-change", lambda s, rid=ev.peer.id: on_state(rid, s)))
    out = tmp_path / "rec"
    recorder = RoomRecorder(ROOM, out, peer=recorder_peer)
    await recorder.start()
    alice, bob = Sender(make_peer, "alice"), Sender(make_peer, "bob")
    await alice.start()
    await bob.start()

    await wait_for(lambda: len([f for f in recorder.manifest()["files"]
                                if all(t["frames"] for t in f["tracks"])]) >= 2,
                   CONNECT, "both camera streams being written")
    # bob shares a screen for a while: a second stream, a second file.
    screen = VideoSource(160, 120, 10)
    screen_stream = MediaStream([screen])
    bob.peer.add_stream(screen_stream, {"role": "screen", "label": "bob screen"})
    await wait_for(lambda: screen.frames_sent >= 80, CONNECT, "bob's screen sent for 8 s")
    bob.peer.remove_stream(screen_stream)
    screen_sent = screen.frames_sent / screen.fps
    await wait_for(lambda: [f for f in files_of(recorder.manifest(), "bob")
                            if f["stream_id"] == screen_stream.id and f["finalised"]],
                   FINALISE, "bob's screen file finalised after remove_stream")

    # alice leaves mid-recording: her file is finalised with an end offset.
    await wait_for(lambda: alice.video_seconds() >= 6, CONNECT, "alice sent for 6 s")
    alice_sent = alice.sent_since(up.get("alice"))
    await alice.peer.close()
    await wait_for(lambda: [f for f in files_of(recorder.manifest(), "alice")
                            if f["finalised"]], FINALISE, "alice's file finalised")

    await wait_for(lambda: bob.video_seconds() >= alice.video_seconds() + 3, CONNECT,
                   "bob sent for 3 s more than alice")
    bob_sent = bob.sent_since(up.get("bob"))
    await recorder.stop()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == recorder.manifest()
    assert manifest["channel"] == ROOM and manifest["recorder_peer_ids"] == ["recorder"]
    assert manifest["peers"]["alice"]["metadata"] == {"name": "Alice"}
    assert manifest["peers"]["bob"]["metadata"] == {"name": "Bob"}
    assert len(manifest["peers"]["alice"]["left"]) == 1
    assert manifest["peers"]["bob"]["left"] == []

    (a_cam,) = files_of(manifest, "alice")
    b_files = {f["stream_id"]: f for f in files_of(manifest, "bob")}
    assert set(b_files) == {bob.stream.id, screen_stream.id}, manifest
    b_cam, b_screen = b_files[bob.stream.id], b_files[screen_stream.id]
    # alice's close ends her tracks (the connection closes) at about the time she leaves.
    assert a_cam["ended_by"] in ("peer-left", "track-ended"), a_cam
    assert (b_screen["ended_by"], b_cam["ended_by"]) == ("track-ended", "recorder-stopped")
    for f in (a_cam, b_cam, b_screen):
        assert f["finalised"] and f["error"] is None, f
        assert 0 <= f["start"] < f["end"] <= manifest["stopped_at"], f
        # Frames are dropped only when the encoder falls behind (a heavily loaded machine);
        # the timestamps keep the file in time either way, which the durations check.
        assert all(t["frames"] > t["dropped"] for t in f["tracks"]), f
    assert a_cam["end"] <= manifest["peers"]["alice"]["left"][0] + 1.0
    assert b_screen["start"] > b_cam["start"]  # on one clock: the screen came later
    assert sorted(t["kind"] for t in a_cam["tracks"]) == ["audio", "video"]
    assert {t["metadata"]["label"] for t in a_cam["tracks"]} == {"alice cam"}
    assert b_screen["stream_metadata"] == {"role": "screen", "label": "bob screen"}
    assert [t["kind"] for t in b_screen["tracks"]] == ["video"]

    for f, sent, kinds in ((a_cam, alice_sent, ["audio", "video"]),
                           (b_cam, bob_sent, ["audio", "video"]),
                           (b_screen, screen_sent, ["video"])):
        path = out / f["path"]
        info = probe(path)
        assert sorted(s["codec_type"] for s in info["streams"]) == kinds, info
        assert_duration(path, sent)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f["path"] for f in manifest["files"]] + ["manifest.json"])


async def test_a_reconnect_of_the_recorder_starts_a_new_segment_of_each_stream(
        make_peer: MakePeer, tmp_path: Path) -> None:
    recorder_peer = make_peer("recorder", reconnect=QUICK)
    out = tmp_path / "rec"
    recorder = RoomRecorder(ROOM, out, peer=recorder_peer)
    await recorder.start()
    alice = Sender(make_peer, "alice")
    await alice.start()

    def alice_files() -> list[dict[str, Any]]:
        return files_of(recorder.manifest(), "alice")

    await wait_for(lambda: [f for f in alice_files() if f["tracks"] and
                            all(t["frames"] >= 45 for t in f["tracks"])],
                   CONNECT, "alice's stream written for 3 s")
    drop_socket(recorder_peer)
    await wait_for(lambda: recorder_peer.state == "reconnecting", CONNECT, "the drop noticed")
    await wait_for(lambda: recorder_peer.state == "joined", CONNECT, "the recorder back")
    # alice sees the recorder leave and come back: a new connection, the same stream id.
    await wait_for(lambda: [f for f in alice_files() if f["segment"] == 2 and f["tracks"] and
                            all(t["frames"] >= 45 for t in f["tracks"])],
                   CONNECT, "a second segment written for 3 s")
    await recorder.stop()

    manifest = json.loads((out / "manifest.json").read_text())
    first, second = sorted(files_of(manifest, "alice"), key=lambda f: f["segment"])
    assert first["stream_id"] == second["stream_id"] == alice.stream.id
    assert first["ended_by"] in ("connection-reset", "track-ended"), first
    assert second["ended_by"] == "recorder-stopped"
    assert first["end"] <= second["start"], (first, second)
    assert manifest["recorder_peer_ids"] == ["recorder"]
    for f in (first, second):
        assert f["finalised"] and f["error"] is None, f
        info = probe(out / f["path"])
        assert sorted(s["codec_type"] for s in info["streams"]) == ["audio", "video"]
        # The file (RTP timestamps) spans what the manifest says (arrival times): frames
        # queued when a loaded event loop stalls arrive late, hence the quarter second.
        seconds = float(info["format"]["duration"])
        span = f["end"] - f["start"]
        assert abs(seconds - span) <= 0.05 * span + 0.25, (f, seconds)


async def test_roomwire_record_cli_finalises_every_file_on_sigterm(
        server: RunningServer, make_peer: MakePeer, tmp_path: Path) -> None:
    out = tmp_path / "cli-rec"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMWIRE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "roomwire", "record", ROOM, "--out", str(out), "--url",
        server.url, "--token", server.token("rec-cli"), "--loopback", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        alice = Sender(make_peer, "alice")
        await alice.start()
        await wait_for(lambda: alice.video_seconds() >= 4, CONNECT + START_CHILD,
                       "alice sending to the recorder for 4 s")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), FINALISE)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    printed = stdout.decode() + stderr.decode()
    assert proc.returncode == 0, printed
    assert "Traceback" not in printed and "recording room/rec as rec-cli" in printed, printed
    assert "stopped: 1 file(s)" in printed, printed
    manifest = json.loads((out / "manifest.json").read_text())
    (f,) = manifest["files"]
    assert (f["peer_id"], f["ended_by"], f["finalised"]) == ("alice", "recorder-stopped", True)
    assert manifest["peers"]["alice"]["metadata"] == {"name": "Alice"}
    info = probe(out / f["path"])
    assert sorted(s["codec_type"] for s in info["streams"]) == ["audio", "video"]


class FrameTrack(MediaStreamTrack):
    """Hands out ``count`` 20 ms audio frames at once (a burst), then ends."""

    kind = "audio"

    def __init__(self, count: int) -> None:
        super().__init__()
        self.left = count
        self.pts = 0

    async def recv(self) -> av.AudioFrame:
        if not self.left:
            self.stop()
            raise MediaStreamError
        self.left -= 1
        frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
        frame.planes[0].update(bytes(frame.planes[0].buffer_size))
        frame.sample_rate = 48_000
        frame.time_base = fractions.Fraction(1, 48_000)
        frame.pts, self.pts = self.pts, self.pts + 960
        return frame


async def test_a_full_file_queue_drops_its_oldest_frames_and_counts_them(
        make_peer: MakePeer, tmp_path: Path) -> None:
    # The encoder is held back (a long settle): the burst overflows the queue, the oldest
    # frames are dropped and counted, and the newest three still make a playable file.
    recorder = RoomRecorder(ROOM, tmp_path / "rec", peer=make_peer("recorder"),
                            queue_frames=3, settle_seconds=60)
    await recorder.start()
    remote = SimpleNamespace(id="zed")
    recorder._on_track(remote, TrackEvent(FrameTrack(10), (), {"role": "mic"}, "audio"))  # type: ignore[arg-type]
    await wait_for(lambda: recorder.manifest()["files"][0]["ended_by"], FINALISE,
                   "the burst read to its end")
    (track,) = recorder.manifest()["files"][0]["tracks"]
    assert (track["frames"], track["dropped"]) == (3, 7)
    await recorder.stop()
    (f,) = recorder.manifest()["files"]
    assert f["finalised"] and f["error"] is None and f["ended_by"] == "track-ended", f
    info = probe(tmp_path / "rec" / f["path"])
    assert [s["codec_type"] for s in info["streams"]] == ["audio"]
    assert float(info["format"]["duration"]) == pytest.approx(0.06, abs=0.025)


async def test_at_most_max_open_files_are_written_and_the_rest_is_counted(
        make_peer: MakePeer, tmp_path: Path) -> None:
    recorder = RoomRecorder(ROOM, tmp_path / "rec", peer=make_peer("recorder"),
                            max_open_files=2)
    await recorder.start()
    remote = SimpleNamespace(id="hoarder")
    for i in range(5):  # five streams of one track each
        stream = MediaStream(id=f"s{i}")
        recorder._on_track(remote, TrackEvent(FrameTrack(500), (stream,), None, "audio"))  # type: ignore[arg-type]
    manifest = recorder.manifest()
    assert [f["stream_id"] for f in manifest["files"]] == ["s0", "s1"]
    assert manifest["ignored_tracks"] == 3
    await recorder.stop()
    assert all(f["finalised"] for f in recorder.manifest()["files"])


async def test_roomwire_record_with_a_refused_token_exits_1_and_says_why(
        server: RunningServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMWIRE_")}
    forged = server.token("rec-cli")[:-4] + "AAAA"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "roomwire", "record", ROOM, "--out", str(tmp_path / "r"),
        "--url", server.url, "--token", forged, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), START_CHILD)
    printed = stdout.decode() + stderr.decode()
    assert proc.returncode == 1, printed
    assert "could not record 'room/rec'" in printed and "Traceback" not in printed, printed
    assert forged not in printed


@pytest.mark.parametrize(("text", "expected"), [
    ("alice", "alice"),
    ("../../etc/passwd", "etc_passwd"),
    ("a b/c", "a_b_c"),
    ("", "x"),
    ("..", "x"),
    ("é" * 10, "x"),
    ("x" * 100, "x" * 48),
])
def test_safe_name(text: str, expected: str) -> None:
    assert safe_name(text) == expected


@pytest.mark.parametrize(("first", "pts", "expected"), [
    (1000, 1000, 0),
    (1000, 4000, 3000),
    ((1 << 32) - 100, 200, 300),  # across the wrap
    (5000, 4000, None),  # before the first frame
])
def test_track_offset(first: int, pts: int, expected: int | None) -> None:
    assert track_offset(first, pts) == expected


async def test_a_recorder_that_was_given_tracks_is_refused(make_peer: MakePeer,
                                                           tmp_path: Path) -> None:
    peer = make_peer("recorder")
    peer.add_track(VideoSource(64, 48, 5))
    with pytest.raises(ValueError, match="sends nothing"):
        await RoomRecorder(ROOM, tmp_path, peer=peer).start()
