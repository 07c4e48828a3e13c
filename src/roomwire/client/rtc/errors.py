"""Errors of ``MeteredPeer`` (the official SDK's error classes, with machine-readable ``code``s).

* ``MeteredPeerSendError``: ``code`` is ``not_joined``, ``self_send``, ``invalid_args`` or
  ``reserved_channel``.
* ``MeteredPeerOversizedError``: the payload (or a metadata bag) is larger than the
  welcome's ``maxMessageSize``; ``size`` and ``cap`` in bytes.
* ``MeteredPeerStateError``: ``code`` is ``invalid_state`` or ``track_already_attached``;
  ``method`` is the method called and ``current_state`` the peer's state (None for
  ``track_already_attached``).
* ``MeteredPeerReplaceTrackError``: ``replace_track`` failed on some (or all) peers;
  ``succeeded`` lists the peer ids already on the new track, ``failed`` the others.
* ``MeteredPeerFatalError``: what the ``error`` event carries. ``name`` is the official SDK's
  symbolic name (``invalid_token``, ``token_expired``, ``channel_not_authorized``,
  ``account_suspended``, ``admin_disconnect``, a fatal server code, ``TokenProviderError``;
  roomwire adds ``reconnect_exhausted``, ``reconnect_disabled``, ``reconcile_timeout`` and
  ``internal_error``), ``code`` the same as a snake_case identifier.
* ``MeteredPeerClosedError``: a pending operation (a send buffered while reconnecting, a
  ``join`` in progress) was cut short because the peer closed.
* ``MeteredPeerBufferFullError``: too many sends are already buffered while reconnecting.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..signalling.errors import RoomwireError

__all__ = [
    "MeteredPeerBufferFullError",
    "MeteredPeerClosedError",
    "MeteredPeerError",
    "MeteredPeerFatalError",
    "MeteredPeerOversizedError",
    "MeteredPeerReplaceTrackError",
    "MeteredPeerSendError",
    "MeteredPeerStateError",
    "ReplaceTrackFailure",
]


class MeteredPeerError(RoomwireError):
    """Base class of the ``MeteredPeer`` errors."""

    code = "metered_peer_error"


class MeteredPeerSendError(MeteredPeerError):
    """A send (or ``join``) was refused before anything went on the wire."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class MeteredPeerOversizedError(MeteredPeerError):
    """The payload is ``size`` bytes (compact UTF-8 JSON); the server accepts ``cap``."""

    code = "oversized"

    def __init__(self, size: int, cap: int, what: str = "payload") -> None:
        super().__init__(f"{what} is {size} bytes; the limit is {cap}")
        self.size = size
        self.cap = cap


class MeteredPeerStateError(MeteredPeerError):
    """The call is not allowed now (``invalid_state``) or the track is already attached with
    another stream (``track_already_attached``)."""

    def __init__(self, code: str, method: str, current_state: str | None,
                 message: str | None = None) -> None:
        if message is None:
            message = (f"{method}() is not allowed while the peer is {current_state}"
                       if code == "invalid_state" else f"{method}(): {code}")
        super().__init__(message, code=code)
        self.method = method
        self.current_state = current_state


@dataclass(frozen=True, slots=True)
class ReplaceTrackFailure:
    peer_id: str
    err: BaseException


class MeteredPeerReplaceTrackError(MeteredPeerError):
    """``replace_track`` did not succeed on every peer. Retry just the ``failed`` ones."""

    code = "replace_track_failed"

    def __init__(self, succeeded: tuple[str, ...], failed: tuple[ReplaceTrackFailure, ...]
                 ) -> None:
        super().__init__(f"replace_track failed on {len(failed)} peer(s), "
                         f"succeeded on {len(succeeded)}")
        self.succeeded = succeeded
        self.failed = failed


class MeteredPeerFatalError(MeteredPeerError):
    """A condition the application must act on (see the module docstring). ``name`` is the
    official SDK's ``err.name``; ``code`` a snake_case identifier (equal to ``name`` except for
    ``TokenProviderError``, whose code is ``token_provider_failed``)."""

    def __init__(self, name: str, message: str, *, close_code: int | None = None) -> None:
        code = "token_provider_failed" if name == "TokenProviderError" else name
        super().__init__(message, code=code)
        self.name = name
        self.close_code = close_code

    def __repr__(self) -> str:
        return f"MeteredPeerFatalError(name={self.name!r}, message={self.message!r})"


class MeteredPeerClosedError(MeteredPeerError):
    """The peer closed before the operation could complete."""

    code = "closed"


class MeteredPeerBufferFullError(MeteredPeerError):
    """``cap`` sends are already waiting for the reconnect to finish."""

    code = "send_buffer_full"

    def __init__(self, cap: int) -> None:
        super().__init__(f"{cap} sends are already buffered while reconnecting")
        self.cap = cap
