"""The encoding process of ``RoomRecorder``: frames in on stdin, WebM files out.

Encoding VP8 and Opus is CPU work that, in the recorder's own process, competes with its
event loop for the GIL: measured on a loaded 2-core machine, an encoder thread per file cost
the recorder up to half of the audio packets it received (the loop reads sockets late, the
jitter buffer overflows). So the encoders live in this child process (one per recorder).

The pipe carries messages, each ``<II`` (header length, payload length), a JSON header, then
the payload: ``open`` (file id, path, track kinds), ``frame`` (file id, track index, arrival,
pts and the frame's layout; the payload is its planes), ``close`` (file id). The child
answers each ``close`` on stdout with a JSON line ``{"closed": id, "error": null | "..."}``
once the file is complete. Only ``RoomRecorder`` talks to it; it trusts its parent.
"""

from __future__ import annotations

import contextlib
import fractions
import json
import struct
import sys
from pathlib import Path
from typing import IO, Any

import av

__all__ = ["HEADER", "decode_frame", "encode_frame", "main", "pack", "read_message"]

HEADER = struct.Struct("<II")
PRELUDE_SECONDS = 3.0
_RTP_WRAP = 1 << 32
_VIDEO_RATE = 90_000
_AUDIO_RATE = 48_000


def pack(header: dict[str, Any], payload: bytes = b"") -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    return HEADER.pack(len(raw), len(payload)) + raw + payload


