"""The pure parts of the replay to official SDKs (server/replay.py): rules, the ledger of
drops, and what a return gets from what history still keeps."""

from __future__ import annotations

import pytest

from roomwire.protocol.history import Position
from roomwire.server.history import Entry, HistoryRule
from roomwire.server.history import parse_rules as parse_history
from roomwire.server.replay import (
    EPOCH,
    EVICTED,
    EXPIRED,
    GAP,
    REPLAYED,
    TOO_LARGE,
    Ledger,
    Replay,
    ReplayRule,
    judge,
    parse_rules,
)

HISTORY = parse_history([{"app": "app_a", "channels": "a/**", "size": 10, "ttl": 30},
                         {"channels": "chat/**", "size": 100, "ttl": 300}])


def _entries(first: int, last: int, size: int = 10) -> list[Entry]:
    return [Entry(o, 0.0, b"%d" % o, b'"s"', None, size) for o in range(first, last + 1)]


@pytest.mark.parametrize(("since", "current", "missed", "max_bytes", "outcome", "offsets"), [
    # Nothing published since the drop: replayed, with nothing to replay.
    (Position("e", 5), Position("e", 5), [], None, REPLAYED, []),
    # Everything after the mark is kept: all of it, in order.
    (Position("e", 5), Position("e", 8), _entries(6, 8), None, REPLAYED, [6, 7, 8]),
    (Position("e", 0), Position("e", 3), _entries(1, 3), None, REPLAYED, [1, 2, 3]),
    # The ring overflowed (6 is gone) or the ttl dropped the oldest: nothing, not a part.
    (Position("e", 5), Position("e", 8), _entries(7, 8), None, GAP, []),
    (Position("e", 5), Position("e", 8), [], None, GAP, []),
    # A hole in the middle (the node budget dropped some): nothing.
    (Position("e", 5), Position("e", 8), [*_entries(6, 6), *_entries(8, 8)], None, GAP, []),
    # The history was lost since the drop (restart, forgotten channel): nothing.
    (Position("e", 5), Position("f", 8), _entries(6, 8), None, EPOCH, []),
    (Position("e", 5), None, [], None, EPOCH, []),
    (Position("e", 9), Position("e", 8), [], None, EPOCH, []),
    # Heavier than the socket's share: nothing; at the bound: everything.
    (Position("e", 5), Position("e", 8), _entries(6, 8, size=10), 29, TOO_LARGE, []),
    (Position("e", 5), Position("e", 8), _entries(6, 8, size=10), 30, REPLAYED, [6, 7, 8]),
])
def test_what_a_return_gets(since: Position, current: Position | None, missed: list[Entry],
                            max_bytes: int | None, outcome: str, offsets: list[int]) -> None:
    plan = judge(since, current, missed, max_bytes)
    assert (plan.outcome, [e.offset for e in plan.replay]) == (outcome, offsets)


def test_a_read_from_redis_stopped_at_its_bound_or_with_expired_entries_replays_nothing(
        ) -> None:
    since, now = Position("e", 5), Position("e", 8)
    kept = [Entry(o, float(o), b"1", b'"s"', None, 10) for o in (6, 7, 8)]
    assert judge(since, now, kept[:2], more=True).outcome == TOO_LARGE
    assert judge(since, now, kept, horizon=6.0).outcome == GAP
    assert judge(since, now, kept, horizon=5.9).outcome == REPLAYED
    assert judge(since, Position("e", 5), [], more=True).outcome == REPLAYED


def test_a_drop_is_owed_once_within_its_window() -> None:
    ledger = Ledger()
    key = ("app", "bob", "chat/a")
    assert ledger.dropped(key, Position("e", 4), now=100.0, window=10.0) == 0
    assert ledger.take(("app", "bob", "chat/b"), 101.0) is None
    assert ledger.take(("app", "eve", "chat/a"), 101.0) is None
    mark = ledger.take(key, 105.0)
    assert mark is not None and mark.position == Position("e", 4) and mark.until == 110.0
    assert ledger.take(key, 105.0) is None  # consumed
    assert len(ledger) == 0


def test_past_the_window_a_mark_is_expired_and_the_sweep_forgets_it() -> None:
    replay = Replay([ReplayRule(None, "chat/**", 10.0)])
    replay.dropped(("app", "bob", "chat/a"), Position("e", 4), 100.0, 10.0)
    replay.dropped(("app", "bob", "chat/b"), Position("e", 4), 100.0, 10.0)
    assert replay.take(("app", "bob", "chat/a"), 110.5) is None
    assert replay.outcomes[EXPIRED] == 1
    assert len(replay.ledger) == 1
    assert replay.ledger.sweep(109.0) == 0
    assert replay.ledger.sweep(110.5) == 1 and len(replay.ledger) == 0


