"""Helpers for the MeteredPeer tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from aiortc import MediaStreamTrack

from roomwire.client.media import iter_frames
from roomwire.client.rtc.events import PEER_EVENT_TYPES, REMOTE_PEER_EVENT_TYPES
from roomwire.client.rtc.negotiation import NegotiationTimings
from roomwire.client.rtc.peer import MeteredPeer
from roomwire.client.rtc.remote_peer import RemotePeer
from waiting import wait_for

E = TypeVar("E")

FAST = NegotiationTimings(
    debounce=0.01, polite_offer_delay=0.3, rebuild_interval=0.2, rebuild_burst=2,
    answer_timeout=4.0, recovery_ladder=(0.0, 0.2, 0.4), recovery_probe=4.0, close_timeout=1.0,
)


class Log:
    """Every event of one emitter (a MeteredPeer or a RemotePeer), waitable."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.changed = asyncio.Event()

    def __call__(self, ev: Any) -> None:
        self.events.append(ev)
        self.changed.set()

    def of(self, name: str) -> list[Any]:
        return [e for e in self.events if e.name == name]

    async def wait(self, name: str, pred: Callable[[Any], bool] = lambda e: True,
                   timeout: float = 8.0, count: int = 1) -> list[Any]:
        async with asyncio.timeout(timeout):
            while True:
                found = [e for e in self.of(name) if pred(e)]
                if len(found) >= count:
                    return found
                self.changed.clear()
                await self.changed.wait()


class Tap:
    """Records a MeteredPeer's events and those of every RemotePeer it sees."""

    def __init__(self, peer: MeteredPeer) -> None:
        self.peer = peer
        self.log = Log()
        self.remote: dict[str, Log] = {}
        for name in PEER_EVENT_TYPES:
            peer.on(name, self.log)
        peer.on("peer-joined", self._wire)

    def _wire(self, ev: Any) -> None:
        remote: RemotePeer = ev.peer
        log = self.remote.setdefault(remote.id, Log())
        for name in REMOTE_PEER_EVENT_TYPES:
            remote.on(name, log)

    def of(self, remote_id: str) -> Log:
        return self.remote.setdefault(remote_id, Log())

    async def remote_peer(self, remote_id: str, timeout: float = 8.0) -> RemotePeer:
        async with asyncio.timeout(timeout):
            while True:
                for ev in self.log.of("peer-joined"):
                    if ev.peer.id == remote_id:
                        r: RemotePeer = ev.peer
                        return r
                self.log.changed.clear()
                await self.log.changed.wait()

    async def track(self, remote_id: str, kind: str, pred: Callable[[Any], bool] = lambda e: True,
                    timeout: float = 8.0, count: int = 1) -> Any:
        evs = await self.of(remote_id).wait(
            "track", lambda e: e.kind == kind and pred(e), timeout, count)
        return evs[-1]


async def count_frames(track: MediaStreamTrack, want: int, timeout: float = 6.0) -> int:
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


async def wait_until(pred: Callable[[], bool], timeout: float = 8.0,
                     what: str = "the awaited condition") -> None:
    await wait_for(pred, timeout, what, step=0.02)


def drain(track: MediaStreamTrack) -> None:
    """Drop the frames a ``ReceivedTrack`` queued so far (so what is read next is fresh)."""
    q = getattr(track, "_frames", None)
    if q is not None:
        while q.qsize() > 1:
            q.get_nowait()


async def fresh_frames(track: MediaStreamTrack, want: int, timeout: float = 6.0) -> int:
    drain(track)
    return await count_frames(track, want, timeout)
