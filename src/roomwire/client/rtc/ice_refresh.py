"""When to ask for fresh ICE servers: the decision, without sockets or clocks.

A TURN credential minted by roomwire expires at the time in its username (``<expiry>:<peerId>``,
``roomwire.protocol.ice``). A peer connection built after that time cannot allocate a relay, and
a live one loses its relay when aioice refreshes the allocation with the stale credential. So a
``MeteredPeer`` fetches fresh servers a little before the earliest expiry and hands them to every
engine for its next connection (docs/sdk-peer.md, "Strict networks").

Times are in the server's clock (unix seconds): the expiry was written by the server, so the
caller passes ``now`` as its own time corrected by the welcome's ``serverTime``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ...protocol.ice import turn_expiry

__all__ = ["MIN_REFRESH_DELAY", "REFRESH_LEAD_MAX", "REFRESH_LEAD_SHARE", "earliest_expiry",
           "refresh_delay"]

REFRESH_LEAD_MAX = 60.0
"""Fetch at most a minute before the credential expires ..."""
REFRESH_LEAD_SHARE = 0.2
"""... or a fifth of its remaining life, when that is shorter (short test lifetimes)."""
MIN_REFRESH_DELAY = 1.0
"""Never sooner than this after the last fetch: a server whose fresh credentials are already
stale (a clock gone wrong) is asked once a second, not in a loop."""


def earliest_expiry(servers: Iterable[Mapping[str, Any]] | None) -> int | None:
    """The earliest expiry among the servers' ``<expiry>:<id>`` usernames; None when no
    credential expires (STUN only, or static TURN credentials)."""
    expiries = [e for s in servers or () if (e := turn_expiry(s.get("username"))) is not None]
    return min(expiries) if expiries else None


def refresh_delay(servers: Iterable[Mapping[str, Any]] | None, now: float) -> float | None:
    """Seconds from ``now`` until fresh servers should be fetched, or None for never."""
    expiry = earliest_expiry(servers)
    if expiry is None:
        return None
    remaining = expiry - now
    lead = min(REFRESH_LEAD_MAX, max(0.0, remaining) * REFRESH_LEAD_SHARE)
    return max(MIN_REFRESH_DELAY, remaining - lead)
