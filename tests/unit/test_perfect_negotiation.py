"""Every rule of perfect negotiation, tabled, without a socket or an event loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomwire.client.rtc.perfect_negotiation import (
    AnswerAction,
    CandidateAction,
    CandidateView,
    OfferAction,
    OfferView,
    TransceiverView,
    answer_forces_remote_rebuild,
    candidate_in_generation,
    decide_answer,
    decide_candidate,
    decide_offer,
    first_offer_wait,
    impolite_wait,
    is_polite,
    local_track_may_use,
    needs_offer,
    new_mlines_this_offer,
    offer_debounce,
    outbound_still_current,
    remote_defers_first_offer,
    remote_rebuild_hold,
    transceiver_direction,
)


def test_the_module_is_pure() -> None:
    # The point of the module: its rules run without an event loop or a WebRTC stack.
    import roomwire.client.rtc.perfect_negotiation as mod

    source = Path(mod.__file__).read_text(encoding="utf-8")
    for name in ("asyncio", "aiortc", "aioice", "av"):
        assert f"import {name}" not in source and f"from {name}" not in source, name


def test_politeness_is_the_smaller_id_and_both_sides_agree() -> None:
    assert is_polite("alice", "bob") is True
    assert is_polite("bob", "alice") is False
    assert is_polite("a", "b") != is_polite("b", "a")


def offer(*, polite: bool = True, sig: str = "stable", conn: str = "new",
          making: bool = False, known: str | None = None, seen: str | None = None) -> OfferView:
    return OfferView(polite=polite, signaling_state=sig, connection_state=conn,
                     making_offer=making, known_ufrag=known, offered_ufrag=seen)


OFFER_TABLE = [
    # (case, view, action, reason)
    ("fresh connection", offer(), OfferAction.ACCEPT, None),
    ("renegotiation, same ufrag", offer(conn="connected", known="u1", seen="u1"),
     OfferAction.ACCEPT, None),
    ("offer without ufrag", offer(known="u1", seen=None), OfferAction.ACCEPT, None),
    ("first offer carries a ufrag", offer(known=None, seen="u1"), OfferAction.ACCEPT, None),
    ("remote rebuilt: new ufrag", offer(conn="connected", known="u1", seen="u2"),
     OfferAction.REBUILD, "remote-restart"),
    ("impolite, we are making an offer", offer(polite=False, making=True),
     OfferAction.IGNORE, None),
    ("impolite, our offer is out", offer(polite=False, sig="have-local-offer"),
     OfferAction.IGNORE, None),
    ("polite, we are making an offer", offer(polite=True, making=True),
     OfferAction.REBUILD, "glare"),
    ("polite, our offer is out", offer(polite=True, sig="have-local-offer"),
     OfferAction.REBUILD, "glare"),
    ("polite glare wins over a ufrag change",
     offer(polite=True, sig="have-local-offer", known="u1", seen="u2"),
     OfferAction.REBUILD, "glare"),
    ("impolite collision ignores even a new ufrag",
     offer(polite=False, making=True, known="u1", seen="u2"), OfferAction.IGNORE, None),
    ("signalling closed, impolite", offer(polite=False, sig="closed"),
     OfferAction.REBUILD, "connection-closed"),
    ("connection failed, impolite in a collision",
     offer(polite=False, sig="have-local-offer", conn="failed"),
     OfferAction.REBUILD, "connection-failed"),
    ("connection closed, polite", offer(polite=True, conn="closed"),
     OfferAction.REBUILD, "connection-closed"),
    ("signalling closed beats the connection state", offer(sig="closed", conn="failed"),
     OfferAction.REBUILD, "connection-closed"),
]


@pytest.mark.parametrize(("case", "view", "action", "reason"), OFFER_TABLE,
                         ids=[row[0] for row in OFFER_TABLE])
def test_remote_offer(case: str, view: OfferView, action: OfferAction,
                      reason: str | None) -> None:
    decision = decide_offer(view)
    assert (decision.action, decision.reason) == (action, reason), case


ANSWER_TABLE = [
    ("answer to our offer", "have-local-offer", "u1", "u1", AnswerAction.ACCEPT, None),
    ("first answer", "have-local-offer", None, "u1", AnswerAction.ACCEPT, None),
    ("answer without ufrag", "have-local-offer", "u1", None, AnswerAction.ACCEPT, None),
    ("stale: no offer out", "stable", "u1", "u1", AnswerAction.DROP, None),
    ("stale even with a new ufrag", "stable", "u1", "u2", AnswerAction.DROP, None),
    ("stale: answering their offer", "have-remote-offer", None, None, AnswerAction.DROP, None),
    ("closed connection", "closed", None, None, AnswerAction.DROP, None),
    ("answered from a rebuilt connection", "have-local-offer", "u1", "u2",
     AnswerAction.REBUILD_AND_OFFER, "remote-restart"),
]


@pytest.mark.parametrize(("case", "state", "known", "seen", "action", "reason"),
                         ANSWER_TABLE, ids=[row[0] for row in ANSWER_TABLE])
def test_remote_answer(case: str, state: str, known: str | None, seen: str | None,
                       action: AnswerAction, reason: str | None) -> None:
    decision = decide_answer(state, known, seen)
    assert (decision.action, decision.reason) == (action, reason), case


def cand(*, malformed: bool = False, end: bool = False, desc: bool = True,
         ignoring: bool = False, budget: bool = True, held: int = 0,
         cap: int = 200) -> CandidateView:
    return CandidateView(malformed=malformed, end_of_candidates=end,
                         has_remote_description=desc, ignoring_offer=ignoring,
                         within_budget=budget, held=held, hold_cap=cap)


CANDIDATE_TABLE = [
    ("candidate with a description", cand(), CandidateAction.APPLY),
    ("candidate before any description", cand(desc=False), CandidateAction.HOLD),
    ("candidate while a colliding offer is ignored", cand(ignoring=True),
     CandidateAction.HOLD),
    ("hold is capped", cand(desc=False, held=200), CandidateAction.DROP),
    ("one below the cap is held", cand(desc=False, held=199), CandidateAction.HOLD),
    ("over the budget, applicable", cand(budget=False), CandidateAction.DROP),
    ("over the budget, holdable", cand(desc=False, budget=False), CandidateAction.DROP),
    ("malformed", cand(malformed=True), CandidateAction.DROP),
    ("malformed before a description", cand(malformed=True, desc=False),
     CandidateAction.DROP),
    ("end of candidates with a description", cand(end=True), CandidateAction.END),
    ("end of candidates before any description", cand(end=True, desc=False),
     CandidateAction.DROP),
    ("end of candidates of an ignored offer", cand(end=True, ignoring=True),
     CandidateAction.DROP),
    ("end of candidates is not budgeted", cand(end=True, budget=False), CandidateAction.END),
]


@pytest.mark.parametrize(("case", "view", "action"), CANDIDATE_TABLE,
                         ids=[row[0] for row in CANDIDATE_TABLE])
def test_remote_candidate(case: str, view: CandidateView, action: CandidateAction) -> None:
    assert decide_candidate(view) is action, case


@pytest.mark.parametrize(("cand_ufrag", "remote_ufrag", "applies"), [
    ("u1", "u1", True),
    ("u1", "u2", False),  # another ICE generation (held across a rebuild, or late)
    (None, "u1", True),
    ("", "u1", True),
    ("u1", None, True),
    (None, None, True),
])
def test_candidate_generation(cand_ufrag: str | None, remote_ufrag: str | None,
                              applies: bool) -> None:
    assert candidate_in_generation(cand_ufrag, remote_ufrag) is applies


@pytest.mark.parametrize(("signal_gen", "current", "send"), [
    (3, 3, True),
    (2, 3, False),  # held while signalling was down; the connection was replaced meanwhile
    (None, 3, True),  # track metadata: sent whatever happens
    (None, 0, True),
])
def test_held_outbound_signal(signal_gen: int | None, current: int, send: bool) -> None:
    assert outbound_still_current(signal_gen, current) is send


def tv(mid: str | None = "0", direction: str = "sendrecv", current: str | None = "sendrecv",
       stopped: bool = False) -> TransceiverView:
    return TransceiverView(stopped=stopped, mid=mid, direction=direction,
                           current_direction=current)


NEEDS_OFFER_TABLE = [
    ("nothing at all", [], False, None, False),
    ("negotiated, unchanged", [tv()], False, None, False),
    ("new transceiver", [tv(mid=None, current=None)], False, None, True),
    ("new data channel transport", [], True, None, True),
    ("negotiated data channel transport", [], True, "1", False),
    ("removed a track: want recv only, still sending", [tv(direction="recvonly")],
     False, None, True),
    ("added on a recvonly transceiver", [tv(direction="sendrecv", current="recvonly")],
     False, None, True),
    ("sendonly vs sendrecv both send", [tv(direction="sendonly", current="sendrecv")],
     False, None, False),
    ("inactive vs recvonly both silent", [tv(direction="inactive", current="recvonly")],
     False, None, False),
    ("mid but never answered", [tv(current=None, direction="recvonly")], False, None, False),
    ("stopped transceivers are ignored", [tv(mid=None, current=None, stopped=True)],
     False, None, False),
    ("one changed among many", [tv(), tv(mid="1", direction="inactive")], False, None, True),
]


@pytest.mark.parametrize(("case", "ts", "sctp", "sctp_mid", "expected"), NEEDS_OFFER_TABLE,
                         ids=[row[0] for row in NEEDS_OFFER_TABLE])
def test_needs_offer(case: str, ts: list[TransceiverView], sctp: bool, sctp_mid: str | None,
                     expected: bool) -> None:
    assert needs_offer(ts, has_sctp=sctp, sctp_mid=sctp_mid) is expected, case


@pytest.mark.parametrize(("impolite_delay", "polite_delay", "wait"), [
    (None, 2.0, 0.5),  # a quarter of 2 s, capped at 0.5 s
    (None, 1.0, 0.25),
    (None, 0.0, 0.0),
    (None, -1.0, 0.0),
    (0.3, 2.0, 0.3),  # explicit
    (0.0, 2.0, 0.0),  # offer at once
    (-1.0, 2.0, 0.0),
])
def test_impolite_wait(impolite_delay: float | None, polite_delay: float,
                       wait: float) -> None:
    assert impolite_wait(impolite_delay, polite_delay) == pytest.approx(wait)


FIRST_OFFER_TABLE = [
    # (case, polite, force, offers_sent, remote_offer_seen, has_something, remote_defers, wait)
    ("polite defers the first offer", True, False, 0, False, True, False, 2.0),
    ("impolite waits a little for a browser", False, False, 0, False, True, False, 0.5),
    ("asked to offer now", True, True, 0, False, True, False, 0.0),
    ("not the first offer", True, False, 1, False, True, False, 0.0),
    ("the remote offered already", True, False, 0, True, True, False, 0.0),
    ("nothing to negotiate", True, False, 0, False, False, False, 0.0),
    ("impolite asked to offer now", False, True, 0, False, True, False, 0.0),
    ("impolite, the remote is a Python peer: no offer to wait for", False, False, 0, False,
     True, True, 0.0),
    ("polite, the remote is a Python peer: still defers to its offer", True, False, 0, False,
     True, True, 2.0),
    ("polite, Python remote, asked to offer now", True, True, 0, False, True, True, 0.0),
    ("impolite, Python remote, nothing to negotiate", False, False, 0, False, False, True, 0.0),
]


@pytest.mark.parametrize(("case", "polite", "force", "sent", "seen", "something", "defers",
                          "wait"),
                         FIRST_OFFER_TABLE, ids=[row[0] for row in FIRST_OFFER_TABLE])
def test_first_offer_wait(case: str, polite: bool, force: bool, sent: int, seen: bool,
                          something: bool, defers: bool, wait: float) -> None:
    got = first_offer_wait(polite=polite, polite_delay=2.0, impolite_delay=0.5,
                           force_offer=force, offers_sent=sent, remote_offer_seen=seen,
                           has_something=something, remote_defers=defers)
    assert got == pytest.approx(wait), case


# Who sends ``kind``/``streamId`` in ``__meteredTrackMeta``: both Python SDKs (official and
# ours), never the official JS SDK (tests/interop/test_peer_interop.py checks the official
# Python one as a black box).
@pytest.mark.parametrize(("case", "kind", "stream_id", "defers"), [
    ("a Python SDK, track in a stream", "video", "s1", True),
    ("a Python SDK, track without a stream", "audio", None, True),
    ("only a stream id", None, "s1", True),
    ("the JS SDK: trackId and metadata only (a browser offers at once)", None, None, False),
    ("a roomwire peer's clear for a track without metadata", "video", "s1", True),
    ("a clear from any official SDK: trackId only", None, None, False),
])
def test_remote_defers_first_offer(case: str, kind: str | None, stream_id: str | None,
                                   defers: bool) -> None:
    assert remote_defers_first_offer(meta_kind=kind, meta_stream_id=stream_id) is defers, case


DEBOUNCE_TABLE = [
    # (case, first_wait, first_offer, polite, remote_defers, debounce)
    ("a renegotiation coalesces its burst", 0.0, False, False, False, 0.01),
    ("a renegotiation toward a Python peer too", 0.0, False, False, True, 0.01),
    ("a first-offer wait follows: it coalesces instead", 0.5, True, False, False, 0.0),
    ("the polite side's wait follows", 2.0, True, True, False, 0.0),
    ("impolite, first offer to a Python peer: it waits for ours", 0.0, True, False, True, 0.0),
    ("polite, first offer to a Python peer without a wait: kept", 0.0, True, True, True, 0.01),
    ("first offer toward a browser, hold turned off: kept", 0.0, True, False, False, 0.01),
]


@pytest.mark.parametrize(("case", "first_wait", "first_offer", "polite", "defers", "debounce"),
                         DEBOUNCE_TABLE, ids=[row[0] for row in DEBOUNCE_TABLE])
def test_offer_debounce(case: str, first_wait: float, first_offer: bool, polite: bool,
                        defers: bool, debounce: float) -> None:
    got = offer_debounce(0.01, first_wait=first_wait, first_offer=first_offer, polite=polite,
                         remote_defers=defers)
    assert got == pytest.approx(debounce), case


def test_a_negative_debounce_is_none() -> None:
    assert offer_debounce(-1.0, first_wait=0.0, first_offer=False, polite=False,
                          remote_defers=False) == 0.0


def test_a_zero_delay_never_waits() -> None:
    assert first_offer_wait(polite=True, polite_delay=0.0, impolite_delay=0.5,
                            force_offer=False, offers_sent=0, remote_offer_seen=False,
                            has_something=True) == 0.0
    assert first_offer_wait(polite=False, polite_delay=2.0, impolite_delay=0.0,
                            force_offer=False, offers_sent=0, remote_offer_seen=False,
                            has_something=True) == 0.0


# What a browser does with the m-lines of an offer it receives (Chromium, JSEP 5.10): its own
# addTrack transceivers are matched only to m-lines that let it send, and a receiver knows the
# sender's track id only on a transceiver the offer created. Toward a browser our tracks must
# therefore never ride the remote's m-lines and must be offered sendonly while the remote does
# not send there. A Python remote (aiortc) takes the msid track id from an answer as well: our
# m-lines are offered sendrecv to it, and our answer to its offer carries our tracks.
@pytest.mark.parametrize(("case", "by_remote", "local", "remote", "python", "direction"), [
    ("the remote's m-line, it sends", True, False, True, False, "recvonly"),
    ("the remote's m-line, it stopped sending", True, False, False, False, "recvonly"),
    ("a Python remote's m-line, nothing of ours on it", True, False, True, True, "recvonly"),
    ("a Python remote's m-line carrying our track, it sends too", True, True, True, True,
     "sendrecv"),
    ("a Python remote's m-line carrying our track, it stopped", True, True, False, True,
     "sendonly"),
    ("ours, only we send: not matchable by a browser's addTrack", False, True, False, False,
     "sendonly"),
    ("ours, only we send, to a Python remote: its answer may carry its track", False, True,
     False, True, "sendrecv"),
    ("ours, and the remote reused it for a track of its own", False, True, True, False,
     "sendrecv"),
    ("ours, track removed, the remote still sends on it", False, False, True, False,
     "recvonly"),
    ("ours, track removed, nobody sends", False, False, False, False, "inactive"),
    ("ours, track removed, nobody sends, Python remote", False, False, False, True,
     "inactive"),
])
def test_transceiver_direction(case: str, by_remote: bool, local: bool, remote: bool,
                               python: bool, direction: str) -> None:
    assert transceiver_direction(created_by_remote=by_remote, local_sends=local,
                                 remote_sends=remote, remote_is_python=python) == direction, case


@pytest.mark.parametrize(
    ("case", "by_remote", "carried", "stopped", "answering_python", "receives", "allowed"), [
        ("created by the remote's offer", True, False, False, False, False, False),
        ("created by a browser's offer that would receive", True, False, False, False, True,
         False),
        ("a Python remote's offered m-line that receives, in our answer", True, False, False,
         True, True, True),
        ("a Python remote's sendonly m-line (an older roomwire peer)", True, False, False,
         True, False, False),
        ("a Python remote's m-line that carried a track of ours", True, True, False, True,
         True, False),
        ("a Python remote's m-line, stopped", True, False, True, True, True, False),
        ("ours, fresh", False, False, False, False, False, True),
        ("ours, carried another track (the remote knows that id)", False, True, False, False,
         False, False),
        ("ours, stopped", False, False, True, False, False, False),
    ])
def test_local_track_may_use(case: str, by_remote: bool, carried: bool, stopped: bool,
                             answering_python: bool, receives: bool, allowed: bool) -> None:
    assert local_track_may_use(created_by_remote=by_remote, has_carried_a_track=carried,
                               stopped=stopped, answering_python=answering_python,
                               remote_receives=receives) is allowed, case


def test_an_unattached_local_track_needs_an_offer() -> None:
    negotiated = [TransceiverView(False, "0", "recvonly", "recvonly")]
    assert not needs_offer(negotiated, has_sctp=False, sctp_mid=None)
    assert needs_offer(negotiated, has_sctp=False, sctp_mid=None, unattached_tracks=1)


# After answering from a rebuilt connection, does the remote discard our answer (it knew our old
# ICE credentials), so that an offer of ours must wait for its fresh one?
REMOTE_REBUILD_TABLE = [
    # (case, rebuilt, our old connection's remote ufrag, the offer's ufrag, expected)
    ("glare on a live connection: the offer is from the connection we talked to", True,
     "u1", "u1", True),
    ("our connection had failed, the remote renegotiated on its old one", True, "u1", "u1",
     True),
    ("glare on a first connection: the remote knows nothing of ours", True, None, "u1",
     False),
    ("the remote rebuilt first (new ufrag): its new connection takes our answer", True, "u1",
     "u2", False),
    ("an offer without a ufrag", True, "u1", None, False),
    ("answered on the current connection (no rebuild)", False, "u1", "u1", False),
]


@pytest.mark.parametrize(("case", "rebuilt", "old", "seen", "expected"), REMOTE_REBUILD_TABLE,
                         ids=[row[0] for row in REMOTE_REBUILD_TABLE])
def test_answer_forces_remote_rebuild(case: str, rebuilt: bool, old: str | None,
                                      seen: str | None, expected: bool) -> None:
    assert answer_forces_remote_rebuild(rebuilt=rebuilt, old_remote_ufrag=old,
                                        offered_ufrag=seen) is expected, case


HOLD_TABLE = [
    # (case, remote rebuild expected, connected, offers sent, wait)
    ("the remote will rebuild: wait for its fresh offer", True, False, 0, 4.0),
    ("the connection connected: the remote took our answer", True, True, 0, 0.0),
    ("already offered on this connection", True, False, 1, 0.0),
    ("an ordinary connection", False, False, 0, 0.0),
]


@pytest.mark.parametrize(("case", "expected", "connected", "sent", "wait"), HOLD_TABLE,
                         ids=[row[0] for row in HOLD_TABLE])
def test_remote_rebuild_hold(case: str, expected: bool, connected: bool, sent: int,
                             wait: float) -> None:
    got = remote_rebuild_hold(remote_rebuild_expected=expected, connected=connected,
                              offers_sent=sent, hold=4.0)
    assert got == pytest.approx(wait), case


def test_glare_on_a_live_connection_walked_through_the_rules() -> None:
    """Both sides of a live connection (a polite, b impolite, ICE ufrags a1/b1) renegotiate
    at once. Each step is what the rules tell one side to do; the walk ends with one
    connection on each side and no step where both replace theirs again."""
    # b ignores a's offer; a (polite) rebuilds (a2) and answers b's offer from it.
    assert decide_offer(offer(polite=False, sig="have-local-offer", conn="connected",
                              making=False, known="a1", seen="a1")).action is OfferAction.IGNORE
    glare = decide_offer(offer(polite=True, sig="have-local-offer", conn="connected",
                               known="b1", seen="b1"))
    assert (glare.action, glare.reason) == (OfferAction.REBUILD, "glare")
    # b's connection knew a1, so a's answer (a2) will not be taken: a holds its own offer.
    assert answer_forces_remote_rebuild(rebuilt=True, old_remote_ufrag="b1",
                                        offered_ufrag="b1")
    assert remote_rebuild_hold(remote_rebuild_expected=True, connected=False, offers_sent=0,
                               hold=4.0) > 0
    # b gets an answer with a2: it rebuilds (b2) and offers at once.
    assert decide_answer("have-local-offer", "a1", "a2").action is AnswerAction.REBUILD_AND_OFFER
    # a, still holding on a2 (stable, knows b1), gets b2's offer: rebuild (a3) and answer...
    restart = decide_offer(offer(polite=True, sig="stable", conn="new", known="b1", seen="b2"))
    assert (restart.action, restart.reason) == (OfferAction.REBUILD, "remote-restart")
    # ...and this answer is taken (b2 knows nothing of a yet), so a offers right after it.
    assert not answer_forces_remote_rebuild(rebuilt=True, old_remote_ufrag="b1",
                                            offered_ufrag="b2")
    assert decide_answer("have-local-offer", None, "a3").action is AnswerAction.ACCEPT
    # b2, stable and knowing a3, accepts a's offer; a accepts b2's answer: converged.
    assert decide_offer(offer(polite=False, sig="stable", conn="connected", known="a3",
                              seen="a3")).action is OfferAction.ACCEPT
    assert decide_answer("have-local-offer", "b2", "b2").action is AnswerAction.ACCEPT


# Which waiting local tracks get an m-line in the next offer, and in which order (an aiortc
# remote loses a second new m-line of a kind unless the first of that kind is BUNDLE's primary
# m-line or the kind is negotiated already).
NEW_MLINES_TABLE = [
    # (case, pending kinds, negotiated kinds, first m-lines of the connection, order)
    ("camera and screen first: video leads, all in one offer",
     ["audio", "video", "video"], set(), True, [1, 2, 0]),
    ("a camera alone keeps its order", ["audio", "video"], set(), True, [0, 1]),
    ("two cameras with microphones (a tie: the first kind leads): the second camera waits",
     ["audio", "video", "audio", "video"], set(), True, [0, 2, 1]),
    ("after the remote's offer (both kinds negotiated): everything",
     ["audio", "video", "video"], {"audio", "video"}, False, [0, 1, 2]),
    ("only video negotiated: one new audio m-line", ["audio", "audio", "video"], {"video"},
     False, [0, 2]),
    ("nothing negotiated, not the first m-lines: one per kind",
     ["video", "video", "audio"], set(), False, [0, 2]),
    ("nothing waiting", [], set(), True, []),
]


@pytest.mark.parametrize(("case", "pending", "negotiated", "first", "order"), NEW_MLINES_TABLE,
                         ids=[row[0] for row in NEW_MLINES_TABLE])
def test_new_mlines_this_offer(case: str, pending: list[str], negotiated: set[str],
                               first: bool, order: list[int]) -> None:
    assert new_mlines_this_offer(pending, negotiated, first_mlines=first) == order, case
