"""Server configuration: defaults, environment variables and command-line flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..protocol import limits

ENV_PREFIX = "ROOMWIRE_"


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
    shutdown_drain: float = limits.GOING_AWAY_DRAIN
    outbound_queue_bytes: int = limits.OUTBOUND_QUEUE_BYTES
    jwt_leeway: float = limits.JWT_LEEWAY
    allow_non_expiring_tokens: bool = False
    token_expiry_margin: float = limits.TOKEN_EXPIRY_MARGIN
    handshake_timeout: float = 10.0
    store_poll_interval: float = 1.0
    """How often the node looks for changes made to the store by other processes (the CLI)."""
    log_level: str = "info"
    log_json: bool = False

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
        if self.outbound_queue_bytes < 65536:
            raise ValueError("outbound_queue_bytes must be at least 65536")


def _coerce(name: str, typ: Any, raw: str) -> Any:
    t = str(typ)
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
