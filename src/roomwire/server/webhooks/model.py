"""What a webhook is made of: the event types, an event, an endpoint. Pure data.

An event has a unique ``id`` (receivers dedup on it: delivery is at least once), the time of
the fact (``createdAt``, ms), its app, and a ``seq`` that counts the events of one *stream*:
the events of a channel (``channel`` set) or the connection events of a peer (``channel``
null). Within a stream seq grows by one per event an endpoint could receive, so a receiver
orders by it and sees a gap.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

CHANNEL_OCCUPIED = "channel_occupied"
CHANNEL_VACATED = "channel_vacated"
PEER_JOINED = "peer_joined"
PEER_LEFT = "peer_left"
PEER_CONNECTED = "peer_connected"
PEER_DISCONNECTED = "peer_disconnected"
MESSAGE_PUBLISHED = "message_published"
PING = "ping"

#: Every type an endpoint may ask for.
EVENT_TYPES: tuple[str, ...] = (
    CHANNEL_OCCUPIED, CHANNEL_VACATED, PEER_JOINED, PEER_LEFT, PEER_CONNECTED,
    PEER_DISCONNECTED, MESSAGE_PUBLISHED,
)
#: What an endpoint gets when it names no types: everything but the opt-in messages.
DEFAULT_EVENT_TYPES: frozenset[str] = frozenset(EVENT_TYPES) - {MESSAGE_PUBLISHED}
#: Events that carry no channel: their stream is the peer's.
CONNECTION_EVENTS = frozenset({PEER_CONNECTED, PEER_DISCONNECTED})
#: Events held back for the grace period (cancelled by a return within it).
GRACED_EVENTS = frozenset({CHANNEL_VACATED, PEER_LEFT})


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


def stream_key(app_id: str, channel: str | None, peer_id: str | None) -> str:
    """The key of the sequence an event counts in (see the module docstring)."""
    if channel is not None:
        return f"{app_id}\x00c\x00{channel}"
    return f"{app_id}\x00p\x00{peer_id or ''}"


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    created_at: int
    """Unix milliseconds of the fact (a graced event: when the peer or member left)."""
    app_id: str
    channel: str | None
    peer_id: str | None
    seq: int
    data: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "createdAt": self.created_at,
                "appId": self.app_id, "channel": self.channel, "peerId": self.peer_id,
                "seq": self.seq, "data": self.data}

    @classmethod
    def from_public(cls, d: dict[str, Any]) -> Event:
        return cls(d["id"], d["type"], d["createdAt"], d["appId"], d["channel"], d["peerId"],
                   d["seq"], d.get("data") or {})


@dataclass(frozen=True)
class Fact:
    """A lifecycle fact before it becomes an event (no id or seq yet)."""

    type: str
    app_id: str
    channel: str | None
    peer_id: str | None
    created_at: int
    data: dict[str, Any] = field(default_factory=dict)


def fact_json(fact: Fact) -> str:
    import json

    return json.dumps([fact.type, fact.app_id, fact.channel, fact.peer_id, fact.created_at,
                       fact.data], separators=(",", ":"))


def fact_from_json(raw: str) -> Fact:
    import json

    t, app_id, channel, peer_id, created_at, data = json.loads(raw)
    return Fact(t, app_id, channel, peer_id, int(created_at), dict(data))


@dataclass(frozen=True)
class Endpoint:
    """One receiver of an app's events."""

    id: str
    app_id: str
    url: str
    events: frozenset[str] = DEFAULT_EVENT_TYPES
    channel_patterns: tuple[str, ...] = ("**",)
    secret: str = field(default="", repr=False)
    enabled: bool = True
    source: str = "store"
    """``store`` (admin API, CLI) or ``config`` (the TOML file; read-only at runtime)."""
    created_at: int = 0

    def public(self, *, include_secret: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "appId": self.app_id, "url": self.url,
            "events": sorted(self.events), "channelPatterns": list(self.channel_patterns),
            "enabled": self.enabled, "source": self.source, "createdAt": self.created_at,
        }
        if include_secret:
            out["secret"] = self.secret
        return out


def new_endpoint_id() -> str:
    return "wh_" + secrets.token_hex(8)


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)
