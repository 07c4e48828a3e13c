"""Exceptions raised by the roomwire client SDK.

Every exception carries a machine-readable ``code`` (a stable string) next to its human message,
so that callers branch on ``err.code`` rather than on message text. Class names, ``code`` values
and attribute names are part of the public contract; message wording is not.

No message ever contains a credential: values that could (close reasons, token provider errors)
are scrubbed before they are put into an exception, and such exceptions are never chained.
"""

from __future__ import annotations

from ...protocol import ErrorCode

__all__ = [
    "AckTimeoutError",
    "ClientStateError",
    "DisconnectedError",
    "InvalidChannelError",
    "InvalidDataError",
    "InvalidPeerIdError",
    "NotConnectedError",
    "OversizedError",
    "ReservedChannelError",
    "RoomwireError",
    "ServerRequestError",
    "SignallingConnectError",
    "SignallingError",
    "TokenProviderError",
]


class RoomwireError(Exception):
    """Base class of every SDK error. ``code`` is a stable, machine-readable identifier."""

    code: str = "roomwire_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class SignallingError(RoomwireError):
    """An error of the signalling connection (connecting, acks, the socket going away)."""

    code = "signalling_error"


class ClientStateError(SignallingError):
    """The call is not allowed in the client's current state (e.g. ``connect()`` twice)."""

    code = "invalid_state"

    def __init__(self, method: str, state: str) -> None:
        super().__init__(f"{method}() is not allowed while the client is {state}")
        self.method = method
        self.state = state


class NotConnectedError(SignallingError):
    """A request was made while the client is not connected (idle, connecting, reconnecting
    or closed). Nothing is buffered: retry after the next ``connected`` event."""

    code = "not_connected"

    def __init__(self, state: str) -> None:
        super().__init__(f"the client is not connected (state: {state})")
        self.state = state


class SignallingConnectError(SignallingError):
    """The first ``connect()`` failed: the socket closed, or was refused, before a welcome.

    ``close_code`` is the WebSocket close code (4001 for a bad token, ...), the HTTP status of a
    refused upgrade (e.g. 429), 1006 when no socket could be opened, or 4000 when no welcome
    arrived in time."""

    code = "connect_failed"

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(f"could not connect (code {close_code}): {reason}" if reason
                         else f"could not connect (code {close_code})")
        self.close_code = close_code
        self.reason = reason


class DisconnectedError(SignallingError):
    """The socket went away before the request was acknowledged. The request may or may not
    have reached the server."""

    code = "disconnected"

    def __init__(self, close_code: int | None = None, reason: str = "") -> None:
        detail = f" (code {close_code})" if close_code is not None else ""
        super().__init__(f"the connection closed before the server answered{detail}")
        self.close_code = close_code
        self.reason = reason


class AckTimeoutError(SignallingError):
    """The server did not acknowledge the request within ``timeout`` seconds."""

    code = "ack_timeout"

    def __init__(self, request_id: str, timeout: float) -> None:
        super().__init__(f"no answer to request {request_id} within {timeout:g} s")
        self.request_id = request_id
        self.timeout = timeout


class ServerRequestError(SignallingError):
    """The server refused a request with an ``error`` frame. ``code`` is the server's code
    (``channel_not_authorized``, ``peer_not_found``, ...; unknown codes pass through)."""

    def __init__(self, code: str, message: str | None, request_id: str | None) -> None:
        text = f"server refused the request: {code}"
        if message:
            text += f" ({message})"
        super().__init__(text, code=code)
        self.server_message = message
        self.request_id = request_id


class TokenProviderError(SignallingError):
    """The token provider raised, timed out, or returned something other than a non-empty
    string. The original exception is not chained (it could hold a credential); its type and
    scrubbed text are in the message."""

    code = "token_provider_failed"


class InvalidChannelError(RoomwireError, ValueError):
    """The channel name breaks the wire rules (empty, too long, control characters)."""

    code = ErrorCode.INVALID_CHANNEL.value


class ReservedChannelError(InvalidChannelError):
    """The channel uses a reserved prefix (``_metered/``, ``_internal/``, ``_system/``)."""

    code = ErrorCode.CHANNEL_RESERVED.value


class InvalidPeerIdError(RoomwireError, ValueError):
    """The peer id breaks the wire rules (1-128 printable ASCII characters)."""

    code = ErrorCode.INVALID_PEER_ID.value


class InvalidDataError(RoomwireError, ValueError):
    """The payload cannot be sent as JSON (NaN/Infinity, or a type JSON cannot encode)."""

    code = "invalid_data"


class OversizedError(RoomwireError, ValueError):
    """The payload is larger than the server accepts; nothing was sent.

    ``size`` is the payload's size in bytes as compact UTF-8 JSON and ``cap`` the limit
    (the welcome's ``maxMessageSize``, or 65 536 before the first welcome)."""

    code = "oversized"

    def __init__(self, size: int, cap: int) -> None:
        super().__init__(f"payload is {size} bytes; the limit is {cap}")
        self.size = size
        self.cap = cap
