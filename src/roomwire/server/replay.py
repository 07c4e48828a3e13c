"""Replay of missed broadcasts to unmodified official SDKs (docs/protocol.md, "roomwire
extension: history and recovery", Replay for the official SDKs).

The official SDKs know nothing of positions, so they cannot ask to recover. Instead the
operator names channels (the ``replay`` setting); when a connection authenticated by a JWT
``sub`` ends while subscribed to one, the node writes a *mark* in a ledger: "sub S of app A
was at position P on channel C, until T". A later fresh subscribe by the same sub to C before
T gets what was published after P, as ordinary ``message`` frames.

Pure bookkeeping, no sockets and no clock of its own (``now`` is passed in): the rules, the
ledger, and ``judge``, which decides what one return gets from what history still keeps. The
hub drives it (``Hub.note_drop``, ``Hub.replay_missed``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..protocol.history import Position
from ..protocol.patterns import PatternError, compile_pattern, covers
from .history import Entry, HistoryRule, RuleBook

__all__ = [
    "DEFAULT_MAX_MARKS",
    "MAX_REPLAY_WINDOW",
    "Ledger",
    "Mark",
    "Plan",
    "Replay",
    "ReplayRule",
    "judge",
    "parse_rules",
]

MAX_REPLAY_WINDOW = 86_400
DEFAULT_MAX_MARKS = 100_000
_RULE_KEYS = {"app", "channels", "window"}

REPLAYED = "replayed"
"""Outcomes of a return with a mark (``Replay.outcomes``, the ``roomwire_replays_total``
counter): every missed message was replayed (possibly none)."""
EPOCH = "epoch_changed"
"""The channel's history was lost since the drop (restart, forgotten idle channel)."""
GAP = "gap_lost"
"""Some missed messages were dropped already (``size``, ``ttl``, the node's memory budget)."""
TOO_LARGE = "too_large"
"""The missed messages weigh more than the socket's outbound bound allows in one go."""
EXPIRED = "expired"
"""The return came after the mark's window."""
EVICTED = "evicted"
"""A mark was dropped to keep the ledger within ``max_marks`` (its return gets nothing)."""
LOST = frozenset({EPOCH, GAP, TOO_LARGE})
OUTCOMES = (REPLAYED, EPOCH, GAP, TOO_LARGE, EXPIRED, EVICTED)


@dataclass(frozen=True, slots=True)
class ReplayRule:
    """One entry of the ``replay`` setting: a token identity of ``app`` (None: every app) that
    drops off a channel matching ``channels`` and subscribes again within ``window`` seconds
    gets the broadcasts it missed."""

    app: str | None
    channels: str
    window: float


def _covering_history(rule: ReplayRule, history: Sequence[HistoryRule]) -> HistoryRule | None:
    """The first history rule that keeps history on every channel ``rule`` covers: one for
    the same apps (an app-wide replay rule needs an app-wide history rule)."""
    for h in history:
        if (h.app is None or h.app == rule.app) and covers(h.channels, rule.channels):
            return h
    return None


def parse_rules(raw: Iterable[object], history: Sequence[HistoryRule]) -> list[ReplayRule]:
    """The ``replay`` setting as rules, refused with a sentence naming the rule and field.
    ``history``: the parsed ``history`` setting; a replay rule needs history on its channels
    for at least its window."""
    rules: list[ReplayRule] = []
    for n, rule in enumerate(raw, 1):
        if not isinstance(rule, dict):
            raise ValueError(f"replay rule {n} must be a table/object with channels and window")
        unknown = set(rule) - _RULE_KEYS
        if unknown:
            raise ValueError(f"replay rule {n}: unknown field(s) {', '.join(sorted(unknown))} "
                             "(known: app, channels, window)")
        app = rule.get("app")
        if app is not None and (not isinstance(app, str) or not app):
            raise ValueError(f"replay rule {n}: 'app' must be an app id")
        channels = rule.get("channels")
        if not isinstance(channels, str) or not channels:
            raise ValueError(f"replay rule {n}: 'channels' must be a channel pattern (the "
                             "replay of every channel is never implied)")
        try:
            compile_pattern(channels)
        except PatternError as exc:
            raise ValueError(f"replay rule {n}: 'channels' is not a valid pattern: {exc}"
                             ) from None
        window = rule.get("window")
        if (isinstance(window, bool) or not isinstance(window, int | float)
                or not 1 <= window <= MAX_REPLAY_WINDOW):
            raise ValueError(f"replay rule {n}: 'window' must be a number of seconds from 1 to "
                             f"{MAX_REPLAY_WINDOW}, not {window!r}")
        parsed = ReplayRule(app, channels, float(window))
        kept = _covering_history(parsed, history)
        if kept is None:
            raise ValueError(
                f"replay rule {n}: replay needs history on its channels, and no history rule "
                f"covers {channels!r}" + (f" for app {app!r}" if app else " for every app")
                + ": add a [[history]] rule whose channels cover it")
        if kept.ttl < parsed.window:
            raise ValueError(
                f"replay rule {n}: 'window' ({window:g} s) is longer than the ttl of the "
                f"history rule covering {channels!r} ({kept.ttl:g} s): the messages would be "
                "gone before the window ends; raise the history ttl or shorten the window")
        rules.append(parsed)
    return rules


