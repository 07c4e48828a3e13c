"""Engine races found with a browser on the other side (tests/browser): signals sent while the
signalling link is down, and the impolite side's first offer."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from roomwire.client.media import VideoSource
from roomwire.client.rtc.negotiation import (
    NegotiationTimings,
    PeerNegotiator,
    PeerState,
    SignallingUnavailableError,
)
from roomwire.client.rtc.remote_events import TrackEvent
from waiting import quiet_period, wait_for

TIMINGS = NegotiationTimings(debounce=0.01, polite_offer_delay=0.3, rebuild_interval=0.2,
                             answer_timeout=4.0, recovery_ladder=(0.0, 0.2),
                             recovery_probe=4.0, close_timeout=1.0)


class Link:
    """Two negotiators on one in-memory signalling link that can go down."""

    def __init__(self, timings: NegotiationTimings = TIMINGS, *,
                 browser_meta: bool = False) -> None:
        self.up = True
        self.browser_meta = browser_meta
        """Send a's track metadata as the official JS SDK does (trackId and metadata only)."""
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.sent_at: list[float] = []  # time.monotonic() of each entry of ``sent``
        self.a = PeerNegotiator("a", "b", self._sender("a"), timings=timings)  # polite
        self.b = PeerNegotiator("b", "a", self._sender("b"), timings=timings)  # impolite
        self.events: dict[str, list[Any]] = {"a": [], "b": []}
        self.a.add_listener(self.events["a"].append)
        self.b.add_listener(self.events["b"].append)

    def _sender(self, src: str) -> Any:
        async def send(data: dict[str, Any]) -> None:
            if not self.up:
                raise SignallingUnavailableError("the client is not connected")
            payload = json.loads(json.dumps(data))
            meta = payload.get("__meteredTrackMeta")
            if src == "a" and self.browser_meta and meta is not None:
                payload = {"__meteredTrackMeta": {
                    k: v for k, v in meta.items() if k in ("trackId", "metadata")}}
            self.sent.append((src, payload))
            self.sent_at.append(time.monotonic())
            await asyncio.sleep(0)
            (self.b if src == "a" else self.a).on_remote_signal(payload)

        return send

    def kinds(self, src: str) -> list[str]:
        out = []
        for s, data in self.sent:
            if s != src:
                continue
            if "__meteredTrackMeta" in data:
                out.append("meta")
            elif data.get("type") == "rtc-description":
                out.append(data["description"]["type"])
            else:
                out.append("ice")
        return out

    def first_at(self, src: str, kind: str) -> float | None:
        """When ``src`` first sent a signal of ``kind`` (meta/offer/answer/ice), or None."""
        times = [t for (s, _), t in zip(self.sent, self.sent_at, strict=True) if s == src]
        return next((t for k, t in zip(self.kinds(src), times, strict=True) if k == kind), None)

    async def close(self) -> None:
        await asyncio.gather(self.a.close(), self.b.close())


async def wait_connected(*negs: PeerNegotiator, timeout: float = 6.0) -> None:
    await wait_for(lambda: [n.state for n in negs], timeout, "both sides connect",
                   until=lambda states: all(s is PeerState.CONNECTED for s in states),
                   step=0.02)


async def test_signals_sent_while_signalling_is_down_are_held_and_sent_on_resume() -> None:
    link = Link()
    cam_a, cam_b = VideoSource(160, 120, fps=15), VideoSource(160, 120, fps=15)
    try:
        link.up = False
        link.b.hold_reconnecting()  # as MeteredPeer does when its socket drops
        link.b.add_track(cam_b, "sb", {"role": "camera"})
        link.a.add_track(cam_a, "sa", {"role": "camera"})
        # Both would have tried to offer by polite_offer_delay (the longer of the two waits).
        await asyncio.sleep(quiet_period(TIMINGS.polite_offer_delay + TIMINGS.debounce))
        # Nothing of b's went out (the offer is held, not lost); a's offer could not either.
        assert link.kinds("b") == []
        assert link.b.state is PeerState.RECONNECTING
        link.up = True
        link.a.resume_signals()  # a's offer (the polite side's) failed while down: held too
        link.b.resync_state()  # the reconcile: held signals go out in order
        await wait_connected(link.a, link.b)
        assert link.kinds("b")[0] == "meta"
        for neg in (link.a, link.b):
            tracks = [e for e in link.events[neg.local_id] if isinstance(e, TrackEvent)]
            # The last track event is of the current connection (a live track of it).
            assert tracks and tracks[-1].track in [t.track for t in neg.remote_tracks]
    finally:
        cam_a.stop()
        cam_b.stop()
        await link.close()


