"""Record a whole room: every remote peer's every stream, one file each, and a manifest.

Provisional API (may change in a minor release).

``RoomRecorder`` joins a channel as a receive-only ``MeteredPeer`` (it sends nothing) and
writes each stream a remote peer sends (its audio and video tracks together) to one WebM
file (VP8 video, Opus audio) in ``out_dir``, until it is stopped. aiortc hands over decoded
frames only, so the media is **re-encoded** (not copied): CPU per recorded stream, and the
quality of a second encoding. ``manifest.json`` says who and what each file is::

    async with RoomRecorder("room/42", "rec/", token_provider=mint, url=URL) as rec:
        await asyncio.sleep(60)
    # or, until SIGINT/SIGTERM (what `roomwire record` runs):
    await record_room("room/42", "rec/", token_provider=mint, url=URL)

One clock: every offset in the manifest (``start``, ``end``, a peer's ``joined`` / ``left``)
is seconds since the recording started (``started_at``), measured on arrival, so files can
be lined up. A stream that arrives again on a new connection (a reconnect of either side,
an ICE rebuild) or a track added to a stream already being written starts a new file (a new
``segment``). Memory is bounded: each file has a queue of ``queue_frames`` frames (and at
most ``queue_bytes`` of them, decoded) between
the network and the encoders (a child process: encoding in the recorder's own process starves
its event loop); when the encoders fall behind, the oldest queued frames are dropped and
counted (``dropped`` per track in the manifest: for audio this is a gap the file keeps in
time, for video a lower frame rate; the file still ends where the stream ended), and at
most ``max_open_files`` files are written at once (tracks beyond are ignored and counted: a
remote peer chooses how many streams it sends).
``stop()`` (and the exit of ``async with``, and SIGINT/SIGTERM under ``record_room``)
finalises every file and the manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ..extras import missing_extra

try:
    import av
    from aiortc import MediaStreamTrack
    from aiortc.mediastreams import MediaStreamError
except ImportError as exc:  # the optional WebRTC stack is not installed
    raise missing_extra("webrtc", exc) from exc

from .record_worker import encode_frame, pack, track_offset
from .rtc.events import PeerJoinedEvent, PeerLeftEvent
from .rtc.peer import MeteredPeer
from .rtc.remote_events import RemoteConnectionResetEvent, RemoteStreamAddedEvent, TrackEvent
from .rtc.remote_peer import RemotePeer

__all__ = ["RoomRecorder", "record_room", "safe_name", "track_offset"]

log = logging.getLogger("roomwire.client.recording")

MANIFEST = "manifest.json"
SETTLE_SECONDS = 0.5
"""Tracks of one stream arriving within this time of its first go into the same file (a
container's streams are fixed when it is opened)."""
QUEUE_FRAMES = 256
QUEUE_BYTES = 32 << 20
"""Decoded frames are large (640x480 video: 460 kB each): a byte cap besides the count."""
MAX_OPEN_FILES = 32
FINALISE_SECONDS = 30.0
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, limit: int = 48) -> str:
    """``text`` reduced to a file-name part: letters, digits, ``.``, ``_``, ``-`` (peer and
    stream ids are chosen by the remote side and may hold ``/`` or ``..``)."""
    cleaned = _NAME.sub("_", text).strip("._")[:limit]
    return cleaned or "x"


