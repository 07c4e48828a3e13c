"""The roomwire client SDK: ``SignallingClient`` (pub/sub over one WebSocket, with reconnect)
and ``MeteredPeer`` / ``RemotePeer`` (WebRTC media and data per remote peer, on aiortc).

Needs the ``websockets`` package (``pip install 'roomwire[client]'``) unless a
``web_socket_factory`` is given. The WebRTC half (``MeteredPeer``, ``RemotePeer``,
``MediaStream``, the media and loopback helpers and the peer events and errors) needs aiortc
and PyAV and is imported on first use, so a pub/sub-only install never imports them.
"""

from typing import Any

from .emitter import EventKey, EventStream
from .signalling.client import SignallingClient, TokenProvider
from .signalling.errors import (
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
from .signalling.events import (
    ConnectedEvent,
    DirectEvent,
    DisconnectedEvent,
    Event,
    GoingAwayEvent,
    MessageEvent,
    PresenceEntry,
    PresenceEvent,
    ResubscribedEvent,
    ServerErrorEvent,
    StateChangeEvent,
    TokenProviderErrorEvent,
)
from .signalling.options import ReconnectOptions
from .signalling.reconnect import DisconnectCause
from .signalling.state import ClientState
from .signalling.transport import HandshakeRejected, WebSocketConnection, WebSocketFactory

_LAZY: dict[str, str] = {
    # rtc/peer.py
    "MeteredPeer": "rtc.peer", "MeteredPeerState": "rtc.peer", "StreamMetadata": "rtc.peer",
    # rtc/remote_peer.py
    "RemotePeer": "rtc.remote_peer",
    # rtc/errors.py
    "MeteredPeerBufferFullError": "rtc.errors", "MeteredPeerClosedError": "rtc.errors",
    "MeteredPeerError": "rtc.errors", "MeteredPeerFatalError": "rtc.errors",
    "MeteredPeerOversizedError": "rtc.errors", "MeteredPeerReplaceTrackError": "rtc.errors",
    "MeteredPeerSendError": "rtc.errors", "MeteredPeerStateError": "rtc.errors",
    "ReplaceTrackFailure": "rtc.errors",
    # rtc/events.py
    "DataEvent": "rtc.events", "ErrorEvent": "rtc.events", "JoinedEvent": "rtc.events",
    "LeftEvent": "rtc.events", "MediaStream": "rtc.events",
    "PeerJoinedEvent": "rtc.events", "PeerLeftEvent": "rtc.events",
    "PeerStateEvent": "rtc.events", "RecoveryEvent": "rtc.events",
    "RemoteConnectionResetEvent": "rtc.events",
    "RemoteDataChannelEvent": "rtc.events", "RemoteNegotiationErrorEvent": "rtc.events",
    "RemoteStateChangeEvent": "rtc.events", "RemoteStreamAddedEvent": "rtc.events",
    "RemoteStreamRemovedEvent": "rtc.events", "RemoteTrackMetadataEvent": "rtc.events",
    "TrackEvent": "rtc.events",
    # audio.py
    "AudioChunk": "audio", "UtteranceDetector": "audio", "UtteranceEvent": "audio",
    "remote_audio": "audio",
    # media.py
    "AudioSource": "media", "MonotonicClock": "media", "Recorder": "media",
    "VideoSource": "media", "VirtualClock": "media",
    "from_camera": "media", "from_file": "media", "from_microphone": "media",
    "iter_frames": "media",
    # rtc/loopback.py
    "disable_loopback_candidates": "rtc.loopback", "enable_loopback_candidates": "rtc.loopback",
    "loopback_candidates": "rtc.loopback",
    # rtc/negotiation.py
    "NegotiationTimings": "rtc.negotiation",
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
    "ResubscribedEvent",
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
