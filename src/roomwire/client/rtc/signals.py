"""The peer-to-peer signal envelopes (docs/protocol.md, Signal envelopes) as pure functions.

Signals ride inside the ``data`` of a ``send`` frame (the receiver sees them as a ``direct``).
Three shapes exist on the wire::

    {"type": "rtc-description", "description": {"type": "offer" | "answer", "sdp": "..."}}
    {"type": "rtc-ice", "candidate": {candidate, sdpMid, sdpMLineIndex, usernameFragment} | null}
    {"__meteredTrackMeta": {"trackId": "...", "metadata"?: {...}, "kind"?: "...",
                            "streamId"?: "..."}}

``classify`` tells a received ``data`` apart: a ``DescriptionSignal`` or ``IceSignal``, a
``TrackMeta`` (set or clear), or ``None`` for customer data. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "CANDIDATE_PREFIX",
    "DESCRIPTION_TYPES",
    "MAX_CANDIDATES_PER_GENERATION",
    "MAX_CANDIDATE_CHARS",
    "MAX_META_FIELD_CHARS",
    "RTC_DESCRIPTION",
    "RTC_ICE",
    "TRACK_META_KEY",
    "CandidateBudget",
    "DescriptionSignal",
    "IceCandidateInit",
    "IceSignal",
    "Signal",
    "TrackMeta",
    "TrackMetadataCache",
    "build_description",
    "build_end_of_candidates",
    "build_ice",
    "build_track_meta",
    "build_track_meta_clear",
    "classify",
    "has_reserved_key",
]

RTC_DESCRIPTION: Final = "rtc-description"
RTC_ICE: Final = "rtc-ice"
TRACK_META_KEY: Final = "__meteredTrackMeta"
DESCRIPTION_TYPES: Final = ("offer", "answer")
CANDIDATE_PREFIX: Final = "candidate:"

MAX_CANDIDATES_PER_GENERATION: Final = 200
"""Inbound trickled candidates accepted per negotiation generation; the rest are dropped."""
MAX_CANDIDATE_CHARS: Final = 1000
"""Longest inbound candidate string accepted."""
MAX_META_FIELD_CHARS: Final = 256
"""``streamId`` and ``kind`` of a track-metadata message: 1 to this many characters."""

DescriptionType = Literal["offer", "answer"]


@dataclass(frozen=True, slots=True)
class DescriptionSignal:
    """An SDP offer or answer."""

    type: DescriptionType
    sdp: str


@dataclass(frozen=True, slots=True)
class IceCandidateInit:
    """A trickled candidate in the browser's ``RTCIceCandidate.toJSON()`` shape."""

    candidate: str
    """The candidate line, with or without the ``candidate:`` prefix, never empty."""
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None
    username_fragment: str | None = None

    @property
    def sdp_fragment(self) -> str:
        """The candidate without its ``candidate:`` prefix (what aiortc parses)."""
        text = self.candidate
        if text.startswith(CANDIDATE_PREFIX):
            text = text[len(CANDIDATE_PREFIX):]
        return text

    def to_json(self) -> dict[str, Any]:
        """All four keys, ``None`` for the missing ones (as the JS fallback builder does)."""
        return {
            "candidate": self.candidate,
            "sdpMid": self.sdp_mid,
            "sdpMLineIndex": self.sdp_mline_index,
            "usernameFragment": self.username_fragment,
        }


@dataclass(frozen=True, slots=True)
class IceSignal:
    """A trickled candidate, or the end of candidates (``candidate is None``).

    ``malformed`` is set for an ``rtc-ice`` envelope whose candidate object is unusable (wrong
    types, no ``sdpMid`` and no ``sdpMLineIndex``, over-long): still a signal, never customer
    data, and dropped silently by the negotiator.
    """

    candidate: IceCandidateInit | None
    malformed: bool = False

    @property
    def end_of_candidates(self) -> bool:
        return self.candidate is None and not self.malformed


Signal = DescriptionSignal | IceSignal


@dataclass(frozen=True, slots=True)
class TrackMeta:
    """A ``__meteredTrackMeta`` message: set (``metadata`` is a dict) or clear (``None``)."""

    track_id: str
    metadata: dict[str, Any] | None = None
    kind: str | None = None
    stream_id: str | None = None

    @property
    def is_clear(self) -> bool:
        return self.metadata is None


