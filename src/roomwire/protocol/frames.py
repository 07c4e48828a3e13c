"""Frame shapes of the v1 wire protocol: decoding and encoding for both directions.

Server side: ``decode_request`` turns a client's text frame into a ``Request`` whose ``data``
stays as raw JSON bytes, so that a broadcast is spliced into the outbound frame without being
decoded and encoded again. The ``encode_*`` functions build server frames as bytes.

Client side: ``build_*`` functions make request frames, ``parse_server_frame`` validates an
inbound frame as strictly as the official clients do and returns a typed frame or None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .history import Position, parse_position
from .ice import ICE_SERVERS_TYPE
from .limits import MAX_ICE_CREDENTIAL_CHARS, MAX_ICE_SERVERS, MAX_ICE_URL_CHARS
from .validate import channel_problem, peer_id_problem, request_id_problem

__all__ = [
    "Ack",
    "Direct",
    "ErrorFrame",
    "GoingAway",
    "IceServersFrame",
    "Message",
    "Pong",
    "PresenceEntry",
    "PresenceFrame",
    "Request",
    "ServerFrame",
    "Welcome",
    "build_ice_servers_request",
    "build_ping",
    "build_publish",
    "build_send",
    "build_subscribe",
    "build_unsubscribe",
    "data_size",
    "decode_request",
    "encode_ack",
    "encode_direct",
    "encode_error",
    "encode_going_away",
    "encode_ice_servers",
    "encode_json",
    "encode_message",
    "encode_message_at",
    "encode_pong",
    "encode_presence",
    "encode_welcome",
    "parse_ice_servers",
    "parse_server_frame",
]

encode_json = msgspec.json.encode
_EMPTY_RAW = msgspec.Raw()


class Request(msgspec.Struct):
    """A client request as received. Fields are untyped on purpose: each is validated by the
    session so that a wrong type gets its own error code, correlated by ``requestId``."""

    type: Any = None
    requestId: Any = None
    channel: Any = None
    to: Any = None
    includeSenderMetadata: Any = None
    data: msgspec.Raw = _EMPTY_RAW
    """The value's JSON text, undecoded. A ``msgspec.Raw`` is bytes-like but, whatever its
    type stub says, not ``bytes`` at run time: the session takes ``bytes(data)`` before
    anything typed ``bytes`` (and compiled code checks that type) sees it."""
    history: Any = None
    """roomwire's history extension (``protocol.history``): ``true`` opts a subscribe in."""
    recover: Any = None
    """roomwire's history extension: the position a resubscribe resumes from."""

    @property
    def has_data(self) -> bool:
        """True when the frame carried a ``data`` key (``null`` included)."""
        return len(self.data) > 0


_request_decoder = msgspec.json.Decoder(Request)

#: Decode a client frame. Raises ``msgspec.DecodeError`` (a ``ValueError``) when the frame is
#: not a JSON object; field types are left to the caller. The decoder's own method, not a
#: wrapper: it runs for every frame a client sends.
decode_request = _request_decoder.decode


# ---------------------------------------------------------------------------------------------
# Server -> client encoders. Bytes in, bytes out; JSON strings are encoded by msgspec.


def encode_welcome(
    peer_id: str,
    expires_at: int | None,
    server_time: int,
    max_message_size: int,
    metadata: dict[str, Any] | None = None,
) -> bytes:
    frame: dict[str, Any] = {
        "type": "welcome",
        "peerId": peer_id,
        "expiresAt": expires_at,
        "serverTime": server_time,
        "maxMessageSize": max_message_size,
    }
    if metadata:
        frame["metadata"] = metadata
    return encode_json(frame)


def encode_ack(request_id: str) -> bytes:
    return b'{"type":"ack","requestId":' + encode_json(request_id) + b"}"


def encode_error(code: str, message: str, request_id: str | None = None) -> bytes:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        frame["requestId"] = request_id
    return encode_json(frame)


