"""Events a ``SignallingClient`` emits: typed, frozen dataclasses.

Each class has a ``name``: the kebab-case event name used by the JS SDK, which is also the
string to register handlers with (``client.on("message", fn)``; the class works too:
``client.on(MessageEvent, fn)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...protocol.frames import PresenceEntry
from ...protocol.history import Position
from .errors import TokenProviderError
from .state import ClientState

__all__ = [
    "EVENT_TYPES",
    "ConnectedEvent",
    "DirectEvent",
    "DisconnectedEvent",
    "Event",
    "GoingAwayEvent",
    "MessageEvent",
    "PresenceEntry",
    "PresenceEvent",
    "ResubscribedEvent",
    "ServerErrorEvent",
    "StateChangeEvent",
    "TokenProviderErrorEvent",
]


@dataclass(frozen=True, slots=True)
class ConnectedEvent:
    """A welcome arrived: the client is connected (first time, or again after a drop)."""

    name: ClassVar[str] = "connected"
    peer_id: str
    """This connection's peer id (with a publishable key, a new random one on every connect)."""
    server_time: float
    """The server's clock at the welcome, Unix seconds."""
    expires_at: float | None
    """When the token expires (Unix seconds; the server closes with 4002 just before), or None
    for a publishable key."""
    max_message_size: int
    """The largest ``data`` (compact UTF-8 JSON bytes) the server accepts."""
    ice_servers: tuple[dict[str, Any], ...] | None
    """Validated ICE servers from the welcome; on a reconnect whose welcome has none, the
    previous ones."""
    is_reconnect: bool
    metadata: dict[str, Any] | None = None
    """The token's private ``metadata`` claim, if any."""


@dataclass(frozen=True, slots=True)
class DisconnectedEvent:
    """The socket is gone. ``will_reconnect`` says whether the client will try again.

    A client that stops for good emits exactly one event with ``will_reconnect=False``, and
    ``cause`` then says why: a close-code name (``invalid_token``, ``channel_not_authorized``,
    ``account_suspended``, ``admin_disconnect``) or one of ``client_closed``,
    ``reconnect_disabled``, ``reconnect_exhausted``, ``token_provider_failed``."""

    name: ClassVar[str] = "disconnected"
    code: int
    """The close code (4000 for the client's own inactivity close, 1006 for a lost
    connection, an HTTP status for an upgrade refused during reconnect)."""
    reason: str
    will_reconnect: bool
    cause: str | None = None


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A broadcast published on a subscribed channel."""

    name: ClassVar[str] = "message"
    channel: str
    sender_peer_id: str
    data: Any
    sender_metadata: dict[str, Any] | None = None
    """The sender's ``peerMetadata``, only when subscribed with
    ``include_sender_metadata=True``. Untrusted; ``sender_peer_id`` is server-stamped."""
    position: Position | None = None
    """The message's place in the channel's history (roomwire's history extension), when
    the server keeps history for the channel; None otherwise."""


@dataclass(frozen=True, slots=True)
class DirectEvent:
    """A message sent to this peer id with ``send()``."""

    name: ClassVar[str] = "direct"
    sender_peer_id: str
    data: Any
    sender_metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """Peers joined or left a subscribed channel. The first one after a subscribe (or a
    resubscribe after a reconnect) is the full roster of the channel."""

    name: ClassVar[str] = "presence"
    channel: str
    joined: tuple[PresenceEntry, ...]
    left: tuple[PresenceEntry, ...]


@dataclass(frozen=True, slots=True)
class ResubscribedEvent:
    """A tracked channel was subscribed again after a reconnect (its ack arrived). With
    roomwire's history extension (docs/sdk-signalling.md, Recovery after a reconnect):
    ``recovered`` True means the messages missed meanwhile follow this event, in order,
    before the live ones; False means some were lost (history overflowed or expired, or the
    server restarted), so the app should resync the channel's state; None means no recovery
    was attempted (``recover=False``, no position known yet, or the server keeps no history
    for the channel)."""

    name: ClassVar[str] = "resubscribed"
    channel: str
    recovered: bool | None
    position: Position | None = None
    """The channel's position at the resubscribe (None without history)."""


@dataclass(frozen=True, slots=True)
class ServerErrorEvent:
    """An ``error`` frame that answers no pending request (including a resubscribe that
    failed after its retries). Requests made by the app get their errors as exceptions."""

    name: ClassVar[str] = "server-error"
    code: str
    message: str | None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class GoingAwayEvent:
    """The server is shutting down; a close (1001) follows. The client waits at least
    ``retry_after_ms`` before reconnecting."""

    name: ClassVar[str] = "going-away"
    retry_after_ms: int


@dataclass(frozen=True, slots=True)
class TokenProviderErrorEvent:
    """The token provider failed ``consecutive_failures`` times in a row (emitted once per
    streak, at the third failure)."""

    name: ClassVar[str] = "token-provider-error"
    consecutive_failures: int
    error: TokenProviderError


@dataclass(frozen=True, slots=True)
class StateChangeEvent:
    """The client moved from ``old`` to ``new``."""

    name: ClassVar[str] = "state-change"
    old: ClientState
    new: ClientState


Event = (
    ConnectedEvent
    | DisconnectedEvent
    | MessageEvent
    | DirectEvent
    | PresenceEvent
    | ResubscribedEvent
    | ServerErrorEvent
    | GoingAwayEvent
    | TokenProviderErrorEvent
    | StateChangeEvent
)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (
        ConnectedEvent,
        DisconnectedEvent,
        MessageEvent,
        DirectEvent,
        PresenceEvent,
        ResubscribedEvent,
        ServerErrorEvent,
        GoingAwayEvent,
        TokenProviderErrorEvent,
        StateChangeEvent,
    )
}
"""Event name -> event class."""
