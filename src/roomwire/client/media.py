"""Media helpers for Python peers: sources, a frame iterator and a recorder.

Provisional API (may change in a minor release). Built on aiortc's media classes and PyAV;
PyAV is pinned to 18.x while the project supports Python 3.11 (PyAV 19 needs Python 3.12).

* ``from_file(path, loop=False)``: an aiortc ``MediaPlayer`` (``.audio`` / ``.video`` may be
  ``None``).
* ``from_camera(...)`` / ``from_microphone(...)``: capture devices on Linux (v4l2 / ALSA);
  a clear ``RuntimeError`` on other platforms.
* ``AudioSource``: a push track for synthesized audio (an AI agent's voice): push PCM at any
  rate, it is resampled to 48 kHz stereo and paced out in 20 ms frames, silence on underrun.
  Pacing follows a ``PacingClock`` (``MonotonicClock`` by default; ``VirtualClock`` for
  simulations and tests).
* ``VideoSource``: a synthetic moving test pattern (no camera needed).
* ``iter_frames(track)``: ``async for frame in iter_frames(track)`` over received frames.
* ``Recorder(path)``: writes remote audio and video tracks to a file.

Security: the ``from_*`` helpers hand their argument to FFmpeg, which understands protocol
strings (``http:``, ``concat:``, ...). Never pass strings from an untrusted party.
"""

from __future__ import annotations

import asyncio
import fractions
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Literal, Protocol

from ..extras import missing_extra

try:
    import av
    from aiortc import MediaStreamTrack
    from aiortc.contrib.media import MediaPlayer, MediaRecorder
    from aiortc.mediastreams import MediaStreamError
except ImportError as exc:  # the optional WebRTC stack is not installed
    raise missing_extra("webrtc", exc) from exc

__all__ = [
    "AUDIO_FRAME_SECONDS",
    "AUDIO_OUTPUT_RATE",
    "AudioSource",
    "MonotonicClock",
    "PacingClock",
    "Recorder",
    "VideoSource",
    "VirtualClock",
    "from_camera",
    "from_file",
    "from_microphone",
    "iter_frames",
]

AUDIO_OUTPUT_RATE = 48_000
AUDIO_FRAME_SECONDS = 0.020
_OUT_CHANNELS = 2
_OUT_SAMPLE_BYTES = 2 * _OUT_CHANNELS  # s16 stereo, interleaved
_FRAME_SAMPLES = int(AUDIO_OUTPUT_RATE * AUDIO_FRAME_SECONDS)  # 960
_FRAME_BYTES = _FRAME_SAMPLES * _OUT_SAMPLE_BYTES
_REANCHOR_SECONDS = 0.100
_VIDEO_CLOCK = 90_000


# -- sources from FFmpeg -------------------------------------------------------------------------


def from_file(
    path: str | os.PathLike[str],
    loop: bool = False,
    *,
    format: str | None = None,
    options: dict[str, str] | None = None,
) -> MediaPlayer:
    """A ``MediaPlayer`` reading ``path``, paced in real time. ``loop=True`` repeats a
    seekable file forever. Use ``player.audio`` / ``player.video`` (either may be ``None``)."""
    return MediaPlayer(os.fspath(path), format=format, options=options, loop=loop)


def _require_linux(what: str) -> None:
    if not sys.platform.startswith("linux"):
        raise RuntimeError(
            f"{what} is supported on Linux only (v4l2/ALSA); on {sys.platform} open the device "
            "with aiortc.contrib.media.MediaPlayer and the platform's FFmpeg input format "
            "(avfoundation on macOS, dshow on Windows)"
        )


def from_camera(
    device: str = "/dev/video0",
    width: int = 640,
    height: int = 480,
    fps: int = 30,
    *,
    options: dict[str, str] | None = None,
) -> MediaPlayer:
    """A camera through v4l2 (Linux). ``player.video`` is the track."""
    _require_linux("from_camera")
    opts = {"video_size": f"{width}x{height}", "framerate": str(fps)}
    opts.update(options or {})
    return MediaPlayer(device, format="v4l2", options=opts)