def encode_ice_servers(request_id: str | None, servers: list[dict[str, Any]] | None) -> bytes:
    """The reply to roomwire's ``ice_servers`` extension request (``protocol.ice``)."""
    frame: dict[str, Any] = {"type": ICE_SERVERS_TYPE}
    if request_id is not None:
        frame["requestId"] = request_id
    frame["iceServers"] = servers
    return encode_json(frame)


def encode_pong(request_id: str | None = None) -> bytes:
    if request_id is None:
        return b'{"type":"pong"}'
    return b'{"type":"pong","requestId":' + encode_json(request_id) + b"}"


def encode_going_away(retry_after_ms: int) -> bytes:
    return b'{"type":"going_away","retryAfterMs":' + str(int(retry_after_ms)).encode() + b"}"


def encode_message(
    channel_json: bytes, sender_json: bytes, data: bytes, sender_metadata: bytes | None = None
) -> bytes:
    """A ``message`` frame from already-encoded parts (JSON strings, raw JSON data)."""
    if sender_metadata is None:
        return b"".join(
            (b'{"type":"message","channel":', channel_json, b',"from":', sender_json,
             b',"data":', data, b"}")
        )
    return b"".join(
        (b'{"type":"message","channel":', channel_json, b',"from":', sender_json,
         b',"data":', data, b',"fromMetadata":', sender_metadata, b"}")
    )


def encode_message_at(
    channel_json: bytes, sender_json: bytes, data: bytes, sender_metadata: bytes | None,
    position_suffix: bytes,
) -> bytes:
    """A ``message`` frame for a subscriber of roomwire's history extension: the same fields,
    then ``offset`` and ``epoch`` (``history.encode_position_suffix``)."""
    body = encode_message(channel_json, sender_json, data, sender_metadata)
    return body[:-1] + position_suffix + b"}"


def encode_direct(sender_json: bytes, data: bytes, sender_metadata: bytes | None = None) -> bytes:
    """A ``direct`` frame from already-encoded parts."""
    # One join copies once; chained ``+`` copies at every step.
    if sender_metadata is None:
        return b"".join((b'{"type":"direct","from":', sender_json, b',"data":', data, b"}"))
    return b"".join(
        (b'{"type":"direct","from":', sender_json, b',"data":', data, b',"fromMetadata":',
         sender_metadata, b"}")
    )


def presence_entry(peer_id_json: bytes, metadata: bytes | None) -> bytes:
    """One encoded presence entry ``{"peerId": ..., "metadata"?: ...}``."""
    if metadata is None:
        return b'{"peerId":' + peer_id_json + b"}"
    return b'{"peerId":' + peer_id_json + b',"metadata":' + metadata + b"}"


def encode_presence(channel_json: bytes, joined: list[bytes], left: list[bytes]) -> bytes:
    """A ``presence`` frame from encoded entries. Both arrays are always present."""
    return b"".join(
        (b'{"type":"presence","channel":', channel_json, b',"joined":[', b",".join(joined),
         b'],"left":[', b",".join(left), b"]}")
    )


# ---------------------------------------------------------------------------------------------
# Client side: request builders.


def _dumps(frame: dict[str, Any]) -> str:
    """Compact JSON text; NaN and Infinity are refused (they are not JSON)."""
    _reject_non_finite(frame)
    return encode_json(frame).decode("utf-8")


