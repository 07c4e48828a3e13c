"""The roomwire client SDK: ``SignallingClient`` (pub/sub over one WebSocket, with reconnect).

Needs the ``websockets`` package (``pip install 'roomwire[client]'``) unless a
``web_socket_factory`` is given.
"""

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

__all__ = [
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
