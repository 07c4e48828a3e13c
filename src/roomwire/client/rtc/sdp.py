"""Pure SDP helpers for the gaps between aiortc and browsers (docs/webrtc-notes.md, SDP).

* ``parse_sdp``: the m-sections with what the SDK needs (mid, msid stream/track ids, ICE
  ufrag, extmap ids, port, direction).
* ``reject_answer_mlines``: an answer's m-lines that the offer rejected get port 0 and leave
  the BUNDLE group (aiortc keeps them, and Chromium then refuses the answer).
* ``pin_extmap_ids``: a re-offer keeps the RTP header-extension ids already negotiated
  (aiortc builds every offer from its own table; browsers reject a changed id).
* ``track_ids_by_mid``: the (stream id, track id) a remote m-section announces, looked up by
  the transceiver's mid (aiortc only takes the msid when its stream is in ``msid-semantic``).

Strings in, strings out; nothing here knows about aiortc objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "BROWSER_EXTMAP_IDS",
    "DIRECTIONS",
    "MAX_EXTMAP_ID",
    "NO_STREAM",
    "Extmap",
    "MediaSection",
    "SessionInfo",
    "ice_ufrag",
    "negotiated_extmap_ids",
    "parse_sdp",
    "pin_extmap_ids",
    "reject_answer_mlines",
    "reject_mlines",
    "sending_mids",
    "track_ids_by_mid",
]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
NO_STREAM = "-"
"""The msid stream id meaning "this track belongs to no stream"."""
MAX_EXTMAP_ID = 14
"""Largest one-byte header-extension id (RFC 8285); new ids are allocated below it."""
BROWSER_EXTMAP_IDS: Mapping[str, int] = {
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level": 1,
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 2,
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01": 3,
    "urn:ietf:params:rtp-hdrext:sdes:mid": 4,
}
"""The ids Chromium gives these header extensions in its own offers. A transceiver a browser
creates before any negotiation (``addTrack`` before joining) keeps them; when such a
transceiver joins a BUNDLE group whose ids came from our offer, Chromium refuses its own
offer if an id means another URI there ("A BUNDLE group contains a codec collision for
header extension id=3"). aiortc's own ids (mid 1, audio level 2, abs-send-time 3) collide;
offering these instead does not."""


@dataclass(frozen=True, slots=True)
class Extmap:
    id: int
    uri: str
    direction: str | None = None


@dataclass(frozen=True, slots=True)
class MediaSection:
    index: int
    kind: str
    port: int
    protocol: str
    mid: str | None = None
    direction: str = "sendrecv"
    stream_id: str | None = None
    """The msid stream id; ``None`` when absent or ``-`` (no stream)."""
    track_id: str | None = None
    """The msid track id (the sender's ``track.id``)."""
    ice_ufrag: str | None = None
    extmaps: tuple[Extmap, ...] = ()
    bundle_only: bool = False

    @property
    def rejected(self) -> bool:
        """Port 0 without ``a=bundle-only``: the m-line is rejected (or stopped)."""
        return self.port == 0 and not self.bundle_only

    @property
    def sends(self) -> bool:
        """Whether the SDP's author sends media on this m-section."""
        return not self.rejected and self.direction in ("sendrecv", "sendonly")

    @property
    def receives(self) -> bool:
        """Whether the SDP's author would receive media on this m-section."""
        return not self.rejected and self.direction in ("sendrecv", "recvonly")


@dataclass(frozen=True, slots=True)
class SessionInfo:
    sections: tuple[MediaSection, ...]
    bundle: tuple[str, ...] = ()
    """The mids of the first ``a=group:BUNDLE`` line."""
    ice_ufrag: str | None = None
    """The session-level ``a=ice-ufrag``, if any."""
    _by_mid: dict[str, MediaSection] = field(default_factory=dict, repr=False, compare=False)

    def section(self, mid: str) -> MediaSection | None:
        return self._by_mid.get(mid)

    def first_ufrag(self) -> str | None:
        """The ICE ufrag of the first m-section that has one, else the session-level one."""
        for section in self.sections:
            if section.ice_ufrag:
                return section.ice_ufrag
        return self.ice_ufrag


def _lines(sdp: str) -> tuple[list[str], str]:
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(eol)
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines], eol


def _join(lines: list[str], eol: str) -> str:
    return eol.join(lines) + eol


def _parse_extmap(value: str) -> Extmap | None:
    head, _, rest = value.partition(" ")
    ident, _, direction = head.partition("/")
    uri = rest.split(" ", 1)[0]
    if not ident.isdigit() or not uri:
        return None
    return Extmap(int(ident), uri, direction or None)


def _msid(value: str) -> tuple[str | None, str | None]:
    parts = value.split()
    if not parts:
        return None, None
    stream = None if parts[0] == NO_STREAM else parts[0]
    return stream, parts[1] if len(parts) > 1 else None


class _SectionBuilder:
    def __init__(self, index: int, mline: str) -> None:
        parts = mline[2:].split()
        self.index = index
        self.kind = parts[0] if parts else ""
        port = parts[1].split("/", 1)[0] if len(parts) > 1 else "0"
        self.port = int(port) if port.isdigit() else 0
        self.protocol = parts[2] if len(parts) > 2 else ""
        self.mid: str | None = None
        self.direction = "sendrecv"
        self.msid: tuple[str | None, str | None] | None = None
        self.ssrc_msid: tuple[str | None, str | None] | None = None
        self.ufrag: str | None = None
        self.extmaps: list[Extmap] = []
        self.bundle_only = False

    def attribute(self, attr: str, value: str) -> None:
        if attr == "mid":
            self.mid = value
        elif attr in DIRECTIONS:
            self.direction = attr
        elif attr == "msid" and self.msid is None:
            self.msid = _msid(value)
        elif attr == "ssrc" and self.ssrc_msid is None:
            _, _, rest = value.partition(" ")
            if rest.startswith("msid:"):
                self.ssrc_msid = _msid(rest[5:])
        elif attr == "ice-ufrag":
            self.ufrag = value
        elif attr == "extmap":
            ext = _parse_extmap(value)
            if ext is not None:
                self.extmaps.append(ext)
        elif attr == "bundle-only":
            self.bundle_only = True

    def build(self) -> MediaSection:
        stream, track = self.msid or self.ssrc_msid or (None, None)
        return MediaSection(
            index=self.index, kind=self.kind, port=self.port, protocol=self.protocol,
            mid=self.mid, direction=self.direction, stream_id=stream, track_id=track,
            ice_ufrag=self.ufrag, extmaps=tuple(self.extmaps), bundle_only=self.bundle_only,
        )


def _split_attr(line: str) -> tuple[str, str]:
    attr, _, value = line[2:].partition(":")
    return attr, value


def parse_sdp(sdp: str) -> SessionInfo:
    """The session's m-sections and BUNDLE group. Tolerant: unknown lines are skipped."""
    lines, _ = _lines(sdp)
    sections: list[MediaSection] = []
    current: _SectionBuilder | None = None
    bundle: tuple[str, ...] = ()
    session_ufrag: str | None = None
    for line in lines:
        if line.startswith("m="):
            if current is not None:
                sections.append(current.build())
            current = _SectionBuilder(len(sections), line)
        elif line.startswith("a="):
            attr, value = _split_attr(line)
            if current is not None:
                current.attribute(attr, value)
            elif attr == "group":
                parts = value.split()
                if parts and parts[0] == "BUNDLE" and not bundle:
                    bundle = tuple(parts[1:])
            elif attr == "ice-ufrag":
                session_ufrag = value
    if current is not None:
        sections.append(current.build())
    by_mid = {s.mid: s for s in sections if s.mid is not None}
    return SessionInfo(tuple(sections), bundle, session_ufrag, by_mid)


def ice_ufrag(sdp: str) -> str | None:
    """The ICE username fragment a description announces (first m-section, else session)."""
    return parse_sdp(sdp).first_ufrag()


def track_ids_by_mid(sdp: str) -> dict[str, tuple[str | None, str | None]]:
    """``{mid: (stream id, track id)}`` for every audio/video m-section with a mid."""
    return {
        s.mid: (s.stream_id, s.track_id)
        for s in parse_sdp(sdp).sections
        if s.mid is not None and s.kind in ("audio", "video")
    }


def sending_mids(sdp: str) -> set[str]:
    """The mids of the audio/video m-sections on which the SDP's author sends media."""
    return {
        s.mid
        for s in parse_sdp(sdp).sections
        if s.mid is not None and s.kind in ("audio", "video") and s.sends
    }


def reject_mlines(sdp: str, mids: Iterable[str]) -> str:
    """The description with the m-lines of ``mids`` rejected: port 0, out of BUNDLE (a group
    left empty is dropped). For our offers after the remote rejected an m-line: aiortc would
    offer it again as a live one, and a mid once rejected must stay so."""
    gone = set(mids)
    if not gone:
        return sdp
    info = parse_sdp(sdp)
    indexes = {sec.index for sec in info.sections if sec.mid in gone}
    if not indexes:
        return sdp
    return _reject(sdp, indexes, gone)


def reject_answer_mlines(answer_sdp: str, offer_sdp: str) -> str:
    """The answer with every m-line the offer rejected (port 0) rejected too: port 0 on the
    m-line, and its mid taken out of ``a=group:BUNDLE`` (a group left empty is dropped).

    Matching is by position, as SDP requires (the answer's m-lines mirror the offer's).
    An answer needing no change is returned unchanged.
    """
    offer = parse_sdp(offer_sdp)
    rejected_idx = {s.index for s in offer.sections if s.rejected}
    if not rejected_idx:
        return answer_sdp
    rejected_mids = {s.mid for s in offer.sections if s.rejected and s.mid is not None}
    return _reject(answer_sdp, rejected_idx, rejected_mids)


def _reject(sdp: str, rejected_idx: set[int], rejected_mids: set[str]) -> str:
    lines, eol = _lines(sdp)
    out: list[str] = []
    index = -1
    for line in lines:
        if line.startswith("m="):
            index += 1
            if index in rejected_idx:
                parts = line.split(" ")
                if len(parts) > 1:
                    parts[1] = "0"
                line = " ".join(parts)
        elif line.startswith("a=group:BUNDLE"):
            mids = [m for m in line.split()[1:] if m not in rejected_mids]
            if not mids:
                continue
            line = "a=group:BUNDLE " + " ".join(mids)
        out.append(line)
    return _join(out, eol)


def negotiated_extmap_ids(sdps: Iterable[str | None]) -> dict[str, int]:
    """``{uri: id}`` from already-negotiated descriptions (first one wins per URI)."""
    table: dict[str, int] = {}
    for sdp in sdps:
        if not sdp:
            continue
        for section in parse_sdp(sdp).sections:
            for ext in section.extmaps:
                table.setdefault(ext.uri, ext.id)
    return table


def pin_extmap_ids(offer_sdp: str, negotiated: Mapping[str, int] | Iterable[str | None],
                   preferred: Mapping[str, int] = BROWSER_EXTMAP_IDS) -> str:
    """The offer with each ``a=extmap`` id replaced by the id already negotiated for its URI.

    ``negotiated`` is a ``{uri: id}`` table or the negotiated descriptions themselves (the
    current remote and local SDP). A URI not negotiated yet gets its ``preferred`` id (by
    default a browser's own, ``BROWSER_EXTMAP_IDS``) when that id is free, else keeps its id
    when free, else the lowest free id (1-14). One URI gets one id across all m-sections, as
    BUNDLE requires.
    """
    table = dict(negotiated) if isinstance(negotiated, Mapping) else (
        negotiated_extmap_ids(negotiated)
    )
    lines, eol = _lines(offer_sdp)
    assigned: dict[str, int] = dict(table)
    taken: set[int] = set(table.values())
    changed = False
    out: list[str] = []
    for line in lines:
        if line.startswith("a=extmap:"):
            ext = _parse_extmap(line[9:])
            if ext is not None:
                new_id = assigned.get(ext.uri)
                if new_id is None:
                    wish = preferred.get(ext.uri)
                    if wish is not None and wish not in taken:
                        new_id = wish
                    else:
                        new_id = ext.id if ext.id not in taken else _free_id(taken)
                    if new_id is not None:
                        assigned[ext.uri] = new_id
                        taken.add(new_id)
                if new_id is not None and new_id != ext.id:
                    head, _, rest = line[9:].partition(" ")
                    suffix = head[len(str(ext.id)):]  # keeps "/direction"
                    line = f"a=extmap:{new_id}{suffix} {rest}"
                    changed = True
        out.append(line)
    return _join(out, eol) if changed else offer_sdp


def _free_id(taken: set[int]) -> int | None:
    for candidate in range(1, MAX_EXTMAP_ID + 1):
        if candidate not in taken:
            return candidate
    return None
