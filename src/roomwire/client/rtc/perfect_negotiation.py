"""The decisions of perfect negotiation, as plain functions over plain values.

``PeerNegotiator`` (``negotiation.py``) asks these functions what to do and only does the I/O
(aiortc calls, queues, timers). Nothing here imports asyncio or aiortc, so every rule is
table-tested without a socket (``tests/unit/test_perfect_negotiation.py``). The rules and
why they are so: docs/webrtc-notes.md, "Perfect negotiation, as a table".

States are the W3C strings aiortc reports: ``signalingState`` (``stable``,
``have-local-offer``, ``have-remote-offer``, ``closed``) and ``connectionState`` (``new``,
``connecting``, ``connected``, ``failed``, ``closed``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "AnswerAction",
    "AnswerDecision",
    "CandidateAction",
    "CandidateView",
    "OfferAction",
    "OfferDecision",
    "OfferView",
    "TransceiverView",
    "answer_forces_remote_rebuild",
    "candidate_in_generation",
    "decide_answer",
    "decide_candidate",
    "decide_offer",
    "first_offer_wait",
    "impolite_wait",
    "is_polite",
    "local_track_may_use",
    "needs_offer",
    "new_mlines_this_offer",
    "offer_debounce",
    "outbound_still_current",
    "remote_defers_first_offer",
    "remote_rebuild_hold",
    "transceiver_direction",
]


def is_polite(local_id: str, remote_id: str) -> bool:
    """The polite side (the one that yields in a collision) has the smaller peer id; both
    sides compute the same answer from the same two ids."""
    return local_id < remote_id


# -- a remote offer ---------------------------------------------------------------------------


class OfferAction(StrEnum):
    IGNORE = "ignore"
    """Impolite side of a collision: drop the offer (the remote yields and answers ours)."""
    ACCEPT = "accept"
    """Apply it on the current connection and answer."""
    REBUILD = "rebuild"
    """Swap in a fresh connection (rate-limited), then apply it there and answer."""


@dataclass(frozen=True, slots=True)
class OfferView:
    """What the negotiator knows when a remote offer arrives."""

    polite: bool
    signaling_state: str
    connection_state: str
    making_offer: bool
    """An offer of ours is being created/applied right now."""
    known_ufrag: str | None
    """The remote ICE ufrag of the current connection (None before any remote description)."""
    offered_ufrag: str | None
    """The ICE ufrag in the offer (None when it carries none)."""


@dataclass(frozen=True, slots=True)
class OfferDecision:
    action: OfferAction
    reason: str | None = None
    """For ``REBUILD``: ``connection-closed``/``connection-failed``, ``glare`` or
    ``remote-restart`` (the ``reason`` of the ``ConnectionResetEvent``)."""


def decide_offer(view: OfferView) -> OfferDecision:
    """What to do with a remote offer, in this order:

    1. the connection is dead (signalling ``closed``, connection ``failed``/``closed``):
       rebuild, whatever our politeness (a dead connection cannot answer);
    2. a collision (we are making an offer, or signalling is not ``stable``): the impolite
       side ignores the offer; the polite side rebuilds (aiortc cannot roll back) and answers
       from the fresh connection (``glare``);
    3. the offer carries another ICE ufrag than the one we know: the remote rebuilt its side,
       and ours cannot follow new ICE credentials: rebuild (``remote-restart``);
    4. otherwise accept it on the current connection.
    """
    if view.signaling_state == "closed":
        return OfferDecision(OfferAction.REBUILD, "connection-closed")
    if view.connection_state in ("failed", "closed"):
        return OfferDecision(OfferAction.REBUILD, "connection-" + view.connection_state)
    if view.making_offer or view.signaling_state != "stable":
        if not view.polite:
            return OfferDecision(OfferAction.IGNORE)
        return OfferDecision(OfferAction.REBUILD, "glare")
    if _ufrag_changed(view.known_ufrag, view.offered_ufrag):
        return OfferDecision(OfferAction.REBUILD, "remote-restart")
    return OfferDecision(OfferAction.ACCEPT)


def _ufrag_changed(known: str | None, seen: str | None) -> bool:
    return known is not None and seen is not None and seen != known


def answer_forces_remote_rebuild(*, rebuilt: bool, old_remote_ufrag: str | None,
                                 offered_ufrag: str | None) -> bool:
    """Whether our answer to a remote offer will make the remote rebuild its connection.

    It does when we answer from a connection rebuilt for that offer (``glare``, or a dead
    connection) and the offer came from the remote connection our old one had negotiated
    with (its ICE ufrag is the one our old connection knew): that remote connection knows our
    old ICE credentials, and an aiortc remote cannot follow the new ones our answer carries,
    so it discards the answer, rebuilds and offers afresh (``decide_answer``). An offer with
    another ufrag (the remote rebuilt first) comes from a connection that knows nothing of
    ours yet, and takes our answer."""
    return rebuilt and old_remote_ufrag is not None and offered_ufrag == old_remote_ufrag


# -- a remote answer --------------------------------------------------------------------------


class AnswerAction(StrEnum):
    DROP = "drop"
    """Stale: we have no offer out (it was replaced, or already answered)."""
    ACCEPT = "accept"
    """Apply it; the collision (if any) is over."""
    REBUILD_AND_OFFER = "rebuild-and-offer"
    """The remote answered from a rebuilt connection (it was the polite side of a collision):
    ours cannot follow new ICE credentials, so start afresh and offer at once."""


@dataclass(frozen=True, slots=True)
class AnswerDecision:
    action: AnswerAction
    reason: str | None = None


def decide_answer(signaling_state: str, known_ufrag: str | None,
                  answered_ufrag: str | None) -> AnswerDecision:
    """What to do with a remote answer."""
    if signaling_state != "have-local-offer":
        return AnswerDecision(AnswerAction.DROP)
    if _ufrag_changed(known_ufrag, answered_ufrag):
        return AnswerDecision(AnswerAction.REBUILD_AND_OFFER, "remote-restart")
    return AnswerDecision(AnswerAction.ACCEPT)


# -- a remote candidate -----------------------------------------------------------------------


class CandidateAction(StrEnum):
    APPLY = "apply"
    """Add it to the current connection now."""
    HOLD = "hold"
    """Keep it until the next remote description (then applied in order, filtered by ufrag)."""
    DROP = "drop"
    """Malformed, over the budget, over the hold cap, or an end-of-candidates that would end
    the wrong candidates."""
    END = "end"
    """Signal the end of the remote's candidates to the current connection."""


