"""Agent audio: remote_audio (resampling, exact frame sizes, gaps), the UtteranceDetector's
decisions, and AudioSource pacing on an injected clock (no drift over ten virtual minutes)."""

from __future__ import annotations

import asyncio
import fractions
import math
import random
import struct
from collections.abc import Sequence

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from roomwire.client.audio import (
    AudioChunk,
    UtteranceDetector,
    detect_gap,
    level_dbfs,
    remote_audio,
)
from roomwire.client.media import AudioSource, VirtualClock


def sine_frame(pts: int, samples: int = 960, rate: int = 48_000, channels: int = 2,
               freq: float = 1000.0, amplitude: int = 10_000) -> av.AudioFrame:
    """A frame of a sine wave whose phase follows ``pts`` (as a received frame's would)."""
    values = [int(amplitude * math.sin(2 * math.pi * freq * (pts + i) / rate))
              for i in range(samples)]
    pcm = b"".join(struct.pack("<h", v) * channels for v in values)
    frame = av.AudioFrame(format="s16", layout="stereo" if channels == 2 else "mono",
                          samples=samples)
    frame.planes[0].update(pcm + bytes(frame.planes[0].buffer_size - len(pcm)))
    frame.sample_rate = rate
    frame.time_base = fractions.Fraction(1, rate)
    frame.pts = pts
    return frame


class FrameTrack(MediaStreamTrack):
    """Hands out the given frames, then ends (as a remote track whose sender left)."""

    kind = "audio"

    def __init__(self, frames: Sequence[av.AudioFrame]) -> None:
        super().__init__()
        self._frames = list(frames)

    async def recv(self) -> av.AudioFrame:
        if not self._frames:
            self.stop()
            raise MediaStreamError
        return self._frames.pop(0)


async def collect(track: MediaStreamTrack, **kwargs: object) -> list[AudioChunk]:
    return [chunk async for chunk in remote_audio(track, **kwargs)]  # type: ignore[arg-type]


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


# -- remote_audio ------------------------------------------------------------------------------


async def test_a_1khz_stereo_48k_sine_becomes_16k_mono_with_its_frequency_and_amplitude() -> None:
    start = 123_456  # RTP timestamps start anywhere
    frames = [sine_frame(start + i * 960) for i in range(50)]  # one second
    chunks = await collect(FrameTrack(frames), sample_rate=16_000, channels=1, frame_ms=20,
                           as_numpy=True)
    assert all(c.data.shape == (320, 1) and c.data.dtype == np.int16 for c in chunks)
    assert all((c.sample_rate, c.channels, c.samples) == (16_000, 1, 320) for c in chunks)
    audio = np.concatenate([c.data[:, 0] for c in chunks]).astype(np.float64)
    assert abs(len(audio) - 16_000) <= 320  # one second, give or take the filter's delay
    steady = audio[1600:-1600]  # away from the resampler's start-up and the final padding
    assert abs(dominant_hz(steady, 16_000) - 1000) <= 5
    peak = np.max(np.abs(steady))
    rms = math.sqrt(float(np.mean(steady ** 2)))
    assert 9_500 <= peak <= 10_500, peak
    assert abs(rms - 10_000 / math.sqrt(2)) <= 250, rms
    assert [c.gap_ms for c in chunks] == [0.0] * len(chunks)


async def test_chunks_have_exactly_frame_ms_whatever_the_input_frame_size() -> None:
    # 1024-sample frames at 48 kHz do not line up with 30 ms at 24 kHz (720 samples).
    frames = [sine_frame(i * 1024, samples=1024) for i in range(40)]
    chunks = await collect(FrameTrack(frames), sample_rate=24_000, channels=2, frame_ms=30)
    assert chunks and all(len(c.data) == 720 * 2 * 2 for c in chunks)
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    starts = [c.start for c in chunks]
    assert starts == pytest.approx([i * 0.030 for i in range(len(chunks))])
    total = 40 * 1024 / 48_000
    assert abs(len(chunks) * 0.030 - total) <= 0.030  # nothing lost, at most one padded