async def test_impolite_side_answers_an_offer_that_comes_right_after_it_is_ready() -> None:
    """Both sides have media; the polite side offers at once (like a browser does on
    ``negotiationneeded``) a little after the impolite side is ready: the impolite side
    answers it instead of crossing it with its own offer (no collision, no rebuild)."""
    # The impolite side waits 2 s for an offer; a's offer follows as soon as that wait is
    # seen under way, so a loaded machine cannot turn "right after" into "after it gave up".
    timings = NegotiationTimings(debounce=0.0, polite_offer_delay=0.0, impolite_offer_delay=2.0,
                                 rebuild_interval=0.2, answer_timeout=4.0,
                                 recovery_ladder=(0.0, 0.2), recovery_probe=4.0,
                                 close_timeout=1.0)
    link = Link(timings, browser_meta=True)  # a plays the browser
    cam_a, cam_b = VideoSource(160, 120, fps=15), VideoSource(160, 120, fps=15)
    try:
        link.b.add_track(cam_b, "sb", {"role": "camera"})
        await wait_for(lambda: link.b.holding_first_offer, timings.impolite_wait,
                       "b waits for an offer", step=0.01)
        link.a.add_track(cam_a, "sa", {"role": "camera"})
        await wait_connected(link.a, link.b)
        # b answered a's offer instead of crossing it; its own track then goes out in an
        # offer of its own, after that answer (never on the m-line a offered).
        b_sdp = [k for k in link.kinds("b") if k in ("offer", "answer")]
        assert "offer" in link.kinds("a") and b_sdp == ["answer", "offer"], link.kinds("b")
        assert link.a.generation == 0 and link.b.generation == 0  # no glare rebuild
    finally:
        cam_a.stop()
        cam_b.stop()
        await link.close()


def test_impolite_wait_defaults_below_the_polite_wait() -> None:
    assert NegotiationTimings().impolite_wait == 0.5
    assert NegotiationTimings(polite_offer_delay=1.0).impolite_wait == 0.25
    assert NegotiationTimings(polite_offer_delay=0.0).impolite_wait == 0.0
    assert NegotiationTimings(impolite_offer_delay=0.0).impolite_wait == 0.0


# The impolite side holds its first offer for ``impolite_offer_delay`` (for a browser's offer)
# unless the remote is a Python peer, known by the ``kind``/``streamId`` of its track metadata:
# a Python peer never offers first when polite, so the hold would only delay the call. The
# hold here (3 s) is far above what an offer takes on a loaded machine (tens of ms).
HOLD = NegotiationTimings(debounce=0.01, polite_offer_delay=6.0, impolite_offer_delay=3.0,
                          rebuild_interval=0.2, answer_timeout=4.0, recovery_ladder=(0.0, 0.2),
                          recovery_probe=4.0, close_timeout=1.0)


async def test_python_metadata_cuts_the_impolite_hold_short() -> None:
    """The impolite side starts holding its offer; the polite Python side's labelled track
    arrives (metadata with kind and streamId first, before the polite side starts deferring):
    the impolite side offers at once instead of after its hold, and the polite one answers
    (no offer of its own crossed it)."""
    link = Link(HOLD)
    cam_a, cam_b = VideoSource(160, 120, fps=15), VideoSource(160, 120, fps=15)
    try:
        link.b.add_track(cam_b, "sb", {"role": "camera"})
        # The hold must be under way for a's metadata to cut it short (3 s long: a loaded
        # machine starts it well within that).
        await wait_for(lambda: link.b.holding_first_offer, HOLD.impolite_wait,
                       "b holds its first offer", step=0.01)
        link.a.add_track(cam_a, "sa", {"role": "camera"})
        a_added = time.monotonic()
        await wait_for(lambda: link.first_at("b", "offer"), 6.0, "b offers",
                       until=lambda t: t is not None, step=0.01)
        offered = link.first_at("b", "offer")
        meta = link.first_at("a", "meta")
        assert offered is not None and meta is not None
        assert link.kinds("a")[0] == "meta" and meta >= a_added
        assert offered - a_added < HOLD.impolite_wait / 2, (offered - a_added, link.kinds("b"))
        await wait_connected(link.a, link.b)
        a_sdp = [k for k in link.kinds("a") if k in ("offer", "answer")]
        assert a_sdp[0] == "answer", link.kinds("a")
        assert link.a.generation == 0 and link.b.generation == 0  # no glare rebuild
    finally:
        cam_a.stop()
        cam_b.stop()
        await link.close()


