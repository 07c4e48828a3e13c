"""The roomwire client SDK: ``SignallingClient`` (pub/sub over one WebSocket, with reconnect)
and ``MeteredPeer`` / ``RemotePeer`` (WebRTC media and data per remote peer, on aiortc).

Needs the ``websockets`` package (``pip install 'roomwire[client]'``) unless a
``web_socket_factory`` is given. The WebRTC half (``MeteredPeer``, ``RemotePeer``,
``MediaStream``, the media and loopback helpers and the peer events and errors) needs aiortc
and PyAV and is imported on first use, so a pub/sub-only install never imports them.
"""

from typing import Any

from .emitter import EventKey, EventStream
from .errors import (
    AckTimeoutError,
    ClientStateError,
    DisconnectedError,
    InvalidChannelError,
    InvalidDataError,
    InvalidPeerIdError,
    NotConnectedError,
    OversizedError,
    ReservedChannelError,
    RoomwireError,
    ServerRequestError,
    SignallingConnectError,
    SignallingError,
    TokenProviderError,
)
from .events import (
    ConnectedEvent,
    DirectEvent,
    DisconnectedEvent,
    Event,
    GoingAwayEvent,
    MessageEvent,
    PresenceEntry,
    PresenceEvent,
    ServerErrorEvent,
    StateChangeEvent,
    TokenProviderErrorEvent,
)
from .options import ReconnectOptions
from .reconnect import DisconnectCause
from .signalling import SignallingClient, TokenProvider
from .state import ClientState
from .transport import HandshakeRejected, WebSocketConnection, WebSocketFactory

_LAZY: dict[str, str] = {
    # peer.py
    "MeteredPeer": "peer", "MeteredPeerState": "peer", "StreamMetadata": "peer",
    # remote_peer.py
    "RemotePeer": "remote_peer",
    # peer_errors.py
    "MeteredPeerBufferFullError": "peer_errors", "MeteredPeerClosedError": "peer_errors",
    "MeteredPeerError": "peer_errors", "MeteredPeerFatalError": "peer_errors",
    "MeteredPeerOversizedError": "peer_errors", "MeteredPeerReplaceTrackError": "peer_errors",
    "MeteredPeerSendError": "peer_errors", "MeteredPeerStateError": "peer_errors",
    "ReplaceTrackFailure": "peer_errors",
    # peer_events.py
    "DataEvent": "peer_events", "ErrorEvent": "peer_events", "JoinedEvent": "peer_events",
    "LeftEvent": "peer_events", "MediaStream": "peer_events",
    "PeerJoinedEvent": "peer_events", "PeerLeftEvent": "peer_events",
    "PeerStateEvent": "peer_events", "RemoteConnectionResetEvent": "peer_events",
    "RemoteDataChannelEvent": "peer_events", "RemoteNegotiationErrorEvent": "peer_events",
    "RemoteStateChangeEvent": "peer_events", "RemoteStreamAddedEvent": "peer_events",
    "RemoteStreamRemovedEvent": "peer_events", "RemoteTrackMetadataEvent": "peer_events",
    "TrackEvent": "peer_events",
    # media.py
    "AudioSource": "media", "Recorder": "media", "VideoSource": "media",
    "from_camera": "media", "from_file": "media", "from_microphone": "media",
    "iter_frames": "media",
    # loopback.py
    "disable_loopback_candidates": "loopback", "enable_loopback_candidates": "loopback",
    "loopback_candidates": "loopback",
    # negotiation.py
    "NegotiationTimings": "negotiation",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    # A missing aiortc/av raises MissingExtraError (an ImportError) naming the extra to install.
    mod = importlib.import_module(f"{__name__}.{module}")
    value = getattr(mod, name)
    globals()[name] = value
    return value


__all__ = [
    *_LAZY,
    "AckTimeoutError",
    "ClientState",
    "ClientStateError",
    "ConnectedEvent",
    "DirectEvent",
    "DisconnectCause",
    "DisconnectedError",
    "DisconnectedEvent",
    "Event",
    "EventKey",
    "EventStream",
    "GoingAwayEvent",
    "HandshakeRejected",
    "InvalidChannelError",
    "InvalidDataError",
    "InvalidPeerIdError",
    "MessageEvent",
    "NotConnectedError",
    "OversizedError",
    "PresenceEntry",
    "PresenceEvent",
    "ReconnectOptions",
    "ReservedChannelError",
    "RoomwireError",
    "ServerErrorEvent",
    "ServerRequestError",
    "SignallingClient",
    "SignallingConnectError",
    "SignallingError",
    "StateChangeEvent",
    "TokenProvider",
    "TokenProviderError",
    "TokenProviderErrorEvent",
    "WebSocketConnection",
    "WebSocketFactory",
]