@dataclass(frozen=True, slots=True)
class CandidateView:
    """What the negotiator knows when an ``rtc-ice`` signal arrives."""

    malformed: bool
    end_of_candidates: bool
    has_remote_description: bool
    ignoring_offer: bool
    """The current connection ignored a colliding offer (impolite) and no answer came yet."""
    within_budget: bool = True
    """``CandidateBudget.take`` accepted it (only asked for a well-formed candidate)."""
    held: int = 0
    hold_cap: int = 200


def decide_candidate(view: CandidateView) -> CandidateAction:
    """What to do with a remote candidate:

    * malformed: drop (silently: it is still a signal, never customer data);
    * end-of-candidates: pass it on only with a remote description and no ignored offer (while
      a colliding offer is ignored it may end that offer's candidates only, not those of the
      answer the remote sends next), else drop;
    * over the per-generation budget: drop;
    * no remote description yet, or a colliding offer ignored: hold (the remote, polite, rolls
      back and answers ours; what follows may belong to that answer), up to ``hold_cap``;
    * otherwise apply.
    """
    if view.malformed:
        return CandidateAction.DROP
    if view.end_of_candidates:
        if view.has_remote_description and not view.ignoring_offer:
            return CandidateAction.END
        return CandidateAction.DROP
    if not view.within_budget:
        return CandidateAction.DROP
    if not view.has_remote_description or view.ignoring_offer:
        return CandidateAction.HOLD if view.held < view.hold_cap else CandidateAction.DROP
    return CandidateAction.APPLY


def candidate_in_generation(candidate_ufrag: str | None, remote_ufrag: str | None) -> bool:
    """Whether a candidate (applied now, or held until a description) belongs to the current
    remote ICE generation; one naming another ufrag is dropped. A candidate or a description
    without a ufrag matches anything."""
    return not (candidate_ufrag and remote_ufrag and candidate_ufrag != remote_ufrag)


def outbound_still_current(signal_generation: int | None, current_generation: int) -> bool:
    """Whether a queued outbound signal (held while signalling was down, across reconnects)
    is still worth sending: a description or candidate of a connection replaced meanwhile is
    dropped; ``None`` marks signals sent whatever happens (track metadata)."""
    return signal_generation is None or signal_generation == current_generation


# -- whether to offer -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransceiverView:
    stopped: bool
    mid: str | None
    direction: str
    current_direction: str | None


