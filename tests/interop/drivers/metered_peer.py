"""Drive the official ``metered_realtime.MeteredPeer`` from a test, over pipes.

Runs under the official SDK's own virtualenv (see scripts/setup-official-sdk.sh), never under
ours, and uses only the SDK's public API (plus aiortc/aioice, which the SDK's ``[webrtc]``
extra installs) as a black box.

    python metered_peer.py --url ws://127.0.0.1:PORT (--key PK | --token JWT)

ICE is restricted to 127.0.0.1 (aioice's host-address lookup is replaced) so that it runs on
a loopback-only machine.

Output, one JSON object per line on stdout, each with ``event`` and ``t``:
  joined {peer_id, channel} | left {peer_id, channel, reason} | state {from, to}
  peer_joined {peer_id, metadata} | peer_left {peer_id}
  data {from, data, kind, sender_metadata}
  track {peer_id, kind, metadata, stream_id, track_id}
  frames {peer_id, kind, count, width?, height?}   once ``count`` frames of a track decoded
  stream_added {peer_id, stream_id, metadata, kinds}
  remote_state {peer_id, from, to} | fatal {name, error}
  log {level, msg, context} | result {id, ok, error?, code?, message?, value?} | exit {}

Input, one JSON command per line on stdin, each with ``id`` and ``op``:
  join {channel, include_sender_metadata?}
  add_stream {audio?, video?, metadata?}   (synthetic silence / black 320x240 frames)
  send {data} | send_to {to, data} | state {} | close {}
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import sys
import time
from typing import Any

import aioice.ice
import av
import metered_realtime as mr
from aiortc import MediaStreamTrack
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

T0 = time.monotonic()
FRAMES_TO_REPORT = 5


def emit(event: str, **fields: Any) -> None:
    line = {"event": event, **fields, "t": round(time.monotonic() - T0, 3)}
    sys.stdout.write(json.dumps(line, default=repr) + "\n")
    sys.stdout.flush()


def loopback_only(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


aioice.ice.get_host_addresses = loopback_only


class PipeLogger:
    def _log(self, level: str, msg: str, context: Any = None) -> None:
        emit("log", level=level, msg=str(msg), context=context)

    def debug(self, msg: str, context: Any = None) -> None:
        pass

    def info(self, msg: str, context: Any = None) -> None:
        self._log("info", msg, context)

    def warning(self, msg: str, context: Any = None) -> None:
        self._log("warning", msg, context)

    def error(self, msg: str, context: Any = None) -> None:
        self._log("error", msg, context)


class TestPattern(MediaStreamTrack):
    """320x240 frames at 30 fps (a grey level that changes each frame)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        wait = self.start + self.n / 30 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = av.VideoFrame(width=320, height=240, format="yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(self.n * 3) & 0xFF]) * plane.buffer_size)
        frame.pts = self.n * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        self.n += 1
        return frame


async def count_frames(peer_id: str, track: MediaStreamTrack) -> None:
    n = 0
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        n += 1
        if n == FRAMES_TO_REPORT:
            size = {}
            if isinstance(frame, av.VideoFrame):
                size = {"width": frame.width, "height": frame.height}
            emit("frames", peer_id=peer_id, kind=track.kind, count=n, track_id=track.id, **size)


def wire(peer: mr.MeteredPeer, tasks: set[asyncio.Task[None]]) -> None:
    def on_peer_joined(e: mr.PeerJoined) -> None:
        remote = e.peer
        rid = remote.id
        emit("peer_joined", peer_id=rid, metadata=remote.metadata)

        def on_track(t: mr.Track) -> None:
            stream_id = t.streams[0].id if t.streams else None
            emit("track", peer_id=rid, kind=t.track.kind, metadata=t.metadata,
                 stream_id=stream_id, track_id=t.track.id)
            task = asyncio.ensure_future(count_frames(rid, t.track))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        remote.on(mr.Track, on_track)
        remote.on(mr.StreamAdded, lambda s: emit(
            "stream_added", peer_id=rid, stream_id=s.stream.id, metadata=s.metadata,
            kinds=sorted(t.kind for t in s.stream.get_tracks())))
        remote.on(mr.StateChange, lambda s: emit(
            "remote_state", peer_id=rid, **{"from": s.from_, "to": s.to}))

    peer.on(mr.PeerJoined, on_peer_joined)
    peer.on(mr.PeerLeft, lambda e: emit("peer_left", peer_id=e.peer.id))
    peer.on(mr.Joined, lambda e: emit("joined", peer_id=e.peer_id, channel=e.channel))
    peer.on(mr.Left, lambda e: emit("left", peer_id=e.peer_id, channel=e.channel,
                                    reason=e.reason))
    peer.on(mr.StateChange, lambda e: emit("state", **{"from": e.from_, "to": e.to}))
    peer.on(mr.Data, lambda e: emit("data", data=e.data, kind=e.kind,
                                    sender_metadata=e.sender_metadata,
                                    **{"from": e.sender_peer_id}))
    peer.on(mr.FatalError, lambda e: emit("fatal", name=getattr(e.err, "name", None),
                                          error=str(e.err)))


async def run_command(peer: mr.MeteredPeer, cmd: dict[str, Any], done: asyncio.Event) -> None:
    rid, op = cmd.get("id"), cmd.get("op")
    try:
        value: Any = None
        if op == "join":
            await peer.join(cmd["channel"],
                            include_sender_metadata=bool(cmd.get("include_sender_metadata")))
        elif op == "add_stream":
            tracks: list[MediaStreamTrack] = []
            if cmd.get("audio", True):
                tracks.append(AudioStreamTrack())
            if cmd.get("video", True):
                tracks.append(TestPattern())
            stream = mr.MediaStream(tracks)
            peer.add_stream(stream, cmd.get("metadata"))
            value = {"stream_id": stream.id, "track_ids": [t.id for t in tracks]}
        elif op == "send":
            await peer.send(cmd["data"])
        elif op == "send_to":
            await peer.send_to(cmd["to"], cmd["data"])
        elif op == "state":
            value = peer.state
        elif op == "close":
            await peer.close()
            done.set()
        else:
            raise ValueError(f"unknown op {op!r}")
    except Exception as exc:
        emit("result", id=rid, ok=False, error=type(exc).__name__,
             code=getattr(exc, "code", None), message=str(exc))
    else:
        emit("result", id=rid, ok=True, value=value)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key")
    ap.add_argument("--token")
    args = ap.parse_args()

    async def token_provider() -> str:
        return str(args.token)

    cred: dict[str, Any] = (
        {"api_key": args.key} if args.key else {"token_provider": token_provider})
    peer = mr.MeteredPeer(url=args.url, logger=PipeLogger(), **cred)
    tasks: set[asyncio.Task[None]] = set()
    wire(peer, tasks)
    emit("ready")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=8 * 2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    done = asyncio.Event()
    running: set[asyncio.Task[None]] = set()
    try:
        while not done.is_set():
            line = await reader.readline()
            if not line:
                break
            if not line.strip():
                continue
            task = asyncio.create_task(run_command(peer, json.loads(line), done))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.wait(running, timeout=5)
    finally:
        await peer.close()
        for t in tasks:
            t.cancel()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        emit("exit")