def from_microphone(
    device: str = "default",
    *,
    format: Literal["alsa", "pulse"] = "alsa",
    options: dict[str, str] | None = None,
) -> MediaPlayer:
    """A microphone through ALSA (or PulseAudio with ``format="pulse"``), Linux only.
    ``player.audio`` is the track."""
    _require_linux("from_microphone")
    return MediaPlayer(device, format=format, options=options)


# -- clocks --------------------------------------------------------------------------------------


class PacingClock(Protocol):
    """What paces an ``AudioSource``: a monotonic time in seconds and a way to wait."""

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """Real time: ``time.monotonic`` and ``asyncio.sleep``."""

    def time(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class VirtualClock:
    """Simulated time: ``sleep`` advances the clock at once (plus ``oversleep(seconds)``,
    which models a loaded scheduler waking late), so ten minutes of pacing run in a moment.
    ``advance`` moves time forward as if work took that long."""

    def __init__(self, start: float = 0.0,
                 oversleep: Callable[[float], float] | None = None) -> None:
        self.now = start
        self._oversleep = oversleep

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        late = self._oversleep(seconds) if self._oversleep is not None else 0.0
        self.now += max(0.0, seconds) + max(0.0, late)
        await asyncio.sleep(0)


# -- AudioSource ---------------------------------------------------------------------------------


class AudioSource(MediaStreamTrack):
    """A push-based audio track for synthesized speech or any generated audio.

    ``await push(pcm)`` takes signed 16-bit little-endian PCM (interleaved when stereo) at
    ``input_rate``, or an ``av.AudioFrame`` of any format; everything is resampled to 48 kHz
    stereo and handed to the sender in 20 ms frames at real-time pace. When the buffer runs
    dry the track sends silence (the stream stays alive); when more than
    ``max_buffered_seconds`` is queued, ``push`` waits until the sender has caught up.
    ``end()`` lets the buffered audio play out, then ends the track. ``clear()`` drops what is
    queued (barge-in).

    Frames are due at ``first frame + n * 20 ms`` on ``clock`` (not 20 ms after the previous
    one), so a late wake-up is made up by the next frame instead of adding up: the audio does
    not drift from the clock however long it runs. After a stall of more than 100 ms the
    schedule restarts from now rather than bursting the backlog (``reanchors`` counts it).
    ``lateness`` is how late the last frame was handed out.
    """

    kind = "audio"

    def __init__(
        self,
        input_rate: int = 16_000,
        input_layout: Literal["mono", "stereo"] = "mono",
        *,
        max_buffered_seconds: float = 5.0,
        clock: PacingClock | None = None,
    ) -> None:
        super().__init__()
        self._clock: PacingClock = clock if clock is not None else MonotonicClock()
        if input_rate <= 0:
            raise ValueError("input_rate must be positive")
        if input_layout not in ("mono", "stereo"):
            raise ValueError("input_layout must be 'mono' or 'stereo'")
        if max_buffered_seconds <= 0:
            raise ValueError("max_buffered_seconds must be positive")
        self.input_rate = input_rate
        self.input_layout = input_layout
        self.max_buffered_seconds = max_buffered_seconds
        self._in_channels = 1 if input_layout == "mono" else 2
        self._in_sample_bytes = 2 * self._in_channels
        self._pending = b""  # a partial input sample carried to the next push
        self._buffer = bytearray()
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_OUTPUT_RATE)
        self._in_pts = 0
        self._ending = False
        self._drained = asyncio.Event()
        self._start: float | None = None
        self._pts = 0
        self.underruns = 0
        """How many frames were (partly) filled with silence after audio had been pushed."""
        self.reanchors = 0
        """How many times a stall over 100 ms restarted the schedule."""
        self.lateness = 0.0
        """Seconds between the last frame's due time and when it was handed out."""

    @property
    def sent_seconds(self) -> float:
        """Audio handed to the sender so far (its timestamps), in seconds."""
        return 0.0 if self._start is None else (self._pts + _FRAME_SAMPLES) / AUDIO_OUTPUT_RATE

    @property
    def buffered_seconds(self) -> float:
        """Audio queued and not yet sent."""
        return len(self._buffer) / (_OUT_SAMPLE_BYTES * AUDIO_OUTPUT_RATE)

    @property
    def ended(self) -> bool:
        """``end()`` was called (the track may still be playing out its buffer)."""
        return self._ending

    async def push(self, data: bytes | bytearray | memoryview | av.AudioFrame) -> None:
        """Queue audio; waits while more than ``max_buffered_seconds`` is queued."""
        self._append(data)
        while self.buffered_seconds > self.max_buffered_seconds and self.readyState == "live":
            self._drained.clear()
            await self._drained.wait()

    def push_nowait(self, data: bytes | bytearray | memoryview | av.AudioFrame) -> None:
        """Queue audio without waiting; raises ``BufferError`` when over the cap."""
        if self.buffered_seconds > self.max_buffered_seconds:
            raise BufferError(
                f"AudioSource holds {self.buffered_seconds:.2f} s, over its "
                f"{self.max_buffered_seconds} s cap"
            )
        self._append(data)

    def _append(self, data: bytes | bytearray | memoryview | av.AudioFrame) -> None:
        if self._ending or self.readyState != "live":
            raise RuntimeError("AudioSource has ended; create a new one")
        if isinstance(data, av.AudioFrame):
            frames = [data]
        else:
            raw = self._pending + bytes(data)
            whole = len(raw) - len(raw) % self._in_sample_bytes
            self._pending = raw[whole:]
            samples = whole // self._in_sample_bytes
            if samples == 0:
                return
            frame = av.AudioFrame(format="s16", layout=self.input_layout, samples=samples)
            plane = frame.planes[0]
            chunk = raw[:whole]
            if plane.buffer_size > whole:
                chunk += bytes(plane.buffer_size - whole)
            plane.update(chunk)
            frame.sample_rate = self.input_rate
            frame.time_base = fractions.Fraction(1, self.input_rate)
            frame.pts = self._in_pts
            self._in_pts += samples
            frames = [frame]
        for frame in frames:
            if isinstance(data, av.AudioFrame):
                frame.pts = None
            for out in self._resampler.resample(frame):
                self._buffer += bytes(out.planes[0])[: out.samples * _OUT_SAMPLE_BYTES]

    def clear(self) -> None:
        """Drop everything queued (for example when the listener interrupts)."""
        self._buffer.clear()
        self._pending = b""
        self._drained.set()

    def end(self) -> None:
        """No more audio: the queued audio plays out, then the track ends."""
        if not self._ending:
            self._ending = True
            try:
                for out in self._resampler.resample(None):
                    self._buffer += bytes(out.planes[0])[: out.samples * _OUT_SAMPLE_BYTES]
            except (ValueError, av.FFmpegError):  # pragma: no cover - nothing to flush
                pass

    def stop(self) -> None:
        super().stop()
        self._drained.set()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._ending and not self._buffer:
            self.stop()
            raise MediaStreamError
        now = self._clock.time()
        if self._start is None:
            self._start = now
            self._pts = 0
        else:
            self._pts += _FRAME_SAMPLES
            wait = self._start + self._pts / AUDIO_OUTPUT_RATE - now
            if wait > 0:
                await self._clock.sleep(wait)
            elif -wait > _REANCHOR_SECONDS:
                # The consumer fell behind (a stall): re-anchor instead of bursting to catch up.
                self._start = now - self._pts / AUDIO_OUTPUT_RATE
                self.reanchors += 1
        self.lateness = self._clock.time() - (self._start + self._pts / AUDIO_OUTPUT_RATE)
        chunk = bytes(self._buffer[:_FRAME_BYTES])
        del self._buffer[:_FRAME_BYTES]
        if len(chunk) < _FRAME_BYTES:
            if self._in_pts:
                self.underruns += 1
            chunk += bytes(_FRAME_BYTES - len(chunk))
        if self.buffered_seconds <= self.max_buffered_seconds:
            self._drained.set()
        frame = av.AudioFrame(format="s16", layout="stereo", samples=_FRAME_SAMPLES)
        plane = frame.planes[0]
        if plane.buffer_size > _FRAME_BYTES:
            chunk += bytes(plane.buffer_size - _FRAME_BYTES)
        plane.update(chunk)
        frame.sample_rate = AUDIO_OUTPUT_RATE
        frame.time_base = fractions.Fraction(1, AUDIO_OUTPUT_RATE)
        frame.pts = self._pts
        return frame


