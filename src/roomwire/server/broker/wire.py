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


class Posted(msgspec.Struct, tag="mh", array_like=True):
    """A publish on a channel with history, on the channel's Redis channel: written by the
    history's append script (``redis_history.py``), which adds ``offset`` and ``epoch`` to
    the ``posted_head`` the node built, so every node sees offsets in Redis's order."""

    origin: str
    skip: int
    """The origin's token for the publishing socket (0: none), which must not get it back."""
    data: bytes
    sender: bytes
    sender_metadata: bytes | None
    offset: int
    epoch: str


def posted_head(origin: str, skip: int, data: bytes, sender: bytes,
                sender_metadata: bytes | None) -> bytes:
    """The first six fields of a ``Posted`` frame as a msgpack array of their own: the
    append script makes it the frame (an 8-element header, then offset and epoch
    appended)."""
    head = encode(("mh", origin, skip, data, sender, sender_metadata))
    assert head[0] == 0x96  # a fixarray of 6: the script replaces this byte
    return head


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


Frame = Join | Leave | Message | Posted | Direct | Kick | KickReply

encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder(Frame).decode