# -- building ----------------------------------------------------------------------------------


def build_description(type: DescriptionType, sdp: str) -> dict[str, Any]:
    """``{"type": "rtc-description", "description": {"type": ..., "sdp": ...}}``."""
    if type not in DESCRIPTION_TYPES:
        raise ValueError(f"description type must be offer or answer, not {type!r}")
    return {"type": RTC_DESCRIPTION, "description": {"type": type, "sdp": sdp}}


def build_ice(candidate: IceCandidateInit | None) -> dict[str, Any]:
    """One trickled candidate, or the end-of-candidates marker for ``None``."""
    return {"type": RTC_ICE, "candidate": None if candidate is None else candidate.to_json()}


def build_end_of_candidates() -> dict[str, Any]:
    """``{"type": "rtc-ice", "candidate": null}``, sent after every description."""
    return {"type": RTC_ICE, "candidate": None}


def build_track_meta(
    track_id: str,
    metadata: Mapping[str, Any],
    *,
    kind: str | None = None,
    stream_id: str | None = None,
) -> dict[str, Any]:
    """A metadata "set" message. ``kind``/``streamId`` are added when given (JS receivers
    ignore them; Python receivers use them for the fallback lookup)."""
    if not isinstance(track_id, str) or not track_id:
        raise ValueError("trackId must be a non-empty string")
    body: dict[str, Any] = {"trackId": track_id, "metadata": dict(metadata)}
    if kind is not None:
        body["kind"] = kind
    if stream_id is not None:
        body["streamId"] = stream_id
    return {TRACK_META_KEY: body}


def build_track_meta_clear(track_id: str, *, kind: str | None = None,
                           stream_id: str | None = None) -> dict[str, Any]:
    """A metadata "clear" message: ``trackId``, plus ``kind``/``streamId`` when given.

    With them it is what a roomwire peer sends for a track without metadata: every SDK
    drops the metadata it holds for that track id (none), and a Python receiver learns from
    ``kind``/``streamId`` that we are a Python peer (``remote_defers_first_offer``)."""
    if not isinstance(track_id, str) or not track_id:
        raise ValueError("trackId must be a non-empty string")
    body: dict[str, Any] = {"trackId": track_id}
    if kind is not None:
        body["kind"] = kind
    if stream_id is not None:
        body["streamId"] = stream_id
    return {TRACK_META_KEY: body}


def has_reserved_key(data: object) -> bool:
    """True when customer ``data`` is an object holding ``__meteredTrackMeta`` (receivers will
    treat it as track metadata: worth a warning at the sender)."""
    return isinstance(data, dict) and TRACK_META_KEY in data


# -- classifying -------------------------------------------------------------------------------


def classify(data: object) -> Signal | TrackMeta | None:
    """What a received ``data`` is: a signal, track metadata, or ``None`` (customer data).

    The recognition rules are the official SDKs': an object with ``type == "rtc-description"``
    and a valid description, or ``type == "rtc-ice"`` with ``candidate`` null or an object, is
    a signal; else an object under ``__meteredTrackMeta`` with a non-empty string ``trackId``
    (``metadata``, if present, a plain object; ``streamId``/``kind``, if present, strings of
    1-256 characters) is track metadata; anything else is customer data.
    """
    if not isinstance(data, dict):
        return None
    kind = data.get("type")
    if kind == RTC_DESCRIPTION:
        desc = data.get("description")
        if (
            isinstance(desc, dict)
            and desc.get("type") in DESCRIPTION_TYPES
            and isinstance(desc.get("sdp"), str)
        ):
            return DescriptionSignal(desc["type"], desc["sdp"])
    elif kind == RTC_ICE and "candidate" in data:
        cand = data["candidate"]
        if cand is None:
            return IceSignal(None)
        if isinstance(cand, dict):
            return _ice_signal(cand)
    meta = data.get(TRACK_META_KEY)
    if isinstance(meta, dict):
        return _track_meta(meta)
    return None


