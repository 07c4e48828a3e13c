"""Server configuration: defaults, environment variables and command-line flags."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..protocol import limits

ENV_PREFIX = "ROOMWIRE_"
#: 32 characters of ``secrets.token_urlsafe`` carry ~190 bits; anything shorter is refused.
MIN_ADMIN_TOKEN_LENGTH = 32
DEMO_MODES = ("auto", "on", "off")
ADMIN_TOKEN_HINT = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


@dataclass
class ServerConfig:
    """Everything a node needs to run. Each field can be set from ``ROOMWIRE_<FIELD>``."""

    host: str = "127.0.0.1"
    port: int = 7880
    data_dir: Path = field(default_factory=lambda: Path("./roomwire-data"))
    public_url: str | None = None
    """The URL clients should use, printed at start (default: ``ws://HOST:PORT``)."""

    max_message_size: int = limits.MAX_MESSAGE_SIZE
    frame_envelope_allowance: int = limits.FRAME_ENVELOPE_ALLOWANCE
    max_channels_per_connection: int = limits.MAX_CHANNELS_PER_CONNECTION
    rate_limit: float = limits.RATE_PER_SECOND
    """Default per-connection request rate (requests/s); 0 disables the limit."""
    rate_burst: int = limits.RATE_BURST
    connect_rate_limit: int = limits.CONNECTS_PER_IP
    """Connection attempts allowed per source IP per window; 0 disables the limit."""
    connect_rate_window: float = limits.CONNECTS_PER_IP_WINDOW
    ping_interval: float = limits.SERVER_PING_INTERVAL
    ping_grace: float = limits.SERVER_PING_GRACE
    going_away_retry_after_ms: int = limits.GOING_AWAY_RETRY_AFTER_MS
    shutdown_readiness_delay: float = 0.0
    """Seconds between SIGTERM and the first ``going_away``: ``/readyz`` answers 503 while the
    node still serves and still takes new sockets, so a load balancer stops routing to it
    before its clients look for another node (docs/operations.md, "Rolling restarts")."""
    shutdown_drain: float = limits.GOING_AWAY_DRAIN
    """Seconds from the ``going_away`` to the last 1001 close: the closes are spread evenly
    over this window, so the clients do not all reconnect elsewhere in the same instant."""
    outbound_queue_bytes: int = limits.OUTBOUND_QUEUE_BYTES
    jwt_leeway: float = limits.JWT_LEEWAY
    allow_non_expiring_tokens: bool = False
    max_token_lifetime: int = 86_400
    """Longest token lifetime in seconds: a JWT whose ``exp`` is further ahead is refused
    at connect (4001) and REST ``/v1/tokens`` refuses a longer ``expiresInSec`` (400)."""
    token_expiry_margin: float = limits.TOKEN_EXPIRY_MARGIN
    handshake_timeout: float = 10.0

    # -- limits that protect a shared server (docs/operations.md) -------------------------------
    max_fragments_per_message: int = 64
    """Frames one fragmented WebSocket message may have; more closes the socket with 1009."""
    ping_rate: float = 1.0
    """Pings per second a socket may send, for each kind (WebSocket ping/pong control frames,
    and protocol ``ping`` frames); over ``ping_burst`` saved up the socket is closed with 4011."""
    ping_burst: int = 10
    http_keepalive_timeout: float = 5.0
    """Seconds an HTTP connection may sit idle after a response; the next request's head must
    be complete within it."""
    http_head_timeout: float = 10.0
    """Seconds a new connection has to send its first request head (WebSocket upgrade or HTTP)."""
    http_body_timeout: float = 30.0
    """Seconds an HTTP request body has to arrive in full after its head."""
    http_max_connections_per_ip: int = 64
    """Open connections per source IP that are not (yet) WebSockets; 0: no cap."""
    http_max_connections: int = 0
    """Open connections in total that are not (yet) WebSockets; 0: half the open-files limit."""
    store_poll_interval: float = 1.0
    """How often the node looks for changes made to the store by other processes (the CLI)."""
    log_level: str = "info"
    log_json: bool = False

    # -- operations (docs/operations.md) ---------------------------------------------------------
    admin_token: str | None = field(default=None, repr=False)
    """Bearer token of the operator admin API under ``/admin/v1``; unset disables that API.
    At least ``MIN_ADMIN_TOKEN_LENGTH`` characters: a short one can be guessed."""
    admin_auth_failures: int = 10
    """Failed admin authentications allowed per source IP per ``admin_auth_window``; past
    that the IP gets 429 (even with the right token) until the window refills."""
    admin_auth_window: float = 300.0
    demo: str = "auto"
    """The ``/demo`` page, which hands out the development key: ``auto`` (on only when
    ``host`` is a loopback address), ``on`` or ``off``."""
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    """Static ICE servers put in every welcome (``[{"urls": ..., "username"?, ...}]``)."""
    turn_urls: list[str] = field(default_factory=list)
    """TURN URLs that get per-connection credentials minted with ``turn_secret``."""
    turn_secret: str | None = field(default=None, repr=False)
    """coturn ``static-auth-secret`` (``use-auth-secret``); unset: no TURN credentials."""
    turn_ttl: int = 0
    """Lifetime of minted TURN credentials in seconds; 0: the token's lifetime (else 1 day).
    Never more than one day, whatever this or the token says."""
    usage_flush_interval: float = 10.0
    """How often usage counters are written to the database (and at stop)."""
    rest_rate_limit: float = 50.0
    """REST requests per second per secret key (and per IP for failed auth); 0 disables."""
    rest_rate_burst: int = 100
    history: list[dict[str, Any]] = field(default_factory=list)
    """Channel history for roomwire's recovery extension (docs/protocol.md, "roomwire
    extension: history and recovery"): rules ``{app?, channels?, size, ttl}``, the first
    matching (app, channel) wins; empty (the default): no channel keeps history. One node
    keeps it in memory; a cluster (``redis_url``) in Redis (docs/cluster.md)."""
    replay: list[dict[str, Any]] = field(default_factory=list)
    """Replay of missed broadcasts to connections authenticated by a JWT ``sub`` that drop
    and subscribe again (the official SDKs included, docs/protocol.md, "Replay for the
    official SDKs"): rules ``{app?, channels, window}``, the first matching wins; each needs
    a ``history`` rule covering its channels with a ``ttl`` of at least ``window``."""
    replay_max_marks: int = 100_000
    """Drops remembered for ``replay`` at once, one per (app, sub, channel); past it the
    oldest is forgotten (its return gets nothing, counted as ``evicted``)."""
    history_max_bytes: int = 64 * 2**20
    """Memory all channel histories of a node may hold together (payloads plus about 120
    bytes per message); past it the channels published to least recently lose their oldest
    messages first. One node only (a cluster's history is in Redis)."""

    # -- cluster (docs/cluster.md) --------------------------------------------------------------
    redis_url: str | None = None
    """Redis shared by the nodes of a cluster (``redis://host:6379/0``); unset: one node.
    Several comma-separated URLs spread channels and peers over several Redis servers (by
    a hash of app and name; node-level keys stay on the first). Every node must list the
    same URLs in the same order."""
    redis_prefix: str = "roomwire:"
    """Prefix of every Redis key and channel the cluster uses (one prefix per cluster)."""
    database_url: str | None = field(default=None, repr=False)
    """PostgreSQL store for apps, keys and usage (``postgresql://...``); unset: SQLite."""
    database_schema: str | None = None
    """PostgreSQL schema holding roomwire's tables (default: the connection's search_path)."""
    node_id: str | None = None
    """This node's name in the cluster (default: hostname-pid)."""
    presence_ttl: float = 15.0
    """Seconds after which a node that stopped heartbeating is dropped and its peers `left`."""
    heartbeat_interval: float = 0.0
    """Seconds between a node's heartbeats; 0: presence_ttl / 5."""
    usage_sync_interval: float = 1.0
    """Seconds between merges of the message counters into the cluster's (quota lag)."""
    reuse_port: bool = False
    """Bind with SO_REUSEPORT (``serve --workers N`` sets it for its workers)."""

    # -- webhooks (docs/operations.md, "Webhooks") ----------------------------------------------
    webhooks: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """Endpoints from the config file (``[[webhooks]]`` tables: ``url``, ``secret``, and
    optionally ``app``, ``events``, ``channel_patterns``, ``id``, ``enabled``); more can be
    added at runtime through the admin API or ``roomwire webhooks``."""
    webhook_grace: float = 3.0
    """Seconds ``channel_vacated`` and ``peer_left`` wait; a return within it sends neither
    the leave nor the arrival. 0 sends them at once."""
    webhook_batch_max: int = 100
    """Most events in one webhook request."""
    webhook_batch_delay: float = 0.05
    """Longest wait for more events before a request leaves with fewer than the maximum."""
    webhook_timeout: float = 5.0
    """Seconds a webhook request may take in all (connect, send, answer)."""
    webhook_retry_initial: float = 0.5
    """First retry delay; it doubles per failure up to ``webhook_retry_max``."""
    webhook_retry_max: float = 60.0
    webhook_retry_for: float = 3600.0
    """How long a failing batch is retried before its events are given up."""
    webhook_outbox_max: int = 100_000
    """Events waiting per endpoint on this node; newer events for a full endpoint are
    dropped and counted (their sequence numbers are used, so receivers see the gap)."""
    webhook_allowed_networks: list[str] = field(default_factory=list)
    """Private, loopback or link-local networks webhook targets may still be on (CIDR,
    e.g. ``127.0.0.0/8``); every other such target is refused."""
    webhook_message_max_bytes: int = 4096
    """``message_published`` carries the message's data up to this size; a larger one
    carries only its size and ``truncated: true``."""

    @property
    def max_frame_size(self) -> int:
        return self.max_message_size + self.frame_envelope_allowance

    @property
    def database_path(self) -> Path:
        return Path(self.data_dir) / "roomwire.sqlite3"

    @property
    def connect_url(self) -> str:
        if self.public_url:
            return self.public_url
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"ws://{host}:{self.port}"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Defaults, then ``ROOMWIRE_*`` environment variables, then ``overrides`` (flags)."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _coerce(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)
        cfg.data_dir = Path(cfg.data_dir)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse values that cannot work, with a sentence that names the setting."""
        if not (0 <= self.port <= 65535):
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if self.max_message_size < 1024:
            raise ValueError("max_message_size must be at least 1024 bytes")
        if self.rate_limit < 0 or self.rate_burst < 1:
            raise ValueError("rate_limit must be >= 0 and rate_burst >= 1")
        if self.max_channels_per_connection < 1:
            raise ValueError("max_channels_per_connection must be at least 1")
        if self.ping_interval <= 0 or self.ping_grace <= 0:
            raise ValueError("ping_interval and ping_grace must be positive")
        if self.shutdown_readiness_delay < 0 or self.shutdown_drain < 0:
            raise ValueError("shutdown_readiness_delay and shutdown_drain must be >= 0")
        if self.going_away_retry_after_ms < 1:
            raise ValueError("going_away_retry_after_ms must be at least 1")
        if self.outbound_queue_bytes < 65536:
            raise ValueError("outbound_queue_bytes must be at least 65536")
        if self.turn_ttl < 0 or self.usage_flush_interval <= 0:
            raise ValueError("turn_ttl must be >= 0 and usage_flush_interval positive")
        if self.turn_urls and not self.turn_secret:
            raise ValueError("turn_urls needs turn_secret (coturn's static-auth-secret)")
        if self.max_fragments_per_message < 1 or self.ping_rate <= 0 or self.ping_burst < 1:
            raise ValueError("max_fragments_per_message and ping_burst must be >= 1 and "
                             "ping_rate positive")
        if min(self.http_keepalive_timeout, self.http_head_timeout, self.http_body_timeout) <= 0:
            raise ValueError("http_keepalive_timeout, http_head_timeout and http_body_timeout "
                             "must be positive")
        if self.http_max_connections_per_ip < 0 or self.http_max_connections < 0:
            raise ValueError("http_max_connections_per_ip and http_max_connections must be >= 0")
        if self.max_token_lifetime < 60:
            raise ValueError("max_token_lifetime must be at least 60 seconds")
        if self.rest_rate_limit < 0 or self.rest_rate_burst < 1:
            raise ValueError("rest_rate_limit must be >= 0 and rest_rate_burst >= 1")
        if self.presence_ttl <= 0 or self.heartbeat_interval < 0:
            raise ValueError("presence_ttl must be positive and heartbeat_interval >= 0")
        if self.heartbeat_interval and self.heartbeat_interval >= self.presence_ttl:
            raise ValueError("heartbeat_interval must be shorter than presence_ttl")
        check_admin_token(self.admin_token)
        if self.admin_auth_failures < 1 or self.admin_auth_window <= 0:
            raise ValueError("admin_auth_failures must be >= 1 and admin_auth_window positive")
        if self.history:
            from .history import parse_rules

            parse_rules(self.history)
            if self.history_max_bytes < 2**20:
                raise ValueError("history_max_bytes must be at least 1048576 (1 MiB)")
        if self.replay:
            from .history import parse_rules as parse_history
            from .replay import parse_rules as parse_replay

            parse_replay(self.replay, parse_history(self.history))
            if self.replay_max_marks < 1:
                raise ValueError("replay_max_marks must be at least 1")
        if self.demo not in DEMO_MODES:
            raise ValueError(f"demo must be one of auto, on, off, not {self.demo!r}")
        self._validate_webhooks()

    def _validate_webhooks(self) -> None:
        if self.webhook_grace < 0 or self.webhook_batch_delay < 0:
            raise ValueError("webhook_grace and webhook_batch_delay must be >= 0")
        if not 1 <= self.webhook_batch_max <= 1000:
            raise ValueError("webhook_batch_max must be between 1 and 1000")
        if self.webhook_timeout <= 0 or self.webhook_retry_initial <= 0:
            raise ValueError("webhook_timeout and webhook_retry_initial must be positive")
        if self.webhook_retry_max < self.webhook_retry_initial or self.webhook_retry_for < 0:
            raise ValueError("webhook_retry_max must be >= webhook_retry_initial and "
                             "webhook_retry_for >= 0")
        if self.webhook_outbox_max < 1 or self.webhook_message_max_bytes < 0:
            raise ValueError("webhook_outbox_max must be >= 1 and webhook_message_max_bytes "
                             ">= 0")
        from .webhooks.policy import endpoint_from_config, parse_networks

        parse_networks(self.webhook_allowed_networks)
        for entry in self.webhooks:
            endpoint_from_config(entry, "default")

    @property
    def demo_enabled(self) -> bool:
        """Whether ``/demo`` is served: ``auto`` means only on a loopback listen address,
        where nobody but this machine can reach the development key it hands out."""
        if self.demo == "auto":
            return is_loopback(self.host)
        return self.demo == "on"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for wildcards and anything else."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_admin_token(token: str | None) -> None:
    """Refuse an admin token that could be guessed; the message never contains the token."""
    if token is None or token == "":
        return
    if len(token) < MIN_ADMIN_TOKEN_LENGTH:
        raise ValueError(
            f"admin_token is {len(token)} characters long; it must be at least "
            f"{MIN_ADMIN_TOKEN_LENGTH} (make one with: {ADMIN_TOKEN_HINT})"
        )


def _coerce(name: str, typ: Any, raw: str) -> Any:
    t = str(typ)
    if t.startswith("list"):
        # JSON for structured lists; a comma-separated string for lists of strings.
        if raw.lstrip().startswith("["):
            try:
                value = json.loads(raw)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} is not valid JSON") from None
            if not isinstance(value, list):
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must be a JSON list")
            return value
        if "dict" in t:
            raise ValueError(f"{ENV_PREFIX}{name.upper()} must be a JSON list")
        return [part.strip() for part in raw.split(",") if part.strip()]
    try:
        if "bool" in t:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if t.startswith("int"):
            return int(raw)
        if t.startswith("float"):
            return float(raw)
        if "Path" in t:
            return Path(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {t}") from None
    return raw