# -- VideoSource ---------------------------------------------------------------------------------


class VideoSource(MediaStreamTrack):
    """A synthetic video track: a moving gradient with a sliding bar, yuv420p, paced at
    ``fps``. Needs no camera and no numpy. ``frames_sent`` counts frames produced."""

    kind = "video"

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0) -> None:
        super().__init__()
        if width < 2 or height < 2 or width % 2 or height % 2:
            raise ValueError("width and height must be even and at least 2")
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.width = width
        self.height = height
        self.fps = fps
        self.frames_sent = 0
        self._start: float | None = None
        self._ramp = bytes((x * 256 // width) & 0xFF for x in range(width)) * 2

    def _pattern(self, index: int) -> av.VideoFrame:
        frame = av.VideoFrame(width=self.width, height=self.height, format="yuv420p")
        y_plane, u_plane, v_plane = frame.planes
        shift = (index * 4) % self.width
        row = self._ramp[shift: shift + self.width]
        bar_top = (index * 2) % self.height
        bar_rows = max(2, self.height // 12)
        bar = bytes([235]) * self.width
        pad_y = bytes(y_plane.line_size - self.width)
        rows = [
            (bar if bar_top <= y < bar_top + bar_rows else row) + pad_y
            for y in range(self.height)
        ]
        y_plane.update(b"".join(rows))
        u_plane.update(bytes([(64 + index) & 0xFF]) * u_plane.buffer_size)
        v_plane.update(bytes([(192 - index) & 0xFF]) * v_plane.buffer_size)
        return frame

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            target = self._start + self.frames_sent / self.fps
            if target > now:
                await asyncio.sleep(target - now)
            elif now - target > _REANCHOR_SECONDS:
                self._start = now - self.frames_sent / self.fps
        frame = self._pattern(self.frames_sent)
        frame.pts = int(self.frames_sent * _VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, _VIDEO_CLOCK)
        self.frames_sent += 1
        return frame


# -- consuming -----------------------------------------------------------------------------------


async def iter_frames(track: MediaStreamTrack) -> AsyncIterator[av.AudioFrame | av.VideoFrame]:
    """Every decoded frame of ``track`` until it ends (the iterator then simply stops).
    Undecoded packets (a ``MediaPlayer(decode=False)`` track) are skipped."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if isinstance(frame, av.AudioFrame | av.VideoFrame):
            yield frame


class Recorder:
    """Writes audio and video tracks (typically a remote peer's) to ``path``; the container
    comes from the file name (``.mp4``/``.mkv``: H.264 + AAC, ``.webm``: VP8 + Opus,
    ``.wav``/``.ogg``: audio only) unless ``format`` is given.

    ::

        async with Recorder("call.mp4", tracks=[audio, video]):
            await asyncio.sleep(10)

    Tracks must be added before ``start()``; recording of a track stops when it ends.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tracks: Iterable[MediaStreamTrack] = (),
        format: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self._recorder = MediaRecorder(self.path, format=format, options=options)
        self._kinds: set[str] = set()
        self._started = False
        self._stopped = False
        for track in tracks:
            self.add_track(track)

    def add_track(self, track: MediaStreamTrack) -> None:
        """Record ``track`` (one audio and one video track at most)."""
        if self._started:
            raise RuntimeError("add tracks before start()")
        if track.kind not in ("audio", "video"):
            raise ValueError(f"cannot record a {track.kind!r} track")
        if track.kind in self._kinds:
            raise ValueError(f"this recorder already has a {track.kind} track")
        self._kinds.add(track.kind)
        self._recorder.addTrack(track)

    async def start(self) -> None:
        if self._stopped:
            raise RuntimeError("this recorder is finished")
        if not self._started:
            self._started = True
            await self._recorder.start()

    async def stop(self) -> None:
        """Flush the encoders and close the file (idempotent)."""
        if not self._stopped:
            self._stopped = True
            await self._recorder.stop()

    async def __aenter__(self) -> Recorder:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
