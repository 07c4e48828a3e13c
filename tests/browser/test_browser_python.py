"""A browser (the demo page on the official JS SDK, headless chromium) and a roomwire Python
``MeteredPeer`` in one room through our server, all inside one network namespace.

The Python peer runs in ``pypeer.py``, started by ``harness.py`` next to the node; the driver
(``driver.mjs``, scenarios ``py-*``) asks it for actions over the harness's control channel.
The Python peer is ``py`` (token, presence metadata ``{"name": "Py"}``); the browser is
``alice`` (polite towards ``py``) when it joins first, ``zoe`` (impolite) when the Python peer
joins first, so both politeness roles are covered (the JS SDK offers on ``negotiationneeded``
whatever its role, so both sides make offers in both runs).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

pytestmark = pytest.mark.slow

FIRST = {"browser": "py-browser-first", "python": "py-python-first"}
BROWSER_CAM = {"role": "camera", "label": "Browser", "name": "Browser"}
BROWSER_SCREEN = {"role": "screen", "label": "Browser's screen", "name": "Browser"}
PY_CAM = {"role": "camera", "label": "Py cam", "name": "Py"}
PY_SCREEN = {"role": "screen", "label": "Py screen"}


def msids(sdp: str) -> dict[str, tuple[str, str]]:
    """``{mid: (stream id, track id)}`` of the m-sections that carry an ``a=msid``."""
    out: dict[str, tuple[str, str]] = {}
    for section in sdp.split("\r\nm=")[1:]:
        mid = re.search(r"^a=mid:(\S+)", section, re.M)
        msid = re.search(r"^a=msid:(\S+) (\S+)", section, re.M)
        if mid and msid:
            out[mid.group(1)] = (msid.group(1), msid.group(2))
    return out


def python_events(r: dict[str, Any]) -> list[dict[str, Any]]:
    evs: list[dict[str, Any]] = r["pyEvents"]["remotes"][r["browserId"]]
    return evs


@pytest.mark.parametrize("first", ["browser", "python"])
def test_browser_and_python_media_and_data_both_ways(scenario_once: Any, first: str) -> None:
    """1 (the browser joins first, then the Python peer) and 2 (the other way round): audio and
    video both ways with decoded frames on each side, ``send``/``send_to`` both ways."""
    r = scenario_once(FIRST[first])
    browser = r["browserId"]
    assert browser == ("alice" if first == "browser" else "zoe")
    # No frozen call: the demo page's watchdog never had to rejoin (conftest.py checks it for
    # every scenario; this says which tab it looked at).
    assert r["rejoins"] == {"B": []}, r["rejoins"]
    # Presence on both sides, with the token's peerMetadata.
    assert r["remote"]["id"] == browser
    assert r["remote"]["metadata"] == {"name": browser.capitalize()}
    assert r["summaryB"]["remotes"][0]["id"] == "py"
    assert r["summaryB"]["remotes"][0]["presenceMetadata"] == {"name": "Py"}
    # Politeness as the Python side computes it ("py" < "zoe"; "alice" < "py").
    assert r["remote"]["polite"] is (first == "python")

    # The browser decoded the Python peer's video and received its audio (getStats).
    assert r["statsB"]["video"]["framesDecoded"] > 0, r["statsB"]
    assert r["statsB"]["audio"]["totalSamplesReceived"] > 0, r["statsB"]
    # The Python side decoded the browser's fake camera and microphone.
    assert r["pyVideo"]["frames"] >= 10 and r["pyVideo"]["size"][0] >= 160, r["pyVideo"]
    assert r["pyAudio"]["frames"] >= 10, r["pyAudio"]
    # And a second stream each way (a renegotiation): two decoded videos in the browser.
    videos = [i for i in r["statsAfter"]["inbound"] if i["kind"] == "video"]
    assert len(videos) == 2 and all(v["framesDecoded"] > 0 for v in videos), videos
    assert r["pyGotScreen"]["frames"] >= 5

    # Data both ways: broadcast (send) and direct (send_to), server-stamped senders.
    to_py = [(d["kind"], d["from"], d["data"]) for d in r["data"]["toPython"]]
    assert to_py == [
        ("broadcast", browser, {"type": "chat", "text": "broadcast from the browser #1",
                                "name": "Browser"}),
        ("direct", browser, {"type": "dm", "text": "direct from the browser #1"}),
    ]
    assert r["data"]["toPython"][1]["senderMetadata"] == {"name": browser.capitalize()}
    to_browser = [(d["kind"], d["peer"], d["data"]) for d in r["data"]["toBrowser"]]
    assert to_browser == [
        ("broadcast", "py", {"type": "chat", "text": "broadcast from Python #1", "name": "Py"}),
        ("direct", "py", {"type": "dm", "text": "direct from Python #1"}),
    ]
    # The demo page shows the Python peer's chat line, named from its presence metadata.
    assert {"from": "py", "name": "Py", "text": "broadcast from Python #1", "self": False} \
        in r["summaryB"]["chat"]


@pytest.mark.parametrize("first", ["browser", "python"])
def test_track_metadata_labels_both_sides(scenario_once: Any, first: str) -> None:
    """3: track metadata labels, in both runs of the test above.

    What roomwire delivers, asserted exactly:
    - the Python side labels the browser's camera tracks and stream (``track``,
      ``stream-added``) and the browser's screen share with the metadata the page gave
      ``addStream``; the screen share is the case where Chromium ``addTrack``s onto the
      transceiver the Python peer's own second stream had created, announcing that
      transceiver's sender id in the msid instead of ``track.id`` (the id the JS SDK keys
      its metadata by): roomwire's receiver adopts the one unmatched ("orphan") entry;
    - on the wire, the browser receives ``__meteredTrackMeta`` for each of the Python peer's
      tracks, with its metadata, keyed by the msid track id of its m-section, and before the
      SDP that carries that track.

    What the official JS SDK 1.2.0 makes of it: it looks metadata up by the receiver's
    ``track.id``, which Chromium sets to the msid track id only on a transceiver created by
    the remote's offer. A roomwire peer sends only on m-lines of its own offers (sendonly,
    so Chromium cannot match its own ``addTrack`` transceivers to them; docs/sdk-peer.md,
    "Labels in a browser"), so every ``track`` event of the Python peer's camera and screen
    carries its metadata: asserted (the demo page's ``card?`` exchange is not needed for it).
    """
    r = scenario_once(FIRST[first])
    evs = python_events(r)
    # Python side: the browser's camera, labelled at track time, and its screen share.
    cam_tracks = [e for e in evs if e["ev"] == "track" and e["metadata"] == BROWSER_CAM]
    assert sorted(e["kind"] for e in cam_tracks) == ["audio", "video"], evs
    added = [e for e in evs if e["ev"] == "stream-added"]
    assert [e["metadata"] for e in added] == [BROWSER_CAM, BROWSER_SCREEN], added
    assert r["pyGotScreen"]["metadata"] == BROWSER_SCREEN
    assert all(e["metadata"] is not None for e in evs if e["ev"] == "track"), evs

    # The wire: metadata for every Python track reached the browser before the SDP with it.
    wire = r["recB"]["wire"]
    meta_in = [(i, w["meta"]) for i, w in enumerate(wire) if w["dir"] == "in" and "meta" in w]
    sdp_in = [(i, w["sdp"]) for i, w in enumerate(wire) if w["dir"] == "in" and "sdp" in w]
    py_cam_ids = {m["trackId"] for _, m in meta_in if m.get("metadata") == PY_CAM}
    py_screen_ids = {m["trackId"] for _, m in meta_in if m.get("metadata") == PY_SCREEN}
    assert len(py_cam_ids) == 2 and len(py_screen_ids) == 1, meta_in
    for track_id in py_cam_ids | py_screen_ids:
        meta_at = min(i for i, m in meta_in if m["trackId"] == track_id)
        sdp_at = min(i for i, sdp in sdp_in
                     if track_id in {t for _, t in msids(sdp).values()})
        assert meta_at < sdp_at, (track_id, meta_at, sdp_at)
        # roomwire senders also name the stream and kind: the msid stream of that track.
        meta = next(m for _, m in meta_in if m["trackId"] == track_id)
        streams = {s for _, sdp in sdp_in for s, t in msids(sdp).values() if t == track_id}
        assert streams == {meta["streamId"]} and meta["kind"] in ("audio", "video"), meta

    # What the JS SDK delivered in the browser.
    sdk = r["recB"]["sdk"]
    msid_track_ids = {t for _, sdp in sdp_in for _, t in msids(sdp).values()}
    py_tracks = [e for e in sdk if e["ev"] == "track" and e["peer"] == "py"]
    assert sorted(e["kind"] for e in py_tracks) == ["audio", "video", "video"], py_tracks
    for e in py_tracks:
        assert e["trackId"] in msid_track_ids, e  # the receiver knows the sender's id
        if e["streams"] == [r["pyScreen"]["streamId"]]:
            assert e["metadata"] == PY_SCREEN, e
        else:
            assert e["metadata"] == PY_CAM, e
    cam_added = [e for e in sdk if e["ev"] == "stream-added" and e["peer"] == "py"
                 and e["streamId"] != r["pyScreen"]["streamId"]]
    assert [e["metadata"] for e in cam_added] == [PY_CAM], cam_added
    screen_added = r["screenAdded"]
    assert [e["metadata"] for e in screen_added] == [PY_SCREEN]
    # The demo page's tiles: the screen labelled from SDK metadata; the camera tile named
    # from presence metadata whatever the SDK did with the camera's track metadata.
    tiles = {(t["role"], t["label"]) for t in r["summaryB"]["tiles"] if t["peer"] == "py"}
    assert tiles == {("camera", "Py"), ("screen", "Py screen")}


def test_server_restart_browser_and_python_recover(run_scenario: Any) -> None:
    """4: the server restarts (same port, same data dir) under a browser-Python call: the
    browser's signalling socket drops, both sides reconnect and rejoin, media flows again both
    ways (fresh frames), data both ways again."""
    r = run_scenario("py-restart")
    assert r["rejoins"] == {"B": []}, r["rejoins"]
    assert r["statesB"][-2:] == ["reconnecting", "joined"], r["statesB"]
    assert r["pyState"]["state"] == "joined"
    assert r["pyState"]["remotes"] == [{"id": "alice", "state": "connected"}]
    assert r["summaryB"]["remotes"][0]["id"] == "py"
    assert r["mediaB"]["video"]["framesDecoded"] > 0
    assert r["mediaB"]["audio"]["packetsReceived"] > 0
    assert r["pyVideo"]["frames"] >= 10 and r["pyAudio"]["frames"] >= 10
    peer_states = [e.get("to") for e in r["pyEvents"]["peer"] if e["ev"] == "state-change"]
    assert peer_states[-2:] == ["reconnecting", "joined"], peer_states
    assert [(d["kind"], d["data"]["text"]) for d in r["data"]["toPython"]] == [
        ("broadcast", "broadcast from the browser #after-restart"),
        ("direct", "direct from the browser #after-restart")]
    assert [(d["kind"], d["data"]["text"]) for d in r["data"]["toBrowser"]] == [
        ("broadcast", "broadcast from Python #after-restart"),
        ("direct", "direct from Python #after-restart")]


def test_browser_stops_screen_transceiver_and_shares_again(run_scenario: Any) -> None:
    """5: rejected m-lines (docs/webrtc-notes.md, SDP). The browser calls ``stop()`` on the
    transceiver of its screen share and renegotiates with the Python peer: its offer rejects
    that m-line (port 0, mid out of BUNDLE). The Python answer must reject it as well, or
    Chromium refuses it ("A BUNDLE group in answer contains a MID ...") and every later offer
    on that connection fails. Then the browser shares again and the Python side decodes it."""
    r = run_scenario("py-screen-stop")
    assert r["rejoins"] == {"B": []}, r["rejoins"]
    mid = r["stopped"]["mid"]
    wire = r["recB"]["wire"]
    # The browser's offer after stop(): the m-line has port 0 and is out of BUNDLE.
    offers = [w["sdp"] for w in wire if w["dir"] == "out" and w.get("sdpType") == "offer"]
    rejecting = [o for o in offers if re.search(rf"m=video 0 [^\r]*\r\n(?:[^m][^\r]*\r\n)*"
                                                rf"a=mid:{mid}\r\n", o)]
    assert rejecting, offers
    bundle = re.search(r"a=group:BUNDLE ([^\r]*)", rejecting[0])
    assert bundle and mid not in bundle.group(1).split()
    # The Python answer to it: rejected too, and Chromium took it (back to stable, the
    # stopped transceiver gone, no negotiation error, no BUNDLE complaint, offers work).
    assert r["settled"]["state"] == "stable" and r["settled"]["stoppedGone"]
    assert r["settled"]["answerRejects"]
    assert [e for e in r["recB"]["sdk"] if e["ev"] == "negotiation-error"] == []
    assert not [c for c in r["consoleErrors"] if "BUNDLE" in c], r["consoleErrors"]
    assert r["offerCheck"] == "ok"
    # The Python side saw the first share end.
    assert len(r["removedOnPython"]) == 1
    # Shared again: a new stream, decoded on the Python side with its metadata.
    assert r["second"]["streamId"] == r["secondStreamId"]
    assert r["second"]["frames"] >= 10
    assert r["second"]["metadata"] == BROWSER_SCREEN
    assert r["camStill"]["frames"] >= 5 and r["camStill"]["metadata"] == BROWSER_CAM
    assert r["mediaB"]["video"]["framesDecoded"] > 0
    assert r["final"] == {"state": "stable", "conn": "connected"}


def test_python_tracks_without_metadata_reach_the_browser_unlabelled(run_scenario: Any) -> None:
    """7: the Python peer's camera has no metadata. roomwire sends a metadata clear carrying
    ``kind``/``streamId`` for each of its tracks (how another roomwire peer recognises a
    Python peer); the official JS SDK takes it as a clear of nothing: no ``data`` event, no
    label on the tracks, and media and data flow both ways."""
    r = run_scenario("py-unlabelled")
    assert r["rejoins"] == {"B": []}, r["rejoins"]
    assert r["remote"]["polite"] is True  # "py" < "zoe"
    wire = r["recB"]["wire"]
    camera = r["started"]["streams"]["camera"]  # the msid stream of the Python camera
    sdp_in = [w["sdp"] for w in wire if w["dir"] == "in" and "sdp" in w]
    py_tracks = {t: s for sdp in sdp_in for s, t in msids(sdp).values() if s == camera}
    assert len(py_tracks) == 2, (camera, [msids(sdp) for sdp in sdp_in])
    clears = [w["meta"] for w in wire if w["dir"] == "in" and "meta" in w]
    assert clears, wire
    assert all("metadata" not in m for m in clears), clears
    assert {m["trackId"] for m in clears} == set(py_tracks), (clears, py_tracks)
    for m in clears:
        assert m["streamId"] == py_tracks[m["trackId"]] and m["kind"] in ("audio", "video"), m
    sdk = r["recB"]["sdk"]
    leaked = [e for e in sdk if e["ev"] == "data" and "__meteredTrackMeta" in str(e["data"])]
    assert leaked == [], leaked
    tracks = [e for e in sdk if e["ev"] == "track" and e["peer"] == "py"]
    assert sorted(e["kind"] for e in tracks) == ["audio", "video"], tracks
    assert all(e["metadata"] is None for e in tracks), tracks
    assert [e for e in sdk if e["ev"] == "negotiation-error"] == []
    assert len(r["data"]["toBrowser"]) >= 2 and len(r["data"]["toPython"]) >= 2, r["data"]
