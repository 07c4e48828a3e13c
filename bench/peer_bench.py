"""MeteredPeer benchmarks: two or more Python peers on one machine, ICE on 127.0.0.1.

    .venv/bin/python bench/peer_bench.py [--runs 20] [--restarts 5] [--cpu-seconds 8]
                                         [--only join|restart|cpu] [--unlabelled]
                                         [--json-out FILE]

* ``join``: from ``join()`` of the second peer to the first decoded remote video frame (both
  peers send 320x240 video and audio; the first peer is already in the room), p50/p95 over
  ``--runs`` runs, each with fresh peers. Default engine timings (the polite side waits for
  the impolite side's offer). ``--unlabelled``: the streams carry no metadata.
* ``restart``: a roomwire node is stopped and started again on the same port and data dir
  while two peers exchange video; time from the restart (and from the stop, which includes
  the client's first reconnect backoff of 0.5 s +-20 %) until a fresh frame is decoded on the
  same RemotePeer on both sides.
* ``cpu``: one 640x480 30 fps VideoSource sent to N = 1, 2, 4 receivers. The sender (and the
  in-process server, idle during media) run in this process; the receivers run in a child
  process. Reports the CPU of each side (cores = CPU seconds per wall second) while media
  flows.

Runs in-process roomwire nodes (``roomwire.server``) on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from roomwire.client.media import AudioSource, VideoSource
from roomwire.client.rtc.events import MediaStream
from roomwire.client.rtc.loopback import enable_loopback_candidates
from roomwire.client.rtc.negotiation import NegotiationTimings
from roomwire.client.rtc.peer import MeteredPeer
from roomwire.server.auth import mint_token
from roomwire.server.config import ServerConfig
from roomwire.server.node import Node


class Server:
    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.data_dir = data_dir
        self.node = Node(ServerConfig(host="127.0.0.1", port=port, data_dir=data_dir,
                                      connect_rate_limit=0, store_poll_interval=0.5))

    async def start(self) -> Server:
        await self.node.start()
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.node.port}"

    def token(self, sub: str) -> str:
        sk = next(k for k in self.node.default_keys if k.kind == "secret")
        token, _ = mint_token(sk, sub, ttl=3600)
        return token


def peer(srv: Server, sub: str, **kw: Any) -> MeteredPeer:
    return MeteredPeer(token_provider=lambda: srv.token(sub), url=srv.url, **kw)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def first_frame(p: MeteredPeer, remote_id: str, after: int = 0) -> asyncio.Future[float]:
    """A future set to the time.perf_counter() of the first decoded video frame from
    ``remote_id`` on a track announced after ``after`` earlier video tracks."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[float] = loop.create_future()
    seen = 0
    readers: set[asyncio.Task[None]] = set()

    async def read(track: Any) -> None:
        await track.recv()
        if not fut.done():
            fut.set_result(time.perf_counter())

    def on_track(ev: Any) -> None:
        nonlocal seen
        if ev.kind != "video":
            return
        seen += 1
        if seen > after:
            task = asyncio.ensure_future(read(ev.track))
            readers.add(task)
            task.add_done_callback(readers.discard)

    def hook(remote: Any) -> None:
        if remote.id == remote_id:
            remote.on("track", on_track)

    for r in p.remote_peers:
        hook(r)
    p.on("peer-joined", lambda ev: hook(ev.peer))
    return fut


_SOURCES: dict[int, list[Any]] = {}


def stop_tracks(*peers: MeteredPeer) -> None:
    """close() does not stop local tracks (the seed's rule), and the relay keeps reading a
    live source: stop the sources of finished runs so they do not burn CPU."""
    for p in peers:
        for track in _SOURCES.pop(id(p), []):
            track.stop()


def av_stream(w: int = 320, h: int = 240) -> MediaStream:
    return MediaStream([AudioSource(), VideoSource(w, h)])


async def bench_join(srv: Server, runs: int, impolite_delay: float | None = None,
                     labelled: bool = True) -> dict[str, Any]:
    times = []
    kw: dict[str, Any] = {}
    if impolite_delay is not None:
        kw["timings"] = NegotiationTimings(impolite_offer_delay=impolite_delay)
    for i in range(runs):
        room = f"bench/join/{i}"
        first, second = peer(srv, f"first{i}", **kw), peer(srv, f"second{i}", **kw)
        for p in (first, second):
            stream = av_stream()
            _SOURCES[id(p)] = stream.get_tracks()
            p.add_stream(stream, {"role": "camera"} if labelled else None)
        await first.join(room)
        fut = await first_frame(second, f"first{i}")
        t0 = time.perf_counter()
        await second.join(room)
        t1 = await asyncio.wait_for(fut, 15)
        times.append((t1 - t0) * 1000)
        await asyncio.gather(first.close(), second.close())
        stop_tracks(first, second)
    return {"runs": runs, "p50_ms": round(pct(times, 0.5), 1),
            "p95_ms": round(pct(times, 0.95), 1), "min_ms": round(min(times), 1),
            "max_ms": round(max(times), 1)}


