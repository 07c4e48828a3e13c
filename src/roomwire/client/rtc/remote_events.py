"""Events of a ``RemotePeer``, and ``MediaStream`` (the streams its tracks arrive in).

Apart from ``events`` (the ``MeteredPeer`` events, which carry a ``RemotePeer``) because a
``RemotePeer`` emits these: both modules can then import what they need without a cycle.
``events`` re-exports every name here. The naming rules are ``events``'s: ``name`` is
the official SDK's event name, attributes are its payload keys in snake_case.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from ...extras import missing_extra

try:
    from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection
except ImportError as exc:  # the optional WebRTC stack is not installed
    raise missing_extra("webrtc", exc) from exc

__all__ = [
    "REMOTE_PEER_EVENT_TYPES",
    "MediaStream",
    "PeerEventKey",
    "RemoteConnectionResetEvent",
    "RemoteDataChannelEvent",
    "RemoteNegotiationErrorEvent",
    "RemoteStateChangeEvent",
    "RemoteStreamAddedEvent",
    "RemoteStreamRemovedEvent",
    "RemoteTrackMetadataEvent",
    "TrackEvent",
]


# -- MediaStream ---------------------------------------------------------------------------------


class MediaStream:
    """A group of tracks with an id (what a browser's ``MediaStream`` is). The id travels in
    the SDP (msid), so the receiver sees the same ``stream.id``. Received streams are fresh
    objects after every reconnect or connection rebuild."""

    def __init__(self, tracks: Iterable[MediaStreamTrack] = (), *, id: str | None = None
                 ) -> None:
        if id is not None and (not id or id == "-" or any(c.isspace() for c in id)):
            raise ValueError("a stream id must be a non-empty token without spaces, not '-'")
        self.id = id or str(uuid.uuid4())
        self._tracks: list[MediaStreamTrack] = []
        for t in tracks:
            self.add_track(t)

    @property
    def tracks(self) -> list[MediaStreamTrack]:
        return list(self._tracks)

    def get_tracks(self) -> list[MediaStreamTrack]:
        return list(self._tracks)

    def get_audio_tracks(self) -> list[MediaStreamTrack]:
        return [t for t in self._tracks if t.kind == "audio"]

    def get_video_tracks(self) -> list[MediaStreamTrack]:
        return [t for t in self._tracks if t.kind == "video"]

    def add_track(self, track: MediaStreamTrack) -> None:
        if track not in self._tracks:
            self._tracks.append(track)

    def remove_track(self, track: MediaStreamTrack) -> None:
        if track in self._tracks:
            self._tracks.remove(track)

    def __repr__(self) -> str:
        kinds = ",".join(t.kind for t in self._tracks)
        return f"MediaStream(id={self.id!r}, tracks=[{kinds}])"


# -- RemotePeer events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrackEvent:
    """A remote track arrived. ``metadata`` is the sender's bag for it (None if it sent
    none); ``streams`` holds its stream (empty for a track sent without one)."""

    name: ClassVar[str] = "track"
    track: MediaStreamTrack
    streams: tuple[MediaStream, ...]
    metadata: dict[str, Any] | None
    kind: str

    @property
    def stream(self) -> MediaStream | None:
        return self.streams[0] if self.streams else None


@dataclass(frozen=True, slots=True)
class RemoteStreamAddedEvent:
    name: ClassVar[str] = "stream-added"
    stream: MediaStream
    metadata: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class RemoteStreamRemovedEvent:
    """Every track of the stream ended (not fired when a reconnect replaces the
    connection: ``stream-added`` fires again with a new object then)."""

    name: ClassVar[str] = "stream-removed"
    stream: MediaStream


@dataclass(frozen=True, slots=True)
class RemoteStateChangeEvent:
    name: ClassVar[str] = "state-change"
    from_: str
    to: str


@dataclass(frozen=True, slots=True)
class RemoteConnectionResetEvent:
    """``remote.pc`` was replaced (a reconnect reconcile, an ICE recovery, a glare). Data
    channels of the old connection are gone: re-create them. Local media is re-attached
    automatically."""

    name: ClassVar[str] = "connection-reset"
    pc: RTCPeerConnection
    old_pc: RTCPeerConnection
    reason: str


@dataclass(frozen=True, slots=True)
class RemoteDataChannelEvent:
    """A data channel opened (``local=False``: the remote created it)."""

    name: ClassVar[str] = "datachannel"
    channel: RTCDataChannel
    local: bool


@dataclass(frozen=True, slots=True)
class RemoteNegotiationErrorEvent:
    """A negotiation step failed; ``fatal`` once the ICE recovery ladder is exhausted."""

    name: ClassVar[str] = "negotiation-error"
    error: BaseException
    fatal: bool


@dataclass(frozen=True, slots=True)
class RemoteTrackMetadataEvent:
    """Metadata of a live remote track changed after its ``track`` event."""

    name: ClassVar[str] = "track-metadata"
    track: MediaStreamTrack
    metadata: dict[str, Any] | None


REMOTE_PEER_EVENT_TYPES: dict[str, type[Any]] = {
    cls.name: cls for cls in (TrackEvent, RemoteStreamAddedEvent, RemoteStreamRemovedEvent,
                              RemoteStateChangeEvent, RemoteConnectionResetEvent,
                              RemoteDataChannelEvent, RemoteNegotiationErrorEvent,
                              RemoteTrackMetadataEvent)
}


PeerEventKey = str | type[Any]
"""An event name (``"peer-joined"``) or an event class (``PeerJoinedEvent``) of a
``MeteredPeer`` or a ``RemotePeer``."""
