"""The Metered Realtime v1 wire protocol: one source of truth for the server and the SDK."""

from . import frames, limits, patterns
from .codes import (
    ALL_ACTIONS,
    CLOSE_CODE_NAMES,
    FATAL_CLOSE_CODES,
    FATAL_UNCORRELATED_ERRORS,
    SLOW_BACKOFF_CLOSE_CODES,
    TERMINAL_CLOSE_CODES,
    Action,
    CloseCode,
    ErrorCode,
)
from .validate import (
    ProtocolViolation,
    channel_problem,
    is_reserved_channel,
    peer_id_problem,
    request_id_problem,
    validate_channel,
    validate_peer_id,
)

__all__ = [
    "ALL_ACTIONS",
    "CLOSE_CODE_NAMES",
    "FATAL_CLOSE_CODES",
    "FATAL_UNCORRELATED_ERRORS",
    "SLOW_BACKOFF_CLOSE_CODES",
    "TERMINAL_CLOSE_CODES",
    "Action",
    "CloseCode",
    "ErrorCode",
    "ProtocolViolation",
    "channel_problem",
    "frames",
    "is_reserved_channel",
    "limits",
    "patterns",
    "peer_id_problem",
    "request_id_problem",
    "validate_channel",
    "validate_peer_id",
]
