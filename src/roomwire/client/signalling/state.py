"""The client's connection states and the transitions between them (no I/O)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TRANSITIONS", "ClientState", "IllegalTransition", "StateMachine"]


class ClientState(StrEnum):
    """Where a ``SignallingClient`` is. Values equal the JS SDK's state strings."""

    IDLE = "idle"
    """Built, never connected."""
    CONNECTING = "connecting"
    """The first ``connect()`` is in progress."""
    CONNECTED = "connected"
    """A welcome arrived on the current socket; requests may be sent."""
    RECONNECTING = "reconnecting"
    """The socket dropped; the client is waiting out a backoff delay or trying again."""
    CLOSED = "closed"
    """``close()`` was called, the first connect failed, or the client gave up reconnecting.
    ``connect()`` may be called again."""


S = ClientState

#: Every allowed transition. Same-state "transitions" are no-ops and are not listed.
TRANSITIONS: dict[ClientState, frozenset[ClientState]] = {
    S.IDLE: frozenset({S.CONNECTING, S.CLOSED}),
    S.CONNECTING: frozenset({S.CONNECTED, S.CLOSED}),
    S.CONNECTED: frozenset({S.RECONNECTING, S.CLOSED}),
    S.RECONNECTING: frozenset({S.CONNECTED, S.CLOSED}),
    S.CLOSED: frozenset({S.CONNECTING}),
}


class IllegalTransition(RuntimeError):
    """A bug: the driver asked for a transition the state machine does not allow."""


class StateMachine:
    """Holds the current state and checks every move against ``TRANSITIONS``."""

    __slots__ = ("_state",)

    def __init__(self, state: ClientState = ClientState.IDLE) -> None:
        self._state = state

    @property
    def state(self) -> ClientState:
        return self._state

    def can(self, new: ClientState) -> bool:
        return new is self._state or new in TRANSITIONS[self._state]

    def move(self, new: ClientState) -> tuple[ClientState, ClientState] | None:
        """Go to ``new``. Returns ``(old, new)``, or None when already there (nothing to
        announce). Raises IllegalTransition for a move the table does not allow."""
        old = self._state
        if new is old:
            return None
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(f"{old} -> {new} is not a legal transition")
        self._state = new
        return old, new
