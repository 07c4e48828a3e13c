"""Holding ``channel_vacated`` and ``peer_left`` for a grace period. Pure (the caller passes
the clock).

A leave is held under a key (the channel, or the channel and peer); the return of that member
or peer within the grace cancels it, and the caller then drops the matching
``channel_occupied``/``peer_joined`` too, so a reconnect or a deploy shows the backend
nothing. What is still held when its time comes is released, in the order it was held.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Grace(Generic[T]):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._held: dict[Hashable, tuple[float, T]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, key: Hashable, item: T, now: float, seconds: float | None = None) -> None:
        """Hold ``item`` until ``now + seconds`` (default: the grace). A key already held
        keeps its first item (the leave that started the grace) and deadline."""
        if key not in self._held:
            self._held[key] = (now + (self.seconds if seconds is None else seconds), item)

    def cancel(self, key: Hashable) -> bool:
        """The member or peer is back: forget the held leave. Returns whether one was held
        (then the caller drops the matching arrival)."""
        return self._held.pop(key, None) is not None

    def due(self, now: float) -> list[T]:
        """Release what has waited its grace, in the order it was held."""
        out: list[T] = []
        for key, (deadline, item) in list(self._held.items()):
            if deadline <= now:
                del self._held[key]
                out.append(item)
        return out

    def drain_remaining(self, now: float) -> list[tuple[Hashable, float, T]]:
        """Everything held with the grace it has left, emptying the hold (a node that stops
        and keeps them for its next start)."""
        out = [(k, max(0.0, d - now), item) for k, (d, item) in self._held.items()]
        self._held.clear()
        return out

    def drain(self) -> list[T]:
        """Everything held, now (the node is stopping: the leaves are real)."""
        out = [item for _, item in self._held.values()]
        self._held.clear()
        return out

    def next_deadline(self) -> float | None:
        return min((d for d, _ in self._held.values()), default=None)

    def last_deadline(self) -> float | None:
        return max((d for d, _ in self._held.values()), default=None)
