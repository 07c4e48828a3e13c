"""A roomwire Python ``MeteredPeer`` for the browser tests, driven over stdio.

Started by harness.py inside the test's network namespace (next to the roomwire node and the
browser) when the driver first sends ``CMD py {...}``. One JSON request per stdin line
(``{"op": ..., ...}``), one JSON reply per stdout line (``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}``); logs go to stderr. Requests run one at a time.

Environment: ``ROOMWIRE_PYPEER_URL`` (ws://127.0.0.1:PORT), ``ROOMWIRE_PYPEER_TOKEN`` (a JWT
for sub "py" with peerMetadata {"name": "Py"}) and ``ROOMWIRE_PYPEER_PK`` (the publishable key,
for the extra Python senders of the ``record_*`` operations).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

# A subprocess, not under pytest: the test helpers it shares (tests/peer/kit.py, which imports
# tests/waiting.py) are found only with both folders on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "peer"))

from kit import Tap, drain

from roomwire.client.media import AudioSource, VideoSource
from roomwire.client.rtc.events import MediaStream
from roomwire.client.rtc.negotiation import NegotiationTimings
from roomwire.client.rtc.peer import MeteredPeer

log = logging.getLogger("pypeer")

# Real timings, except a shorter polite wait (the browser is quick to offer or not at all).
TIMINGS = NegotiationTimings(polite_offer_delay=1.0)


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


class Child:
    """Another pypeer.py process, asked over its stdin/stdout like the harness asks us."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, limit=1 << 24)
        return cls(proc)

    async def ask(self, op: str, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        # Its first answer waits for its imports (aiortc, PyAV): seconds on a loaded machine.
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not raw:
            raise RuntimeError(f"the sender process exited ({await self.proc.wait()})")
        reply = json.loads(raw)
        if not reply.get("ok"):
            raise RuntimeError(f"sender process, {op}: {reply.get('error')}")
        return reply.get("result")

    async def close(self) -> None:
        """EOF on its stdin: it closes its peer and exits."""
        if self.proc.returncode is None and self.proc.stdin is not None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class PyPeer:
    def __init__(self) -> None:
        self.url = os.environ["ROOMWIRE_PYPEER_URL"]
        self.token = os.environ["ROOMWIRE_PYPEER_TOKEN"]
        self.peer: MeteredPeer | None = None
        self.tap: Tap | None = None
        self.streams: dict[str, tuple[MediaStream, list[Any]]] = {}
        self.first_frame: dict[str, float] = {}  # "<remote>/<kind>" -> wall ms
        self.joined_at: float | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self.children: list[Child] = []  # other pypeer.py processes (the record_* senders)

    # -- helpers ---------------------------------------------------------------------------

    def _need(self) -> tuple[MeteredPeer, Tap]:
        if self.peer is None or self.tap is None:
            raise RuntimeError("no peer: send {op: start} first")
        return self.peer, self.tap

    def _on_peer_joined(self, ev: Any) -> None:
        remote = ev.peer

        def on_track(tev: Any) -> None:
            key = f"{remote.id}/{tev.kind}"
            if key in self.first_frame:
                return

            async def first() -> None:
                try:
                    await tev.track.recv()
                except Exception:
                    return
                self.first_frame.setdefault(key, time.time() * 1000)

            task = asyncio.get_running_loop().create_task(first())
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)

        remote.on("track", on_track)

    def _tracks(self, remote_id: str) -> list[Any]:
        assert self.tap is not None
        return [e for e in self.tap.of(remote_id).of("track")]

    def _pick(self, remote_id: str, kind: str, role: str | None,
              stream_id: str | None) -> Any | None:
        found = None
        for e in self._tracks(remote_id):
            if (e.kind != kind or e.track.readyState != "live"
                    or getattr(e.track, "_finished", False)):
                continue
            if role is not None and (e.metadata or {}).get("role") != role:
                continue
            if stream_id is not None and (e.stream is None or e.stream.id != stream_id):
                continue
            found = e
        return found

    # -- operations ------------------------------------------------------------------------

    async def op_start(self, req: dict[str, Any]) -> Any:
        self.peer = MeteredPeer(token_provider=lambda: self.token, url=self.url,
                                loopback_candidates="only", timings=TIMINGS,
                                rejoin_grace=8.0)
        self.tap = Tap(self.peer)
        self.peer.on("peer-joined", self._on_peer_joined)
        self.first_frame.clear()
        w, h, fps = req.get("width", 320), req.get("height", 240), req.get("fps", 30)
        if req.get("camera", True):
            self.add_stream("camera", [AudioSource(), VideoSource(w, h, fps=fps)],
                            req.get("metadata", {"role": "camera", "label": "Py cam"}))
        return {"streams": {k: v[0].id for k, v in self.streams.items()}}

    def add_stream(self, name: str, tracks: list[Any], metadata: dict[str, Any]) -> MediaStream:
        assert self.peer is not None
        stream = MediaStream(tracks)
        self.peer.add_stream(stream, metadata)
        self.streams[name] = (stream, tracks)
        return stream

    async def op_join(self, req: dict[str, Any]) -> Any:
        peer, _ = self._need()
        self.joined_at = time.time() * 1000
        await peer.join(req["room"])
        return {"peerId": peer.peer_id, "joinedAt": self.joined_at}

    async def op_add_stream(self, req: dict[str, Any]) -> Any:
        self._need()
        w, h, fps = req.get("width", 320), req.get("height", 240), req.get("fps", 15)
        stream = self.add_stream(req["name"], [VideoSource(w, h, fps=fps)], req["metadata"])
        return {"streamId": stream.id,
                "trackIds": [t.id for t in stream.get_tracks()]}

    async def op_remote(self, req: dict[str, Any]) -> Any:
        _, tap = self._need()
        timeout = req.get("timeout", 20)
        deadline = time.monotonic() + timeout
        while True:
            remotes = [e.peer for e in tap.log.of("peer-joined") if e.peer.state != "closed"]
            if req.get("id"):
                remotes = [r for r in remotes if r.id == req["id"]]
            if remotes:
                r = remotes[-1]
                return {"id": r.id, "metadata": r.metadata, "state": r.state,
                        "polite": r.polite}
            if time.monotonic() > deadline:
                raise TimeoutError(f"no remote peer within {timeout} s")
            await asyncio.sleep(0.05)

    async def op_frames(self, req: dict[str, Any]) -> Any:
        """Decoded frames of the newest live track matching kind/role/stream, counted for up
        to ``timeout`` s (stops at ``want``). ``fresh``: drop what was queued first."""
        self._need()
        remote, kind = req["remote"], req.get("kind", "video")
        role, stream_id = req.get("role"), req.get("streamId")
        timeout, want = float(req.get("timeout", 15)), int(req.get("want", 10))
        deadline = time.monotonic() + timeout
        got, size, ev, drained = 0, None, None, set()
        while got < want and time.monotonic() < deadline:
            ev = self._pick(remote, kind, role, stream_id)
            if ev is None:
                await asyncio.sleep(0.05)
                continue
            if req.get("fresh") and id(ev.track) not in drained:
                drained.add(id(ev.track))
                drain(ev.track)
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    while got < want:
                        frame = await ev.track.recv()
                        got += 1
                        if hasattr(frame, "width"):
                            size = [frame.width, frame.height]
            except TimeoutError:
                break
            except Exception as exc:
                log.info("frames: %r", exc)
                await asyncio.sleep(0.05)
        if ev is None:
            return {"frames": 0, "found": False, "tracks": self._describe_tracks(remote)}
        return {"frames": got, "found": True, "size": size, "metadata": ev.metadata,
                "streamId": ev.stream.id if ev.stream else None, "trackId": ev.track.id}

    def _describe_tracks(self, remote_id: str) -> list[dict[str, Any]]:
        return [{"kind": e.kind, "metadata": e.metadata, "live": e.track.readyState == "live",
                 "streamId": e.stream.id if e.stream else None, "trackId": e.track.id}
                for e in self._tracks(remote_id)]

    async def op_events(self, req: dict[str, Any]) -> Any:
        _, tap = self._need()
        out: dict[str, Any] = {}
        for rid, rlog in tap.remote.items():
            evs = []
            for e in rlog.events:
                d: dict[str, Any] = {"ev": e.name}
                if e.name == "track":
                    d.update(kind=e.kind, metadata=e.metadata, trackId=e.track.id,
                             streamId=e.stream.id if e.stream else None)
                elif e.name in ("stream-added", "stream-removed"):
                    d.update(streamId=e.stream.id,
                             metadata=getattr(e, "metadata", None))
                elif e.name == "track-metadata":
                    d.update(trackId=e.track.id, metadata=e.metadata)
                elif e.name == "state-change":
                    d.update(to=e.to)
                elif e.name == "negotiation-error":
                    d.update(error=repr(e.error), fatal=e.fatal)
                elif e.name == "connection-reset":
                    d.update(reason=getattr(e, "reason", None))
                evs.append(d)
            out[rid] = evs
        peer_events = [{"ev": e.name, **({"to": e.to} if e.name == "state-change" else {})}
                       for e in tap.log.events if e.name in ("state-change", "peer-joined",
                                                               "peer-left", "error")]
        return {"remotes": out, "peer": peer_events, "firstFrame": self.first_frame}

    async def op_data(self, req: dict[str, Any]) -> Any:
        _, tap = self._need()
        want, timeout = int(req.get("want", 0)), float(req.get("timeout", 10))
        deadline = time.monotonic() + timeout
        while True:
            got = [{"kind": e.kind, "from": e.sender_peer_id, "data": _jsonable(e.data),
                    "senderMetadata": e.sender_metadata} for e in tap.log.of("data")
                   if not (isinstance(e.data, dict) and e.data.get("type") == "card?")]
            if req.get("contains"):
                got = [g for g in got if req["contains"] in json.dumps(g["data"])]
            if len(got) >= want or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.05)

    async def op_send(self, req: dict[str, Any]) -> Any:
        peer, _ = self._need()
        await peer.send(req["data"])
        return True

    async def op_send_to(self, req: dict[str, Any]) -> Any:
        peer, _ = self._need()
        await peer.send_to(req["to"], req["data"])
        return True

    async def op_state(self, req: dict[str, Any]) -> Any:
        peer, _ = self._need()
        return {"state": peer.state, "peerId": peer.peer_id,
                "remotes": [{"id": r.id, "state": r.state} for r in peer.remote_peers]}

    async def op_wait_state(self, req: dict[str, Any]) -> Any:
        """Wait until our state is ``state`` and (optionally) a remote is ``remoteState``."""
        peer, _ = self._need()
        timeout = float(req.get("timeout", 20))
        deadline = time.monotonic() + timeout
        while True:
            ok = peer.state == req.get("state", "joined")
            if req.get("remoteState"):
                ok = ok and any(r.state == req["remoteState"] for r in peer.remote_peers)
            if ok:
                return await self.op_state(req)
            if time.monotonic() > deadline:
                raise TimeoutError(f"state {req} not reached: {await self.op_state(req)}")
            await asyncio.sleep(0.05)

    async def op_first_frame(self, req: dict[str, Any]) -> Any:
        """Wall time (ms) of the first decoded frame of ``kind`` from ``remote``."""
        timeout = float(req.get("timeout", 20))
        deadline = time.monotonic() + timeout
        key = f"{req['remote']}/{req.get('kind', 'video')}"
        while key not in self.first_frame:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no first frame for {key} in {timeout} s")
            await asyncio.sleep(0.005)
        return self.first_frame[key]

    async def op_drop(self, req: dict[str, Any]) -> Any:
        """Cut the Python peer's WebSocket without a close handshake (a network blip): the
        SDK reconnects and rejoins by itself."""
        peer, _ = self._need()
        link = peer.signalling._link
        if link is None:
            raise RuntimeError("no signalling link to drop")
        link.conn.transport.abort()
        return {"droppedAt": time.time() * 1000}

    # -- recording (scenario py-record): "py" records, two more Python peers send --------

    async def op_record_start(self, req: dict[str, Any]) -> Any:
        """``py`` starts a RoomRecorder into ``out``; ``senders`` Python peers (publishable
        key, random ids) join and send a camera stream each, each in a process of its own
        (another pypeer.py, op ``sender_start``): in the recorder's process they would take
        CPU from its receiving and decoding, and under load the frames it had not read yet
        (aiortc's track queues) would be lost at stop, shortening the files."""
        from roomwire.client.recording import RoomRecorder

        peer = MeteredPeer(token_provider=lambda: self.token, url=self.url,
                           loopback_candidates="only", timings=TIMINGS)
        self.rec_up: dict[str, float] = {}  # the recorder's connection to each peer came up

        def on_joined(ev: Any) -> None:
            rid = ev.peer.id
            ev.peer.on("state-change", lambda s: s.to == "connected" and
                       self.rec_up.setdefault(rid, time.time() * 1000))

        peer.on("peer-joined", on_joined)
        self.recorder = RoomRecorder(req["room"], req["out"], peer=peer)
        await self.recorder.start()
        # Started together: each one's imports take seconds on a loaded machine.
        children = [await Child.start() for _ in range(int(req.get("senders", 2)))]
        self.children += children
        got = await asyncio.gather(*(c.ask("sender_start", room=req["room"], label=f"sender {i}")
                                     for i, c in enumerate(children)))
        self.senders: dict[str, Child] = {
            g["peerId"]: c for g, c in zip(got, children, strict=True)}
        return {"recorder": peer.peer_id, "senders": list(self.senders)}

    async def op_sender_start(self, req: dict[str, Any]) -> Any:
        """Join ``room`` with the publishable key and send one camera stream (audio and a
        160x120 video) labelled ``label``; the sending side of scenario py-record."""
        sender = MeteredPeer(api_key=os.environ["ROOMWIRE_PYPEER_PK"], url=self.url,
                             loopback_candidates="only", timings=TIMINGS)
        audio, video = AudioSource(), VideoSource(160, 120, fps=15)
        tracks = [audio, video]
        # Seconds of media each source has stamped: a source that stalls over 100 ms on a
        # loaded machine restarts its schedule from now (media.py, "re-anchors"), so its
        # timestamps, which the recorder keeps, then run behind the wall clock.
        self.media_at = lambda: [audio.sent_seconds, video.frames_sent / video.fps]
        self.sender_up: dict[str, Any] = {}

        def up(state: Any) -> None:
            if state.to == "connected" and "at" not in self.sender_up:
                self.sender_up.update(at=time.time() * 1000, media=self.media_at())

        # Its connection to the recorder ("py"), not to the other senders or the browser.
        sender.on("peer-joined", lambda ev: ev.peer.id == "py" and ev.peer.on("state-change", up))
        self.peer, self.tap = sender, Tap(sender)
        self.add_stream("camera", tracks, {"role": "camera", "label": req["label"]})
        await sender.join(req["room"])
        return {"peerId": sender.peer_id}

    async def op_sender_up(self, req: dict[str, Any]) -> Any:
        """Wall ms when this sender's connection to the recorder came up (None: not yet), and
        ``skipped``: the seconds by which the timestamps of its longer-running source fell
        behind the wall clock since then (stalls it did not make up)."""
        if "at" not in self.sender_up:
            return {"at": None, "skipped": 0.0}
        wall = time.time() * 1000 - self.sender_up["at"]
        media = max(now - then for now, then in
                    zip(self.media_at(), self.sender_up["media"], strict=True))
        return {"at": self.sender_up["at"], "skipped": max(0.0, wall / 1000 - media)}

    async def op_record_wait(self, req: dict[str, Any]) -> Any:
        """Wait (``timeout``) until the file of ``peer`` spans ``seconds`` (or is finalised
        with ``final``); the manifest's entry for it."""
        deadline = time.monotonic() + req.get("timeout", 30)
        while True:
            files = [f for f in self.recorder.manifest()["files"] if f["peer_id"] == req["peer"]]
            done = [f for f in files if (f["finalised"] if req.get("final") else
                    f["start"] is not None and f["end"] - f["start"] >= req.get("seconds", 0))]
            if done:
                return done[-1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"recording of {req['peer']}: {json.dumps(files)[:1500]}")
            await asyncio.sleep(0.1)

    async def op_record_stop(self, req: dict[str, Any]) -> Any:
        """Stop: the senders' sending windows (both ends of their connection up, until now)
        and the media time their sources skipped in them, the manifest, and ffprobe's view of
        every file."""
        import subprocess

        # Asked before the clock is read: the answers do not change once set.
        ups = {pid: await child.ask("sender_up") for pid, child in self.senders.items()}
        now = time.time() * 1000
        sent = {pid: (now - max(up["at"], self.rec_up[pid])) / 1000
                for pid, up in ups.items() if up["at"] is not None and pid in self.rec_up}
        skipped = {pid: up["skipped"] for pid, up in ups.items()}
        await self.recorder.stop()
        await self._close_children()
        manifest = self.recorder.manifest()
        probes = {}
        for f in manifest["files"]:
            done = subprocess.run(
                ["ffprobe", "-v", "error", "-show_entries",
                 "format=duration:stream=codec_type", "-of", "json",
                 str(self.recorder.out_dir / f["path"])], capture_output=True, text=True)
            probes[f["path"]] = {"rc": done.returncode, "stderr": done.stderr[-500:],
                                 "info": json.loads(done.stdout or "{}")}
        return {"manifest": manifest, "probes": probes, "sent": sent, "skipped": skipped,
                "up": self.rec_up}

    async def _close_children(self) -> None:
        children, self.children = self.children, []
        await asyncio.gather(*(c.close() for c in children))

    async def op_close(self, req: dict[str, Any]) -> Any:
        await self._close_children()
        if self.peer is not None:
            await self.peer.close()
        self.peer, self.tap = None, None
        for _, tracks in self.streams.values():
            for t in tracks:
                t.stop()
        self.streams.clear()
        return True


async def main() -> None:
    logging.basicConfig(level=os.environ.get("ROOMWIRE_PYPEER_LOG", "WARNING"),
                        stream=sys.stderr, format="[pypeer] %(levelname)s %(name)s: %(message)s")
    pp = PyPeer()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        raw = await reader.readline()
        if not raw:
            break
        try:
            req = json.loads(raw)
            fn = getattr(pp, "op_" + str(req.get("op", "")).replace("-", "_"), None)
            if fn is None:
                raise ValueError(f"unknown op {req.get('op')!r}")
            reply = {"ok": True, "result": await fn(req)}
        except Exception as exc:
            log.warning("op failed: %r", exc)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply, default=repr) + "\n")
        sys.stdout.flush()
    await pp.op_close({})


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
