"""The official browser SDK against roomwire, in headless chromium (see conftest.py).

- two tabs of the demo page (/demo) in a call: video and audio both ways, presence with labels
  from presence metadata and from track metadata, chat both ways, a screen share as a second
  stream with role "screen" (a screenshot of it goes to the test's tmp dir; the one in
  docs/demo-call.png is refreshed on purpose only: ``bench/browser_bench.py --screenshot
  docs/demo-call.png``);
- the signalling socket dropped by a server restart: both tabs recover, media flows again;
- a connection that cannot connect: the demo page's watchdog rejoins once and the call recovers;
- the official SignallingClient pub/sub: presence, publish, send, server error codes.

No call here may be rescued by the demo page's stuck-connection watchdog (conftest.py fails a
scenario with a rejoin): the page keeps both tabs from offering at once (app.js,
``makePeerConnection``), which is what used to wedge a Chromium connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def only(d: dict[str, Any]) -> Any:
    assert len(d) == 1, d
    return next(iter(d.values()))


def test_two_browsers_call_chat_presence_and_screen_share(run_scenario: Any,
                                                          tmp_path: Path) -> None:
    shot = tmp_path / "demo-call.png"
    r = run_scenario("call", ROOMWIRE_SCREENSHOT=str(shot))

    a, b = r["presence"]["a"], r["presence"]["b"]
    # Presence in both tabs; B (the development key) has a server-assigned id.
    assert a["peerId"] == "alice" and a["remotes"][0]["id"] == b["peerId"]
    assert b["remotes"][0]["id"] == "alice"
    # Labels: Alice's from her token's peerMetadata (presence); Bob's from his track metadata.
    assert b["remotes"][0]["presenceMetadata"] == {"name": "Alice"}
    assert b["remotes"][0]["name"] == "Alice"
    assert a["remotes"][0]["presenceMetadata"] is None
    assert a["remotes"][0]["name"] == "Bob"
    assert {"role": "camera", "label": "Bob"}.items() <= a["remotes"][0]["streams"][0].items()

    # Video and audio both ways: decoded frames and received audio samples.
    for side in ("a", "b"):
        st = only(r["stats"][side])
        assert st["video"]["framesDecoded"] > 0, (side, st)
        assert st["audio"]["totalSamplesReceived"] > 0, (side, st)

    # Chat both ways, names from presence metadata / track metadata.
    assert [(c["name"], c["text"]) for c in r["chat"]] == [
        ("Alice", "hello from Alice"), ("Bob", "hi Alice, Bob here")]

    # Screen share: a second stream with role "screen", its own tile, decoded frames.
    roles = sorted(s["role"] or "" for s in r["screen"]["remote"]["streams"])
    assert roles == ["camera", "screen"]
    videos = [i for i in r["screen"]["stats"]["inbound"] if i["kind"] == "video"]
    assert len(videos) == 2 and all(v["framesDecoded"] > 0 for v in videos), videos
    labels = {t["label"] for t in r["screen"]["tilesB"] if not t["local"]}
    assert labels == {"Alice", "Alice's screen"}
    # Stopping the share removes the stream on the other side.
    assert [s["role"] for s in r["afterStop"]["streams"]] == ["camera"]

    assert shot.is_file() and shot.stat().st_size > 10_000

    # What a user sees: the call never froze into a watchdog rejoin, in either tab; the polite
    # tab (the one with the smaller peer id) waited for the other's offer and answered it, so
    # the two tabs never offered at once.
    assert r["rejoins"] == {"A": [], "B": []}, r["rejoins"]
    polite = "a" if a["peerId"] < b["peerId"] else "b"
    assert r["offers"][polite] == ["offer-held", "offer-answered"], r["offers"]
    assert r["offers"]["b" if polite == "a" else "a"] == [], r["offers"]


def test_server_restart_both_browsers_recover(run_scenario: Any) -> None:
    r = run_scenario("restart")
    assert r["reconnecting"] == {"a": True, "b": True}
    # Recovered by the SDK's reconnect, not by the page's watchdog: no frozen call on the way.
    assert r["rejoins"] == {"A": [], "B": []}, r["rejoins"]
    # Each connection (the first, and the one rebuilt after the restart) had one offerer: the
    # polite tab held its first offer and answered the other's (which tab is polite can change,
    # as Bob's id does).
    notes = r["offers"]["a"] + r["offers"]["b"]
    assert sorted(notes) == ["offer-answered"] * 2 + ["offer-held"] * 2, r["offers"]
    for side in ("a", "b"):
        states = [e["to"] for e in r["events"][side]]
        assert states[-2:] == ["reconnecting", "joined"], states
        assert r["after"][side]["state"] == "joined"
        assert len(r["after"][side]["remotes"]) == 1
        assert r["media"][side]["video"]["framesDecoded"] > 0
        assert r["media"][side]["audio"]["packetsReceived"] > 0
    # Alice keeps her token identity; Bob (development key) gets a new id on reconnect.
    assert r["after"]["a"]["peerId"] == "alice"
    assert r["after"]["b"]["remotes"][0]["id"] == "alice"
    assert r["after"]["a"]["remotes"][0]["id"] == r["after"]["b"]["peerId"]
    assert [(c["name"], c["text"]) for c in r["chat"]] == [
        ("Alice", "still here?"), ("Bob", "yes, back again")]


def test_stuck_connection_is_rescued_by_exactly_one_rejoin(run_scenario: Any) -> None:
    """The watchdog still does its job when a connection cannot connect: both tabs withhold
    their ICE candidates (what the other side sees of a connection wedged without candidates),
    the polite tab rejoins once after the watchdog period, and the call recovers."""
    r = run_scenario("stuck", rejoins=1)
    # The first connection really had nothing to connect with.
    assert r["withheld"]["a"] > 0 and r["withheld"]["b"] > 0, r["withheld"]
    polite = r["politeTab"]
    impolite = "A" if polite == "B" else "B"
    # One rejoin, by the polite tab, at its first attempt; the impolite tab waited its turn.
    assert r["rejoined"] == polite
    assert [(e["kind"], e["attempt"]) for e in r["rejoins"][polite]] == [("rejoin", 1)]
    assert r["rejoins"][impolite] == []
    assert [e["kind"] for e in r["stuck"][polite.lower()]] == ["peer-stuck"], r["stuck"]
    # Recovered: both joined with the other, no banner left, media growing both ways, chat.
    for side in ("a", "b"):
        after = r["after"][side]
        assert after["state"] == "joined" and len(after["remotes"]) == 1, after
        assert after["banner"] is None, after["banner"]
        assert r["media"][side]["video"]["framesDecoded"] > 0
        assert r["media"][side]["audio"]["packetsReceived"] > 0
    assert [(c["name"], c["text"]) for c in r["chat"]] == [
        ("Alice", "are you back?"), ("Bob", "back, after a rejoin")]


def test_official_signalling_client_pubsub(run_scenario: Any) -> None:
    r = run_scenario("pubsub")
    bob, alice = r["ids"]["bob"], r["ids"]["alice"]
    assert alice == "alice"
    # Presence: empty snapshot, then alice's join with her peerMetadata, then her leave.
    assert r["bobSnapshot"]["joined"] == [] and r["bobSnapshot"]["left"] == []
    assert r["aliceSnapshot"]["joined"] == [{"peerId": bob}]
    assert r["bobSeesAlice"]["joined"] == [{"peerId": "alice", "metadata": {"name": "Alice"}}]
    assert r["bobSeesAliceLeave"]["left"] == [{"peerId": "alice", "metadata": {"name": "Alice"}}]
    # publish both ways (no echo to the publisher), send both ways.
    assert r["bobMessage"]["from"] == "alice" and r["bobMessage"]["data"] == {"hello": "from alice"}
    assert r["aliceMessage"]["from"] == bob and r["aliceMessage"]["data"] == {"hi": "from bob"}
    assert r["aliceDirect"] == {"ev": "direct", "from": bob, "data": {"dm": "bob to alice"}}
    assert r["bobDirect"]["from"] == "alice"
    assert r["bobDirect"]["fromMetadata"] == {"name": "Alice"}
    # Server errors reach the caller with their codes.
    errors = {k: (v["ok"], v["name"]) for k, v in r["errors"].items()}
    assert errors == {
        "peerNotFound": (False, "peer_not_found"),
        "notAuthorized": (False, "channel_not_authorized"),
        "notPermitted": (False, "action_not_permitted"),
        "sendNotPermitted": (False, "action_not_permitted"),
    }
    assert r["carolSubscribeAllowed"] == {"ok": True}
    assert r["states"] == {"alice": "closed", "bob": "closed", "carol": "closed"}
