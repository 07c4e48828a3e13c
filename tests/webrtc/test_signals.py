"""The signal envelopes (docs/protocol.md): building, classifying, caps, metadata cache."""

from __future__ import annotations

import json
from typing import Any

import pytest

from roomwire.client.rtc.signals import (
    MAX_CANDIDATE_CHARS,
    CandidateBudget,
    DescriptionSignal,
    IceCandidateInit,
    IceSignal,
    TrackMeta,
    TrackMetadataCache,
    build_description,
    build_end_of_candidates,
    build_ice,
    build_track_meta,
    build_track_meta_clear,
    classify,
    has_reserved_key,
)

CAND = "candidate:842163049 1 udp 1677729535 127.0.0.1 50000 typ host generation 0"


def test_builders_have_the_exact_wire_shapes() -> None:
    assert build_description("offer", "v=0\r\n") == {
        "type": "rtc-description", "description": {"type": "offer", "sdp": "v=0\r\n"}}
    assert build_end_of_candidates() == {"type": "rtc-ice", "candidate": None}
    assert build_ice(None) == {"type": "rtc-ice", "candidate": None}
    assert build_ice(IceCandidateInit(CAND, "0", 0, "abcd")) == {
        "type": "rtc-ice",
        "candidate": {"candidate": CAND, "sdpMid": "0", "sdpMLineIndex": 0,
                      "usernameFragment": "abcd"},
    }
    assert build_ice(IceCandidateInit(CAND, None, 1))["candidate"] == {
        "candidate": CAND, "sdpMid": None, "sdpMLineIndex": 1, "usernameFragment": None}
    assert build_track_meta("t1", {"role": "camera"}, kind="video", stream_id="s1") == {
        "__meteredTrackMeta": {"trackId": "t1", "metadata": {"role": "camera"},
                               "kind": "video", "streamId": "s1"}}
    assert build_track_meta("t1", {}) == {"__meteredTrackMeta": {"trackId": "t1",
                                                                  "metadata": {}}}
    assert build_track_meta_clear("t1") == {"__meteredTrackMeta": {"trackId": "t1"}}
    with pytest.raises(ValueError):
        build_description("rollback", "")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        build_track_meta_clear("")


def test_round_trip_through_json() -> None:
    """What a builder sends is read back, through JSON, as the very signal it was built from."""
    cases: list[tuple[dict[str, Any], object]] = [
        (build_description("answer", "sdp"), DescriptionSignal("answer", "sdp")),
        (build_end_of_candidates(), IceSignal(None)),
        (build_ice(IceCandidateInit(CAND, "0", 0)),
         IceSignal(IceCandidateInit(CAND, "0", 0, None))),
        (build_ice(IceCandidateInit(CAND, None, 3, "uf")),
         IceSignal(IceCandidateInit(CAND, None, 3, "uf"))),
        (build_track_meta("t", {"a": [1, 2]}, kind="audio", stream_id="s"),
         TrackMeta("t", {"a": [1, 2]}, "audio", "s")),
        (build_track_meta("t", {}), TrackMeta("t", {})),
        (build_track_meta_clear("t"), TrackMeta("t")),
    ]
    for msg, signal in cases:
        assert classify(json.loads(json.dumps(msg))) == signal, msg


def test_classify_descriptions() -> None:
    assert classify(build_description("offer", "x")) == DescriptionSignal("offer", "x")
    assert classify(build_description("answer", "y")) == DescriptionSignal("answer", "y")
    # Not recognised: those are customer data.
    for bad in (
        {"type": "rtc-description", "description": {"type": "rollback", "sdp": ""}},
        {"type": "rtc-description", "description": {"type": "pranswer", "sdp": "x"}},
        {"type": "rtc-description", "description": {"type": "offer"}},
        {"type": "rtc-description", "description": {"type": "offer", "sdp": 5}},
        {"type": "rtc-description", "description": "v=0"},
        {"type": "rtc-description"},
    ):
        assert classify(bad) is None, bad


def test_classify_ice() -> None:
    end = classify({"type": "rtc-ice", "candidate": None})
    assert isinstance(end, IceSignal) and end.end_of_candidates
    empty = classify({"type": "rtc-ice", "candidate": {"candidate": "", "sdpMid": "0",
                                                       "sdpMLineIndex": 0}})
    assert isinstance(empty, IceSignal) and empty.end_of_candidates
    sig = classify({"type": "rtc-ice", "candidate": {"candidate": CAND, "sdpMid": "0",
                                                     "sdpMLineIndex": 0,
                                                     "usernameFragment": "uf"}})
    assert sig == IceSignal(IceCandidateInit(CAND, "0", 0, "uf"))
    assert isinstance(sig, IceSignal) and sig.candidate is not None
    assert sig.candidate.sdp_fragment == CAND[len("candidate:"):]
    only_index = classify({"type": "rtc-ice", "candidate": {"candidate": CAND,
                                                            "sdpMLineIndex": 2}})
    assert only_index == IceSignal(IceCandidateInit(CAND, None, 2, None))
    # No candidate key at all, or a non-object: customer data.
    assert classify({"type": "rtc-ice"}) is None
    assert classify({"type": "rtc-ice", "candidate": "x"}) is None
    assert classify({"type": "rtc-ice", "candidate": 3}) is None


@pytest.mark.parametrize("cand", [
    {"candidate": 5, "sdpMid": "0"},
    {"candidate": CAND},                                    # neither mid nor index
    {"candidate": CAND, "sdpMid": 0},
    {"candidate": CAND, "sdpMLineIndex": "0"},
    {"candidate": CAND, "sdpMLineIndex": True},
    {"candidate": CAND, "sdpMLineIndex": -1},
    {"candidate": CAND, "sdpMid": "0", "usernameFragment": 7},
    {"candidate": "c" * (MAX_CANDIDATE_CHARS + 1), "sdpMid": "0"},
])
def test_malformed_candidates_are_signals_to_drop(cand: dict[str, Any]) -> None:
    sig = classify({"type": "rtc-ice", "candidate": cand})
    assert isinstance(sig, IceSignal)
    assert sig.malformed and sig.candidate is None and not sig.end_of_candidates