async def test_a_jump_in_the_timestamps_is_reported_as_a_gap_on_the_next_chunk() -> None:
    frames = [sine_frame(i * 960) for i in range(10)]
    # 7 frames (140 ms) never arrive; then the audio goes on.
    frames += [sine_frame((i + 17) * 960) for i in range(10)]
    chunks = await collect(FrameTrack(frames), sample_rate=16_000, frame_ms=20)
    gaps = [(i, c.gap_ms) for i, c in enumerate(chunks) if c.gap_ms]
    assert len(gaps) == 1, gaps
    index, gap = gaps[0]
    assert gap == pytest.approx(140.0)
    assert index in (9, 10)  # the chunk that joins both sides
    assert chunks[-1].start == pytest.approx(chunks[-2].start + 0.020)
    assert chunks[11].start == pytest.approx(11 * 0.020 + 0.140, abs=0.021)


async def test_rtp_wraparound_is_no_gap_and_a_restart_backwards_is_no_gap() -> None:
    wrap = 1 << 32
    frames = [sine_frame((wrap - 3 * 960 + i * 960) % wrap) for i in range(6)]
    frames += [sine_frame(i * 960) for i in range(5)]  # the sender restarted its clock
    chunks = await collect(FrameTrack(frames), sample_rate=48_000, channels=2)
    assert all(c.gap_ms == 0 for c in chunks), [c.gap_ms for c in chunks]
    assert len(chunks) == 11


@pytest.mark.parametrize(("expected", "pts", "gap", "resync"), [
    (None, 0, 0.0, True),            # the first frame
    (960, 960, 0.0, False),          # on time
    (960, 1200, 0.0, False),         # jitter under half a frame
    (960, 960 + 4800, 0.1, False),   # 100 ms missing
    ((1 << 32) - 960, 960, 0.04, False),  # lost across the wrap
    (96_000, 960, 0.0, True),        # backwards: resynchronise
    (960, None, 0.0, False),         # an unstamped frame cannot be judged
])
def test_detect_gap(expected: int | None, pts: int | None, gap: float, resync: bool) -> None:
    assert detect_gap(expected, pts, 48_000, 960) == (pytest.approx(gap), resync)


async def test_bad_parameters_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="whole number of samples"):
        await collect(FrameTrack([]), sample_rate=22_050, frame_ms=10)
    with pytest.raises(ValueError, match="channels must be 1 or 2"):
        await collect(FrameTrack([]), channels=6)


# -- UtteranceDetector -------------------------------------------------------------------------

LOUD, QUIET = -20.0, -60.0


def run_levels(levels: Sequence[float], **options: float) -> list[tuple[str, float, float]]:
    """Feed 20 ms chunks at the given levels; the events as (kind, start, end)."""
    det = UtteranceDetector(**options)
    out = []
    for level in levels:
        for ev in det.feed_level(level, 0.020):
            out.append((ev.kind, round(ev.start, 3), round(ev.end or 0.0, 3)))
    return out


@pytest.mark.parametrize(("levels", "expected"), [
    # silence only
    ([QUIET] * 50, []),
    # a 40 ms click does not start speech (start_ms=60)
    ([QUIET] * 5 + [LOUD] * 2 + [QUIET] * 50, []),
    # speech from 100 ms to 600 ms, ended after 600 ms of quiet, dated at the first quiet chunk
    ([QUIET] * 5 + [LOUD] * 25 + [QUIET] * 40,
     [("start", 0.1, 0.0), ("end", 0.1, 0.6)]),
    # a 300 ms pause between two words does not end the utterance
    ([LOUD] * 10 + [QUIET] * 15 + [LOUD] * 10 + [QUIET] * 30,
     [("start", 0.0, 0.0), ("end", 0.0, 0.7)]),
    # two utterances apart
    ([LOUD] * 5 + [QUIET] * 30 + [LOUD] * 5 + [QUIET] * 30,
     [("start", 0.0, 0.0), ("end", 0.0, 0.1), ("start", 0.7, 0.0), ("end", 0.7, 0.8)]),
    # still speaking when the input stops: no end yet
    ([LOUD] * 20, [("start", 0.0, 0.0)]),
])
def test_utterance_decisions(levels: list[float], expected: list[tuple[str, float, float]]
                             ) -> None:
    assert run_levels(levels) == expected


