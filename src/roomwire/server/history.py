"""Channel history of one node, and the recovery decision (docs/protocol.md, "roomwire
extension: history and recovery").

Pure bookkeeping, no sockets and no clock of its own (``now`` is passed in): a bounded ring
per channel whose publications get an offset that only grows, under an epoch that names this
run of the channel's history. The hub appends on publish and asks ``recover`` on an opted-in
subscribe; ``sweep`` forgets idle channels. The rules come from the ``history`` setting of the
server config (``parse_rules``); a channel no rule covers keeps nothing and costs one cached
lookup per publish.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from ..protocol.frames import encode_json
from ..protocol.history import Position
from ..protocol.patterns import PatternError, compile_pattern, matches

__all__ = [
    "MAX_HISTORY_SIZE",
    "MAX_HISTORY_TTL",
    "Entry",
    "History",
    "HistoryRead",
    "HistoryRule",
    "Recovery",
    "RuleBook",
    "Stream",
    "complete_read",
    "decide",
    "decide_read",
    "new_epoch",
    "parse_rules",
]

MAX_HISTORY_SIZE = 10_000
DEFAULT_MAX_BYTES = 64 * 2**20
ENTRY_OVERHEAD = 120
"""Bytes an entry costs beyond its payloads (object, deque slot, order slot), roughly."""
MAX_HISTORY_TTL = 7 * 86_400
_RULE_CACHE_MAX = 4096
_RULE_KEYS = {"app", "channels", "size", "ttl"}


@dataclass(frozen=True, slots=True)
class HistoryRule:
    """One entry of the ``history`` setting: channels of ``app`` (None: every app) matching
    ``channels`` keep ``size`` messages for ``ttl`` seconds."""

    app: str | None
    channels: str
    size: int
    ttl: float


def _number(rule: dict[str, Any], key: str, n: int, low: float, high: float) -> float:
    value = rule.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"history rule {n}: {key!r} must be a number from {low:g} to {high:g}, "
                         f"not {value!r}")
    return value


def parse_rules(raw: Iterable[object]) -> list[HistoryRule]:
    """The ``history`` setting as rules, refused with a sentence naming the rule and field."""
    rules: list[HistoryRule] = []
    for n, rule in enumerate(raw, 1):
        if not isinstance(rule, dict):
            raise ValueError(f"history rule {n} must be a table/object with size and ttl")
        unknown = set(rule) - _RULE_KEYS
        if unknown:
            raise ValueError(f"history rule {n}: unknown field(s) {', '.join(sorted(unknown))} "
                             "(known: app, channels, size, ttl)")
        app = rule.get("app")
        if app is not None and (not isinstance(app, str) or not app):
            raise ValueError(f"history rule {n}: 'app' must be an app id")
        channels = rule.get("channels", "**")
        if not isinstance(channels, str) or not channels:
            raise ValueError(f"history rule {n}: 'channels' must be a channel pattern")
        try:
            compile_pattern(channels)
        except PatternError as exc:
            raise ValueError(f"history rule {n}: 'channels' is not a valid pattern: {exc}"
                             ) from None
        size = _number(rule, "size", n, 1, MAX_HISTORY_SIZE)
        if size != int(size):
            raise ValueError(f"history rule {n}: 'size' must be a whole number")
        ttl = _number(rule, "ttl", n, 1, MAX_HISTORY_TTL)
        rules.append(HistoryRule(app, channels, int(size), float(ttl)))
    return rules


@dataclass(slots=True)
class Entry:
    """One kept publication, in the encoded parts the hub fans out."""

    offset: int
    time: float
    data: bytes
    sender_json: bytes
    sender_metadata: bytes | None
    size: int = 0
    """What it costs the node's budget (``entry_bytes``)."""


def entry_bytes(entry: Entry) -> int:
    """What an entry costs the node's budget: its payloads and ``ENTRY_OVERHEAD``."""
    md = entry.sender_metadata
    return (len(entry.data) + len(entry.sender_json) + (len(md) if md is not None else 0)
            + ENTRY_OVERHEAD)


@dataclass(slots=True)
class Budget:
    """Bytes held by every stream of a node (``History.max_bytes`` bounds it)."""

    used: int = 0
    count: int = 0
    """Entries kept."""

    def drop(self, entry: Entry) -> None:
        self.used -= entry.size
        self.count -= 1


