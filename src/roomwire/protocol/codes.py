"""Error codes, close codes and HTTP error names of the v1 wire protocol.

One place for every code, shared by the server and the SDK, so that neither can drift.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    """The ``code`` of an ``error`` frame. The connection stays open after every one of them."""

    MALFORMED_MESSAGE = "malformed_message"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_CHANNEL = "invalid_channel"
    INVALID_PEER_ID = "invalid_peer_id"
    CHANNEL_NOT_AUTHORIZED = "channel_not_authorized"
    CHANNEL_RESERVED = "channel_reserved"
    CHANNEL_LIMIT_EXCEEDED = "channel_limit_exceeded"
    PEER_NOT_FOUND = "peer_not_found"
    MISSING_DATA = "missing_data"
    ACTION_NOT_PERMITTED = "action_not_permitted"
    OVER_MESSAGE_QUOTA = "over_message_quota"
    BACKEND_ERROR = "backend_error"
    INTERNAL_ERROR = "internal_error"


#: Codes that the official MeteredPeer treats as fatal when they arrive *uncorrelated*.
FATAL_UNCORRELATED_ERRORS = frozenset(
    {
        "account_suspended",
        "channel_not_authorized",
        "action_not_permitted",
        "invalid_token",
        "token_expired",
    }
)


class CloseCode(IntEnum):
    """WebSocket close codes the server sends (and 4000, which only clients send)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    ABNORMAL = 1006
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    CLIENT_INACTIVITY = 4000
    INVALID_TOKEN = 4001
    TOKEN_EXPIRED = 4002
    CHANNEL_NOT_AUTHORIZED = 4003
    OVER_CONCURRENT_LIMIT = 4010
    OVER_MESSAGE_RATE = 4011
    ACCOUNT_SUSPENDED = 4012
    ADMIN_DISCONNECT = 4020


#: After one of these a client must not reconnect.
TERMINAL_CLOSE_CODES = frozenset(
    {
        CloseCode.INVALID_TOKEN,
        CloseCode.CHANNEL_NOT_AUTHORIZED,
        CloseCode.ACCOUNT_SUSPENDED,
        CloseCode.ADMIN_DISCONNECT,
    }
)

#: After one of these the next reconnect delay is at least ``SLOW_BACKOFF_FLOOR`` seconds.
SLOW_BACKOFF_CLOSE_CODES = frozenset({CloseCode.OVER_CONCURRENT_LIMIT})

#: Close codes that end a MeteredPeer with a fatal error (4002 only when no retry is left).
FATAL_CLOSE_CODES = frozenset(
    {
        CloseCode.INVALID_TOKEN,
        CloseCode.TOKEN_EXPIRED,
        CloseCode.CHANNEL_NOT_AUTHORIZED,
        CloseCode.ACCOUNT_SUSPENDED,
        CloseCode.ADMIN_DISCONNECT,
    }
)

#: Symbolic names for close codes, as the SDKs surface them in fatal errors.
CLOSE_CODE_NAMES: dict[int, str] = {
    CloseCode.INVALID_TOKEN: "invalid_token",
    CloseCode.TOKEN_EXPIRED: "token_expired",
    CloseCode.CHANNEL_NOT_AUTHORIZED: "channel_not_authorized",
    CloseCode.ACCOUNT_SUSPENDED: "account_suspended",
    CloseCode.ADMIN_DISCONNECT: "admin_disconnect",
    CloseCode.OVER_CONCURRENT_LIMIT: "over_concurrent_limit",
    CloseCode.OVER_MESSAGE_RATE: "over_message_rate",
    CloseCode.CLIENT_INACTIVITY: "client_inactivity",
}


class Action(StrEnum):
    """What a key or token may do."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    PRESENCE = "presence"
    SEND = "send"


ALL_ACTIONS = frozenset(Action)