def test_a_monologue_is_cut_at_max_utterance_ms() -> None:
    det = UtteranceDetector(max_utterance_ms=1000)
    events = [ev for _ in range(100) for ev in det.feed_level(LOUD, 0.020)]
    ends = [ev for ev in events if ev.kind == "end"]
    assert ends and ends[0].forced and ends[0].duration == pytest.approx(1.0)


def test_the_end_event_carries_the_utterance_audio_with_pre_roll() -> None:
    det = UtteranceDetector(pre_roll_ms=40, start_ms=20, end_ms=100)
    quiet = bytes(640)
    loud = struct.pack("<h", 8000) * 320
    events = []
    t = 0.0
    for pcm in [quiet] * 5 + [loud] * 5 + [quiet] * 6:
        chunk = AudioChunk(pcm, 16_000, 1, 320, t)
        events += det.feed(chunk)
        t += 0.020
    end = next(ev for ev in events if ev.kind == "end")
    assert end.start == pytest.approx(0.100) and end.end == pytest.approx(0.200)
    # 2 chunks of pre-roll, 5 loud, then the quiet ones up to the decision.
    assert end.audio.startswith(quiet * 2 + loud * 5)
    assert level_dbfs(loud) == pytest.approx(20 * math.log10(8000 / 32768), abs=0.01)
    assert level_dbfs(quiet) == -math.inf


# -- AudioSource pacing on an injected clock ----------------------------------------------------


async def drive(src: AudioSource, clock: VirtualClock, seconds: float,
                work: float = 0.0) -> float:
    """Pull ``seconds`` of frames as a sender would; the last frame's lateness."""
    for _ in range(int(seconds / 0.020)):
        await src.recv()
        clock.advance(work)
    return src.lateness


async def test_audio_source_does_not_drift_over_ten_virtual_minutes() -> None:
    rng = random.Random(15)
    # A loaded machine: every sleep wakes up 0 to 4 ms late, and each frame costs 1 ms.
    clock = VirtualClock(oversleep=lambda s: rng.uniform(0.0, 0.004))
    src = AudioSource(22_050, "mono", clock=clock, max_buffered_seconds=700)
    start = clock.time()
    lateness = await drive(src, clock, 600.0, work=0.001)
    elapsed = clock.time() - start
    assert src.reanchors == 0
    # The sender's timestamps and the clock agree within a frame after ten minutes; a pacer
    # that slept 20 ms after each frame would be about 90 s behind (3 ms lost per frame).
    assert abs(elapsed - src.sent_seconds + 0.020) <= 0.010, (elapsed, src.sent_seconds)
    assert 0.0 <= lateness <= 0.010, lateness
    src.stop()


async def test_pcm_pushed_at_any_rate_comes_out_at_48k_with_its_duration() -> None:
    clock = VirtualClock()
    src = AudioSource(22_050, "mono", clock=clock, max_buffered_seconds=100)
    rng = random.Random(3)
    pushed = 0
    while pushed < 22_050 * 60:  # a minute, in odd-sized pieces
        n = rng.randrange(1, 5000)
        await src.push(bytes(2 * n))
        pushed += n
    src.end()
    frames = 0
    with pytest.raises(MediaStreamError):
        while True:
            frame = await src.recv()
            assert (frame.sample_rate, frame.samples) == (48_000, 960)
            frames += 1
    assert abs(frames * 0.020 - pushed / 22_050) <= 0.020


async def test_a_stall_re_anchors_instead_of_bursting() -> None:
    clock = VirtualClock()
    src = AudioSource(48_000, "stereo", clock=clock)
    await drive(src, clock, 1.0)
    clock.advance(0.5)  # the event loop was blocked for half a second
    await src.recv()
    assert src.reanchors == 1
    before = clock.time()
    await drive(src, clock, 0.2)
    assert clock.time() - before == pytest.approx(0.2, abs=0.001)  # paced, not a burst
    src.stop()


async def test_remote_audio_reads_an_audio_source_end_to_end() -> None:
    src = AudioSource(16_000, "mono", clock=VirtualClock())
    tone = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 16_000)))
                    for i in range(16_000))
    await src.push(tone)
    src.end()
    chunks = await asyncio.wait_for(collect(src, sample_rate=16_000, as_numpy=True), 10)
    audio = np.concatenate([c.data[:, 0] for c in chunks]).astype(np.float64)
    assert abs(dominant_hz(audio[800:-800], 16_000) - 440) <= 5
