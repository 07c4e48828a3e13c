"""The cluster's routing decisions (server/broker/routing.py), tabled, without Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomwire.server.broker.routing import (
    Changes,
    ChannelView,
    Keys,
    live_total,
    membership,
    parse_membership,
    remote_receivers,
    shard_of,
)
from roomwire.server.broker.wire import (
    Direct,
    Join,
    Kick,
    KickReply,
    Leave,
    Message,
    decode,
    encode,
)


def test_the_module_is_pure() -> None:
    import roomwire.server.broker.routing as mod

    source = Path(mod.__file__).read_text(encoding="utf-8")
    for name in ("asyncio", "redis", "socket"):
        assert f"import {name}" not in source and f"from {name}" not in source, name


def J(seq: int, peer: str) -> Join:
    return Join(seq, peer, f'{{"peerId":"{peer}"}}')


def L(seq: int, peer: str) -> Leave:
    return Leave(seq, peer)


def entry(peer: str) -> bytes:
    return f'{{"peerId":"{peer}"}}'.encode()


def snap(*peers: str) -> dict[str, bytes]:
    return {p: entry(p) for p in peers}


Step = tuple[str, object]

VIEW_TABLE: list[tuple[str, list[Step], list[str], list[str], list[str], int | None, bool]] = [
    # (case, steps, joined (all steps), left (all steps), members at the end, seq, loading)
    ("nothing yet: loading, no seq", [], [], [], [], None, True),
    ("snapshot adopts its members", [("load", (3, snap("a", "b")))],
     ["a", "b"], [], ["a", "b"], 3, False),
    ("events before the snapshot are buffered, then applied when newer",
     [("ev", J(4, "c")), ("load", (3, snap("a")))], ["a", "c"], [], ["a", "c"], 4, False),
    ("buffered events the snapshot already covers are dropped",
     [("ev", J(2, "a")), ("ev", J(3, "b")), ("load", (3, snap("a", "b")))],
     ["a", "b"], [], ["a", "b"], 3, False),
    ("buffered events out of order are replayed by seq",
     [("ev", J(5, "d")), ("ev", J(4, "c")), ("load", (3, snap()))],
     ["c", "d"], [], ["c", "d"], 5, False),
    ("a gap among the buffered events asks for another snapshot",
     [("ev", J(6, "d")), ("load", (3, snap("a")))], ["a"], [], ["a"], 3, True),
    ("the next event applies", [("load", (1, snap("a"))), ("ev", J(2, "b"))],
     ["a", "b"], [], ["a", "b"], 2, False),
    ("a leave removes", [("load", (1, snap("a", "b"))), ("ev", L(2, "a"))],
     ["a", "b"], ["a"], ["b"], 2, False),
    ("a duplicate or stale event is dropped",
     [("load", (2, snap("a"))), ("ev", J(2, "a")), ("ev", L(1, "a"))],
     ["a"], [], ["a"], 2, False),
    ("a gap in the stream asks for a snapshot and holds the event",
     [("load", (1, snap("a"))), ("ev", L(3, "a"))], ["a"], [], ["a"], 1, True),
    ("while reloading the stream is buffered",
     [("load", (1, snap("a"))), ("ev", L(3, "a")), ("ev", J(4, "b"))],
     ["a"], [], ["a"], 1, True),
    ("the new snapshot reports the difference and replays what is newer",
     [("load", (1, snap("a"))), ("ev", L(3, "a")), ("ev", J(4, "b")),
      ("load", (3, snap("c")))], ["a", "c", "b"], ["a"], ["c", "b"], 4, False),
    ("a leave for someone unknown changes nothing but the seq",
     [("load", (1, snap())), ("ev", L(2, "ghost"))], [], [], [], 2, False),
    ("a join for someone known updates the entry without a second joined",
     [("load", (1, snap("a"))), ("ev", J(2, "a"))], ["a"], [], ["a"], 2, False),
    ("a snapshot older than what was applied keeps the view",
     [("load", (5, snap("a"))), ("reload", None), ("load", (4, snap()))],
     ["a"], [], ["a"], 5, False),
    ("anti-entropy reload with no change reports nothing",
     [("load", (2, snap("a"))), ("reload", None), ("load", (2, snap("a")))],
     ["a"], [], ["a"], 2, False),
]


@pytest.mark.parametrize(("case", "steps", "joined", "left", "members", "seq", "loading"),
                         VIEW_TABLE, ids=[row[0] for row in VIEW_TABLE])
def test_channel_view(case: str, steps: list[Step], joined: list[str], left: list[str],
                      members: list[str], seq: int | None, loading: bool) -> None:
    view = ChannelView()
    got_joined: list[str] = []
    got_left: list[str] = []
    for kind, arg in steps:
        if kind == "load":
            assert isinstance(arg, tuple)
            out = view.load(*arg)
        elif kind == "reload":
            view.begin_reload()
            continue
        else:
            assert isinstance(arg, Join | Leave)
            out = view.event(arg)
        got_joined += [p for p, _ in out.joined]
        got_left += [p for p, _ in out.left]
        for p, e in out.joined + out.left:
            assert e == entry(p)
    assert got_joined == joined
    assert got_left == left
    assert list(view.members) == members
    assert view.seq == seq
    assert view.loading is loading


def hub_replica(steps: list[Step]) -> tuple[ChannelView, dict[str, int], Changes]:
    """Run ``steps`` on a view and apply each step's changes the way the hub does (its
    ``left`` first, then its ``joined``, each one counting a peer out or in)."""
    view = ChannelView()
    present: dict[str, int] = {}
    out = Changes()
    for kind, arg in steps:
        if kind == "reload":
            view.begin_reload()
            continue
        if kind == "load":
            assert isinstance(arg, tuple)
            out = view.load(*arg)
        else:
            assert isinstance(arg, Join | Leave)
            out = view.event(arg)
        for p, _ in out.left:
            present[p] = present.get(p, 0) - 1
        for p, _ in out.joined:
            present[p] = present.get(p, 0) + 1
    return view, {p: n for p, n in present.items() if n}, out


STEP_TABLE: list[tuple[str, list[Step], list[str], list[str], list[str]]] = [
    # (case, steps, joined and left by the last step, members at the end)
    ("a peer in the snapshot whose leave came before it is neither joined nor left",
     [("ev", L(4, "m")), ("load", (3, snap("a", "m")))], ["a"], [], ["a"]),
    ("a join and its leave both newer than the snapshot cancel out",
     [("ev", J(4, "m")), ("ev", L(5, "m")), ("load", (3, snap("a")))], ["a"], [], ["a"]),
    ("the same after a reload: the snapshot's peer left by a replayed event",
     [("load", (1, snap("a"))), ("ev", L(3, "a")), ("ev", L(4, "m")),
      ("load", (3, snap("m")))], [], ["a"], []),
    ("a known peer that left and came back within a step: left, then joined",
     [("load", (1, snap("m"))), ("reload", None), ("ev", L(2, "m")), ("ev", J(3, "m")),
      ("load", (1, snap("m")))], ["m"], ["m"], ["m"]),
    ("left, back and gone again within a step is one left",
     [("load", (1, snap("m"))), ("reload", None), ("ev", L(2, "m")), ("ev", J(3, "m")),
      ("ev", L(4, "m")), ("load", (1, snap("m")))], [], ["m"], []),
]


@pytest.mark.parametrize(("case", "steps", "joined", "left", "members"), STEP_TABLE,
                         ids=[row[0] for row in STEP_TABLE])
def test_a_step_reports_its_net_change(case: str, steps: list[Step], joined: list[str],
                                       left: list[str], members: list[str]) -> None:
    view, present, out = hub_replica(steps)
    assert [p for p, _ in out.joined] == joined
    assert [p for p, _ in out.left] == left
    assert list(view.members) == members
    # What the hub makes of the steps is what the view holds: nobody stays present for good.
    assert present == dict.fromkeys(members, 1)


@pytest.mark.parametrize("steps", [row[1] for row in VIEW_TABLE],
                         ids=[row[0] for row in VIEW_TABLE])
def test_the_hub_ends_with_the_views_members(steps: list[Step]) -> None:
    view, present, _ = hub_replica(steps)
    assert present == dict.fromkeys(view.members, 1)


REACHED_TABLE = [
    # (case, load seq or None, asked, reached)
    ("no snapshot yet", None, 1, False),
    ("behind", 3, 4, False),
    ("exactly", 4, 4, True),
    ("ahead", 5, 4, True),
]


@pytest.mark.parametrize(("case", "loaded", "asked", "reached"), REACHED_TABLE,
                         ids=[r[0] for r in REACHED_TABLE])
def test_reached(case: str, loaded: int | None, asked: int, reached: bool) -> None:
    view = ChannelView()
    if loaded is not None:
        view.load(loaded, {})
    assert view.reached(asked) is reached


def test_a_view_that_is_reloading_has_not_reached_anything() -> None:
    view = ChannelView()
    view.load(5, {})
    view.begin_reload()
    assert not view.reached(1)


@pytest.mark.parametrize(("published", "subscribed", "remote"), [
    (0, False, 0), (1, False, 1), (1, True, 0), (3, True, 2), (0, True, 0),
])
def test_remote_receivers(published: int, subscribed: bool, remote: int) -> None:
    assert remote_receivers(published, subscribed) == remote


def test_shard_of_is_stable_and_spread() -> None:
    assert shard_of("app", "room", 1) == 0
    picks = {shard_of("app", f"room/{i}", 2) for i in range(50)}
    assert picks == {0, 1}
    assert shard_of("app", "room/7", 3) == shard_of("app", "room/7", 3)
    # The app is part of the key: the same name in two apps may live apart.
    assert any(shard_of("a1", f"r{i}", 3) != shard_of("a2", f"r{i}", 3) for i in range(20))


def test_keys_separate_app_and_name_with_nul() -> None:
    k = Keys("rw:")
    assert k.channel("app", "room/1") == b"rw:c:app\x00room/1"
    assert k.peer("app", "bob") == b"rw:d:app\x00bob"
    assert k.node("n1.ab") == b"rw:n:n1.ab"
    assert k.presence("app", "room") == ("rw:pm:app\x00room", "rw:pc:app\x00room",
                                        "rw:ps:app\x00room")
    assert parse_membership(membership("app", "a/b", "p:1")) == ("app", "a/b", "p:1")


@pytest.mark.parametrize(("counts", "live", "total"), [
    ({}, set(), 0),
    ({"me": 5, "n1": 2, "n2": 3}, {"me", "n1", "n2"}, 5),
    ({"me": 5, "n1": 2, "dead": 9}, {"me", "n1"}, 2),
])
def test_live_total(counts: dict[str, int], live: set[str], total: int) -> None:
    assert live_total(counts, live, "me") == total


def test_frames_round_trip() -> None:
    for frame in (Message("n1", b'{"a":1}', b'"bob"', None),
                  Message("n1", b"1", b'"bob"', b'{"m":1}'),
                  Direct("n2", b"[]", b'"al"', None), Kick("n3", 7, 4020, "bye", ["a/*"]),
                  KickReply(7, 2), J(3, "x"), L(4, "x")):
        assert decode(encode(frame)) == frame


def test_join_and_leave_match_what_the_lua_scripts_pack() -> None:
    import msgspec

    # cmsgpack.pack({'join', seq, peer, entry}): a plain array, tag first.
    assert decode(msgspec.msgpack.encode(["join", 3, "x", '{"peerId":"x"}'])) == J(3, "x")
    assert decode(msgspec.msgpack.encode(["leave", 4, "x"])) == L(4, "x")