def _ice_signal(cand: dict[str, Any]) -> IceSignal:
    text = cand.get("candidate")
    mid = cand.get("sdpMid")
    index = cand.get("sdpMLineIndex")
    ufrag = cand.get("usernameFragment")
    if text == "":
        return IceSignal(None)  # a browser's "" candidate also ends the generation
    if (
        not isinstance(text, str)
        or len(text) > MAX_CANDIDATE_CHARS
        or not (mid is None or isinstance(mid, str))
        or not (index is None or (isinstance(index, int) and not isinstance(index, bool)))
        or (mid is None and index is None)
        or (isinstance(index, int) and index < 0)
        or not (ufrag is None or isinstance(ufrag, str))
    ):
        return IceSignal(None, malformed=True)
    return IceSignal(IceCandidateInit(text, mid, index, ufrag or None))


def _field_ok(value: object) -> bool:
    return value is None or (isinstance(value, str) and 1 <= len(value) <= MAX_META_FIELD_CHARS)


def _track_meta(meta: dict[str, Any]) -> TrackMeta | None:
    track_id = meta.get("trackId")
    if not isinstance(track_id, str) or not track_id:
        return None
    kind = meta.get("kind")
    stream_id = meta.get("streamId")
    if not _field_ok(kind) or not _field_ok(stream_id):
        return None
    if "metadata" in meta:
        bag = meta["metadata"]
        if not isinstance(bag, dict):
            return None
        return TrackMeta(track_id, bag, kind, stream_id)
    return TrackMeta(track_id, None, kind, stream_id)


class CandidateBudget:
    """The inbound candidate caps: at most ``limit`` candidates per negotiation generation.

    The negotiator calls ``reset()`` whenever a new remote description starts a generation,
    and ``take()`` for each trickled candidate; a ``False`` answer means "drop it".
    """

    __slots__ = ("dropped", "limit", "used")

    def __init__(self, limit: int = MAX_CANDIDATES_PER_GENERATION) -> None:
        self.limit = limit
        self.used = 0
        self.dropped = 0

    def reset(self) -> None:
        self.used = 0

    def take(self, candidate: IceCandidateInit) -> bool:
        if self.used >= self.limit or len(candidate.candidate) > MAX_CANDIDATE_CHARS:
            self.dropped += 1
            return False
        self.used += 1
        return True


class TrackMetadataCache:
    """Inbound track metadata of one remote peer: at most ``capacity`` entries, oldest evicted
    first (FIFO by first insertion; updating an entry in place neither grows nor refreshes
    it). Kept across reconnects and peer-connection rebuilds by whoever owns it."""

    def __init__(self, capacity: int = 512) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: dict[str, TrackMeta] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, track_id: object) -> bool:
        return track_id in self._entries

    def apply(self, meta: TrackMeta) -> bool:
        """Store a "set", drop on a "clear". Returns whether anything changed."""
        if meta.is_clear:
            return self._entries.pop(meta.track_id, None) is not None
        if self._entries.get(meta.track_id) == meta:
            return False
        if meta.track_id not in self._entries:
            while len(self._entries) >= self.capacity:
                del self._entries[next(iter(self._entries))]
        self._entries[meta.track_id] = meta
        return True

    def entry(self, track_id: str) -> TrackMeta | None:
        return self._entries.get(track_id)

    def get(self, track_id: str) -> dict[str, Any] | None:
        """A copy of the metadata stored under ``track_id``."""
        meta = self._entries.get(track_id)
        return dict(meta.metadata) if meta is not None and meta.metadata is not None else None

    def lookup(
        self,
        *,
        msid_track_id: str | None = None,
        track_id: str | None = None,
        stream_id: str | None = None,
        kind: str | None = None,
    ) -> dict[str, Any] | None:
        """The metadata for a received track: by the msid track id of its m-section, then by
        the track's own id, then by (stream id, kind) when exactly one entry matches those."""
        for key in (msid_track_id, track_id):
            if key:
                found = self.get(key)
                if found is not None:
                    return found
        if stream_id is None or kind is None:
            return None
        matches = [
            m for m in self._entries.values() if m.stream_id == stream_id and m.kind == kind
        ]
        if len(matches) != 1 or matches[0].metadata is None:
            return None
        return dict(matches[0].metadata)

    def clear(self) -> None:
        self._entries.clear()