@dataclass(slots=True)
class Stream:
    """The history of one channel: entries oldest first, ``top`` the last offset given."""

    epoch: str
    size: int
    ttl: float
    touched: float
    """Last publish or opted-in subscribe: an idle stream is forgotten ``ttl`` after it."""
    top: int = 0
    entries: deque[Entry] = field(default_factory=deque)
    epoch_json: bytes = b""
    budget: Budget = field(default_factory=Budget)

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.top)

    def trim(self, now: float) -> None:
        """Drop entries older than ``ttl`` (the ring's size bound holds on append)."""
        horizon = now - self.ttl
        entries = self.entries
        while entries and entries[0].time <= horizon:
            self.budget.drop(entries.popleft())

    def append(self, now: float, data: bytes, sender_json: bytes,
               sender_metadata: bytes | None) -> int:
        self.top += 1
        self.touched = now
        entries = self.entries
        if len(entries) >= self.size:
            self.budget.drop(entries.popleft())
        size = (len(data) + len(sender_json) + ENTRY_OVERHEAD
                + (len(sender_metadata) if sender_metadata is not None else 0))
        entries.append(Entry(self.top, now, data, sender_json, sender_metadata, size))
        budget = self.budget
        budget.used += size
        budget.count += 1
        return self.top

    def drop_oldest(self) -> None:
        self.budget.drop(self.entries.popleft())

    def after(self, offset: int) -> list[Entry]:
        """Kept entries with an offset above ``offset``, oldest first."""
        entries = self.entries
        if not entries or offset >= entries[-1].offset:
            return []
        skip = offset - entries[0].offset + 1
        if skip <= 0:
            return list(entries)
        return [entries[i] for i in range(skip, len(entries))]

    def complete_after(self, offset: int) -> bool:
        """Whether every publication after ``offset`` (of this epoch) is still kept."""
        if offset >= self.top:
            return True
        return bool(self.entries) and self.entries[0].offset <= offset + 1


class Recovery(NamedTuple):
    recovered: bool
    replay: list[Entry]


def decide(stream: Stream, client: Position, now: float, max_bytes: int | None = None
           ) -> Recovery:
    """What a resubscribe from ``client`` gets: every missed entry when all are still kept
    in the same epoch (and, with ``max_bytes``, weigh no more than that together), else
    ``recovered`` False and nothing (the app resyncs). The byte bound keeps a replay inside
    the socket's outbound queue: a larger one would close the socket as a slow consumer, and
    the client would come back for the same replay."""
    stream.trim(now)
    if client.epoch != stream.epoch or client.offset > stream.top:
        return Recovery(False, [])
    if not stream.complete_after(client.offset):
        return Recovery(False, [])
    replay = stream.after(client.offset)
    if max_bytes is not None and sum(e.size for e in replay) > max_bytes:
        return Recovery(False, [])
    return Recovery(True, replay)


def new_epoch() -> str:
    """A fresh epoch: 8 URL-safe characters."""
    return secrets.token_urlsafe(6)


class ChannelRule(Protocol):
    """What a per-channel setting's rule has: an app (None: every app) and a pattern."""

    @property
    def app(self) -> str | None: ...

    @property
    def channels(self) -> str: ...


R = TypeVar("R", bound=ChannelRule)


class RuleBook(Generic[R]):
    """Which rule covers an (app, channel), the first that matches, cached: publishes repeat
    the same few. A node's ``History``, the cluster's history (``broker/redis_history.py``)
    and the ``replay`` setting (``server/replay.py``) each keep one."""

    def __init__(self, rules: list[R]) -> None:
        self.rules = rules
        self._cache: dict[tuple[str, str], R | None] = {}

    def rule(self, app_id: str, channel: str) -> R | None:
        return self.lookup((app_id, channel))

    def lookup(self, key: tuple[str, str]) -> R | None:
        cache = self._cache
        if key in cache:
            return cache[key]
        app_id, channel = key
        found = None
        for rule in self.rules:
            if (rule.app is None or rule.app == app_id) and matches(rule.channels, channel):
                found = rule
                break
        if len(cache) >= _RULE_CACHE_MAX:
            cache.clear()
        cache[key] = found
        return found


@dataclass(frozen=True, slots=True)
class HistoryRead:
    """What one read of a channel's history in Redis found (the cluster's history; the
    driver is ``broker/redis_history.py``)."""

    epoch: str | None
    """None: the channel has no history there (nothing published, or it was lost) and the
    read was not allowed to start one."""
    top: int
    """The last offset given in ``epoch`` (0: none yet)."""
    entries: list[Entry]
    """Kept entries after the read's offset, in the order asked for (expired ones included:
    ``decide_read`` and ``complete_read`` judge them)."""
    anchor_time: float | None
    """Publication time of the entry right after the read's offset, if it is still kept:
    whether the history is complete from there."""
    more: bool = False
    """The read stopped at its byte bound: more entries follow."""


