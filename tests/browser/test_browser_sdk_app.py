"""Track metadata labels of a roomwire Python peer, as a plain app on the official JS SDK sees
them: ``web/test-pages/sdk-app.html`` (``addStream`` of its camera with metadata before
``join()``, nothing roomwire-specific) and the Python ``MeteredPeer`` of ``pypeer.py`` with a
labelled camera (video and audio), then a labelled screen added on the live connection.
Asserted in the SDK's own ``track`` and ``stream-added`` events: both join orders, the
browser's camera on from the start, and again after the Python peer's socket is cut and it
rejoins (a new connection on both sides).

Why it needs care (docs/sdk-peer.md, "Labels in a browser"): the JS SDK looks a track's
metadata up by the receiver's ``track.id``, and Chromium gives a receiver the sender's msid
track id only on a transceiver created by the remote's offer. The browser's own camera
transceivers (``addTrack`` before ``join``) are matched to any remote m-line that lets them
send; a roomwire peer therefore sends only on m-lines of its own offers, ``sendonly``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.slow

PY_CAM = {"role": "camera", "label": "Py cam", "name": "Py"}
PY_SCREEN = {"role": "screen", "label": "Py screen"}
BROWSER_CAM = {"role": "camera", "label": "Browser cam"}
SCENARIO = {"browser": "sdk-app-browser-first", "python": "sdk-app-python-first"}


def labels(events: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """``{(stream id, "audio" | "video" | "stream-added"): {metadata as JSON, ...}}``."""
    out: dict[tuple[str, str], set[str]] = {}
    for e in events:
        keys = ([(sid, e["kind"]) for sid in e["streams"]] if e["ev"] == "track"
                else [(e["streamId"], "stream-added")])
        for key in keys:
            out.setdefault(key, set()).add(json.dumps(e["metadata"], sort_keys=True))
    return out


@pytest.mark.parametrize("first", ["browser", "python"])
def test_sdk_events_carry_the_python_peers_labels(scenario_once: Any, first: str) -> None:
    r = scenario_once(SCENARIO[first])
    assert r["browserId"] == ("alice" if first == "browser" else "zoe")
    cam, screen = r["streams"]["camera"], r["streams"]["screen"]
    cam_label, screen_label = json.dumps(PY_CAM, sort_keys=True), json.dumps(PY_SCREEN,
                                                                             sort_keys=True)
    camera_events = {(cam, "audio"): {cam_label}, (cam, "video"): {cam_label},
                     (cam, "stream-added"): {cam_label}}
    screen_events = {(screen, "video"): {screen_label}, (screen, "stream-added"): {screen_label}}
    # Every track and stream event the SDK fired for the Python peer carries the label of its
    # stream (one label per stream and event kind, never none): the camera at the start, the
    # screen added on the live connection, and both on the connection after the Python peer's
    # reconnect.
    for when, want in (("initial", camera_events), ("screenEvents", screen_events),
                       ("again", camera_events | screen_events)):
        assert labels(r[when]) == want, (when, r[when])
    # No negotiation error in the page; the user sees moving video, before and after.
    errors = [e for e in r["appEvents"] if e["ev"] in ("negotiation-error", "error")]
    assert not errors, (errors, r["appEvents"])
    assert r["framesB"] > 0 and r["framesAgain"] > 0
    # The page decoded the screen, and after the reconnect both videos, each by its track.
    assert len(r["screenDecoded"]) == 1 and len(r["decodedAgain"]) == 2, r["decodedAgain"]


@pytest.mark.parametrize("first", ["browser", "python"])
def test_python_peer_labels_the_browser_camera(scenario_once: Any, first: str) -> None:
    r = scenario_once(SCENARIO[first])
    assert r["pyVideo"]["frames"] >= 10 and r["pyVideo"]["metadata"] == BROWSER_CAM
    assert r["pyAudio"]["frames"] >= 10 and r["pyAudio"]["metadata"] == BROWSER_CAM
    assert r["pyVideoAgain"]["frames"] >= 10
    assert r["pyVideoAgain"]["metadata"] == BROWSER_CAM
