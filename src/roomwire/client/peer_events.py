"""Events of ``MeteredPeer`` and ``RemotePeer`` (emitted by an ``emitter.EventEmitter``), and
``MediaStream``.

Every event is a frozen dataclass whose ``name`` is the official SDK's (kebab-case) event name, and
whose attributes are its payload keys in snake_case (``from`` is ``from_``). Handlers
are registered with the name or the class: ``peer.on("peer-joined", fn)`` or
``peer.on(PeerJoinedEvent, fn)``; used without a handler, ``on`` is a decorator.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..extras import missing_extra

try:
    from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection
except ImportError as exc:  # the optional WebRTC stack is not installed
    raise missing_extra("webrtc", exc) from exc

from .peer_errors import MeteredPeerFatalError

if TYPE_CHECKING:
    from .remote_peer import RemotePeer

__all__ = [
    "PEER_EVENT_TYPES",
    "REMOTE_PEER_EVENT_TYPES",
    "DataEvent",
    "ErrorEvent",
    "JoinedEvent",
    "LeftEvent",
    "MediaStream",
    "PeerEventKey",
    "PeerJoinedEvent",
    "PeerLeftEvent",
    "PeerStateEvent",
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


# -- MeteredPeer events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinedEvent:
    """``join()`` succeeded (fires once)."""

    name: ClassVar[str] = "joined"
    peer_id: str
    channel: str


@dataclass(frozen=True, slots=True)
class LeftEvent:
    """The peer reached ``closed`` (fires exactly once, whatever the way there). ``peer_id``
    and ``channel`` are what the peer used before (None if it never had them)."""

    name: ClassVar[str] = "left"
    peer_id: str | None
    channel: str | None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class PeerStateEvent:
    """Every state transition of the MeteredPeer."""

    name: ClassVar[str] = "state-change"
    from_: str
    to: str


@dataclass(frozen=True, slots=True)
class PeerJoinedEvent:
    name: ClassVar[str] = "peer-joined"
    peer: RemotePeer


@dataclass(frozen=True, slots=True)
class PeerLeftEvent:
    name: ClassVar[str] = "peer-left"
    peer: RemotePeer


@dataclass(frozen=True, slots=True)
class DataEvent:
    """Customer data from a peer of the channel. ``kind``: ``broadcast`` (``send``) or
    ``direct`` (``send_to``). ``sender_metadata``: the sender's JWT ``peerMetadata`` (for
    broadcasts only when joined with ``include_sender_metadata=True``). Untrusted; trust
    ``sender_peer_id``."""

    name: ClassVar[str] = "data"
    sender_peer_id: str
    data: Any
    kind: str
    sender_metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A fatal condition; branch on ``err.name`` (or ``err.code``)."""

    name: ClassVar[str] = "error"
    err: MeteredPeerFatalError


PeerEvent = (JoinedEvent | LeftEvent | PeerStateEvent | PeerJoinedEvent | PeerLeftEvent
             | DataEvent | ErrorEvent)

PEER_EVENT_TYPES: dict[str, type[Any]] = {
    cls.name: cls for cls in (JoinedEvent, LeftEvent, PeerStateEvent, PeerJoinedEvent,
                              PeerLeftEvent, DataEvent, ErrorEvent)
}


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
