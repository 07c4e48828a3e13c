"""``roomwire join ROOM``: a command-line peer, to try a room without writing code.

It joins ``ROOM`` on any Metered-compatible server as a ``MeteredPeer``, prints what happens
(peers joining and leaving, their tracks, data), and optionally

* ``--play FILE``: sends the audio and video of a media file (anything FFmpeg reads);
* ``--test-pattern``: sends a synthetic 640x480 video;
* ``--say TEXT`` (repeatable): speaks the text with ``espeak-ng`` (must be installed);
* ``--record FILE``: records the first remote peer that sends media (``.wav``/``.ogg`` audio
  only, ``.mp4``/``.mkv``/``.webm`` audio and video);
* ``--send TEXT`` (repeatable): broadcasts a chat message once joined;
* ``--duration S``: leaves after S seconds (default: until Ctrl-C).

Credentials: ``--key`` (a publishable key) or ``--token`` (a JWT), or the ``ROOMWIRE_KEY`` /
``ROOMWIRE_TOKEN`` environment variables. ``--url`` (or ``ROOMWIRE_URL``) defaults to a
local ``roomwire serve`` (``ws://127.0.0.1:7880``). ``--loopback`` lets WebRTC use
127.0.0.1 (local development on one machine).

Wiring into a parent CLI: ``add_join_parser(subparsers)`` registers the ``join`` command and
``run_join(args)`` runs it (returns the exit status); ``main(argv)`` runs it standalone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, TextIO

from .peer_args import MISSING_CREDENTIAL, add_peer_options, peer_credentials, register_command

__all__ = ["add_join_parser", "build_join_parser", "join_command", "main", "run_join"]


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("room", help="the channel to join")
    add_peer_options(p)
    p.add_argument("--play", metavar="FILE", help="send the audio/video of a media file")
    p.add_argument("--loop", action="store_true", help="loop the --play file")
    p.add_argument("--test-pattern", action="store_true", help="send a synthetic video")
    p.add_argument("--say", metavar="TEXT", action="append", default=[],
                   help="speak TEXT with espeak-ng (repeatable, in order)")
    p.add_argument("--record", metavar="FILE", help="record the first remote peer's media")
    p.add_argument("--send", metavar="TEXT", action="append", default=[],
                   help="broadcast a chat message once joined (repeatable)")
    p.add_argument("--label", default="roomwire join",
                   help="label in the metadata of the media sent (default: %(default)s)")
    p.add_argument("--duration", type=float, default=None,
                   help="leave after this many seconds (default: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="print events as JSON lines")
    return p


def build_join_parser() -> argparse.ArgumentParser:
    return _configure(argparse.ArgumentParser(
        prog="roomwire join", description="Join a room as a command-line peer."))


def add_join_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``join`` on an ``argparse`` sub-parsers object; dispatch to ``run_join``."""
    return register_command(subparsers, "join", "join a room as a command-line peer",
                            "Join a room as a command-line peer.", _configure, run_join)


def _speech_wav(texts: Sequence[str], folder: str) -> list[str]:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise CliError("--say needs espeak-ng, which is not installed "
                       "(Debian/Ubuntu: apt-get install espeak-ng)")
    paths = []
    for i, text in enumerate(texts):
        path = os.path.join(folder, f"say{i}.wav")
        done = subprocess.run([exe, "-w", path, "--", text], capture_output=True, timeout=60)
        if done.returncode != 0 or not os.path.exists(path):
            raise CliError(f"espeak-ng failed: {done.stderr.decode(errors='replace')[-200:]}")
        paths.append(path)
    return paths


async def _speak(source: Any, paths: Sequence[str]) -> None:
    """Push the decoded speech into an AudioSource (silence follows)."""
    import av

    for path in paths:
        with av.open(path) as container:
            for frame in container.decode(audio=0):
                await source.push(frame)


class _Printer:
    def __init__(self, as_json: bool, out: TextIO) -> None:
        self.as_json = as_json
        self.out = out

    def __call__(self, event: str, text: str, **fields: Any) -> None:
        if self.as_json:
            self.out.write(json.dumps({"event": event, **fields}, default=repr) + "\n")
        else:
            self.out.write(text + "\n")
        self.out.flush()


