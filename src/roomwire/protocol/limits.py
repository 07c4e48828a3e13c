"""Protocol limits and defaults. The server and the SDK read them from here only."""

from __future__ import annotations

MAX_MESSAGE_SIZE = 65_536
"""Default ``welcome.maxMessageSize``: the largest serialized ``data`` a client may send."""

FRAME_ENVELOPE_ALLOWANCE = 4_096
"""A frame may exceed ``maxMessageSize`` by this much (room for the envelope) before 1009."""

MAX_CLIENT_INBOUND_FRAME = 1_048_576
"""The official clients close with 1009 on a larger inbound frame; the server never sends one."""

MAX_CHANNELS_PER_CONNECTION = 100
MAX_CHANNEL_BYTES = 256
MAX_PEER_ID_BYTES = 128
MAX_PATTERN_CHARS = 512
"""Longest channel pattern (key, token or REST); escapes make a pattern longer than its channel."""
MAX_PATTERN_WILDCARDS = 32
"""Most ``*``/``**`` wildcards in one channel pattern."""
MAX_REQUEST_ID_CHARS = 128
MAX_PEER_METADATA_BYTES = 4_096
MAX_METADATA_BYTES = 8_192

RATE_PER_SECOND = 100.0
RATE_BURST = 200

CONNECTS_PER_IP = 60
CONNECTS_PER_IP_WINDOW = 60.0

SERVER_PING_INTERVAL = 30.0
SERVER_PING_GRACE = 10.0
GOING_AWAY_RETRY_AFTER_MS = 1_000
GOING_AWAY_DRAIN = 0.25
TOKEN_EXPIRY_MARGIN = 0.25
JWT_LEEWAY = 5.0
OUTBOUND_QUEUE_BYTES = 1_048_576

# Client-side timings (seconds), shared so the SDK and the tests agree.
WELCOME_TIMEOUT = 10.0
ACK_TIMEOUT = 15.0
INACTIVITY_TIMEOUT = 60.0
TOKEN_PROVIDER_TIMEOUT = 10.0
TOKEN_PROVIDER_FAILURES_BEFORE_EVENT = 3
RECONNECT_INITIAL_DELAY = 0.5
RECONNECT_MULTIPLIER = 2.0
RECONNECT_MAX_DELAY = 30.0
RECONNECT_JITTER = 0.2
RECONNECT_MAX_ATTEMPTS = 100
SLOW_BACKOFF_FLOOR = 30.0
SUBSCRIBE_REPLAY_RETRIES = 3
SUBSCRIBE_REPLAY_RETRY_DELAY = 2.0
GOING_AWAY_MAX_RETRY_AFTER_MS = 300_000

# ICE servers accepted from a welcome.
MAX_ICE_SERVERS = 16
MAX_ICE_URL_CHARS = 512
MAX_ICE_CREDENTIAL_CHARS = 1_024

RESERVED_CHANNEL_PREFIXES = ("_metered/", "_internal/", "_system/")
