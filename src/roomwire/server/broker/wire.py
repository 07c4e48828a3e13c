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
    history's append script (``redis_history.py``), which joins the node's ``posted_head``,
    the stream entry as stored (``history_entry``: time to sender metadata) and the
    ``offset`` and ``epoch``, so every node sees offsets in Redis's order."""

    origin: str
    skip: int
    """The origin's token for the publishing socket (0: none), which must not get it back."""
    time: float
    """The publishing node's clock when it published (the entry's time in the stream)."""
    data: bytes
    sender: bytes
    sender_metadata: bytes | None
    offset: int
    epoch: str


POSTED_ARRAY = 0x99
"""A fixarray of 9: the tag and the eight fields of ``Posted``."""


def posted_head(origin: str, skip: int) -> bytes:
    """The start of a ``Posted`` frame: the array header of the whole frame, the tag, origin
    and skip. The append script appends ``history_entry``'s bytes, then offset and epoch."""
    return bytes((POSTED_ARRAY,)) + encode(("mh", origin, skip))[1:]


def history_entry(time: float, data: bytes, sender: bytes,
                  sender_metadata: bytes | None) -> bytes:
    """A stream entry's one field: time, data, sender and sender metadata as four msgpack
    values with no array header, the middle of the ``Posted`` frame that carries it (the
    script joins the parts without cutting any). The time is always a float64: 9 bytes."""
    return encode((float(time), data, sender, sender_metadata))[1:]


def parse_entry(value: bytes) -> tuple[float, bytes, bytes, bytes | None]:
    """``history_entry`` read back."""
    return _decode_entry(b"\x94" + value)


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
_decode_entry = msgspec.msgpack.Decoder(tuple[float, bytes, bytes, bytes | None]).decode
