"""Media helpers: AudioSource pacing/resampling/backpressure, VideoSource, iter_frames,
Recorder + from_file, and the platform checks of the capture helpers."""

from __future__ import annotations

import asyncio
import fractions
import math
import struct
import sys
import time
from pathlib import Path

import av
import pytest
from aiortc.mediastreams import MediaStreamError

from roomwire.client.media import (
    AudioSource,
    Recorder,
    VideoSource,
    from_camera,
    from_file,
    from_microphone,
    iter_frames,
)
from waiting import quiet_period, wait_for


def sine_pcm(seconds: float, rate: int = 16_000, channels: int = 1, freq: float = 440) -> bytes:
    n = int(seconds * rate)
    out = bytearray()
    for i in range(n):
        v = int(12000 * math.sin(2 * math.pi * freq * i / rate))
        out += struct.pack("<h", v) * channels
    return bytes(out)


def is_silent(frame: av.AudioFrame) -> bool:
    return not any(bytes(frame.planes[0])[: frame.samples * 4])


async def test_audio_source_resamples_into_20ms_frames() -> None:
    src = AudioSource(16_000, "mono")
    await src.push(sine_pcm(0.1)[:-1])  # an odd byte is carried to the next push
    await src.push(b"\x00")
    assert 0.08 <= src.buffered_seconds <= 0.1
    frames = [await src.recv() for _ in range(4)]
    for i, f in enumerate(frames):
        assert (f.samples, f.sample_rate, f.format.name, f.layout.name) == (
            960, 48_000, "s16", "stereo")
        assert f.pts == i * 960 and f.time_base == fractions.Fraction(1, 48_000)
    assert not is_silent(frames[1])
    # Underrun: the track keeps going with silence.
    tail = [await src.recv() for _ in range(3)]
    assert is_silent(tail[-1]) and src.underruns >= 1
    assert src.readyState == "live"
    src.stop()


async def test_audio_source_paces_in_real_time() -> None:
    src = AudioSource(48_000, "stereo")
    await src.push(sine_pcm(0.3, 48_000, 2))
    await src.recv()
    start = time.monotonic()
    for _ in range(10):
        await src.recv()
    elapsed = time.monotonic() - start
    # Ten 20 ms frames: never faster than real time. The upper bound only says "paced, not
    # stalled", with room for a loaded 2-core machine (exact pacing is checked on a virtual
    # clock in test_audio.py).
    assert 0.17 <= elapsed <= 1.0, elapsed
    src.stop()


async def test_audio_source_backpressure_and_end() -> None:
    src = AudioSource(16_000, max_buffered_seconds=0.1)
    pushed = asyncio.Event()

    async def producer() -> None:
        await src.push(sine_pcm(0.3))  # over the cap: waits for the consumer
        pushed.set()

    task = asyncio.create_task(producer())
    await asyncio.sleep(quiet_period(0.0))  # a push that ignored the cap would be done by now
    assert not pushed.is_set()
    with pytest.raises(BufferError):
        src.push_nowait(b"\x00\x00")
    got = 0
    while not pushed.is_set():
        await src.recv()
        got += 1
    await task
    assert got >= 5 and src.buffered_seconds <= 0.1
    src.end()
    with pytest.raises(RuntimeError):
        await src.push(b"\x00\x00")
    frames = 0
    with pytest.raises(MediaStreamError):
        while True:
            await src.recv()
            frames += 1
    assert frames >= 1 and src.readyState == "ended"


async def test_audio_source_accepts_frames_and_clear() -> None:
    src = AudioSource()
    frame = av.AudioFrame(format="s16", layout="stereo", samples=441)
    frame.planes[0].update(sine_pcm(441 / 44_100, 44_100, 2)
                           + bytes(frame.planes[0].buffer_size - 441 * 4))
    frame.sample_rate = 44_100
    await src.push(frame)
    await src.push(frame)
    assert src.buffered_seconds > 0.005
    src.clear()
    assert src.buffered_seconds == 0
    with pytest.raises(ValueError):
        AudioSource(0)
    src.stop()


async def test_video_source_and_iter_frames() -> None:
    src = VideoSource(160, 120, fps=50)
    frames: list[av.VideoFrame] = []
    start = time.monotonic()
    async for frame in iter_frames(src):
        assert isinstance(frame, av.VideoFrame) and frame.pts is not None
        frames.append(frame)
        if len(frames) == 10:
            src.stop()
    elapsed = time.monotonic() - start
    assert len(frames) == 10 and src.frames_sent == 10
    assert (frames[0].width, frames[0].height, frames[0].format.name) == (160, 120, "yuv420p")
    assert frames[1].pts is not None and frames[0].pts is not None
    assert frames[1].pts - frames[0].pts == 90_000 // 50
    assert 0.12 <= elapsed <= 0.5
    assert bytes(frames[0].planes[0]) != bytes(frames[5].planes[0])  # it moves
    with pytest.raises(ValueError):
        VideoSource(161, 120)


async def test_recorder_then_from_file(tmp_path: Path) -> None:
    path = tmp_path / "out.mkv"
    video = VideoSource(160, 120, fps=30)
    audio = AudioSource(16_000)
    await audio.push(sine_pcm(0.6))
    rec = Recorder(path, tracks=[video, audio])
    with pytest.raises(ValueError):
        rec.add_track(VideoSource(16, 16))
    async with rec:
        # 0.6 s of video taken by the recorder (a loaded machine makes that take longer).
        await wait_for(lambda: video.frames_sent, 10.0, "18 frames recorded",
                       until=lambda n: n >= 18)
        with pytest.raises(RuntimeError):
            rec.add_track(VideoSource(16, 16))
    await rec.stop()  # idempotent
    assert path.stat().st_size > 1000

    player = from_file(path)
    assert player.video is not None and player.audio is not None
    got = 0
    async with asyncio.timeout(5):
        async for frame in iter_frames(player.video):
            assert isinstance(frame, av.VideoFrame)
            assert (frame.width, frame.height) == (160, 120)
            got += 1
    assert got >= 5
    player.audio.stop()


def test_capture_helpers_are_linux_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(RuntimeError, match="Linux"):
        from_camera()
    with pytest.raises(RuntimeError, match="Linux"):
        from_microphone()
