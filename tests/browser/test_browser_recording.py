"""Recording a room with a browser in it (issue 15): a roomwire ``RoomRecorder`` ("py", in
pypeer.py) records two Python senders and a browser tab on the official JS SDK (camera and
microphone from Chromium's fake devices); the browser leaves mid-recording. Scenario
``py-record`` of driver.mjs."""

from __future__ import annotations

import datetime
from typing import Any


def test_recording_two_python_senders_and_a_browser(run_scenario: Any) -> None:
    r = run_scenario("py-record")
    manifest = r["manifest"]
    senders = r["started"]["senders"]
    assert r["rejoinsB"] == [], r["rejoinsB"]
    assert manifest["recorder_peer_ids"] == ["py"]
    # Every sender is in the manifest with its presence metadata, the browser's from its JWT.
    assert set(manifest["peers"]) == {"alice", *senders}, manifest["peers"]
    assert manifest["peers"]["alice"]["metadata"] == {"name": "Alice"}
    assert len(manifest["peers"]["alice"]["left"]) == 1  # it left mid-recording
    # The recorder's clock in wall ms, to say where a short file lost its media.
    t0_ms = datetime.datetime.fromisoformat(manifest["started_at"]).timestamp() * 1000
    by_peer: dict[str, list[dict[str, Any]]] = {}
    for f in manifest["files"]:
        by_peer.setdefault(f["peer_id"], []).append(f)
    assert set(by_peer) == {"alice", *senders}, manifest["files"]
    for peer_id, files in by_peer.items():
        (f,) = files  # one camera stream each, one connection: one file
        assert f["finalised"] and f["error"] is None, f
        assert sorted(t["kind"] for t in f["tracks"]) == ["audio", "video"], f
        assert all(t["frames"] > 0 for t in f["tracks"]), f
        probe = r["probes"][f["path"]]
        assert probe["rc"] == 0 and not probe["stderr"].strip(), probe
        kinds = sorted(s["codec_type"] for s in probe["info"]["streams"])
        assert kinds == ["audio", "video"], probe
        duration = float(probe["info"]["format"]["duration"])
        if peer_id == "alice":
            # Sent from when the recorder's connection to the browser came up until the tab
            # closed (both wall clocks of this machine).
            sent = (r["leftAt"] - r["up"]["alice"]) / 1000
            assert f["ended_by"] in ("peer-left", "track-ended"), f
        else:
            # The file's clock is the sender's timestamps (docs/sdk-peer.md, "Timing"): what
            # its sources skipped in a stall on this loaded machine was never sent.
            sent = r["sent"][peer_id] - r["skipped"][peer_id]
            assert f["ended_by"] == "recorder-stopped", f
            assert f["tracks"][0]["metadata"]["label"].startswith("sender ")
        # Where it was lost: connection up to first frame, last frame to stop (or leaving).
        gaps = {"head": f["start"] - (r["up"][peer_id] - t0_ms) / 1000
                if peer_id in r["up"] else None,
                "tail": (r["leftAt"] - t0_ms) / 1000 - f["end"] if peer_id == "alice"
                else manifest["stopped_at"] - f["end"]}
        # What is left between the two is the first frame's trip after the connection came
        # up and the frames in flight at the end: a few tenths of a second at most, under
        # 5 % of the 10 s and more every file here spans.
        assert abs(duration - sent) <= 0.05 * sent, (
            peer_id, duration, sent, r["skipped"].get(peer_id), gaps, f)
    browser = by_peer["alice"][0]
    assert browser["end"] <= manifest["peers"]["alice"]["left"][0] + 1.0
    assert browser["end"] <= manifest["stopped_at"]
