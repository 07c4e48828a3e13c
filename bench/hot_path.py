"""In-process cost of roomwire's hot path, without sockets: what a frame costs in Python.

Builds a real ``Node`` (not started: no port, no store) with one app, and ``WsSession``s whose
transport is a stub that drops the bytes, then times their listeners' ``on_ws_frame`` (what
picows calls) on frames shaped like the ones picows hands over: a direct ``send`` (with and
without ``requestId``) and a ``publish`` to N subscribers. This is the part of the server CPU
per message that roomwire's own code adds; the socket runs (``run.py``) add the read and write
syscalls and picows' parsing.

    python bench/hot_path.py                 # every case, best of 5 x 200,000 frames
    python bench/hot_path.py --case send     # one case
    python bench/hot_path.py --profile send  # cProfile the case, top 25 functions
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any

import picows

from roomwire.protocol import Action
from roomwire.server.auth import Keyring, Principal
from roomwire.server.config import ServerConfig
from roomwire.server.gateway.listener import SessionListener
from roomwire.server.gateway.websocket import WsSession
from roomwire.server.node import Node
from roomwire.server.store import App

APP = "app_bench"
_PAD = "x" * 160


class _Raw:
    """The uvloop transport, as far as ``WsSession`` uses it: bytes written are counted."""

    def __init__(self) -> None:
        self.written = 0

    def set_write_buffer_limits(self, high: int) -> None:
        return None

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def pause_reading(self) -> None:
        return None


class _Ws:
    def __init__(self) -> None:
        self.underlying_transport = _Raw()
        self.request = None
        self.response = None

    def send_close(self, *args: Any) -> None:
        return None

    def disconnect(self, *args: Any) -> None:
        return None


class _Frame:
    """A complete text frame, the last of its read buffer (one frame per read, as at
    100 pairs x 1 in flight)."""

    msg_type = picows.WSMsgType.TEXT
    fin = True
    last_in_buffer = True

    def __init__(self, payload: bytes) -> None:
        self._payload = payload

    def get_payload_as_bytes(self) -> bytes:
        return self._payload


def _principal(peer_id: str) -> Principal:
    return Principal(
        app_id=APP, key_id="pk_bench", peer_id=peer_id, via_token=False,
        key_patterns=("*",), token_patterns=None,
        actions=frozenset({Action.PUBLISH, Action.SUBSCRIBE, Action.PRESENCE, Action.SEND}),
    )  # fmt: skip


def _node(quota: bool) -> Node:
    node = Node(ServerConfig(rate_limit=0, connect_rate_limit=0))
    limit = 10**12 if quota else None
    node.keyring = Keyring({APP: App(APP, "bench", max_messages_per_period=limit)}, {})
    node.outbox = _outbox(node)
    return node


def _outbox(node: Node) -> Any:
    from roomwire.server.gateway.websocket import Outbox

    return Outbox(asyncio.get_event_loop_policy().get_event_loop())


def _session(node: Node, peer_id: str) -> WsSession:
    s = WsSession(node, _principal(peer_id))
    s.on_ws_connected(_Ws())
    return s


def case_send(request_id: bool, quota: bool = True) -> tuple[Callable[[], None], int]:
    node = _node(quota)
    a, _b = _session(node, "alice"), _session(node, "bob")
    rid = ',"requestId":"d1"' if request_id else ""
    payload = (
        '{"type":"send","to":"bob","data":{"type":"candidate","candidate":"' + _PAD + '"}'
        + rid + "}"
    ).encode()
    frame = _Frame(payload)
    ws = a._ws
    # What picows calls: the session's listener, which forwards to the session.
    on_frame = SessionListener(a).on_ws_frame

    def step() -> None:
        on_frame(ws, frame)

    return step, 1


def case_publish(n: int) -> tuple[Callable[[], None], int]:
    node = _node(True)
    pub = _session(node, "pub")
    for i in range(n):
        sub = _session(node, f"sub{i}")
        sub.handle_text(b'{"type":"subscribe","channel":"bench/room"}')
    node.outbox.flush()
    payload = (
        '{"type":"publish","channel":"bench/room","data":{"pad":"' + _PAD + '"},'
        '"requestId":"p1"}'
    ).encode()
    frame = _Frame(payload)
    ws = pub._ws
    on_frame = SessionListener(pub).on_ws_frame

    def step() -> None:
        on_frame(ws, frame)

    return step, n


CASES: dict[str, Callable[[], tuple[Callable[[], None], int]]] = {
    "send": lambda: case_send(False),
    "send+requestId": lambda: case_send(True),
    "send, no quota": lambda: case_send(False, quota=False),
    "publish N=10": lambda: case_publish(10),
    "publish N=100": lambda: case_publish(100),
}


def measure(name: str, frames: int, repeats: int) -> tuple[float, list[float], int]:
    """Best and every run's microseconds per frame, and the deliveries per frame."""
    step, per = CASES[name]()
    for _ in range(2000):
        step()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(frames):
            step()
        runs.append((time.perf_counter() - t0) / frames * 1e6)
    return min(runs), runs, per


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", action="append", choices=sorted(CASES), help="default: all")
    p.add_argument("--frames", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", choices=sorted(CASES), default=None)
    args = p.parse_args()
    asyncio.set_event_loop(asyncio.new_event_loop())
    if args.profile:
        step, _ = CASES[args.profile]()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.frames):
            step()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    print("| case | us per frame, best | us per delivery, best | all runs (us per frame) |")
    print("|---|---|---|---|")
    for name in args.case or list(CASES):
        best, runs, per = measure(name, args.frames, args.repeats)
        spread = ", ".join(f"{r:.2f}" for r in runs)
        print(f"| {name} | {best:.2f} | {best / per:.3f} | {spread} |", flush=True)


if __name__ == "__main__":
    main()