def needs_offer(transceivers: Iterable[TransceiverView], *, has_sctp: bool,
                sctp_mid: str | None, unattached_tracks: int = 0) -> bool:
    """Whether the current connection has something the remote has not agreed to yet: a local
    track not on a transceiver yet (it gets one in our next offer), a data channel transport
    or a transceiver never negotiated (no mid), or a negotiated transceiver whose wish to
    send differs from what was agreed."""
    if unattached_tracks or (has_sctp and sctp_mid is None):
        return True
    for t in transceivers:
        if t.stopped:
            continue
        if t.mid is None:
            return True
        if t.current_direction is None:
            continue
        want_send = t.direction in ("sendrecv", "sendonly")
        sends = t.current_direction in ("sendrecv", "sendonly")
        if want_send != sends:
            return True
    return False


def impolite_wait(impolite_offer_delay: float | None, polite_offer_delay: float) -> float:
    """How long the impolite side waits for the remote's first offer. A browser offers at
    once even when polite, and answering its offer avoids a collision that can wedge its
    connection; the default (a quarter of the polite wait, at most 0.5 s) stays well below the
    polite side's wait, so a polite Python peer still gets our offer first."""
    if impolite_offer_delay is not None:
        return max(0.0, impolite_offer_delay)
    return min(0.5, max(0.0, polite_offer_delay) / 4)


def remote_defers_first_offer(*, meta_kind: str | None, meta_stream_id: str | None) -> bool:
    """Whether a track-metadata message says its sender is a Python peer, which never offers
    first when polite (it defers its first offer, ``polite_offer_delay`` for ours, 2 s for
    the official Python SDK, waiting for the impolite side's).

    Both Python SDKs (the official ``metered-realtime`` and ours) put ``kind`` and
    ``streamId`` in ``__meteredTrackMeta``; the official JS SDK (a browser, which offers at
    once even when polite) sends ``trackId`` and ``metadata`` only. Either field is enough."""
    return meta_kind is not None or meta_stream_id is not None


def first_offer_wait(*, polite: bool, polite_delay: float, impolite_delay: float,
                     force_offer: bool, offers_sent: int, remote_offer_seen: bool,
                     has_something: bool, remote_defers: bool = False) -> float:
    """How long to wait for the remote's offer before offering ourselves (0: offer now). Only
    the first offer of a connection waits, and only when there is something to negotiate and
    no one asked to offer at once: the polite side defers (``polite_delay``) so the two offers
    do not collide, and the impolite side waits a little (``impolite_delay``) for a browser's
    offer, unless the remote is known to defer its own (``remote_defers``: a Python peer,
    ``remote_defers_first_offer``), when there is no offer to wait for."""
    wait = polite_delay if polite else impolite_delay
    if not polite and remote_defers:
        return 0.0
    if wait <= 0 or force_offer or offers_sent or remote_offer_seen or not has_something:
        return 0.0
    return wait


def offer_debounce(debounce: float, *, first_wait: float, first_offer: bool, polite: bool,
                   remote_defers: bool) -> float:
    """How long the negotiation loop lets changes gather before it considers an offer.

    The debounce coalesces a burst of changes (two tracks, then a data channel) into one
    offer. It is skipped:

    * when a first-offer wait follows (``first_wait`` > 0, ``first_offer_wait``): that wait
      is longer and ends only on a remote signal (its offer, or a Python peer's track
      metadata), by which time the burst that started the negotiation is in;
    * on the impolite side's first offer of a connection toward a Python peer
      (``remote_defers``): it waits for our offer, so every millisecond here is added to the
      call's setup.

    Otherwise (a renegotiation, a polite or browser-facing offer without a wait) it is kept."""
    if first_wait > 0:
        return 0.0
    if first_offer and remote_defers and not polite:
        return 0.0
    return max(0.0, debounce)


def remote_rebuild_hold(*, remote_rebuild_expected: bool, connected: bool,
                        offers_sent: int, hold: float) -> float:
    """How long an offer of ours waits on a connection whose answer the remote is expected
    to discard (``answer_forces_remote_rebuild``); 0: offer now.

    Our tracks ride the remote's m-lines only in an answer to a Python remote's offer, so
    answering is usually followed by an offer of our own. Made on such a connection it would
    reach the remote's rebuilt connection, which answers it with ICE credentials of its own:
    new ones to us, so we would rebuild, offer again, and the two sides would keep replacing
    each other's connection. So the offer waits, up to ``hold``, for the remote's fresh offer
    (which replaces this connection; the offer is then made on the next one) or for this
    connection to connect (a remote that does follow new credentials, as a browser may, took
    the answer after all). Once it has offered on the connection, nothing waits."""
    if not remote_rebuild_expected or connected or offers_sent:
        return 0.0
    return max(0.0, hold)


