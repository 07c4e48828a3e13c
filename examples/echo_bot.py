"""An echo bot: joins a room as a ``MeteredPeer`` and sends every data message back.

Whatever a peer of the room sends (a broadcast with ``peer.send`` or a direct message with
``peer.send_to``), the bot answers that peer alone, with a direct message::

    {"echo": <the data it got>, "kind": "broadcast" | "direct"}

It answers the sender rather than the room so that one chatty peer does not flood everyone,
and it never answers a message that is itself an echo (an object with an ``"echo"`` key), so
two bots in one room do not bounce messages between them for ever.

Run it against a local ``roomwire serve``::

    python examples/echo_bot.py --room room/demo --key pk_live_...
    python examples/echo_bot.py --room room/demo --token "$JWT" --duration 60

``--url`` defaults to ``$ROOMWIRE_URL`` or ``ws://127.0.0.1:7880``; the credential may also
come from ``$ROOMWIRE_KEY`` (a publishable key) or ``$ROOMWIRE_TOKEN`` (a JWT, whose ``sub``
becomes the bot's peer id). Ctrl-C (or SIGTERM) leaves the room and exits with status 0;
``--duration S`` leaves after S seconds. Exit status 1 after a fatal error (a refused
credential, for instance), 2 for a usage error.

The bot sends no media, so WebRTC is never needed; ``--loopback only`` is there for the day
you add a track and test on a machine whose only interface is loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from roomwire.client import DataEvent, ErrorEvent, MeteredPeer, RoomwireError

DEFAULT_URL = "ws://127.0.0.1:7880"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Echo every data message back to its sender.")
    p.add_argument("--url", default=os.environ.get("ROOMWIRE_URL", DEFAULT_URL),
                   help="server URL (default: $ROOMWIRE_URL or %(default)s)")
    cred = p.add_mutually_exclusive_group()
    cred.add_argument("--key", help="publishable key (default: $ROOMWIRE_KEY)")
    cred.add_argument("--token", help="JWT (default: $ROOMWIRE_TOKEN)")
    p.add_argument("--room", required=True, help="the channel to join, e.g. room/demo")
    p.add_argument("--duration", type=float, default=None,
                   help="leave after this many seconds (default: until Ctrl-C)")
    p.add_argument("--loopback", choices=["fallback", "add", "only"], default=None,
                   help="let WebRTC use 127.0.0.1 (development on one machine)")
    args = p.parse_args(argv)
    # The environment only fills in when the command line gives no credential at all.
    if not args.key and not args.token:
        args.key = os.environ.get("ROOMWIRE_KEY")
        args.token = None if args.key else os.environ.get("ROOMWIRE_TOKEN")
    if not args.key and not args.token:
        p.error("give a credential: --key, --token, $ROOMWIRE_KEY or $ROOMWIRE_TOKEN")
    if args.duration is not None and args.duration <= 0:
        p.error("--duration must be a positive number of seconds")
    return args


def is_echo(data: Any) -> bool:
    return isinstance(data, dict) and "echo" in data


async def run(args: argparse.Namespace) -> int:
    token: str | None = args.token
    credential: dict[str, Any] = (
        {"api_key": args.key} if args.key else {"token_provider": lambda: token})
    peer = MeteredPeer(url=args.url, loopback_candidates=args.loopback or False, **credential)
    stop = asyncio.Event()
    failed: list[str] = []

    # One worker answers in the order messages arrived (a task per message would not).
    inbox: asyncio.Queue[DataEvent] = asyncio.Queue()

    async def echo_all() -> None:
        while True:
            ev = await inbox.get()
            try:
                await peer.send_to(ev.sender_peer_id, {"echo": ev.data, "kind": ev.kind})
            except RoomwireError as exc:
                # The sender may have left meanwhile; the bot keeps serving the others.
                print(f"could not echo to {ev.sender_peer_id}: {exc}", file=sys.stderr)

    def on_data(ev: DataEvent) -> None:
        if not is_echo(ev.data):
            inbox.put_nowait(ev)

    def on_error(ev: ErrorEvent) -> None:
        failed.append(ev.err.name)
        print(f"error: {ev.err.name}: {ev.err}", file=sys.stderr)

    peer.on("data", on_data)
    peer.on("error", on_error)
    peer.on("left", lambda ev: stop.set())  # a fatal error also ends the peer

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker = asyncio.ensure_future(echo_all())
    try:
        await peer.join(args.room)
        print(f"joined {args.room} as {peer.peer_id}", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
    except RoomwireError as exc:
        print(f"could not join {args.room}: {exc}", file=sys.stderr)
        return 1
    finally:
        worker.cancel()
        await peer.close("echo bot finished")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("left", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