async def bench_restart(data_dir: Path, runs: int) -> dict[str, Any]:
    from_restart, from_stop = [], []
    srv = await Server(data_dir).start()
    port = srv.node.port
    try:
        for i in range(runs):
            room = f"bench/restart/{i}"
            a, b = peer(srv, f"ra{i}"), peer(srv, f"rb{i}")
            for p in (a, b):
                stream = av_stream()
                _SOURCES[id(p)] = stream.get_tracks()
                p.add_stream(stream, {"role": "camera"})
            fa = await first_frame(a, f"rb{i}")
            fb = await first_frame(b, f"ra{i}")
            await a.join(room)
            await b.join(room)
            await asyncio.wait_for(asyncio.gather(fa, fb), 15)
            again_a = await first_frame(a, f"rb{i}")
            again_b = await first_frame(b, f"ra{i}")
            t_stop = time.perf_counter()
            await srv.node.stop()
            await asyncio.sleep(0.2)
            t_start = time.perf_counter()
            srv = await Server(data_dir, port).start()
            done = max(await asyncio.wait_for(asyncio.gather(again_a, again_b), 20))
            from_restart.append((done - t_start) * 1000)
            from_stop.append((done - t_stop) * 1000)
            await asyncio.gather(a.close(), b.close())
            stop_tracks(a, b)
    finally:
        await srv.node.stop()
    return {"runs": runs,
            "from_restart_p50_ms": round(pct(from_restart, 0.5), 1),
            "from_restart_max_ms": round(max(from_restart), 1),
            "from_stop_p50_ms": round(pct(from_stop, 0.5), 1),
            "from_stop_max_ms": round(max(from_stop), 1),
            "note": "server down for 0.2 s; includes the client's reconnect backoff"}


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def receivers_main(url: str, tokens: list[str], room: str) -> None:
    """Child process: N receiving peers; prints CPU used between two 'mark' lines on stdin."""
    enable_loopback_candidates("only")
    peers = []
    frames = [0]

    def hook(p: MeteredPeer) -> None:
        async def read(track: Any) -> None:
            while True:
                try:
                    await track.recv()
                except Exception:
                    return
                frames[0] += 1

        tasks: set[asyncio.Task[None]] = set()

        def on_track(t: Any) -> None:
            task = asyncio.ensure_future(read(t.track))
            tasks.add(task)

        def on_joined(ev: Any) -> None:
            ev.peer.on("track", on_track)

        p.on("peer-joined", on_joined)

    for tok in tokens:
        def provider(tok: str = tok) -> str:
            return tok

        p = MeteredPeer(token_provider=provider, url=url)
        hook(p)
        await p.join(room)
        peers.append(p)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    marks: list[tuple[float, float, int]] = []
    while line := await reader.readline():
        if line.strip() == b"mark":
            marks.append((time.perf_counter(), cpu_seconds(), frames[0]))
            if len(marks) == 2:
                (w0, c0, f0), (w1, c1, f1) = marks
                print(json.dumps({"cores": (c1 - c0) / (w1 - w0),
                                  "fps_total": (f1 - f0) / (w1 - w0)}), flush=True)
        elif line.strip() == b"quit":
            break
    for p in peers:
        await p.close()


async def bench_cpu(srv: Server, seconds: float) -> list[dict[str, Any]]:
    results = []
    for n in (1, 2, 4):
        room = f"bench/cpu/{n}"
        sender = peer(srv, f"sender{n}")
        video = VideoSource(640, 480, fps=30)
        sender.add_stream(MediaStream([video]), {"role": "camera"})
        await sender.join(room)
        tokens = [srv.token(f"recv{n}-{i}") for i in range(n)]
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--receivers", srv.url, room, *tokens,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert child.stdin is not None and child.stdout is not None
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
        await asyncio.sleep(3.0)  # connect, first keyframe, encoder ramp-up
        child.stdin.write(b"mark\n")
        w0, c0, f0 = time.perf_counter(), cpu_seconds(), video.frames_sent
        await asyncio.sleep(seconds)
        child.stdin.write(b"mark\n")
        w1, c1, f1 = time.perf_counter(), cpu_seconds(), video.frames_sent
        recv = json.loads(await asyncio.wait_for(child.stdout.readline(), 10))
        child.stdin.write(b"quit\n")
        await child.wait()
        await sender.close()
        video.stop()
        cores = (c1 - c0) / (w1 - w0)
        results.append({"receivers": n, "sender_cores": round(cores, 3),
                        "sender_cores_per_stream": round(cores / n, 3),
                        "source_fps": round((f1 - f0) / (w1 - w0), 1),
                        "receivers_cores": round(recv["cores"], 3),
                        "received_fps_total": round(recv["fps_total"], 1)})
    return results


async def main(args: argparse.Namespace) -> dict[str, Any]:
    enable_loopback_candidates("only")
    out: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "join", "cpu"):
            srv = await Server(Path(tmp) / "main").start()
            try:
                if args.only in (None, "cpu"):
                    out["cpu_640x480_stream"] = await bench_cpu(srv, args.cpu_seconds)
                    print(json.dumps(out["cpu_640x480_stream"]), flush=True)
                if args.only in (None, "join"):
                    out["join_to_first_video_frame"] = await bench_join(
                        srv, args.runs, args.impolite_offer_delay, not args.unlabelled)
                    print(json.dumps(out["join_to_first_video_frame"]), flush=True)
            finally:
                await srv.node.stop()
        if args.only in (None, "restart"):
            out["server_restart_to_media"] = await bench_restart(Path(tmp) / "restart",
                                                                 args.restarts)
            print(json.dumps(out["server_restart_to_media"]), flush=True)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--receivers":
        asyncio.run(receivers_main(sys.argv[2], sys.argv[4:], sys.argv[3]))
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--cpu-seconds", type=float, default=8.0)
    ap.add_argument("--only", choices=["join", "restart", "cpu"])
    ap.add_argument("--impolite-offer-delay", type=float, default=None,
                    help="join: the engine's impolite_offer_delay in seconds (default: the "
                    "engine's own, a quarter of polite_offer_delay, at most 0.5 s)")
    ap.add_argument("--unlabelled", action="store_true",
                    help="join: add the streams without metadata (a Python peer then sends no "
                    "track metadata, so the impolite side keeps its first-offer hold)")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    result = asyncio.run(main(a))
    print(json.dumps(result, indent=2))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(result, indent=2) + "\n")
