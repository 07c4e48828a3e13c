"""The roster reconcile after a reconnect, tabled, without a socket or an event loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomwire.client.rtc.roster import (
    DeadlineAction,
    JoinAction,
    ReconcilePlan,
    SwapAction,
    on_deadline,
    on_presence_joined,
    plan_reconcile,
    swap_action,
)


def test_the_module_is_pure() -> None:
    import roomwire.client.rtc.roster as mod

    source = Path(mod.__file__).read_text(encoding="utf-8")
    for name in ("asyncio", "aiortc", "aioice", "av"):
        assert f"import {name}" not in source and f"from {name}" not in source, name


RECONCILE_TABLE = [
    # (case, me, known, already_missing, roster, survivors, newcomers, missing)
    ("everyone survived", "me", ["a", "b"], set(), ["a", "b", "me"],
     ("a", "b"), (), ()),
    ("a newcomer", "me", ["a"], set(), ["me", "a", "c"], ("a",), ("c",), ()),
    ("one missing (maybe reconnecting too)", "me", ["a", "b"], set(), ["a"],
     ("a",), (), ("b",)),
    ("server restart: roster is only us", "me", ["a", "b"], set(), ["me"],
     (), (), ("a", "b")),
    ("already waited for: not missing twice", "me", ["a", "b"], {"b"}, ["a"],
     ("a",), (), ()),
    ("nobody known, nobody there", "me", [], set(), ["me"], (), (), ()),
    ("all new", "me", [], set(), ["x", "y"], (), ("x", "y"), ()),
    ("duplicated roster entry counted once", "me", ["a"], set(), ["a", "c", "a", "c"],
     ("a",), ("c",), ()),
    ("roster order for survivors and newcomers", "me", ["a", "b"], set(),
     ["d", "b", "c", "a"], ("b", "a"), ("d", "c"), ()),
    ("known order for the missing", "me", ["c", "a", "b"], set(), [],
     (), (), ("c", "a", "b")),
    ("mixed", "me", ["a", "b", "c"], {"c"}, ["b", "me", "d"], ("b",), ("d",), ("a",)),
    ("no welcome yet: we have no id", None, ["a"], set(), ["a", "b"], ("a",), ("b",), ()),
]


@pytest.mark.parametrize(
    ("case", "me", "known", "already", "roster", "survivors", "newcomers", "missing"),
    RECONCILE_TABLE, ids=[row[0] for row in RECONCILE_TABLE])
def test_reconcile_plan(case: str, me: str | None, known: list[str], already: set[str],
                        roster: list[str], survivors: tuple[str, ...],
                        newcomers: tuple[str, ...], missing: tuple[str, ...]) -> None:
    plan = plan_reconcile(me, known, already, roster)
    assert plan == ReconcilePlan(survivors, newcomers, missing), case
    assert plan.finished is (not survivors), case


def test_we_are_never_our_own_newcomer() -> None:
    plan = plan_reconcile("me", [], set(), ["me", "me"])
    assert "me" not in plan.newcomers and "me" not in plan.survivors


JOIN_TABLE = [
    # (case, known, missing, reconnecting, action)
    ("a stranger", False, False, False, JoinAction.ADD),
    ("a stranger while we reconnect", False, False, True, JoinAction.ADD),
    ("back within the rejoin grace", True, True, False, JoinAction.REJOINED),
    ("back within the grace while we reconnect", True, True, True, JoinAction.REJOINED),
    ("known, seen again while reconnecting", True, False, True, JoinAction.REFRESH),
    ("known, seen again while joined", True, False, False, JoinAction.IGNORE),
]


@pytest.mark.parametrize(("case", "known", "missing", "reconnecting", "action"), JOIN_TABLE,
                         ids=[row[0] for row in JOIN_TABLE])
def test_presence_joined(case: str, known: bool, missing: bool, reconnecting: bool,
                         action: JoinAction) -> None:
    assert on_presence_joined(known=known, missing=missing,
                              reconnecting=reconnecting) is action, case


SWAP_TABLE = [
    # (case, engine_closed, live, last_rebuild_at, dropped_at, action)
    ("never rebuilt", False, True, None, 10.0, SwapAction.RESET),
    ("rebuilt before the drop", False, True, 5.0, 10.0, SwapAction.RESET),
    ("rebuilt at the drop instant", False, True, 10.0, 10.0, SwapAction.RESET),
    ("rebuilt since the drop (remote offered)", False, True, 11.0, 10.0, SwapAction.KEEP),
    ("engine closed", True, True, None, 10.0, SwapAction.SKIP),
    ("peer leaving or closed", False, False, 11.0, 10.0, SwapAction.SKIP),
]


@pytest.mark.parametrize(("case", "closed", "live", "rebuilt", "dropped", "action"),
                         SWAP_TABLE, ids=[row[0] for row in SWAP_TABLE])
def test_swap(case: str, closed: bool, live: bool, rebuilt: float | None, dropped: float,
              action: SwapAction) -> None:
    assert swap_action(engine_closed=closed, live=live, last_rebuild_at=rebuilt,
                       dropped_at=dropped) is action, case


DEADLINE_TABLE = [
    # (case, current, reconnecting, connected, awaiting, resubscribes, action)
    ("stale deadline", False, True, True, True, 0, DeadlineAction.IGNORE),
    ("no longer reconnecting", True, False, True, True, 0, DeadlineAction.IGNORE),
    ("no welcome yet", True, True, False, True, 0, DeadlineAction.WAIT),
    ("no roster: first re-subscribe", True, True, True, True, 0, DeadlineAction.RESUBSCRIBE),
    ("no roster: second re-subscribe", True, True, True, True, 1,
     DeadlineAction.RESUBSCRIBE),
    ("no roster after every re-subscribe", True, True, True, True, 2, DeadlineAction.FAIL),
    ("roster came, a swap hangs", True, True, True, False, 0, DeadlineAction.FINISH),
    ("roster came after re-subscribes", True, True, True, False, 2, DeadlineAction.FINISH),
]


@pytest.mark.parametrize(
    ("case", "current", "reconnecting", "connected", "awaiting", "resubs", "action"),
    DEADLINE_TABLE, ids=[row[0] for row in DEADLINE_TABLE])
def test_deadline(case: str, current: bool, reconnecting: bool, connected: bool,
                  awaiting: bool, resubs: int, action: DeadlineAction) -> None:
    assert on_deadline(current=current, reconnecting=reconnecting, connected=connected,
                       awaiting_snapshot=awaiting, resubscribes=resubs,
                       max_resubscribes=2) is action, case