def test_classify_track_meta() -> None:
    assert classify(build_track_meta("t", {"role": "screen"}, kind="video", stream_id="s")) \
        == TrackMeta("t", {"role": "screen"}, "video", "s")
    clear = classify(build_track_meta_clear("t"))
    assert clear == TrackMeta("t") and isinstance(clear, TrackMeta) and clear.is_clear
    # JS senders send only trackId + metadata.
    assert classify({"__meteredTrackMeta": {"trackId": "t", "metadata": {}}}) \
        == TrackMeta("t", {})
    bad_metas: list[dict[str, Any]] = [
        {"__meteredTrackMeta": {"trackId": ""}},
        {"__meteredTrackMeta": {"trackId": 5}},
        {"__meteredTrackMeta": {"metadata": {}}},
        {"__meteredTrackMeta": {"trackId": "t", "metadata": None}},
        {"__meteredTrackMeta": {"trackId": "t", "metadata": [1]}},
        {"__meteredTrackMeta": {"trackId": "t", "metadata": {}, "kind": ""}},
        {"__meteredTrackMeta": {"trackId": "t", "metadata": {}, "kind": 3}},
        {"__meteredTrackMeta": {"trackId": "t", "metadata": {}, "streamId": "s" * 257}},
        {"__meteredTrackMeta": "t"},
    ]
    for bad in bad_metas:
        assert classify(bad) is None, bad
    assert classify({"__meteredTrackMeta": {"trackId": "t", "metadata": {},
                                            "streamId": "s" * 256}}) is not None


def test_customer_data_is_none() -> None:
    for data in ({"type": "chat", "text": "hi"}, "hello", 5, None, [1, 2], {"type": "rtc"},
                 {}, {"candidate": None}):
        assert classify(data) is None
    assert has_reserved_key({"__meteredTrackMeta": 1, "x": 2})
    assert not has_reserved_key({"x": 2}) and not has_reserved_key("__meteredTrackMeta")


def test_a_signal_wins_over_a_stray_meta_key() -> None:
    data = {"type": "rtc-ice", "candidate": None, "__meteredTrackMeta": {"trackId": "t"}}
    assert isinstance(classify(data), IceSignal)


def test_candidate_budget() -> None:
    budget = CandidateBudget(limit=3)
    c = IceCandidateInit(CAND, "0", 0)
    assert [budget.take(c) for _ in range(5)] == [True, True, True, False, False]
    assert budget.dropped == 2
    budget.reset()
    assert budget.take(c)
    assert not budget.take(IceCandidateInit("x" * (MAX_CANDIDATE_CHARS + 1), "0"))
    assert CandidateBudget().limit == 200


def test_metadata_cache_fifo_and_lookup() -> None:
    cache = TrackMetadataCache(capacity=3)
    for i in range(3):
        cache.apply(TrackMeta(f"t{i}", {"n": i}, "video", f"s{i}"))
    # An update in place neither grows nor refreshes the entry.
    assert cache.apply(TrackMeta("t0", {"n": 10}, "video", "s0"))
    assert not cache.apply(TrackMeta("t0", {"n": 10}, "video", "s0"))
    cache.apply(TrackMeta("t3", {"n": 3}, "audio", "s1"))
    assert len(cache) == 3 and "t0" not in cache and cache.get("t1") == {"n": 1}
    # Lookup order: msid track id, then the track's own id, then (stream id, kind).
    assert cache.lookup(msid_track_id="t2", track_id="t1") == {"n": 2}
    assert cache.lookup(msid_track_id="nope", track_id="t1") == {"n": 1}
    assert cache.lookup(msid_track_id="x", track_id="y", stream_id="s1", kind="audio") \
        == {"n": 3}
    assert cache.lookup(stream_id="s1", kind="video") == {"n": 1}
    cache.apply(TrackMeta("t4", {"n": 4}, "video", "s1"))  # evicts t1
    cache.apply(TrackMeta("t5", {"n": 5}, "video", "s1"))  # evicts t2
    assert cache.lookup(stream_id="s1", kind="video") is None  # ambiguous
    assert cache.apply(TrackMeta("t4"))  # clear
    assert cache.lookup(stream_id="s1", kind="video") == {"n": 5}
    got = cache.get("t5")
    assert got is not None
    got["n"] = 99  # callers get copies
    assert cache.get("t5") == {"n": 5}
    assert TrackMetadataCache().capacity == 512


def test_a_clear_for_a_track_without_metadata_says_a_python_peer_sent_it() -> None:
    # What a roomwire peer sends for a track added without metadata: a clear (every SDK drops
    # what it holds under that id: nothing) with the kind and stream id a Python SDK sends.
    wire = build_track_meta_clear("t1", kind="video", stream_id="s1")
    assert wire == {"__meteredTrackMeta": {"trackId": "t1", "kind": "video", "streamId": "s1"}}
    meta = classify(json.loads(json.dumps(wire)))
    assert isinstance(meta, TrackMeta) and meta.is_clear
    assert (meta.kind, meta.stream_id) == ("video", "s1")
    assert build_track_meta_clear("t1") == {"__meteredTrackMeta": {"trackId": "t1"}}
    cache = TrackMetadataCache()
    cache.apply(TrackMeta("other", {"role": "camera"}))
    assert cache.apply(meta) is False  # nothing held under t1: nothing changes
    assert cache.get("other") == {"role": "camera"}
