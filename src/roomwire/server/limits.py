"""Rate limits and quotas: plain logic with an injectable clock."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up. ``rate`` 0 means unlimited."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        """Spend one token; False when the bucket is empty."""
        if self.rate <= 0:
            return True
        now = self._clock()
        tokens = self._tokens + (now - self._last) * self.rate
        self._last = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    @property
    def last_used(self) -> float:
        """When (on the bucket's clock) a token was last asked for."""
        return self._last


class ConnectLimiter:
    """Connection attempts per source address: ``limit`` per ``window`` seconds, refilled
    continuously. ``limit`` 0 disables it."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window = window
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._last_sweep = clock()

    def allow(self, address: str) -> bool:
        if self.limit <= 0:
            return True
        now = self._clock()
        if now - self._last_sweep > self.window:
            self._sweep(now)
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = TokenBucket(
                self.limit / self.window, self.limit, self._clock
            )
        return bucket.take()

    def _sweep(self, now: float) -> None:
        # A bucket idle for a whole window is full again: forget it to bound memory.
        self._last_sweep = now
        stale = [a for a, b in self._buckets.items() if now - b.last_used >= self.window]
        for a in stale:
            del self._buckets[a]


def month_period(now: float) -> tuple[int, int]:
    """The calendar month (UTC) containing ``now``, as unix seconds [start, end)."""
    d = datetime.fromtimestamp(now, UTC)
    start = datetime(d.year, d.month, 1, tzinfo=UTC)
    end = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp())


class FailureLimiter:
    """Failed authentications per source address in a sliding window of ``window`` seconds,
    for the admin API and the REST control plane; ``limit`` 0 disables it.

    ``retry_after`` is asked before a credential is compared, ``failed`` after a wrong one.
    Memory is bounded: at most ``limit`` timestamps per address, and addresses whose failures
    all left the window are dropped once more than ``max_addresses`` are tracked."""

    def __init__(self, limit: int, window: float, *, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may try now."""
        if self.limit <= 0:
            return None
        times = self._failures.get(address)
        if times is None or len(times) < self.limit:
            return None
        wait = times[0] + self.window - self._clock()
        return wait if wait > 0 else None

    def failed(self, address: str) -> bool:
        """Count one failure; True when it is the one that locks ``address`` out."""
        if self.limit <= 0:
            return False
        now = self._clock()
        times = self._failures.get(address)
        if times is None:
            if len(self._failures) >= self.max_addresses:
                self._sweep(now)
            times = self._failures[address] = deque(maxlen=self.limit)
        times.append(now)
        return len(times) == self.limit and times[0] + self.window > now

    def _sweep(self, now: float) -> None:
        stale = [a for a, t in self._failures.items() if t[-1] + self.window <= now]
        for a in stale:
            del self._failures[a]
        if len(self._failures) >= self.max_addresses:
            # Still full of live attackers: forget the oldest half rather than grow.
            by_age = sorted(self._failures, key=lambda a: self._failures[a][-1])
            for a in by_age[: len(by_age) // 2 + 1]:
                del self._failures[a]


@dataclass
class AppUsage:
    """Usage counters of one app in the current period."""

    period_start: int
    period_end: int
    messages: int = 0
    peak_connections: int = 0
    rejected_messages: int = 0
    refused_connections: int = 0
    """Connections refused with 4010 (over the concurrent-connection limit)."""

    def count(self, limit: int | None) -> bool:
        """Count one publish or send attempt; False when it is over ``limit`` (it is still
        counted, as the hosted service counts soft-dropped messages)."""
        self.messages += 1
        if limit is not None and self.messages > limit:
            self.rejected_messages += 1
            return False
        return True


@dataclass
class UsageMeter:
    """Counts messages (publish and send) per app per calendar month, and peak connections."""

    clock: Callable[[], float] = time.time
    apps: dict[str, AppUsage] = field(default_factory=dict)

    def usage(self, app_id: str) -> AppUsage:
        """The app's counters for the current period. The object of one app and period is
        never replaced, so a caller may keep it and count on it until its ``period_end``."""
        now = self.clock()
        u = self.apps.get(app_id)
        if u is None or now >= u.period_end:
            start, end = month_period(now)
            u = self.apps[app_id] = AppUsage(start, end)
        return u

    def count_message(self, app_id: str, limit: int | None) -> bool:
        """Count one publish or send attempt; False when it is over the app's quota (it is
        still counted, as the hosted service counts soft-dropped messages)."""
        return self.usage(app_id).count(limit)

    def note_connections(self, app_id: str, current: int) -> None:
        u = self.usage(app_id)
        if current > u.peak_connections:
            u.peak_connections = current


class ConnectionSlots:
    """Open connections per source address and in total, each under a cap (0: no cap).

    Counts the connections that have not become WebSockets: those still sending their first
    request head and those served by the HTTP side. An upgraded socket gives its slot back,
    since WebSockets have their own limits (per app, and the connect rate per address).
    """

    def __init__(self, per_address: int, total: int) -> None:
        self.per_address = per_address
        self.total = total
        self.open = 0
        self._by_address: dict[str, int] = {}

    def acquire(self, address: str) -> str | None:
        """Take a slot for ``address``; None when taken, else which cap is full
        (``"per_ip"`` or ``"total"``)."""
        if self.total > 0 and self.open >= self.total:
            return "total"
        held = self._by_address.get(address, 0)
        if self.per_address > 0 and held >= self.per_address:
            return "per_ip"
        self._by_address[address] = held + 1
        self.open += 1
        return None

    def release(self, address: str) -> None:
        held = self._by_address.get(address, 0)
        if held <= 0:
            return
        self.open -= 1
        if held == 1:
            del self._by_address[address]
        else:
            self._by_address[address] = held - 1

    def held_by(self, address: str) -> int:
        return self._by_address.get(address, 0)


def open_files_limit() -> int | None:
    """The process's soft limit on open file descriptors; None when unlimited or unknown."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    return int(soft)


def default_http_connection_cap() -> int:
    """Half the open-files limit (at least 16), so that HTTP clients can never take the file
    descriptors WebSockets, the store and the listening socket need. 0 (no cap) when the
    process may open any number of files."""
    limit = open_files_limit()
    if limit is None:
        return 0
    return max(16, limit // 2)