async def join_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run the command in the current event loop (what ``run_join`` runs)."""
    from ..client.media import AudioSource, Recorder, VideoSource, from_file
    from ..client.rtc.events import MediaStream
    from ..client.rtc.peer import MeteredPeer

    say = _Printer(args.json, out)
    cred = peer_credentials(args)
    if cred is None:
        raise CliError(MISSING_CREDENTIAL)
    if args.duration is not None and args.duration <= 0:
        raise CliError("--duration must be positive")
    tmp = tempfile.TemporaryDirectory(prefix="roomwire-join-")
    speech = _speech_wav(args.say, tmp.name) if args.say else []

    peer = MeteredPeer(url=args.url, **cred)
    stream = MediaStream()
    player: Any = None
    tasks: list[asyncio.Task[Any]] = []
    if args.play:
        if not os.path.exists(args.play):
            raise CliError(f"--play: no such file: {args.play}")
        player = from_file(args.play, loop=args.loop)
        for track in (player.audio, player.video):
            if track is not None:
                stream.add_track(track)
    if args.test_pattern and not stream.get_video_tracks():
        stream.add_track(VideoSource())
    voice: AudioSource | None = None
    if speech and not stream.get_audio_tracks():
        voice = AudioSource(input_rate=22050)
        stream.add_track(voice)
    if stream.get_tracks():
        role = "file" if args.play else "camera"
        peer.add_stream(stream, {"role": role, "label": args.label})

    recorder: Recorder | None = None
    record_task: asyncio.Task[None] | None = None
    stop = asyncio.Event()

    def on_peer_joined(ev: Any) -> None:
        remote = ev.peer
        say("peer-joined", f"+ {remote.id} joined (metadata: {remote.metadata})",
            peer_id=remote.id, metadata=remote.metadata)

        def on_track(t: Any) -> None:
            nonlocal record_task
            label = (t.metadata or {}).get("label")
            say("track", f"  {remote.id}: {t.kind} track"
                + (f" '{label}'" if label else ""), peer_id=remote.id, kind=t.kind,
                metadata=t.metadata)
            if args.record and record_task is None:
                record_task = asyncio.ensure_future(start_recording(remote))

        remote.on("track", on_track)

    async def start_recording(remote: Any) -> None:
        nonlocal recorder
        await asyncio.sleep(1.0)  # let the other track of the pair arrive
        rec = Recorder(args.record)
        audio_only = args.record.lower().endswith((".wav", ".ogg", ".mp3"))
        kinds = set()
        for track in remote.remote_tracks:
            if track.kind in kinds or (audio_only and track.kind != "audio"):
                continue
            kinds.add(track.kind)
            rec.add_track(track)
        if not kinds:
            return
        await rec.start()
        recorder = rec
        say("recording", f"recording {remote.id} ({', '.join(sorted(kinds))}) to "
            f"{args.record}", peer_id=remote.id, path=args.record)

    peer.on("peer-joined", on_peer_joined)
    peer.on("peer-left", lambda ev: say("peer-left", f"- {ev.peer.id} left",
                                        peer_id=ev.peer.id))
    peer.on("data", lambda ev: say("data", f"[{ev.kind}] {ev.sender_peer_id}: "
                                   f"{json.dumps(ev.data)}", sender_peer_id=ev.sender_peer_id,
                                   kind=ev.kind, data=ev.data))
    peer.on("state-change", lambda ev: say("state", f"state: {ev.from_} -> {ev.to}",
                                           **{"from": ev.from_, "to": ev.to}))
    errors: list[Any] = []

    def on_error(ev: Any) -> None:
        errors.append(ev.err)
        say("error", f"error: {ev.err.name}: {ev.err}", name=ev.err.name)

    peer.on("error", on_error)

    def on_left(ev: Any) -> None:
        stop.set()

    peer.on("left", on_left)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    status = 0
    try:
        try:
            await peer.join(args.room)
        except Exception as exc:
            raise CliError(f"could not join {args.room!r}: {exc}") from None
        say("joined", f"joined {args.room} as {peer.peer_id}", peer_id=peer.peer_id,
            channel=args.room)
        for text in args.send:
            await peer.send({"text": text})
        if voice is not None:
            tasks.append(asyncio.ensure_future(_speak(voice, speech)))
        if args.duration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration)
        else:
            await stop.wait()
        if errors:
            status = 1
    finally:
        for t in tasks:
            t.cancel()
        if record_task is not None:
            record_task.cancel()
            with contextlib.suppress(BaseException):
                await record_task
        if recorder is not None:
            await recorder.stop()
        await peer.close("roomwire join finished")
        if player is not None:
            for track in (player.audio, player.video):
                if track is not None:
                    track.stop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
        tmp.cleanup()
    say("left", "left", channel=args.room)
    return status


def run_join(args: argparse.Namespace) -> int:
    """Run ``roomwire join`` (parsed ``args``); returns the exit status."""
    try:
        return asyncio.run(join_command(args))
    except CliError as exc:
        print(f"roomwire join: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run_join(build_join_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
