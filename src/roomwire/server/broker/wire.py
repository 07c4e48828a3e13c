"""Cluster frames: what nodes send each other through Redis pub/sub (msgpack, tagged arrays).

``Join`` and ``Leave`` are written by the presence Lua scripts (``cmsgpack.pack`` of
``{tag, seq, peer, entry}``), so their layout is fixed: tag first, then the fields in order.
"""

from __future__ import annotations

import msgspec


class Join(msgspec.Struct, tag="join", array_like=True, frozen=True):
    """``peer`` became present in the channel (its first holder anywhere)."""

    seq: int
    peer: str
    entry: str
    """The presence entry (JSON text)."""


class Leave(msgspec.Struct, tag="leave", array_like=True, frozen=True):
    """``peer``'s last holder anywhere left the channel."""

    seq: int
    peer: str


class Message(msgspec.Struct, tag="m", array_like=True):
    """A publish, on the channel's Redis channel."""

    origin: str
    data: bytes
    sender: bytes
    sender_metadata: bytes | None


class Direct(msgspec.Struct, tag="d", array_like=True):
    """A ``send``, on the target peer's Redis channel."""

    origin: str
    data: bytes
    sender: bytes
    sender_metadata: bytes | None


class Kick(msgspec.Struct, tag="k", array_like=True):
    """Close the peer's sockets (on the peer's Redis channel); answer on ``origin``'s."""

    origin: str
    request: int
    code: int
    reason: str
    scope: list[str] | None


class KickReply(msgspec.Struct, tag="kr", array_like=True):
    """How many sockets a node closed for a ``Kick`` (on the asker's node channel)."""

    request: int
    closed: int


Frame = Join | Leave | Message | Direct | Kick | KickReply

encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder(Frame).decode