def complete_read(read: HistoryRead, after: int, now: float, ttl: float) -> bool:
    """Whether every publication after ``after`` is still kept (and not expired)."""
    if after >= read.top:
        return True
    return read.anchor_time is not None and read.anchor_time > now - ttl


def decide_read(read: HistoryRead, client: Position, now: float, ttl: float) -> Recovery:
    """``decide`` for a read from Redis of the entries after ``client.offset`` (bounded in
    bytes by the reader: ``more`` means over the bound, so no replay)."""
    if read.epoch is None or client.epoch != read.epoch or client.offset > read.top:
        return Recovery(False, [])
    if client.offset >= read.top:
        return Recovery(True, [])
    if read.more or not complete_read(read, client.offset, now, ttl):
        return Recovery(False, [])
    replay = read.entries
    horizon = now - ttl
    # Offsets with no hole, none expired (the nodes' clocks may disagree a little, so every
    # entry is judged, not only the first).
    if (len(replay) != read.top - client.offset
            or any(e.offset != client.offset + 1 + i or e.time <= horizon
                   for i, e in enumerate(replay))):
        return Recovery(False, [])
    return Recovery(True, replay)


class History:
    """Every channel history of one node."""

    def __init__(self, rules: list[HistoryRule], new_epoch: Callable[[], str] = new_epoch,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.rules = rules
        self.max_bytes = max_bytes
        """Past it, the channels published to least recently lose their oldest entries first:
        publishers of many channels cannot grow the node's memory without bound (their
        subscribers then get ``recovered: false``, as after an overflow)."""
        self.budget = Budget()
        self._active: dict[tuple[str, str], Stream] = {}
        """Streams by last publication, least recent first (the eviction order)."""
        self._new_epoch = new_epoch
        self._rules = RuleBook(rules)
        self.streams: dict[tuple[str, str], Stream] = {}

    def rule(self, app_id: str, channel: str) -> HistoryRule | None:
        """The first rule covering (app, channel), cached: publishes repeat the same few."""
        return self._rules.lookup((app_id, channel))

    def stream(self, app_id: str, channel: str, now: float, create: bool = True
               ) -> Stream | None:
        """The channel's stream (created with a fresh epoch when ``create``); None when no
        rule covers the channel."""
        key = (app_id, channel)
        stream = self.streams.get(key)
        if stream is not None:
            if stream.touched + stream.ttl < now and not stream.entries:
                # Forgotten (as ``sweep`` would have): a new epoch, offsets from 1 again.
                del self.streams[key]
                self._active.pop(key, None)
            else:
                return stream
        if not create:
            return None
        rule = self.rule(app_id, channel)
        if rule is None:
            return None
        epoch = self._new_epoch()
        stream = Stream(epoch, rule.size, rule.ttl, now, epoch_json=encode_json(epoch),
                        budget=self.budget)
        self.streams[key] = stream
        return stream

    def append(self, app_id: str, channel: str, now: float, data: bytes, sender_json: bytes,
               sender_metadata: bytes | None) -> Stream | None:
        """Record a publication; the stream (its ``top`` is the new offset), or None when the
        channel keeps no history."""
        key = (app_id, channel)
        stream = self.streams.get(key)
        if stream is None or (not stream.entries and stream.touched + stream.ttl < now):
            if self._rules.lookup(key) is None:
                return None
            stream = self.stream(app_id, channel, now)
            assert stream is not None
        entries = stream.entries
        if entries and entries[0].time <= now - stream.ttl:
            stream.trim(now)
        stream.append(now, data, sender_json, sender_metadata)
        active = self._active
        active.pop(key, None)
        active[key] = stream
        if self.budget.used > self.max_bytes:
            self._evict()
        return stream

    def _evict(self) -> None:
        """Drop entries until the budget holds again: the oldest of the channel published to
        least recently first."""
        active = self._active
        while self.budget.used > self.max_bytes and active:
            key = next(iter(active))
            stream = active[key]
            if stream.entries:
                stream.drop_oldest()
            if not stream.entries:
                del active[key]

    def sweep(self, now: float) -> int:
        """Trim expired entries and forget streams idle for their ``ttl`` with nothing kept;
        returns how many were forgotten."""
        gone = []
        for key, stream in self.streams.items():
            stream.trim(now)
            if not stream.entries and stream.touched + stream.ttl < now:
                gone.append(key)
        for key in gone:
            del self.streams[key]
            self._active.pop(key, None)
        return len(gone)
