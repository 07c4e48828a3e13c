"""Audio for programs that listen and talk (speech recognisers, AI voice agents).

Provisional API (may change in a minor release).

* ``remote_audio(track, sample_rate=16000, channels=1, frame_ms=20)``: ``async for chunk in
  ...`` over a received audio track as signed 16-bit PCM at the rate, channel count and frame
  size a model wants (``AudioChunk``: ``bytes``, or a numpy ``int16`` array with
  ``as_numpy=True``). Audio the network lost is reported (``chunk.gap_ms``), never hidden.
* ``UtteranceDetector``: an energy-based voice activity detector that turns chunks into
  ``start`` / ``end`` events of an utterance (with its audio), so an agent knows when a
  speaker has finished and it may answer.

Sending goes through ``roomwire.client.media.AudioSource`` (PCM at any rate in, 48 kHz out,
paced by a clock).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from ..extras import missing_extra

try:
    import av
    from aiortc import MediaStreamTrack
    from aiortc.mediastreams import MediaStreamError
except ImportError as exc:  # the optional WebRTC stack is not installed
    raise missing_extra("webrtc", exc) from exc

__all__ = [
    "AudioChunk",
    "UtteranceDetector",
    "UtteranceEvent",
    "detect_gap",
    "level_dbfs",
    "remote_audio",
]

_RTP_WRAP = 1 << 32
#: A jump smaller than this fraction of the previous frame is timestamp jitter, not loss.
_GAP_TOLERANCE = 0.5


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """``frame_ms`` of audio: ``samples`` samples per channel, interleaved int16.

    ``data`` is ``bytes`` (little-endian, interleaved) or, with ``as_numpy=True``, an
    ``int16`` array of shape ``(samples, channels)``. ``start`` is the chunk's position in
    seconds from the track's first audio, counting lost audio, so it follows the sender's
    clock. ``gap_ms`` is how much audio the track was missing just before (or inside) this
    chunk: its timestamps jumped (packets lost, the sender paused); the audio on both sides
    is joined, nothing is invented. ``final`` marks the last chunk of an ended track (padded
    with silence to the full size)."""

    data: Any
    sample_rate: int
    channels: int
    samples: int
    start: float
    gap_ms: float = 0.0
    final: bool = False

    @property
    def duration(self) -> float:
        return self.samples / self.sample_rate

    def pcm(self) -> bytes:
        """The samples as interleaved little-endian int16 bytes, whatever ``data`` is."""
        return self.data if isinstance(self.data, bytes) else bytes(self.data.tobytes())


def detect_gap(expected_pts: int | None, pts: int | None, rate: int,
               previous_samples: int) -> tuple[float, bool]:
    """``(missing_seconds, resync)`` for a frame stamped ``pts`` when ``expected_pts`` was
    due (both in samples at ``rate``, RTP timestamps that wrap at 2**32).

    A jump forward by more than half a frame is missing audio. A jump backward (a sender
    that restarted its clock, or a reordered frame) is no loss: the caller resynchronises on
    the new timestamps."""
    if expected_pts is None or pts is None:
        return 0.0, expected_pts is None
    delta = (pts - expected_pts) % _RTP_WRAP
    if delta >= _RTP_WRAP // 2:
        return 0.0, True
    if delta <= previous_samples * _GAP_TOLERANCE:
        return 0.0, False
    return delta / rate, False


def _layout(channels: int) -> Literal["mono", "stereo"]:
    if channels == 1:
        return "mono"
    if channels == 2:
        return "stereo"
    raise ValueError("channels must be 1 or 2")


async def remote_audio(
    track: MediaStreamTrack,
    sample_rate: int = 16_000,
    channels: int = 1,
    frame_ms: int = 20,
    as_numpy: bool = False,
) -> AsyncIterator[AudioChunk]:
    """Chunks of exactly ``frame_ms`` of ``track``'s audio, resampled to ``sample_rate``
    with ``channels`` (1 or 2), until the track ends; the iterator then stops after a last
    chunk (``final=True``) holding what remained, padded with silence.

    Raises ``ValueError`` for a frame size that is not a whole number of samples at
    ``sample_rate`` and ``ImportError`` for ``as_numpy=True`` without numpy installed."""
    if sample_rate < 1000 or sample_rate > 192_000:
        raise ValueError("sample_rate must be between 1000 and 192000 Hz")
    layout = _layout(channels)
    if frame_ms <= 0 or (sample_rate * frame_ms) % 1000:
        raise ValueError(f"frame_ms={frame_ms} is not a whole number of samples at "
                         f"{sample_rate} Hz")
    np: Any = None
    if as_numpy:
        try:
            import numpy as np
        except ImportError as exc:
            raise ImportError("remote_audio(as_numpy=True) needs numpy: pip install numpy",
                              name="numpy") from exc
    frame_samples = sample_rate * frame_ms // 1000
    sample_bytes = 2 * channels
    frame_bytes = frame_samples * sample_bytes
    resampler: av.AudioResampler | None = None
    source_format: tuple[str, str, int] | None = None
    buffer = bytearray()
    emitted = 0  # samples handed out, at sample_rate
    lost = 0.0  # seconds of audio skipped before the chunk being filled
    inside = 0.0  # skipped within the chunk being filled (counts from the next one on)
    pending_gap = 0.0
    expected: int | None = None
    previous = 0

    def make(chunk: bytes, final: bool = False) -> AudioChunk:
        nonlocal emitted, pending_gap, lost, inside
        start = emitted / sample_rate + lost
        data: Any = chunk
        if np is not None:
            data = np.frombuffer(chunk, dtype=np.int16).reshape(-1, channels).copy()
        out = AudioChunk(data, sample_rate, channels, frame_samples, start,
                         round(pending_gap * 1000, 3), final)
        emitted += frame_samples
        pending_gap = 0.0
        lost += inside
        inside = 0.0
        return out

    def take(frames: list[av.AudioFrame]) -> None:
        for out in frames:
            buffer.extend(bytes(out.planes[0])[: out.samples * sample_bytes])

    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            break
        if not isinstance(frame, av.AudioFrame):
            continue
        rate = frame.sample_rate or 48_000
        gap, resync = detect_gap(expected, frame.pts, rate, previous)
        if gap:
            pending_gap += gap
            if buffer:
                inside += gap
            else:
                lost += gap
        previous = frame.samples
        expected = None if frame.pts is None else (frame.pts + frame.samples) % _RTP_WRAP
        del resync  # either way the next frame is measured from this one
        fmt = (frame.format.name, frame.layout.name, rate)
        if fmt != source_format:
            # A resampler is bound to its input format; flush the old one into the buffer.
            if resampler is not None:
                take(resampler.resample(None))
            resampler = av.AudioResampler(format="s16", layout=layout, rate=sample_rate)
            source_format = fmt
        assert resampler is not None
        take(resampler.resample(frame))
        while len(buffer) >= frame_bytes:
            chunk = bytes(buffer[:frame_bytes])
            del buffer[:frame_bytes]
            yield make(chunk)
    if resampler is not None:
        take(resampler.resample(None))
    while len(buffer) >= frame_bytes:
        chunk = bytes(buffer[:frame_bytes])
        del buffer[:frame_bytes]
        yield make(chunk, final=not buffer)
    if buffer:
        yield make(bytes(buffer) + bytes(frame_bytes - len(buffer)), final=True)


# -- voice activity ------------------------------------------------------------------------------


def level_dbfs(pcm: bytes) -> float:
    """RMS level of int16 PCM in dB relative to full scale (-inf dB is digital silence,
    a full-scale square wave is 0 dB)."""
    count = len(pcm) // 2
    if count == 0:
        return -math.inf
    values = memoryview(pcm[: count * 2]).cast("h")
    energy = sum(v * v for v in values) / count
    if energy == 0:
        return -math.inf
    return 10 * math.log10(energy / (32768.0 * 32768.0))


@dataclass(frozen=True, slots=True)
class UtteranceEvent:
    """``kind="start"``: speech began at ``start`` (seconds on the chunks' clock).
    ``kind="end"``: it ended at ``end`` (the first quiet moment); ``audio`` holds the
    utterance's PCM (with ``pre_roll_ms`` before the start), ``duration`` its length;
    ``forced`` when ``max_utterance_ms`` cut it."""

    kind: Literal["start", "end"]
    start: float
    end: float | None = None
    audio: bytes = b""
    forced: bool = False

    @property
    def duration(self) -> float:
        return 0.0 if self.end is None else self.end - self.start


class UtteranceDetector:
    """Energy-based start and end of speech, for taking turns.

    A chunk is *loud* when its RMS level is at least ``threshold_db`` dBFS. Speech starts
    after ``start_ms`` of consecutive loud audio (dated from its first loud chunk) and ends
    after ``end_ms`` of consecutive quiet audio (dated from its first quiet chunk), so a
    click does not start an utterance and the pause between two words does not end it. An
    utterance longer than ``max_utterance_ms`` ends there (``forced``). Feed chunks in
    order; ``feed`` returns the events they caused (usually none)."""

    def __init__(
        self,
        *,
        threshold_db: float = -40.0,
        start_ms: float = 60.0,
        end_ms: float = 600.0,
        pre_roll_ms: float = 200.0,
        max_utterance_ms: float = 30_000.0,
    ) -> None:
        if start_ms < 0 or end_ms <= 0 or max_utterance_ms <= 0 or pre_roll_ms < 0:
            raise ValueError("start_ms, pre_roll_ms must be >= 0; end_ms, "
                             "max_utterance_ms > 0")
        self.threshold_db = threshold_db
        self._start_s = start_ms / 1000
        self._end_s = end_ms / 1000
        self._pre_roll_s = pre_roll_ms / 1000
        self._max_s = max_utterance_ms / 1000
        self._speaking = False
        self._run_start: float | None = None  # first chunk of the current loud/quiet run
        self._utterance_start = 0.0
        self._clock = 0.0
        self._audio = bytearray()
        self._history: list[tuple[float, bytes]] = []  # recent (start, pcm) for pre-roll

    @property
    def speaking(self) -> bool:
        return self._speaking

    def feed(self, chunk: AudioChunk) -> list[UtteranceEvent]:
        """The events this chunk caused (its level decides; see ``feed_level``)."""
        pcm = chunk.pcm()
        return self.feed_level(level_dbfs(pcm), chunk.duration, chunk.start, pcm)

    def feed_level(self, level_db: float, duration: float, start: float | None = None,
                   pcm: bytes = b"") -> list[UtteranceEvent]:
        """The pure decision: a stretch of ``duration`` seconds at ``level_db`` starting at
        ``start`` (default: right after the previous one)."""
        at = self._clock if start is None else start
        self._clock = at + duration
        loud = level_db >= self.threshold_db
        events: list[UtteranceEvent] = []
        if not self._speaking:
            self._remember(at, pcm)
            if not loud:
                self._run_start = None
                return events
            if self._run_start is None:
                self._run_start = at
            if self._clock - self._run_start >= self._start_s:
                self._speaking = True
                self._utterance_start = self._run_start
                self._audio = bytearray(b"".join(
                    p for t, p in self._history
                    if t >= self._run_start - self._pre_roll_s - 1e-6))
                self._history.clear()
                self._run_start = None
                events.append(UtteranceEvent("start", self._utterance_start))
            return events
        self._audio += pcm
        if loud:
            self._run_start = None
        elif self._run_start is None:
            self._run_start = at
        if self._run_start is not None and self._clock - self._run_start >= self._end_s:
            events.append(self._finish(self._run_start, forced=False))
        elif self._clock - self._utterance_start >= self._max_s:
            events.append(self._finish(self._clock, forced=True))
        return events

    def _remember(self, at: float, pcm: bytes) -> None:
        self._history.append((at, pcm))
        horizon = at - self._pre_roll_s - self._start_s - 1.0
        while self._history and self._history[0][0] < horizon:
            self._history.pop(0)

    def _finish(self, end: float, forced: bool) -> UtteranceEvent:
        event = UtteranceEvent("end", self._utterance_start, end, bytes(self._audio), forced)
        self._speaking = False
        self._run_start = None
        self._audio = bytearray()
        return event

    def reset(self) -> None:
        """Forget any utterance in progress (no event)."""
        self._speaking = False
        self._run_start = None
        self._audio = bytearray()
        self._history.clear()

    async def utterances(self, chunks: AsyncIterator[AudioChunk]
                         ) -> AsyncIterator[UtteranceEvent]:
        """Every event of ``chunks`` (typically ``remote_audio(...)``); an utterance still
        open when the chunks end is ended there."""
        async for chunk in chunks:
            for event in self.feed(chunk):
                yield event
        if self._speaking:
            yield self._finish(self._clock, forced=True)