def _reject_non_finite(value: Any) -> None:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("data contains NaN or Infinity, which JSON cannot carry")
    elif isinstance(value, dict):
        for v in value.values():
            _reject_non_finite(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _reject_non_finite(v)


def data_size(data: Any) -> int:
    """UTF-8 size of ``data`` as compact JSON: what ``maxMessageSize`` is measured against."""
    _reject_non_finite(data)
    return len(encode_json(data))


def _with_request_id(frame: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    if request_id is not None:
        problem = request_id_problem(request_id)
        if problem:
            raise ValueError(problem)
        frame["requestId"] = request_id
    return frame


def build_subscribe(
    channel: str, request_id: str | None = None, include_sender_metadata: bool = False,
    *, history: bool = False, recover: Position | None = None,
) -> str:
    """``history``/``recover``: roomwire's history extension (``protocol.history``); without
    them the frame is exactly the official clients'."""
    frame: dict[str, Any] = {"type": "subscribe", "channel": channel}
    if include_sender_metadata:
        frame["includeSenderMetadata"] = True
    if recover is not None:
        frame["recover"] = {"epoch": recover.epoch, "offset": recover.offset}
    elif history:
        frame["history"] = True
    return _dumps(_with_request_id(frame, request_id))


def build_unsubscribe(channel: str, request_id: str | None = None) -> str:
    return _dumps(_with_request_id({"type": "unsubscribe", "channel": channel}, request_id))


def build_publish(channel: str, data: Any, request_id: str | None = None) -> str:
    return _dumps(_with_request_id({"type": "publish", "channel": channel, "data": data},
                                   request_id))


def build_send(to: str, data: Any, request_id: str | None = None) -> str:
    return _dumps(_with_request_id({"type": "send", "to": to, "data": data}, request_id))


def build_ping(request_id: str | None = None) -> str:
    return _dumps(_with_request_id({"type": "ping"}, request_id))


def build_ice_servers_request(request_id: str) -> str:
    """roomwire's extension: ask for fresh ICE servers (``protocol.ice``)."""
    return _dumps(_with_request_id({"type": ICE_SERVERS_TYPE}, request_id))


# ---------------------------------------------------------------------------------------------
# Client side: server frame parser.


@dataclass(frozen=True, slots=True)
class Welcome:
    peer_id: str
    expires_at: float | None
    server_time: float
    max_message_size: int
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    request_id: str
    history: Position | None = None
    """roomwire's history extension: the channel's position in a subscribe ack."""
    has_history: bool = False
    """Whether the ack had a ``history`` field at all (null: the server keeps none)."""
    recovered: bool | None = None
    position: Position | None = None
    """The position of one's own publish (a publish ack to an opted-in socket)."""


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    code: str
    message: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    channel: str
    sender_peer_id: str
    data: Any
    sender_metadata: dict[str, Any] | None = None
    position: Position | None = None
    """roomwire's history extension: set only for an opted-in subscriber."""


@dataclass(frozen=True, slots=True)
class Direct:
    sender_peer_id: str
    data: Any
    sender_metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    peer_id: str
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PresenceFrame:
    channel: str
    joined: tuple[PresenceEntry, ...] = field(default_factory=tuple)
    left: tuple[PresenceEntry, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class GoingAway:
    retry_after_ms: int


@dataclass(frozen=True, slots=True)
class Pong:
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class IceServersFrame:
    """roomwire's extension reply (``protocol.ice``): ``ice_servers`` is None when the server
    has none for this connection, or when the list was invalid (dropped all-or-nothing, as a
    welcome's)."""

    request_id: str
    ice_servers: list[dict[str, Any]] | None


ServerFrame = (Welcome | Ack | ErrorFrame | Message | Direct | PresenceFrame | GoingAway | Pong
               | IceServersFrame)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _obj(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _entries(raw: Any) -> tuple[PresenceEntry, ...] | None:
    if not isinstance(raw, list):
        return None
    out = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("peerId"), str):
            return None
        out.append(PresenceEntry(item["peerId"], _obj(item.get("metadata"))))
    return tuple(out)


def parse_server_frame(text: str | bytes) -> ServerFrame | None:
    """Parse and validate one server frame. Returns None for anything malformed or unknown,
    which the client drops (forward compatibility)."""
    try:
        frame = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None
    if not isinstance(frame, dict):
        return None
    kind = frame.get("type")
    if kind == "message":
        if (
            not isinstance(frame.get("channel"), str)
            or not isinstance(frame.get("from"), str)
            or "data" not in frame
        ):
            return None
        return Message(frame["channel"], frame["from"], frame["data"],
                       _obj(frame.get("fromMetadata")),
                       parse_position(frame) if "offset" in frame else None)
    if kind == "direct":
        if not isinstance(frame.get("from"), str) or "data" not in frame:
            return None
        return Direct(frame["from"], frame["data"], _obj(frame.get("fromMetadata")))
    if kind == "presence":
        joined = _entries(frame.get("joined"))
        left = _entries(frame.get("left"))
        if not isinstance(frame.get("channel"), str) or joined is None or left is None:
            return None
        return PresenceFrame(frame["channel"], joined, left)
    if kind == "ack":
        rid = frame.get("requestId")
        if not isinstance(rid, str):
            return None
        if len(frame) == 2:
            return Ack(rid)
        return _extended_ack(rid, frame)
    if kind == "error":
        code = frame.get("code")
        if not isinstance(code, str) or not code:
            return None
        rid = frame.get("requestId")
        msg = frame.get("message")
        return ErrorFrame(code, msg if isinstance(msg, str) else None,
                          rid if isinstance(rid, str) else None)
    if kind == "welcome":
        expires = frame.get("expiresAt", "missing")
        if (
            not isinstance(frame.get("peerId"), str)
            or not (expires is None or _finite(expires))
            or not _finite(frame.get("serverTime"))
            or not _finite(frame.get("maxMessageSize"))
            or frame["maxMessageSize"] <= 0
        ):
            return None
        return Welcome(frame["peerId"], expires, frame["serverTime"],
                       int(frame["maxMessageSize"]), _obj(frame.get("metadata")))
    if kind == "pong":
        rid = frame.get("requestId")
        return Pong(rid if isinstance(rid, str) else None)
    if kind == ICE_SERVERS_TYPE:
        rid = frame.get("requestId")
        if not isinstance(rid, str):
            return None
        return IceServersFrame(rid, parse_ice_servers({"iceServers": frame.get("iceServers")}))
    if kind == "going_away":
        ms = frame.get("retryAfterMs")
        if isinstance(ms, int | float) and _finite(ms) and ms > 0:
            return GoingAway(int(ms))
        return GoingAway(1000)
    return None


def _extended_ack(rid: str, frame: dict[str, Any]) -> Ack:
    """An ack with roomwire's history fields; a malformed one is an ack all the same."""
    raw = frame.get("history")
    history = None
    if isinstance(raw, dict):
        history = parse_position(raw)
    recovered = frame.get("recovered")
    return Ack(rid, history, "history" in frame,
               recovered if isinstance(recovered, bool) else None,
               parse_position(frame) if "offset" in frame else None)


def parse_ice_servers(metadata: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The ``iceServers`` of a welcome's metadata, validated all-or-nothing as the official
    clients do; None when absent or when any entry is invalid."""
    if not metadata:
        return None
    raw = metadata.get("iceServers")
    if not isinstance(raw, list) or len(raw) > MAX_ICE_SERVERS:
        return None
    out: list[dict[str, Any]] = []
    for entry in raw:
        if not isinstance(entry, dict):
            return None
        urls = entry.get("urls")
        url_list = [urls] if isinstance(urls, str) else urls
        if not isinstance(url_list, list) or not url_list:
            return None
        for url in url_list:
            if (
                not isinstance(url, str)
                or not url
                or len(url) > MAX_ICE_URL_CHARS
                or url.split(":", 1)[0].lower() not in ("stun", "stuns", "turn", "turns")
                or ":" not in url
            ):
                return None
        server: dict[str, Any] = {"urls": urls}
        for key in ("username", "credential"):
            value = entry.get(key)
            if isinstance(value, str):
                if len(value) > MAX_ICE_CREDENTIAL_CHARS:
                    return None
                server[key] = value
        out.append(server)
    return out


def is_valid_channel(channel: object) -> bool:
    return channel_problem(channel) is None


def is_valid_peer_id(peer_id: object) -> bool:
    return peer_id_problem(peer_id) is None