@pytest.mark.parametrize(("drops", "takes"), [
    # Two connections of one sub dropped at 4 then 9: each return gets it from 4 (no message
    # lost whichever comes back first), then the mark is gone.
    ([("e", 4), ("e", 9)], [4, 4, None]),
    ([("e", 9), ("e", 4)], [4, 4, None]),
    # A drop in a new epoch supersedes the mark of a lost history.
    ([("e", 4), ("f", 2)], [2, 2, None]),
])
def test_several_connections_of_one_sub(drops: list[tuple[str, int]],
                                        takes: list[int | None]) -> None:
    ledger = Ledger()
    key = ("app", "bob", "chat/a")
    for n, (epoch, offset) in enumerate(drops):
        ledger.dropped(key, Position(epoch, offset), now=100.0 + n, window=10.0)
    got = []
    for _ in takes:
        mark = ledger.take(key, 105.0)
        got.append(None if mark is None else mark.position.offset)
    assert got == takes


def test_the_ledger_is_bounded_and_drops_the_least_recently_written() -> None:
    replay = Replay([], max_marks=3)
    for n in range(5):
        replay.dropped(("app", f"u{n}", "chat/a"), Position("e", n), 100.0, 10.0)
    assert len(replay.ledger) == 3 and replay.outcomes[EVICTED] == 2
    assert replay.take(("app", "u0", "chat/a"), 101.0) is None
    assert replay.take(("app", "u1", "chat/a"), 101.0) is None
    mark = replay.take(("app", "u4", "chat/a"), 101.0)
    assert mark is not None and mark.position.offset == 4
    # A second drop of a sub already marked does not take room.
    replay.dropped(("app", "u2", "chat/a"), Position("e", 7), 102.0, 10.0)
    assert len(replay.ledger) == 2 and replay.outcomes[EVICTED] == 2


def test_first_matching_rule_wins_and_apps_are_told_apart() -> None:
    replay = Replay(parse_rules([{"app": "app_a", "channels": "a/x/**", "window": 5},
                                 {"channels": "chat/**", "window": 60}], HISTORY))
    assert replay.rule("app_a", "a/x/1") == ReplayRule("app_a", "a/x/**", 5.0)
    assert replay.rule("app_b", "a/x/1") is None
    assert replay.rule("app_b", "chat/room") == ReplayRule(None, "chat/**", 60.0)
    assert replay.rule("app_a", "lobby") is None


@pytest.mark.parametrize(("raw", "problem"), [
    (["chat/**"], "replay rule 1 must be a table"),
    ([{"channels": "chat/**", "window": 5, "size": 3}], "unknown field(s) size"),
    ([{"window": 5}], "'channels' must be a channel pattern"),
    ([{"channels": "", "window": 5}], "'channels' must be a channel pattern"),
    ([{"channels": "chat/a\\q", "window": 5}], "'channels' is not a valid pattern"),
    ([{"channels": "chat/**"}], "'window' must be a number of seconds from 1 to 86400"),
    ([{"channels": "chat/**", "window": 0}], "'window' must be a number"),
    ([{"channels": "chat/**", "window": True}], "'window' must be a number"),
    ([{"channels": "chat/**", "window": "60"}], "'window' must be a number"),
    ([{"app": "", "channels": "chat/**", "window": 5}], "'app' must be an app id"),
    # No history on those channels.
    ([{"channels": "lobby/**", "window": 5}], "replay needs history on its channels, and no "
                                               "history rule covers 'lobby/**' for every app"),
    # History on part of them only.
    ([{"channels": "**", "window": 5}], "no history rule covers '**'"),
    # History for one app only, replay for every app.
    ([{"channels": "a/x", "window": 5}], "no history rule covers 'a/x' for every app"),
    # Longer than the history keeps the messages.
    ([{"app": "app_a", "channels": "a/x", "window": 31}],
     "'window' (31 s) is longer than the ttl of the history rule covering 'a/x' (30 s)"),
    ([{"channels": "chat/**", "window": 5}, {"channels": "zz", "window": 5}], "replay rule 2"),
])
def test_bad_rules_are_refused_with_a_sentence(raw: list[object], problem: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_rules(raw, HISTORY)
    assert problem in str(exc.value)


def test_rules_parse() -> None:
    assert parse_rules([{"app": "app_a", "channels": "a/x", "window": 30},
                        {"channels": "chat/*", "window": 1.5}], HISTORY) == [
        ReplayRule("app_a", "a/x", 30.0), ReplayRule(None, "chat/*", 1.5)]
    assert parse_rules([], []) == []
    assert isinstance(HISTORY[0], HistoryRule)
