"""Harness for the WebRTC engine tests: negotiators wired to each other in memory.

No server is involved: each negotiator's ``send_signal`` JSON-round-trips the payload (as the
WebSocket would) and hands it to the other side's ``on_remote_signal``, in order. ICE runs on
127.0.0.1 only (``loopback_candidates("only")``), with no ICE servers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiortc import MediaStreamTrack

from roomwire.client.media import iter_frames
from roomwire.client.rtc.negotiation import (
    NegotiationTimings,
    NegotiatorEvent,
    PeerNegotiator,
    PeerState,
    SendSignal,
)
from roomwire.client.rtc.remote_events import TrackEvent

E = TypeVar("E")

FAST = NegotiationTimings(
    debounce=0.01,
    polite_offer_delay=0.3,
    rebuild_interval=0.2,
    rebuild_burst=2,
    answer_timeout=4.0,
    recovery_ladder=(0.0, 0.2, 0.4),
    recovery_probe=4.0,
    close_timeout=1.0,
)


# Rewrites a signal on its way: return the list of payloads to deliver instead.
Filter = Callable[[str, str, dict[str, Any]], list[dict[str, Any]] | None]


class Wire:
    """Ordered in-memory signalling between negotiators, with a log and optional filters."""

    def __init__(self) -> None:
        self.peers: dict[str, PeerNegotiator] = {}
        self.log: list[tuple[str, str, dict[str, Any]]] = []
        self.filters: list[Filter] = []
        self.blocked: set[tuple[str, str]] = set()

    def sender(self, src: str, dst: str) -> SendSignal:
        async def send(data: dict[str, Any]) -> None:
            payload = json.loads(json.dumps(data))
            self.log.append((src, dst, payload))
            if (src, dst) in self.blocked:
                return
            out: list[dict[str, Any]] = [payload]
            for f in self.filters:
                replaced = f(src, dst, payload)
                if replaced is not None:
                    out = replaced
                    break
            await asyncio.sleep(0)
            target = self.peers.get(dst)
            if target is not None:
                for item in out:
                    target.on_remote_signal(item)

        return send

    def kinds(self, src: str, dst: str) -> list[str]:
        """The sequence of signal kinds sent from src to dst: meta/offer/answer/ice."""
        out = []
        for s, d, data in self.log:
            if (s, d) != (src, dst):
                continue
            if "__meteredTrackMeta" in data:
                out.append("meta")
            elif data.get("type") == "rtc-description":
                out.append(data["description"]["type"])
            else:
                out.append("ice")
        return out


@dataclass
class EventLog:
    events: list[NegotiatorEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, event: NegotiatorEvent) -> None:
        self.events.append(event)
        self.changed.set()

    def of(self, cls: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, cls)]

    async def wait_for(
        self,
        cls: type[E],
        pred: Callable[[E], bool] = lambda e: True,
        timeout: float = 5.0,
        *,
        count: int = 1,
    ) -> list[E]:
        """Wait until ``count`` events of ``cls`` match ``pred``; returns them."""
        async with asyncio.timeout(timeout):
            while True:
                found = [e for e in self.of(cls) if pred(e)]
                if len(found) >= count:
                    return found
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Peer:
    neg: PeerNegotiator
    log: EventLog

    @property
    def id(self) -> str:
        return self.neg.local_id

    def tracks(self, kind: str | None = None) -> list[TrackEvent]:
        return [e for e in self.log.of(TrackEvent) if kind is None or e.kind == kind]

    def is_current(self, event: TrackEvent) -> bool:
        """The event's track is a live track of the current connection."""
        return any(t.track is event.track for t in self.neg.remote_tracks)

    async def wait_state(self, state: PeerState, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.neg.state is not state:
                self.log.changed.clear()
                await self.log.changed.wait()


class Mesh:
    """Negotiators for every ordered pair of ids: ``mesh[a, b]`` is a's session with b."""

    def __init__(self, ids: list[str], timings: NegotiationTimings = FAST) -> None:
        self.wires: dict[tuple[str, str], Wire] = {}
        self.peers: dict[tuple[str, str], Peer] = {}
        for a in ids:
            for b in ids:
                if a >= b:
                    continue
                wire = Wire()
                self.wires[a, b] = self.wires[b, a] = wire
                for x, y in ((a, b), (b, a)):
                    neg = PeerNegotiator(x, y, wire.sender(x, y), timings=timings)
                    log = EventLog()
                    neg.add_listener(log)
                    self.peers[x, y] = Peer(neg, log)
                    wire.peers[x] = neg  # what is sent *to* x on this wire lands here

    def __getitem__(self, key: tuple[str, str]) -> Peer:
        return self.peers[key]

    async def close(self) -> None:
        await asyncio.gather(*(p.neg.close() for p in self.peers.values()))


async def count_frames(track: MediaStreamTrack, want: int, timeout: float = 5.0) -> int:
    """Read decoded frames until ``want`` arrived, the track ended, or ``timeout``."""
    got = 0
    try:
        async with asyncio.timeout(timeout):
            async for _ in iter_frames(track):
                got += 1
                if got >= want:
                    break
    except TimeoutError:
        pass
    return got


async def frames_after(track: MediaStreamTrack, seconds: float) -> list[Any]:
    """The frames received during the next ``seconds`` (drops whatever was queued)."""
    frames: list[Any] = []
    try:
        async with asyncio.timeout(seconds):
            async for f in iter_frames(track):
                frames.append(f)
    except TimeoutError:
        pass
    return frames