@dataclass(slots=True)
class Mark:
    """Where a sub stood on a channel when its connection(s) ended."""

    position: Position
    until: float
    pending: int = 1
    """Connections of the sub that ended and have not subscribed again yet."""


Key = tuple[str, str, str]
"""(app id, sub, channel)."""


class Ledger:
    """Marks by (app, sub, channel), at most ``max_marks``: past it the mark written least
    recently goes (counted as ``evicted``)."""

    def __init__(self, max_marks: int = DEFAULT_MAX_MARKS) -> None:
        self.max_marks = max_marks
        self.marks: dict[Key, Mark] = {}
        """Least recently written first (the eviction order)."""

    def __len__(self) -> int:
        return len(self.marks)

    def dropped(self, key: Key, position: Position, now: float, window: float) -> int:
        """A connection of the sub ended at ``position``; returns how many marks were evicted
        to make room.

        Several connections of one sub share the mark: it keeps the earliest position of the
        current epoch, so whichever returns first gets everything any of them missed (no
        message lost; one that dropped later sees again what it saw between the two drops),
        and counts the connections still to come back, so each of them gets the replay. A
        mark of an older epoch is superseded: what it pointed at is gone anyway."""
        marks = self.marks
        mark = marks.pop(key, None)
        if mark is not None and mark.until >= now:
            if mark.position.epoch == position.epoch and mark.position.offset <= position.offset:
                position = mark.position
            marks[key] = Mark(position, now + window, mark.pending + 1)
            return 0
        evicted = 0
        while len(marks) >= self.max_marks:
            del marks[next(iter(marks))]
            evicted += 1
        marks[key] = Mark(position, now + window)
        return evicted

    def take(self, key: Key, now: float) -> Mark | None:
        """The mark a returning connection of the sub is owed (one of ``pending``), or None;
        an expired mark is removed and returned too (the caller sees ``until < now``)."""
        mark = self.marks.get(key)
        if mark is None:
            return None
        if mark.until < now or mark.pending <= 1:
            del self.marks[key]
        else:
            mark.pending -= 1
        return mark

    def sweep(self, now: float) -> int:
        """Forget expired marks; returns how many."""
        gone = [k for k, m in self.marks.items() if m.until < now]
        for k in gone:
            del self.marks[k]
        return len(gone)


class Plan(NamedTuple):
    """What one return gets: the outcome (``REPLAYED`` or why not) and the entries."""

    outcome: str
    replay: Sequence[Entry]


def judge(since: Position, current: Position | None, missed: Sequence[Entry],
          max_bytes: int | None = None, *, more: bool = False,
          horizon: float | None = None) -> Plan:
    """What a return gets, from the mark's position ``since``, the channel's position now
    (None: it keeps no history any more) and the kept entries after ``since.offset``, oldest
    first (as a history read of "entries after" gives them, from any store). Everything
    missed, or nothing: an official SDK cannot be told that a part is missing, so a partial
    replay would pass for a complete one. ``more``: the read stopped at its byte bound
    (Redis); ``horizon``: entries published at or before it have expired (a store that
    returns them anyway; the nodes' clocks may differ a little, so each one is judged)."""
    if current is None or current.epoch != since.epoch or since.offset > current.offset:
        return Plan(EPOCH, ())
    expected = current.offset - since.offset
    if expected == 0:
        return Plan(REPLAYED, ())
    if more:
        return Plan(TOO_LARGE, ())
    if (len(missed) != expected or missed[0].offset != since.offset + 1
            or (horizon is not None and any(e.time <= horizon for e in missed))):
        return Plan(GAP, ())
    if max_bytes is not None and sum(e.size for e in missed) > max_bytes:
        return Plan(TOO_LARGE, ())
    return Plan(REPLAYED, missed)


class Replay:
    """The ``replay`` rules of a node, its ledger, and what returns got (``outcomes``)."""

    def __init__(self, rules: list[ReplayRule], max_marks: int = DEFAULT_MAX_MARKS) -> None:
        self.rules = rules
        self.ledger = Ledger(max_marks)
        self.outcomes: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))
        """Every outcome from the start, at 0: a rate over a series that appears late
        misses its first increments."""
        self._book = RuleBook(rules)

    def rule(self, app_id: str, channel: str) -> ReplayRule | None:
        """The first rule covering (app, channel), cached: the same few come back."""
        return self._book.lookup((app_id, channel))

    def dropped(self, key: Key, position: Position, now: float, window: float) -> None:
        evicted = self.ledger.dropped(key, position, now, window)
        if evicted:
            self.outcomes[EVICTED] += evicted

    def take(self, key: Key, now: float) -> Mark | None:
        """The live mark a return is owed, or None (an expired one is counted)."""
        mark = self.ledger.take(key, now)
        if mark is not None and mark.until < now:
            self.outcomes[EXPIRED] += 1
            return None
        return mark

