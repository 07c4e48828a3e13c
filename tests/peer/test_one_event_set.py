"""The engine and the ``RemotePeer`` share one set of events: a handler on the engine and a
handler on the ``RemotePeer`` receive the very same objects, in the same order."""

from __future__ import annotations

from typing import Any

from roomwire.client import RemoteStreamAddedEvent, TrackEvent
from roomwire.client.media import AudioSource, VideoSource
from roomwire.client.rtc.events import MediaStream
from roomwire.client.rtc.negotiation import RemoteTrackEvent, StreamAddedEvent

from .conftest import MakePeer
from .kit import Tap, wait_until

ROOM = "room/one-event-set"


async def test_engine_and_remote_peer_hand_out_the_same_event_objects(
        make_peer: MakePeer) -> None:
    alice = make_peer("alice")
    bob = make_peer("bob")
    engine: list[Any] = []
    by_class: list[Any] = []

    def on_joined(ev: Any) -> None:  # synchronous: attached before the remote's first event
        ev.peer.negotiator.add_listener(engine.append)
        ev.peer.on(TrackEvent, by_class.append)
        ev.peer.on(RemoteStreamAddedEvent, by_class.append)

    bob.on("peer-joined", on_joined)
    mic, cam = AudioSource(), VideoSource(160, 120, fps=15)
    stream = MediaStream([mic, cam])
    alice.add_stream(stream, {"role": "camera", "label": "alice cam"})
    await alice.join(ROOM)
    await bob.join(ROOM)
    tap: Tap = bob.tap  # type: ignore[attr-defined]
    remote = await tap.remote_peer("alice")
    seen = tap.of("alice")
    tracks = await seen.wait("track", count=2)
    (added,) = await seen.wait("stream-added")
    a_bob = await alice.tap.remote_peer("bob")  # type: ignore[attr-defined]
    a_bob.create_data_channel("chat")
    await seen.wait("datachannel")
    await wait_until(lambda: remote.state == "connected", what="bob connected to alice")
    alice.remove_stream(stream)
    (removed,) = await seen.wait("stream-removed")

    # Same objects, same order: nothing is translated on the way to the RemotePeer.
    assert [id(e) for e in seen.events] == [id(e) for e in engine], (seen.events, engine)
    assert {e.name for e in engine} >= {"track", "stream-added", "stream-removed",
                                        "state-change", "datachannel"}
    # Registration by class (also the engine's earlier names) receives the same objects.
    assert [id(e) for e in by_class] == [
        id(e) for e in seen.events if e.name in ("track", "stream-added")]
    assert RemoteTrackEvent is TrackEvent and StreamAddedEvent is RemoteStreamAddedEvent

    # The payloads a user reads: labels, one MediaStream for both tracks, the sender's id.
    assert all(t.metadata == {"role": "camera", "label": "alice cam"} for t in tracks)
    assert tracks[0].stream is tracks[1].stream is added.stream is removed.stream
    assert added.stream.id == stream.id and added.metadata == tracks[0].metadata
    mic.stop()
    cam.stop()