async def offers_without_hold(link: Link, since: float) -> None:
    """b's first offer leaves well within half its hold of ``since`` (no hold was waited)."""
    await wait_for(lambda: link.first_at("b", "offer"), 6.0, "b offers",
                   until=lambda t: t is not None, step=0.01)
    offered = link.first_at("b", "offer")
    assert offered is not None
    assert offered - since < HOLD.impolite_wait / 2, (offered - since, link.kinds("b"))


async def test_a_remote_known_as_python_gets_our_first_offer_without_a_hold() -> None:
    """The metadata came before the impolite side had anything to offer: its first offer goes
    out without any hold."""
    link = Link(HOLD)
    cam_a, cam_b = VideoSource(160, 120, fps=15), VideoSource(160, 120, fps=15)
    try:
        link.a.add_track(cam_a, "sa", {"role": "camera"})
        await wait_for(lambda: link.b.metadata_cache.entry(cam_a.id), 3.0,
                       "b has applied a's metadata", step=0.01)
        link.b.add_track(cam_b, "sb", {"role": "camera"})
        b_added = time.monotonic()
        await offers_without_hold(link, b_added)
        await wait_connected(link.a, link.b)
    finally:
        cam_a.stop()
        cam_b.stop()
        await link.close()


@pytest.mark.parametrize("signal", [
    # track metadata as the official JS SDK sends it: trackId and metadata only
    {"__meteredTrackMeta": {"trackId": "browser-cam", "metadata": {"role": "camera"}}},
    # a clear as the official SDKs send it: trackId only
    {"__meteredTrackMeta": {"trackId": "browser-cam"}},
], ids=["browser-metadata", "clear-without-kind"])
async def test_signals_without_kind_keep_the_impolite_hold(signal: dict[str, Any]) -> None:
    """Neither says the sender is a Python peer, so the hold for a browser's offer stays: a
    browser offers at once even when polite, and answering its offer is what keeps its
    connection from wedging in a collision."""
    link = Link(HOLD)
    cam_b = VideoSource(160, 120, fps=15)
    try:
        link.b.add_track(cam_b, "sb", {"role": "camera"})
        b_added = time.monotonic()
        assert link.b.on_remote_signal(signal)
        await wait_for(lambda: link.first_at("b", "offer"), HOLD.impolite_wait + 6.0,
                       "b offers after its hold", until=lambda t: t is not None, step=0.02)
        offered = link.first_at("b", "offer")
        assert offered is not None
        assert offered - b_added >= HOLD.impolite_wait, (offered - b_added, link.kinds("b"))
    finally:
        cam_b.stop()
        await link.close()


async def test_an_unlabelled_python_track_spares_the_hold_and_rides_the_answer() -> None:
    """A polite roomwire peer whose only track has no metadata sends a clear with its kind and
    stream id: the impolite side offers at once instead of after its hold (whether the clear
    is in before its hold starts or cuts it short), and the polite side's track travels in
    its answer (one round, no offer of its own)."""
    link = Link(HOLD)
    cam_a, cam_b = VideoSource(160, 120, fps=15), VideoSource(160, 120, fps=15)
    try:
        link.a.add_track(cam_a, "sa", None)
        sent = await wait_for(lambda: [d for s, d in link.sent if s == "a"], 3.0,
                              "a announces its track", step=0.01)
        assert sent[0] == {"__meteredTrackMeta": {"trackId": cam_a.id, "kind": "video",
                                                  "streamId": "sa"}}, sent
        link.b.add_track(cam_b, "sb", {"role": "camera"})
        b_added = time.monotonic()
        await offers_without_hold(link, b_added)
        await wait_connected(link.a, link.b)
        tracks = await wait_for(
            lambda: [e for e in link.events["b"] if isinstance(e, TrackEvent)], 6.0,
            "b receives a's camera", until=bool, step=0.02)
        assert [t.track.id for t in tracks] == [cam_a.id]
        assert tracks[0].metadata is None  # it had none: the clear labelled nothing
        assert [k for k in link.kinds("a") if k in ("offer", "answer")] == ["answer"]
    finally:
        cam_a.stop()
        cam_b.stop()
        await link.close()
