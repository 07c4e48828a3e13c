"""Send a media file's audio and video into a room, and leave when the file ends.

Every peer of the room (and every peer that joins while the file plays) receives the file's
audio and video tracks, labelled ``{"role": "file", "label": <--label>}`` in the track
metadata. The file is read at its own pace, once (``roomwire.client.from_file``); when it has
been played to the end the program leaves the room and exits with status 0.

The file starts playing when the first peer of the room is connected, not at startup, so
a file sent into an empty room waits for its audience; a peer that arrives later joins in
the middle. ``--duration S`` leaves after S seconds in any case, Ctrl-C at once.

Run it against a local ``roomwire serve`` (any file FFmpeg reads: mp4, mkv, webm, wav...)::

    python examples/send_file_media.py movie.mp4 --room room/demo --key pk_live_...
    ROOMWIRE_TOKEN="$JWT" python examples/send_file_media.py talk.webm --room room/demo

and watch it with ``roomwire join room/demo --key pk_live_... --record seen.mp4`` or the
``/demo`` page. ``--url``, ``--key`` and ``--token`` fall back to ``$ROOMWIRE_URL`` (default
``ws://127.0.0.1:7880``), ``$ROOMWIRE_KEY`` and ``$ROOMWIRE_TOKEN``. ``--loopback only``
lets WebRTC use 127.0.0.1 when sender and receivers run on one machine. Exit status 1 after
a fatal error, 2 for a usage error.

Only pass a file path you chose: FFmpeg also understands protocol strings (``http:``,
``concat:``...), so a name from an untrusted party could make it open other resources.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from roomwire.client import ErrorEvent, MediaStream, MeteredPeer, RoomwireError, from_file

DEFAULT_URL = "ws://127.0.0.1:7880"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Send a media file into a room, then leave.")
    p.add_argument("file", help="the media file to send")
    p.add_argument("--url", default=os.environ.get("ROOMWIRE_URL", DEFAULT_URL),
                   help="server URL (default: $ROOMWIRE_URL or %(default)s)")
    cred = p.add_mutually_exclusive_group()
    cred.add_argument("--key", help="publishable key (default: $ROOMWIRE_KEY)")
    cred.add_argument("--token", help="JWT (default: $ROOMWIRE_TOKEN)")
    p.add_argument("--room", required=True, help="the channel to join, e.g. room/demo")
    p.add_argument("--label", default="file", help="label in the track metadata")
    p.add_argument("--duration", type=float, default=None,
                   help="leave after this many seconds even if the file still plays")
    p.add_argument("--loopback", choices=["fallback", "add", "only"], default=None,
                   help="let WebRTC use 127.0.0.1 (development on one machine)")
    args = p.parse_args(argv)
    if not args.key and not args.token:
        args.key = os.environ.get("ROOMWIRE_KEY")
        args.token = None if args.key else os.environ.get("ROOMWIRE_TOKEN")
    if not args.key and not args.token:
        p.error("give a credential: --key, --token, $ROOMWIRE_KEY or $ROOMWIRE_TOKEN")
    if not os.path.isfile(args.file):
        p.error(f"no such file: {args.file}")
    if args.duration is not None and args.duration <= 0:
        p.error("--duration must be a positive number of seconds")
    return args


async def run(args: argparse.Namespace) -> int:
    player = from_file(args.file)
    tracks = [t for t in (player.audio, player.video) if t is not None]
    if not tracks:
        print(f"{args.file} has neither audio nor video", file=sys.stderr)
        return 2
    token: str | None = args.token
    credential: dict[str, Any] = (
        {"api_key": args.key} if args.key else {"token_provider": lambda: token})
    peer = MeteredPeer(url=args.url, loopback_candidates=args.loopback or False, **credential)
    peer.add_stream(MediaStream(tracks), {"role": "file", "label": args.label})

    stop = asyncio.Event()
    failed: list[str] = []
    playing = set(tracks)

    def track_ended(track: Any) -> None:
        # The player ends a track when it reaches the end of the file (aiortc's "ended").
        playing.discard(track)
        if not playing:
            print("the file has ended", flush=True)
            stop.set()

    for track in tracks:
        track.on("ended", lambda t=track: track_ended(t))

    def on_error(ev: ErrorEvent) -> None:
        failed.append(ev.err.name)
        print(f"error: {ev.err.name}: {ev.err}", file=sys.stderr)

    peer.on("error", on_error)
    peer.on("left", lambda ev: stop.set())
    peer.on("peer-joined", lambda ev: print(f"sending to {ev.peer.id}", flush=True))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await peer.join(args.room)
        print(f"joined {args.room} as {peer.peer_id}", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
    except RoomwireError as exc:
        print(f"could not join {args.room}: {exc}", file=sys.stderr)
        return 1
    finally:
        await peer.close("the file has ended" if not playing else "sender stopped")
        for track in tracks:
            track.stop()  # closes the file (the peer never stops tracks it was given)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("left", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
