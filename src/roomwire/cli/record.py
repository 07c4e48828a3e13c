"""``roomwire record ROOM``: record every remote peer's every stream of a room.

Joins ``ROOM`` as a receive-only peer and writes one WebM file (VP8 + Opus, re-encoded) per
remote peer stream into ``--out`` (default ``./recording-ROOM``), with ``manifest.json``
(peer ids, presence and track metadata, start/end offsets on one clock). Runs until Ctrl-C
/ SIGTERM or ``--duration S``, then finalises every file. The same as
``roomwire.client.recording.record_room``. Credentials and ``--url`` as ``roomwire join``.
Exit status 0, 1 after a fatal error (a refused credential, ...), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from .peer_args import MISSING_CREDENTIAL, add_peer_options, peer_credentials, register_command

__all__ = ["add_record_parser", "build_record_parser", "main", "run_record"]

def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("room", help="the channel to record")
    p.add_argument("--out", default=None,
                   help="output folder (default: ./recording-ROOM, created if missing)")
    add_peer_options(p)
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--queue-frames", type=int, default=256,
                   help="frames buffered per file; beyond, the oldest are dropped (default 256)")
    return p


def build_record_parser() -> argparse.ArgumentParser:
    return _configure(argparse.ArgumentParser(
        prog="roomwire record", description="Record every stream of a room."))


def add_record_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``record`` on an ``argparse`` sub-parsers object; dispatch to ``run_record``."""
    return register_command(subparsers, "record", "record every stream of a room to files",
                            "Record every stream of a room.", _configure, run_record)


async def record_command(args: argparse.Namespace) -> int:
    from ..client.recording import record_room, safe_name

    cred = peer_credentials(args)
    if cred is None:
        print(f"roomwire record: {MISSING_CREDENTIAL}", file=sys.stderr)
        return 2
    if args.duration is not None and args.duration <= 0:
        print("roomwire record: --duration must be positive", file=sys.stderr)
        return 2
    if args.queue_frames < 1:
        print("roomwire record: --queue-frames must be at least 1", file=sys.stderr)
        return 2
    out = args.out or f"recording-{safe_name(args.room)}"
    errors: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)

    from ..client.rtc.peer import MeteredPeer

    peer = MeteredPeer(url=args.url, **cred)
    def on_error(ev: Any) -> None:
        errors.append(ev.err.name)
        say(f"error: {ev.err.name}: {ev.err}")

    peer.on("error", on_error)
    try:
        manifest = await record_room(args.room, out, duration=args.duration, peer=peer,
                                     queue_frames=args.queue_frames, on_event=say)
    except Exception as exc:
        print(f"roomwire record: could not record {args.room!r}: {exc}", file=sys.stderr)
        return 1
    files = manifest["files"]
    say(f"stopped: {len(files)} file(s) in {out}, manifest {os.path.join(out, 'manifest.json')}")
    return 1 if errors else 0


def run_record(args: argparse.Namespace) -> int:
    """Run ``roomwire record`` (parsed ``args``); returns the exit status."""
    try:
        return asyncio.run(record_command(args))
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run_record(build_record_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
