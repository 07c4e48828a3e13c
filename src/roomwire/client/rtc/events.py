"""Events of ``MeteredPeer`` and ``RemotePeer`` (emitted by an ``emitter.EventEmitter``), and
``MediaStream``.

The ``RemotePeer`` events and ``MediaStream`` live in ``remote_events`` (a ``RemotePeer``
emits them, and the events here carry a ``RemotePeer``) and are re-exported from here.

Every event is a frozen dataclass whose ``name`` is the official SDK's (kebab-case) event name, and
whose attributes are its payload keys in snake_case (``from`` is ``from_``). Handlers
are registered with the name or the class: ``peer.on("peer-joined", fn)`` or
``peer.on(PeerJoinedEvent, fn)``; used without a handler, ``on`` is a decorator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import MeteredPeerFatalError
from .remote_events import (
    REMOTE_PEER_EVENT_TYPES,
    MediaStream,
    PeerEventKey,
    RemoteConnectionResetEvent,
    RemoteDataChannelEvent,
    RemoteNegotiationErrorEvent,
    RemoteStateChangeEvent,
    RemoteStreamAddedEvent,
    RemoteStreamRemovedEvent,
    RemoteTrackMetadataEvent,
    TrackEvent,
)

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
    "RecoveryEvent",
    "RemoteConnectionResetEvent",
    "RemoteDataChannelEvent",
    "RemoteNegotiationErrorEvent",
    "RemoteStateChangeEvent",
    "RemoteStreamAddedEvent",
    "RemoteStreamRemovedEvent",
    "RemoteTrackMetadataEvent",
    "TrackEvent",
]


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
class RecoveryEvent:
    """The channel was subscribed again after a reconnect (roomwire's history extension,
    docs/sdk-signalling.md "Recovery after a reconnect"): ``recovered`` True means the
    broadcasts missed meanwhile follow as ``data`` events (those of peers still in the
    roster); False means some were lost, so resync what they carried; None means no
    recovery was attempted (``recover=False``, or the server keeps no history for the
    channel)."""

    name: ClassVar[str] = "recovery"
    channel: str
    recovered: bool | None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A fatal condition; branch on ``err.name`` (or ``err.code``)."""

    name: ClassVar[str] = "error"
    err: MeteredPeerFatalError


PeerEvent = (JoinedEvent | LeftEvent | PeerStateEvent | PeerJoinedEvent | PeerLeftEvent
             | DataEvent | RecoveryEvent | ErrorEvent)

PEER_EVENT_TYPES: dict[str, type[Any]] = {
    cls.name: cls for cls in (JoinedEvent, LeftEvent, PeerStateEvent, PeerJoinedEvent,
                              PeerLeftEvent, DataEvent, RecoveryEvent, ErrorEvent)
}