# -- which m-line carries what ----------------------------------------------------------------
#
# A receiver learns a track's id from the msid of its m-section only when the receiving side
# creates that transceiver from the remote's offer: Chromium gives such a receiver track the
# msid track id, but a transceiver it created itself (``addTrack`` before joining) and matched
# to a remote m-line keeps a receiver track id of its own. The official JS SDK looks track
# metadata up by the receiver's ``track.id``, so a label reaches it only for tracks that
# arrive on an m-line the receiver did not create. Hence: toward a browser our tracks travel
# only on m-lines we offer, and we offer them ``sendonly`` (a browser associates its own
# ``addTrack`` transceivers only with a remote m-section that would let it send: sendrecv or
# recvonly).
#
# A Python remote (``remote_defers_first_offer``) is aiortc: it gives every receiver track the
# msid track id of the description that announces it, an answer as well as an offer. So toward
# it our offer's m-lines are ``sendrecv`` and our answer puts our tracks on its offered m-lines
# of the same kind: one offer/answer round carries both sides' media.


def local_track_may_use(*, created_by_remote: bool, has_carried_a_track: bool,
                        stopped: bool, answering_python: bool = False,
                        remote_receives: bool = False) -> bool:
    """Whether a local track may be attached to an existing transceiver:

    * one we created for it and that never carried another track (one reused for another
      track keeps the first track's receiver id on the remote side, so the new track's label
      would not be found);
    * one the remote created only while answering an offer of a Python remote
      (``answering_python``) whose m-line lets it receive (``remote_receives``: sendrecv or
      recvonly) and that never carried a track of ours; never otherwise (toward a browser its
      m-line is the remote's own addTrack slot, whose receiver id the remote app does not
      know)."""
    if stopped or has_carried_a_track:
        return False
    if not created_by_remote:
        return True
    return answering_python and remote_receives


def transceiver_direction(*, created_by_remote: bool, local_sends: bool,
                          remote_sends: bool, remote_is_python: bool = False) -> str:
    """The direction to give a transceiver before an offer or an answer.

    * one the remote created: ``recvonly`` (we never send on a browser's m-lines; an answer
      narrows it to ``inactive`` when the remote stops sending); carrying a local track (an
      answer to a Python remote, ``local_track_may_use``): ``sendrecv`` while the remote sends
      there too, else ``sendonly``;
    * one of ours: ``sendonly`` while only we send (so a browser cannot match its own
      transceiver to it), ``sendrecv`` once the remote sends on it too (a browser's
      ``addTrack`` may reuse our m-line for a later track: receive it) or when the remote is a
      Python peer (its answer may carry its tracks on our m-line); without a local track
      ``recvonly`` or ``inactive`` likewise.
    """
    if created_by_remote:
        if not local_sends:
            return "recvonly"
        return "sendrecv" if remote_sends else "sendonly"
    if local_sends:
        return "sendrecv" if remote_sends or remote_is_python else "sendonly"
    return "recvonly" if remote_sends else "inactive"


def new_mlines_this_offer(pending_kinds: Sequence[str], negotiated_kinds: Set[str], *,
                          first_mlines: bool) -> list[int]:
    """Which local tracks waiting for an m-line (their kinds, in order) get one in the next
    offer, and in which order: indexes into ``pending_kinds``.

    An aiortc receiver (the official Python SDK, an older roomwire peer) with the default
    bundle policy puts a second new m-line of a kind on the first one's pre-BUNDLE transport;
    when that first one is not BUNDLE's primary m-line (the first of the description), BUNDLE
    closes that transport and the second m-line's track never arrives (audio, video, video).
    So:

    * ``first_mlines`` (the connection has no m-line yet, our offer's first m-line becomes the
      primary one): the kind with the most tracks waiting (the first such in a tie) goes
      first, all its tracks; they share the primary transport on the remote;
    * a kind the connection has negotiated already: every track (the remote's new m-lines
      share its negotiated, bundled one);
    * any other kind: one track per offer; the others follow in the next offer, after the
      answer (a camera and a screen with one microphone fit in one offer; two microphones and
      two cameras take two)."""
    order: list[int] = []
    counts: dict[str, int] = {}
    for kind in pending_kinds:
        counts[kind] = counts.get(kind, 0) + 1
    primary = max(counts, key=lambda k: counts[k]) if first_mlines and counts else None
    if primary is not None:
        order = [i for i, kind in enumerate(pending_kinds) if kind == primary]
    started: set[str] = set()
    for i, kind in enumerate(pending_kinds):
        if kind == primary:
            continue
        if kind in negotiated_kinds:
            order.append(i)
        elif kind not in started:
            started.add(kind)
            order.append(i)
    return order