def read_message(stream: IO[bytes]) -> tuple[dict[str, Any], bytes] | None:
    """The next message, or None at the end of the stream."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    n_header, n_payload = HEADER.unpack(head)
    header = json.loads(stream.read(n_header))
    payload = stream.read(n_payload) if n_payload else b""
    return header, payload


def track_offset(first_pts: int, pts: int, wrap: int = _RTP_WRAP) -> int | None:
    """Ticks from a track's first frame to this one (RTP timestamps wrap at 2**32); None
    for a frame stamped before the first (reordered or a restarted sender clock)."""
    delta = (pts - first_pts) % wrap
    return None if delta >= wrap // 2 else delta


def encode_frame(file_id: int, index: int, frame: Any, arrival: float) -> bytes:
    """A decoded frame as a ``frame`` message (its planes as they are in memory)."""
    header: dict[str, Any] = {"op": "frame", "id": file_id, "i": index, "t": arrival,
                              "pts": frame.pts}
    if isinstance(frame, av.VideoFrame):
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        header.update(kind="video", w=frame.width, h=frame.height,
                      lines=[p.line_size for p in frame.planes])
    else:
        header.update(kind="audio", fmt=frame.format.name, layout=frame.layout.name,
                      rate=frame.sample_rate, samples=frame.samples)
    planes = [bytes(p) for p in frame.planes]
    header["sizes"] = [len(p) for p in planes]
    return pack(header, b"".join(planes))


def decode_frame(header: dict[str, Any], payload: bytes) -> Any:
    """The frame of a ``frame`` message."""
    chunks, at = [], 0
    for size in header["sizes"]:
        chunks.append(payload[at:at + size])
        at += size
    frame: Any
    if header["kind"] == "video":
        w, h = header["w"], header["h"]
        frame = av.VideoFrame(width=w, height=h, format="yuv420p")
        for plane, data, line in zip(frame.planes, chunks, header["lines"], strict=True):
            if plane.line_size == line and plane.buffer_size == len(data):
                plane.update(data)
                continue
            # Another alignment in this process: copy row by row.
            rows = len(data) // line
            width = min(line, plane.line_size)
            pad = bytes(plane.line_size - width)
            plane.update(b"".join(data[r * line: r * line + width] + pad for r in range(rows))
                         [: plane.buffer_size].ljust(plane.buffer_size, b"\0"))
    else:
        frame = av.AudioFrame(format=header["fmt"], layout=header["layout"],
                              samples=header["samples"])
        for plane, data in zip(frame.planes, chunks, strict=False):
            plane.update(data[: plane.buffer_size].ljust(plane.buffer_size, b"\0"))
        frame.sample_rate = header["rate"]
    return frame


class _Encoder:
    """One file being written: its encoders and muxer (PyAV)."""

    def __init__(self, path: Path, kinds: list[str], offsets: list[float]) -> None:
        self.container = av.open(str(path), "w", format="webm")
        self.streams: list[Any] = []
        self.offsets = offsets
        self.first_pts: list[int | None] = [None] * len(kinds)
        self.last_pts: list[int] = [-1] * len(kinds)
        # Codecs open with the first packet muxed, and a video encoder needs its size by
        # then: frames wait here until every video track has shown one (or PRELUDE passed).
        self.prelude: list[tuple[int, Any, float, int | None]] | None = []
        self.sizes: dict[int, tuple[int, int]] = {}
        for kind in kinds:
            stream: Any
            if kind == "video":
                stream = self.container.add_stream(
                    "libvpx", rate=30, options={"deadline": "realtime", "cpu-used": "8"})
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = fractions.Fraction(1, _VIDEO_RATE)
            else:
                stream = self.container.add_stream("libopus", rate=_AUDIO_RATE,
                                                   layout="stereo")
            self.streams.append(stream)

    def write(self, index: int, frame: Any, arrival: float, pts: int | None) -> None:
        if self.prelude is None:
            self._write(index, frame, arrival, pts)
            return
        self.prelude.append((index, frame, arrival, pts))
        if isinstance(frame, av.VideoFrame) and index not in self.sizes:
            self.sizes[index] = (max(2, frame.width - frame.width % 2),
                                 max(2, frame.height - frame.height % 2))
        videos = [i for i, s in enumerate(self.streams) if s.type == "video"]
        if len(self.sizes) == len(videos) or arrival - self.prelude[0][2] >= PRELUDE_SECONDS:
            self._flush_prelude()

    def _flush_prelude(self) -> None:
        held, self.prelude = self.prelude or [], None
        for i, stream in enumerate(self.streams):
            if stream.type == "video":
                stream.width, stream.height = self.sizes.get(i, (16, 16))
                # About 0.1 bit per pixel at 30 fps: 230 kbit/s for 320x240, 920 for 640x480.
                stream.bit_rate = min(2_500_000, max(150_000, stream.width * stream.height * 3))
        for item in held:
            self._write(*item)

    def _write(self, index: int, frame: Any, arrival: float, pts_in: int | None) -> None:
        stream = self.streams[index]
        rate = _VIDEO_RATE if stream.type == "video" else _AUDIO_RATE
        first = self.first_pts[index]
        if pts_in is None:
            ticks: int | None = int(arrival * rate)
        elif first is None:
            self.first_pts[index] = pts_in
            self.offsets[index] = arrival
            ticks = 0
        else:
            ticks = track_offset(first, pts_in)
        if ticks is None:
            return
        pts = int(self.offsets[index] * rate) + ticks
        if pts <= self.last_pts[index]:
            return  # a duplicate or reordered frame: the muxer wants rising timestamps
        self.last_pts[index] = pts
        if stream.type == "video":
            size = (stream.width, stream.height)
            if (frame.width, frame.height) != size or frame.format.name != "yuv420p":
                # The sender adapts its resolution; the file keeps its first one.
                frame = frame.reformat(width=size[0], height=size[1], format="yuv420p")
            frame.pts = pts
            frame.time_base = fractions.Fraction(1, _VIDEO_RATE)
        else:
            if frame.format.name != "s16" or frame.layout.name != "stereo" or \
                    frame.sample_rate != _AUDIO_RATE:
                frame = _to_stereo48(frame)
            frame.pts = pts
            frame.time_base = fractions.Fraction(1, _AUDIO_RATE)
        for packet in stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        try:
            if self.prelude is not None:
                if not self.prelude:
                    return  # no frame at all: an empty file (the manifest says frames: 0)
                self._flush_prelude()
            for stream in self.streams:
                for packet in stream.encode(None):
                    self.container.mux(packet)
        finally:
            self.container.close()


def _to_stereo48(frame: Any) -> Any:
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=_AUDIO_RATE)
    out = resampler.resample(frame)
    merged = out[0]
    return merged



def main(stdin: IO[bytes] | None = None, stdout: IO[str] | None = None) -> int:
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout
    files: dict[int, _Encoder] = {}
    errors: dict[int, str] = {}

    def fail(file_id: int, exc: BaseException) -> None:
        errors.setdefault(file_id, f"{type(exc).__name__}: {exc}")
        files.pop(file_id, None)

    while True:
        message = read_message(stdin)
        if message is None:
            break
        header, payload = message
        file_id = int(header["id"])
        op = header["op"]
        try:
            if op == "open":
                files[file_id] = _Encoder(Path(header["path"]), list(header["kinds"]),
                                          [0.0] * len(header["kinds"]))
            elif op == "frame":
                encoder = files.get(file_id)
                if encoder is not None:
                    encoder.write(int(header["i"]), decode_frame(header, payload),
                                  float(header["t"]), header["pts"])
            elif op == "close":
                encoder = files.pop(file_id, None)
                if encoder is not None:
                    encoder.close()
                stdout.write(json.dumps({"closed": file_id,
                                         "error": errors.pop(file_id, None)}) + "\n")
                stdout.flush()
        except Exception as exc:  # one broken file must not end the others
            fail(file_id, exc)
            if op == "close":
                stdout.write(json.dumps({"closed": file_id,
                                         "error": errors.pop(file_id, None)}) + "\n")
                stdout.flush()
    for encoder in files.values():  # the recorder went away: finish what there is
        with contextlib.suppress(Exception):
            encoder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