@dataclass(eq=False)
class _Track:
    track: MediaStreamTrack
    kind: str
    metadata: dict[str, Any] | None
    index: int
    start: float | None = None  # first frame, recorder clock
    end: float | None = None  # last frame, recorder clock
    frames: int = 0
    dropped: int = 0
    reader: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _File:
    """One output file: the tracks of one stream of one remote peer on one connection."""

    peer_id: str
    stream_id: str
    segment: int
    path: Path
    opened: float  # recorder clock
    stream_metadata: dict[str, Any] | None = None
    tracks: list[_Track] = field(default_factory=list)
    id: int = 0
    limit: int = QUEUE_FRAMES
    byte_limit: int = QUEUE_BYTES
    queued_bytes: int = 0
    # One slot more than `limit`: frames may use `limit`, the closing sentinel always fits.
    queue: asyncio.Queue[tuple[int, Any, float] | None] = field(
        default_factory=asyncio.Queue)
    writer: asyncio.Task[None] | None = None
    sealed: bool = False  # no more tracks join
    closing: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    ended_by: str | None = None
    error: str | None = None
    t0: float | None = None  # the file's time zero: its first frame, recorder clock

    def manifest(self, root: Path) -> dict[str, Any]:
        starts = [t.start for t in self.tracks if t.start is not None]
        ends = [t.end for t in self.tracks if t.end is not None]
        return {
            "path": str(self.path.relative_to(root)),
            "peer_id": self.peer_id,
            "stream_id": self.stream_id,
            "segment": self.segment,
            "stream_metadata": self.stream_metadata,
            "start": _r(min(starts)) if starts else None,
            "end": _r(max(ends)) if ends else None,
            "finalised": self.closed.is_set(),
            "ended_by": self.ended_by,
            "error": self.error,
            "tracks": [{
                "kind": t.kind, "track_id": t.track.id, "metadata": t.metadata,
                "start": _r(t.start), "end": _r(t.end), "frames": t.frames,
                "dropped": t.dropped,
            } for t in self.tracks],
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _size(frame: Any) -> int:
    return sum(p.buffer_size for p in frame.planes)


class RoomRecorder:
    """Records every remote stream of ``channel`` into ``out_dir`` (created if missing).

    The keyword arguments are ``MeteredPeer``'s (a credential, ``url``, ...); or pass
    ``peer`` (an idle ``MeteredPeer`` with no local tracks) instead. ``start()`` joins,
    ``stop()`` finalises every file and writes ``manifest.json`` (also rewritten whenever
    a file is finalised, so a crash leaves a manifest of what was complete). ``files`` and
    ``manifest()`` show the state so far."""

    def __init__(self, channel: str, out_dir: str | os.PathLike[str], *,
                 peer: MeteredPeer | None = None, queue_frames: int = QUEUE_FRAMES,
                 queue_bytes: int = QUEUE_BYTES,
                 max_open_files: int = MAX_OPEN_FILES,
                 settle_seconds: float = SETTLE_SECONDS, clock: Callable[[], float] | None = None,
                 **peer_options: Any) -> None:
        if queue_frames < 1 or max_open_files < 1 or queue_bytes < 1:
            raise ValueError("queue_frames, queue_bytes and max_open_files must be at least 1")
        if peer is not None and peer_options:
            raise ValueError("give either peer or MeteredPeer options, not both")
        self.channel = channel
        self.out_dir = Path(out_dir)
        self._peer = peer if peer is not None else MeteredPeer(**peer_options)
        self._queue_frames = queue_frames
        self._queue_bytes = queue_bytes
        self._max_open = max_open_files
        self._ignored = 0
        self._settle = settle_seconds
        self._clock = clock or time.monotonic
        self._t0: float | None = None
        self._started_at: str | None = None
        self._stopped_at: float | None = None
        self._files: list[_File] = []
        self._open: dict[tuple[str, str], _File] = {}  # (peer, stream) -> the file taking tracks
        self._segments: dict[tuple[str, str], int] = {}
        self._peers: dict[str, dict[str, Any]] = {}
        self._recorder_ids: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._next_id = 0
        self._worker: asyncio.subprocess.Process | None = None
        p = self._peer
        p.on("peer-joined", self._on_peer_joined)
        p.on("peer-left", self._on_peer_left)
        p.on("state-change", self._on_state)

    @property
    def peer(self) -> MeteredPeer:
        return self._peer

    @property
    def files(self) -> list[Path]:
        """Every file started so far (finalised or not)."""
        return [f.path for f in self._files]

    def now(self) -> float:
        """Seconds since the recording started (the manifest's clock)."""
        return 0.0 if self._t0 is None else self._clock() - self._t0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._t0 is not None:
            raise RuntimeError("this RoomRecorder was already started")
        if self._peer.local_tracks:
            raise ValueError("a recorder sends nothing: give it a MeteredPeer without tracks")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._t0 = self._clock()
        self._started_at = datetime.datetime.now(datetime.UTC).isoformat()
        self._write_manifest()
        self._worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "roomwire.client.record_worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self._watcher = asyncio.ensure_future(self._watch_worker(self._worker))
        try:
            await self._peer.join(self.channel)
        except BaseException:
            await self._end_worker()
            raise
        self._note_recorder_id()

    async def stop(self) -> None:
        """Leave the room, finalise every file and the manifest (idempotent)."""
        if self._stopping:
            return
        self._stopping = True
        self._stopped_at = self.now()
        for file in list(self._files):
            self._finish(file, "recorder-stopped")
        await self._peer.close("recording finished")
        for file in self._files:
            if file.writer is None:  # still settling: its writer starts now and closes at once
                file.sealed = True
                file.writer = self._spawn(self._write_file(file))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(f.closed.wait() for f in self._files)),
                                   FINALISE_SECONDS)
        await self._end_worker()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._write_manifest()

    async def _end_worker(self) -> None:
        worker = self._worker
        if worker is None:
            return
        if worker.stdin is not None:
            worker.stdin.close()
        try:
            await asyncio.wait_for(worker.wait(), FINALISE_SECONDS)
        except TimeoutError:
            worker.kill()
            await worker.wait()
        with contextlib.suppress(Exception):
            await self._watcher

    async def __aenter__(self) -> RoomRecorder:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # -- events ----------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _note_recorder_id(self) -> None:
        pid = self._peer.peer_id
        if pid is not None and pid not in self._recorder_ids:
            self._recorder_ids.append(pid)

    def _on_state(self, ev: Any) -> None:
        if ev.to == "joined":
            self._note_recorder_id()

    def _on_peer_joined(self, ev: PeerJoinedEvent) -> None:
        remote = ev.peer
        entry = self._peers.setdefault(remote.id, {"metadata": remote.metadata,
                                                   "joined": [], "left": []})
        entry["metadata"] = remote.metadata
        entry["joined"].append(_r(self.now()))
        remote.on("track", lambda t: self._on_track(remote, t))
        remote.on("stream-added", lambda s: self._on_stream(remote, s))
        remote.on("connection-reset", lambda r: self._on_reset(remote, r))
        self._write_manifest()

    def _on_peer_left(self, ev: PeerLeftEvent) -> None:
        entry = self._peers.get(ev.peer.id)
        if entry is not None:
            entry["left"].append(_r(self.now()))
        for file in self._files:
            if file.peer_id == ev.peer.id:
                self._finish(file, "peer-left")
        self._write_manifest()

    def _on_stream(self, remote: RemotePeer, ev: RemoteStreamAddedEvent) -> None:
        file = self._open.get((remote.id, ev.stream.id))
        if file is not None and ev.metadata is not None:
            file.stream_metadata = ev.metadata
            self._write_manifest()

    def _on_reset(self, remote: RemotePeer, ev: RemoteConnectionResetEvent) -> None:
        # The old connection's tracks are gone; the new ones arrive as new `track` events.
        for file in self._files:
            if file.peer_id == remote.id:
                self._finish(file, "connection-reset")

    def _on_track(self, remote: RemotePeer, ev: TrackEvent) -> None:
        if self._stopping or ev.kind not in ("audio", "video"):
            return
        stream_id = ev.stream.id if ev.stream is not None else f"track-{ev.track.id}"
        key = (remote.id, stream_id)
        file = self._open.get(key)
        if file is None or file.sealed or file.closing or \
                any(t.kind == ev.kind for t in file.tracks):
            if sum(not f.closing for f in self._files) >= self._max_open:
                self._ignored += 1
                log.warning("not recording a %s track of %s: %d files are open already",
                            ev.kind, remote.id, self._max_open)
                self._write_manifest()
                return
            file = self._new_file(remote.id, stream_id)
        if file.stream_metadata is None and ev.metadata is not None:
            file.stream_metadata = ev.metadata
        entry = _Track(ev.track, ev.kind, ev.metadata, len(file.tracks))
        file.tracks.append(entry)
        entry.reader = self._spawn(self._read(file, entry))

    def _new_file(self, peer_id: str, stream_id: str) -> _File:
        key = (peer_id, stream_id)
        segment = self._segments.get(key, 0) + 1
        self._segments[key] = segment
        name = f"{safe_name(peer_id)}-{safe_name(stream_id, 36)}-{segment}.webm"
        path = self.out_dir / name
        n = 1
        while any(f.path == path for f in self._files):  # two ids sanitised alike
            n += 1
            path = self.out_dir / f"{name[:-5]}.{n}.webm"
        self._next_id += 1
        file = _File(peer_id, stream_id, segment, path, self.now(), id=self._next_id,
                     limit=self._queue_frames, byte_limit=self._queue_bytes,
                     queue=asyncio.Queue(self._queue_frames + 1))
        self._files.append(file)
        self._open[key] = file
        self._spawn(self._seal_later(file))
        return file

    async def _seal_later(self, file: _File) -> None:
        await asyncio.sleep(self._settle)
        if file.writer is None:  # stop() may have started it already
            file.sealed = True
            file.writer = self._spawn(self._write_file(file))

    async def _write_file(self, file: _File) -> None:
        """Frames of ``file`` from its queue into the encoding process, until the sentinel."""
        kinds = [t.kind for t in file.tracks]
        try:
            await self._send(pack({"op": "open", "id": file.id, "path": str(file.path),
                                   "kinds": kinds}))
            while True:
                item = await file.queue.get()
                if item is None:
                    break
                index, frame, arrival = item
                file.queued_bytes -= _size(frame)
                await self._send(encode_frame(file.id, index, frame, arrival))
            await self._send(pack({"op": "close", "id": file.id}))
        except (ConnectionError, BrokenPipeError) as exc:
            file.error = file.error or f"the encoding process is gone: {exc}"
            file.closed.set()

    async def _send(self, message: bytes) -> None:
        worker = self._worker
        if worker is None or worker.stdin is None or worker.returncode is not None:
            raise ConnectionError("the encoding process has ended")
        worker.stdin.write(message)
        # A slow encoder fills the pipe; then the per-file queues fill and frames are dropped.
        await worker.stdin.drain()

    async def _read(self, file: _File, entry: _Track) -> None:
        while not file.closing:
            try:
                frame = await entry.track.recv()
            except MediaStreamError:
                break
            if not isinstance(frame, av.AudioFrame | av.VideoFrame) or file.closing:
                continue
            now = self.now()
            if file.t0 is None:
                file.t0 = now
            if entry.start is None:
                entry.start = now
            entry.end = now
            size = _size(frame)
            if size > file.byte_limit:
                entry.dropped += 1
                continue
            # Full: the oldest queued frames go, so the file keeps the latest media and still
            # ends when the stream ended (the gap is in the middle, where the overload was).
            while file.queue.qsize() >= file.limit or \
                    file.queued_bytes + size > file.byte_limit:
                old = file.queue.get_nowait()
                assert old is not None  # the sentinel comes after the last read
                file.queued_bytes -= _size(old[1])
                file.tracks[old[0]].frames -= 1
                file.tracks[old[0]].dropped += 1
            file.queued_bytes += size
            file.queue.put_nowait((entry.index, frame, now - file.t0))
            entry.frames += 1
        if not file.closing and all(t.reader is None or t.reader.done() or t is entry
                                    for t in file.tracks):
            self._finish(file, "track-ended")

    def _finish(self, file: _File, why: str) -> None:
        if file.closing:
            return
        file.closing = True
        file.ended_by = why
        if self._open.get((file.peer_id, file.stream_id)) is file:
            del self._open[(file.peer_id, file.stream_id)]
        file.queue.put_nowait(None)  # the slot kept for it
        for entry in file.tracks:
            if entry.reader is not None and entry.reader is not asyncio.current_task():
                entry.reader.cancel()

    async def _watch_worker(self, worker: asyncio.subprocess.Process) -> None:
        """The encoding process's answers: which file is complete (or failed)."""
        assert worker.stdout is not None
        async for line in worker.stdout:
            try:
                answer = json.loads(line)
                file_id = int(answer["closed"])
            except (ValueError, KeyError, TypeError):
                continue
            file = next((f for f in self._files if f.id == file_id), None)
            if file is not None:
                file.error = answer.get("error")
                if file.error:
                    log.warning("recording %s failed: %s", file.path.name, file.error)
                file.closed.set()
                self._write_manifest()
        await worker.wait()
        for file in self._files:
            if not file.closed.is_set():
                file.error = file.error or f"the encoding process ended ({worker.returncode})"
                file.closed.set()
        if self._files:
            self._write_manifest()

    # -- manifest --------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "started_at": self._started_at,
            "clock": "seconds since started_at, on arrival at the recorder",
            "stopped_at": _r(self._stopped_at),
            "recorder_peer_ids": list(self._recorder_ids),
            "peers": {pid: dict(e) for pid, e in self._peers.items()},
            "files": [f.manifest(self.out_dir) for f in self._files],
            "ignored_tracks": self._ignored,
        }

    def _write_manifest(self) -> None:
        path = self.out_dir / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.manifest(), indent=2, default=repr) + "\n")
        os.replace(tmp, path)


async def record_room(channel: str, out_dir: str | os.PathLike[str], *,
                      duration: float | None = None, stop: asyncio.Event | None = None,
                      on_event: Callable[[str], None] | None = None,
                      **options: Any) -> dict[str, Any]:
    """Record ``channel`` into ``out_dir`` until SIGINT/SIGTERM, ``duration`` seconds, the
    ``stop`` event, or the recorder's peer closing (a fatal error); returns the manifest.
    ``options`` are ``RoomRecorder``'s and ``MeteredPeer``'s."""
    stop = stop or asyncio.Event()
    recorder = RoomRecorder(channel, out_dir, **options)
    recorder.peer.on("left", lambda ev: stop.set())
    if on_event is not None:
        recorder.peer.on("peer-joined", lambda ev: on_event(f"+ {ev.peer.id} joined"))
        recorder.peer.on("peer-left", lambda ev: on_event(f"- {ev.peer.id} left"))
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        await recorder.start()
        if on_event is not None:
            on_event(f"recording {channel} as {recorder.peer.peer_id} into {out_dir}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    finally:
        await recorder.stop()
        for sig in handled:
            loop.remove_signal_handler(sig)
    return recorder.manifest()
