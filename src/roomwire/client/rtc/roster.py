"""The decisions of ``MeteredPeer``'s roster reconcile after a signalling reconnect.

After a reconnect the server sends the channel's roster (a presence snapshot); ``MeteredPeer``
(``peer.py``) compares it with the remote peers it knows and asks these functions what to do
with each, then does the I/O (timers, connection swaps, events). Nothing here imports asyncio
or aiortc; ``tests/unit/test_roster.py`` tables every case. The rules: docs/sdk-peer.md,
"Reconnect".
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DeadlineAction",
    "JoinAction",
    "ReconcilePlan",
    "SwapAction",
    "on_deadline",
    "on_presence_joined",
    "plan_reconcile",
    "swap_action",
]


@dataclass(frozen=True, slots=True)
class ReconcilePlan:
    survivors: tuple[str, ...]
    """Known peers in the roster, in roster order: each gets a fresh connection (a swap)."""
    newcomers: tuple[str, ...]
    """Peers in the roster we did not know, in roster order: added (``peer-joined``)."""
    missing: tuple[str, ...]
    """Known peers absent from the roster and not already waited for, in the order we know
    them: kept for the rejoin grace (they may be reconnecting as well, e.g. after a server
    restart), then dropped with ``peer-left`` unless they come back."""

    @property
    def finished(self) -> bool:
        """Nothing to swap: the reconcile ends at once."""
        return not self.survivors


def plan_reconcile(me: str | None, known: Iterable[str], already_missing: Container[str],
                   roster: Iterable[str]) -> ReconcilePlan:
    """Compare the roster snapshot (peer ids, duplicates allowed, ourselves included or not)
    with the peers we know (in the order we know them)."""
    present = dict.fromkeys(pid for pid in roster if pid != me)
    known_ids = dict.fromkeys(known)
    return ReconcilePlan(
        survivors=tuple(pid for pid in present if pid in known_ids),
        newcomers=tuple(pid for pid in present if pid not in known_ids),
        missing=tuple(pid for pid in known_ids
                      if pid not in present and pid not in already_missing),
    )


class JoinAction(StrEnum):
    ADD = "add"
    """A peer we do not know: a new ``RemotePeer`` (``peer-joined``)."""
    REJOINED = "rejoined"
    """A missing peer back within the rejoin grace: the same ``RemotePeer``, its metadata
    refreshed, a fresh connection (no ``peer-left``/``peer-joined`` pair)."""
    REFRESH = "refresh"
    """A known peer seen again while we reconnect: refresh its metadata only."""
    IGNORE = "ignore"
    """A known peer seen again while joined: nothing changes."""


def on_presence_joined(*, known: bool, missing: bool, reconnecting: bool) -> JoinAction:
    """What a ``joined`` presence entry (outside the reconcile snapshot) means."""
    if not known:
        return JoinAction.ADD
    if missing:
        return JoinAction.REJOINED
    return JoinAction.REFRESH if reconnecting else JoinAction.IGNORE


class SwapAction(StrEnum):
    SKIP = "skip"
    """The engine is closed, or the peer is neither joined nor reconnecting."""
    KEEP = "keep"
    """The connection was already rebuilt since the drop (the remote offered from a fresh
    connection): re-announce the track metadata and keep it."""
    RESET = "reset"
    """Swap in a fresh connection: metadata first, then media, renegotiated."""


def swap_action(*, engine_closed: bool, live: bool, last_rebuild_at: float | None,
                dropped_at: float) -> SwapAction:
    """What a survivor's connection needs after our reconnect (times are monotonic)."""
    if engine_closed or not live:
        return SwapAction.SKIP
    if last_rebuild_at is not None and last_rebuild_at > dropped_at:
        return SwapAction.KEEP
    return SwapAction.RESET


class DeadlineAction(StrEnum):
    IGNORE = "ignore"
    """A deadline of a finished or replaced reconcile."""
    WAIT = "wait"
    """No welcome yet: the signalling client decides (and gives up in time)."""
    RESUBSCRIBE = "resubscribe"
    """No roster yet: subscribe again and re-arm the deadline."""
    FAIL = "fail"
    """No roster after every re-subscribe: a fatal ``reconcile_timeout``."""
    FINISH = "finish"
    """The roster came but a connection swap hangs: cancel the swaps, finish without them."""


def on_deadline(*, current: bool, reconnecting: bool, connected: bool,
                awaiting_snapshot: bool, resubscribes: int,
                max_resubscribes: int) -> DeadlineAction:
    """What the reconcile deadline means when it fires."""
    if not current or not reconnecting:
        return DeadlineAction.IGNORE
    if not connected:
        return DeadlineAction.WAIT
    if awaiting_snapshot:
        if resubscribes < max_resubscribes:
            return DeadlineAction.RESUBSCRIBE
        return DeadlineAction.FAIL
    return DeadlineAction.FINISH
