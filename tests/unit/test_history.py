"""The pure history core: rings, offsets, epochs, TTL, and the recovery decision (table)."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from roomwire.protocol import frames
from roomwire.protocol.history import Position, parse_position, recover_problem
from roomwire.server.broker.redis_history import Renewals, parse_read, renew_every
from roomwire.server.broker.wire import Posted, decode, history_entry, parse_entry, posted_head
from roomwire.server.history import (
    ENTRY_OVERHEAD,
    Entry,
    History,
    HistoryRead,
    HistoryRule,
    complete_read,
    decide,
    decide_read,
    parse_rules,
)


def _history(size: int = 5, ttl: float = 60.0, channels: str = "chat/**",
             app: str | None = None) -> History:
    counter = itertools.count(1)
    return History([HistoryRule(app, channels, size, ttl)], new_epoch=lambda: f"e{next(counter)}")


def _publish(h: History, n: int, now: float = 0.0, channel: str = "chat/a") -> None:
    for i in range(n):
        h.append("app", channel, now, frames.encode_json(i), b'"p"', None)


def test_offsets_grow_by_one_and_the_ring_keeps_the_newest() -> None:
    h = _history(size=3)
    _publish(h, 5)
    stream = h.stream("app", "chat/a", 0.0)
    assert stream is not None
    assert stream.position == Position("e1", 5)
    assert [e.offset for e in stream.entries] == [3, 4, 5]
    assert [e.data for e in stream.entries] == [b"2", b"3", b"4"]


def test_channels_no_rule_covers_keep_nothing() -> None:
    h = _history(channels="chat/**", app="app")
    assert h.append("app", "other/a", 0.0, b"1", b'"p"', None) is None
    assert h.append("other-app", "chat/a", 0.0, b"1", b'"p"', None) is None
    assert h.stream("app", "other/a", 0.0) is None
    assert h.streams == {}


def test_first_matching_rule_wins() -> None:
    h = History([HistoryRule(None, "chat/vip/*", 50, 10.0), HistoryRule(None, "chat/**", 2, 99.0)])
    assert h.rule("a", "chat/vip/x") == HistoryRule(None, "chat/vip/*", 50, 10.0)
    assert h.rule("a", "chat/x") == HistoryRule(None, "chat/**", 2, 99.0)
    assert h.rule("a", "lobby") is None


@pytest.mark.parametrize(
    ("published", "size", "client", "elapsed", "recovered", "replayed"),
    [
        # nothing missed
        (5, 10, Position("e1", 5), 0, True, []),
        # the missed tail, in order
        (5, 10, Position("e1", 2), 0, True, [3, 4, 5]),
        # from the very start of the epoch
        (5, 10, Position("e1", 0), 0, True, [1, 2, 3, 4, 5]),
        # the oldest missed one is exactly the oldest kept
        (8, 5, Position("e1", 3), 0, True, [4, 5, 6, 7, 8]),
        # overflow: one missed message was pushed out of the ring
        (8, 5, Position("e1", 2), 0, False, []),
        # another epoch (the history was lost)
        (5, 10, Position("old", 2), 0, False, []),
        # an offset the server never gave
        (5, 10, Position("e1", 6), 0, False, []),
        # TTL: everything missed has expired
        (5, 10, Position("e1", 2), 61, False, []),
        # TTL, but nothing was missed: still recovered
        (5, 10, Position("e1", 5), 61, True, []),
    ],
)
def test_recovery_decision(published: int, size: int, client: Position, elapsed: float,
                           recovered: bool, replayed: list[int]) -> None:
    h = _history(size=size, ttl=60.0)
    _publish(h, published, now=0.0)
    stream = h.stream("app", "chat/a", 0.0)
    assert stream is not None
    got = decide(stream, client, now=elapsed)
    assert got.recovered is recovered
    assert [e.offset for e in got.replay] == replayed


def test_ttl_drops_only_the_expired_part() -> None:
    h = _history(size=10, ttl=60.0)
    _publish(h, 3, now=0.0)
    _publish(h, 2, now=30.0)
    stream = h.stream("app", "chat/a", 30.0)
    assert stream is not None
    assert decide(stream, Position("e1", 3), now=61.0) == (True, list(stream.entries))
    assert [e.offset for e in stream.entries] == [4, 5]
    assert decide(stream, Position("e1", 2), now=61.0).recovered is False


def test_an_idle_stream_is_forgotten_and_the_next_one_has_a_new_epoch() -> None:
    h = _history(size=10, ttl=60.0)
    _publish(h, 3, now=0.0)
    assert h.sweep(30.0) == 0
    assert h.sweep(61.0) == 1
    _publish(h, 1, now=62.0)
    stream = h.stream("app", "chat/a", 62.0)
    assert stream is not None and stream.position == Position("e2", 1)
    assert decide(stream, Position("e1", 3), now=62.0).recovered is False


def test_a_stream_with_kept_entries_survives_the_sweep() -> None:
    h = _history(size=10, ttl=60.0)
    _publish(h, 1, now=0.0)
    _publish(h, 1, now=50.0)
    assert h.sweep(61.0) == 0
    stream = h.stream("app", "chat/a", 61.0, create=False)
    assert stream is not None and stream.epoch == "e1"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ([{"size": 10}], "'ttl'"),
        ([{"ttl": 10}], "'size'"),
        ([{"size": 0, "ttl": 10}], "'size'"),
        ([{"size": 10.5, "ttl": 10}], "whole number"),
        ([{"size": 10, "ttl": 10, "channel": "x"}], "unknown field"),
        ([{"size": 10, "ttl": 10, "channels": "a\\q"}], "not a valid pattern"),
        ([{"size": 10, "ttl": 10, "app": ""}], "'app'"),
        (["chat/**"], "table/object"),
        ([{"size": True, "ttl": 10}], "'size'"),
    ],
)
def test_bad_rules_are_refused_with_a_sentence(raw: list[object], problem: str) -> None:
    with pytest.raises(ValueError, match="history rule 1") as info:
        parse_rules(raw)
    assert problem in str(info.value)


def test_rules_parse_with_defaults() -> None:
    assert parse_rules([{"size": 10, "ttl": 30}, {"app": "a1", "channels": "x/*", "size": 1,
                                                  "ttl": 1.5}]) == [
        HistoryRule(None, "**", 10, 30.0), HistoryRule("a1", "x/*", 1, 1.5)]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ({"epoch": "e1", "offset": 0}, True),
        ({"epoch": "e1", "offset": 12}, True),
        ({"epoch": "", "offset": 1}, False),
        ({"epoch": "x" * 65, "offset": 1}, False),
        ({"epoch": "e1", "offset": -1}, False),
        ({"epoch": "e1", "offset": True}, False),
        ({"epoch": "e1", "offset": 1.5}, False),
        ({"epoch": "e1", "offset": 2**60}, False),
        ({"epoch": 3, "offset": 1}, False),
        ("e1:3", False),
        (None, False),
    ],
)
def test_recover_field_validation(value: object, ok: bool) -> None:
    got = recover_problem(value)
    assert isinstance(got, Position) is ok, got


def test_positioned_message_frame_is_the_plain_one_plus_the_position() -> None:
    from roomwire.protocol.history import encode_position_suffix

    plain = frames.encode_message(b'"c"', b'"p"', b'{"a":1}', b'{"n":1}')
    at = frames.encode_message_at(b'"c"', b'"p"', b'{"a":1}', b'{"n":1}',
                                  encode_position_suffix(7, b'"e1"'))
    decoded = frames.parse_server_frame(at)
    assert isinstance(decoded, frames.Message)
    assert decoded.position == Position("e1", 7)
    assert decoded.sender_metadata == {"n": 1}
    assert at.startswith(plain[:-1])
    assert parse_position({"offset": 7, "epoch": "e1"}) == Position("e1", 7)


def test_the_node_budget_drops_from_the_least_recently_published_channel() -> None:
    from roomwire.server.history import ENTRY_OVERHEAD

    one = len(b"0") + len(b'"p"') + ENTRY_OVERHEAD
    h = History([HistoryRule(None, "**", 100, 60.0)], new_epoch=lambda: "e",
                max_bytes=3 * one)
    _publish(h, 3, channel="a")
    _publish(h, 2, channel="b")  # two of a's go (a was published to before b)
    a = h.stream("app", "a", 0.0, create=False)
    b = h.stream("app", "b", 0.0, create=False)
    assert a is not None and b is not None
    assert [e.offset for e in a.entries] == [3]
    assert [e.offset for e in b.entries] == [1, 2]
    assert h.budget.used == 3 * one and h.budget.count == 3
    assert decide(a, Position("e", 0), 0.0).recovered is False
    assert decide(a, Position("e", 2), 0.0).recovered is True


def test_bookkeeping_stays_bounded_and_exact_over_many_publishes() -> None:
    from roomwire.server.history import entry_bytes

    h = _history(size=2, ttl=60.0)
    for i in range(20_000):
        h.append("app", f"chat/{i % 3}", i / 1000, b"1", b'"p"', None)
    live = [e for s in h.streams.values() for e in s.entries]
    assert h.budget.count == len(live) == 6
    assert h.budget.used == sum(entry_bytes(e) for e in live)
    assert h.sweep(1_000.0) == 3 and h.budget.used == 0 and h.budget.count == 0
    assert h._active == {}


def test_a_small_budget_under_many_channels_keeps_the_recent_ones() -> None:
    h = History([HistoryRule(None, "**", 100, 60.0)], max_bytes=50_000)
    for i in range(5_000):
        h.append("app", f"c{i}", 0.0, b"x" * 100, b'"p"', None)
    assert h.budget.used <= 50_000
    kept = sorted(int(k[1][1:]) for k, s in h.streams.items() if s.entries)
    assert kept == list(range(5_000 - len(kept), 5_000)) and len(kept) > 100


def test_a_replay_heavier_than_the_bound_is_refused() -> None:
    h = _history(size=10)
    _publish(h, 4)
    stream = h.stream("app", "chat/a", 0.0)
    assert stream is not None
    weight = sum(e.size for e in stream.after(1))
    assert decide(stream, Position("e1", 1), 0.0, max_bytes=weight).recovered is True
    assert decide(stream, Position("e1", 1), 0.0, max_bytes=weight - 1) == (False, [])


def test_the_history_setting_from_a_toml_file_and_the_environment(tmp_path: object) -> None:
    from pathlib import Path

    from roomwire.server.config_sources import load_config

    assert isinstance(tmp_path, Path)
    toml = tmp_path / "roomwire.toml"
    toml.write_text('[[history]]\napp = "app_1"\nchannels = "chat/**"\nsize = 100\nttl = 300\n'
                    '\n[[history]]\nsize = 10\nttl = 60\n')
    cfg = load_config(toml, env={})
    assert parse_rules(cfg.history) == [HistoryRule("app_1", "chat/**", 100, 300.0),
                                        HistoryRule(None, "**", 10, 60.0)]
    cfg = load_config(None, env={"ROOMWIRE_HISTORY": '[{"channels": "a/*", "size": 5, '
                                                     '"ttl": 9}]'})
    assert parse_rules(cfg.history) == [HistoryRule(None, "a/*", 5, 9.0)]
    toml.write_text("[[history]]\nsize = 100\n")
    with pytest.raises(ValueError, match="history rule 1: 'ttl'"):
        load_config(toml, env={})


# -- the cluster's history: the decision over a read from Redis (pure) -----------------------

def _read(top: int, first: int, *, epoch: str | None = "e1", times: float = 100.0,
          more: bool = False, anchor: bool = True) -> HistoryRead:
    """A read of the entries ``first``..``top`` (``first`` > ``top``: none kept)."""
    entries = [Entry(o, times, frames.encode_json(o), b'"p"', None, 130)
               for o in range(first, top + 1)]
    return HistoryRead(epoch, top, entries, times if entries and anchor else None, more)


@pytest.mark.parametrize(
    ("read", "client", "now", "recovered", "replayed"),
    [
        # nothing missed
        (_read(5, 6), Position("e1", 5), 100.0, True, []),
        # the missed tail, in order
        (_read(5, 3), Position("e1", 2), 100.0, True, [3, 4, 5]),
        # the first missed one was trimmed (overflow): the read starts later
        (_read(8, 5, anchor=False), Position("e1", 3), 100.0, False, []),
        # every kept entry trimmed away
        (_read(8, 9), Position("e1", 3), 100.0, False, []),
        # another epoch (the history was lost in Redis and started again)
        (_read(5, 1, epoch="e2"), Position("e1", 2), 100.0, False, []),
        # no history at all any more
        (_read(0, 1, epoch=None), Position("e1", 2), 100.0, False, []),
        # the client claims more than was ever given
        (_read(5, 6), Position("e1", 9), 100.0, False, []),
        # expired by the rule's ttl (60 s) although Redis still keeps them
        (_read(5, 3, times=30.0), Position("e1", 2), 100.0, False, []),
        # over the byte bound: the reader stopped early
        (_read(5, 3, more=True), Position("e1", 2), 100.0, False, []),
    ],
)
def test_decide_read_table(read: HistoryRead, client: Position, now: float, recovered: bool,
                           replayed: list[int]) -> None:
    got = decide_read(read, client, now, 60.0)
    assert got.recovered is recovered
    assert [e.offset for e in got.replay] == replayed


def test_decide_read_refuses_a_hole_in_the_offsets() -> None:
    read = _read(5, 3)
    holed = HistoryRead(read.epoch, read.top, [read.entries[0], read.entries[2]],
                        read.anchor_time)
    assert decide_read(holed, Position("e1", 2), 100.0, 60.0) == (False, [])


@pytest.mark.parametrize(("since", "anchor", "complete"), [
    (5, None, True),      # nothing after it
    (2, 100.0, True),     # the entry right after it is kept and fresh
    (2, 30.0, False),     # kept but older than the ttl
    (2, None, False),     # trimmed
])
def test_complete_read(since: int, anchor: float | None, complete: bool) -> None:
    assert complete_read(HistoryRead("e1", 5, [], anchor), since, 100.0, 60.0) is complete


def test_parse_read_of_a_script_reply() -> None:
    reply = [b"e1", 7, [[b"0-6", [b"p", history_entry(99.5, b"1", b'"p"', None)]],
                        [b"0-7", [b"p", history_entry(99.75, b"2", b'"p"', b"{}")]]],
             0, history_entry(99.5, b"1", b'"p"', None)]
    read = parse_read(reply)
    assert (read.epoch, read.top, read.anchor_time, read.more) == ("e1", 7, 99.5, False)
    assert [(e.offset, e.time, e.data, e.sender_metadata, e.size) for e in read.entries] == [
        (6, 99.5, b"1", None, 4 + ENTRY_OVERHEAD), (7, 99.75, b"2", b"{}", 6 + ENTRY_OVERHEAD)]
    assert parse_read([None, 0, [], 0, None]) == HistoryRead(None, 0, [], None, False)


@pytest.mark.parametrize("metadata", [None, b'{"a":1}', b"m" * 300, b"m" * 70_000])
def test_posted_head_and_entry_as_the_script_joins_them_decode(metadata: bytes | None) -> None:
    """The append script's PUBLISH is the head, the stored entry, then cmsgpack's offset and
    epoch: a whole frame. The entry's time takes 9 bytes whatever it is (the read script
    counts the payload bytes from there)."""
    entry = history_entry(12, b'{"x":1}', b'"p"', metadata)
    assert entry[0] == 0xcb and len(entry) == 9 + sum(
        len(msgspec.msgpack.encode(v)) for v in (b'{"x":1}', b'"p"', metadata))
    frame = decode(posted_head("n1.ab", 3) + entry + msgspec.msgpack.encode(42)
                   + msgspec.msgpack.encode("e1"))
    assert frame == Posted("n1.ab", 3, 12.0, b'{"x":1}', b'"p"', metadata, 42, "e1")
    assert parse_entry(entry) == (12.0, b'{"x":1}', b'"p"', metadata)


@pytest.mark.parametrize(("times", "renewed"), [
    ([0.0], [True]),                                   # a channel's first append renews
    ([0.0, 0.5, 0.99], [True, False, False]),          # then none within the interval
    ([0.0, 0.5, 1.0, 1.5, 2.1], [True, False, True, False, True]),
    ([10.0, 9.0, 9.5], [True, True, False]),           # a clock gone back renews
])
def test_renewals_renew_once_per_interval(times: list[float], renewed: list[bool]) -> None:
    r = Renewals()
    assert [r.due(("app", "chat/a"), t, 1.0) for t in times] == renewed
    assert r.due(("app", "chat/b"), times[-1], 1.0) is True  # per channel


def test_renewals_forget_past_their_limit_and_renew_again() -> None:
    r = Renewals(limit=2)
    assert [r.due(("app", c), 0.0, 1.0) for c in "ab"] == [True, True]
    assert r.due(("app", "a"), 0.1, 1.0) is False
    assert r.due(("app", "c"), 0.2, 1.0) is True  # the third channel: forget a and b
    assert r.due(("app", "a"), 0.3, 1.0) is True


@pytest.mark.parametrize(("ttl", "every"), [(300.0, 1.0), (10.0, 1.0), (2.0, 0.2)])
def test_the_renewal_interval_is_a_second_or_a_tenth_of_a_short_ttl(ttl: float,
                                                                   every: float) -> None:
    assert renew_every(ttl) == pytest.approx(every)
