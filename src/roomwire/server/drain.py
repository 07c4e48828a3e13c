"""When a draining node closes which sockets: pure decisions, no I/O (``Node.shutdown`` acts).

A node that closes all its sockets at once sends a third of a three-node cluster back through
the load balancer in the same instant: the official clients all retry about 0.5 s after the
close (their first backoff step, +-20 % jitter), so the survivors get every handshake, token
check and presence join of the departing node in one burst. Spreading the closes evenly over
the drain window turns that burst into a steady stream, and the last batch closes at the
bound, so the drain never takes longer than configured.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Batches closer together than this only add timer wake-ups; a tick of 50 ms keeps a drain of
#: 0.25 s (the default) down to five batches and a 10 s drain to 200.
MIN_CLOSE_STEP = 0.05

#: In a cluster, how long a draining node keeps its peers in their channels after its last
#: close: the official clients retry 0.5 s (+20 %) after a 1001, so one closed in the last
#: batch is usually back on another node within this, and nobody sees it leave and rejoin.
PRESENCE_LINGER = 1.0


@dataclass(frozen=True)
class CloseBatch:
    """Close ``count`` more sockets ``at`` seconds after the drain began."""

    at: float
    count: int


def close_batches(sockets: int, window: float, step: float = MIN_CLOSE_STEP) -> list[CloseBatch]:
    """Split ``sockets`` closes over ``window`` seconds in batches at least ``step`` apart.

    Batch ``k`` of ``n`` is at ``window * k / n``: the first close leaves the ``going_away``
    (sent when the drain begins) a head start, and the last batch is at ``window`` exactly.
    Counts differ by at most one between batches and add up to ``sockets``; no batch is empty.
    """
    if sockets <= 0:
        return []
    if window <= 0:
        return [CloseBatch(0.0, sockets)]
    ticks = max(1, min(sockets, int(window / max(step, 1e-6) + 1e-9)))
    out: list[CloseBatch] = []
    done = 0
    for k in range(1, ticks + 1):
        upto = sockets * k // ticks
        if upto > done:
            out.append(CloseBatch(window * k / ticks, upto - done))
            done = upto
    return out
