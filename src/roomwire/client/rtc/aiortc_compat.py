"""Every use of aiortc's and aioice's private state, in one place.

The SDK works around gaps of aiortc (docs/webrtc-notes.md, "What aiortc cannot do") by reading
and writing attributes that are not part of aiortc's API. They are verified against the aiortc
version pinned in ``pyproject.toml`` (the ``webrtc`` extra) by
``tests/unit/test_aiortc_compat.py``: when an upgrade renames or drops one of them, that test
names it. Nothing outside this module touches an underscore attribute of an aiortc or aioice
object.

What each helper relies on:

* ``set_track_id``: ``MediaStreamTrack._id``, the value behind its read-only ``id``.
* ``mark_unoffered_inactive``: ``RTCRtpTransceiver._offerDirection`` (aiortc computes the answer
  direction from it and fails on ``None`` for a transceiver the remote's offer did not include).
* ``rebundle``: public ``setTransport`` of senders and receivers only, but it repairs what
  aiortc's BUNDLE handling leaves (a transceiver on a transport it closed), so it is checked
  here too.
* ``label_sender``: ``RTCRtpSender._track_id`` / ``_stream_id``, which aiortc writes into the
  ``a=msid`` line of every description.
* ``set_header_extension_ids``: ``RTCRtpTransceiver._headerExtensions`` (the ids aiortc
  configures its RTP header-extension maps with; ``createOffer`` resets them to aiortc's own
  table, mid 1, audio level 2, abs-send-time 3, for every transceiver, negotiated or not).
* ``reset_encoder``: the name-mangled ``RTCRtpSender.__encoder`` (``None`` makes the sender build
  a fresh encoder on the next frame).
* ``move_pending_channel``: ``RTCPeerConnection.__createSctpTransport``,
  ``RTCSctpTransport._data_channel_queue`` (``(channel, ...)`` items waiting for the SCTP
  association) and the name-mangled ``RTCDataChannel.__transport``.
* ``SourceRelay`` / ``retire_proxy`` / ``repoint_proxy``: ``MediaRelay._start`` / ``_stop``
  (called by a ``RelayStreamTrack`` when it is first read and when it stops) and the proxy's
  ``_source``, ``_queue`` (buffered), ``_new_frame_event`` and ``_frame`` (unbuffered).
* ``set_host_address_lookup``: the module function ``aioice.ice.get_host_addresses(use_ipv4,
  use_ipv6)``, looked up by aioice at gather time.
* ``end_idle_check_pacing``: ``RTCIceGatherer._connection`` (the aioice ``Connection``) and,
  on it, ``_check_periodic`` (the pacing step ``connect()`` calls every 20 ms while it returns
  True), ``_check_list`` (its pairs, with ``CandidatePair.State``) and
  ``_remote_candidates_expected``.
* ``release_complete_frames`` / ``MarkerJitterBuffer``: the name-mangled
  ``RTCRtpReceiver.__jitter_buffer`` (replaced before any packet arrives), and, on aiortc's
  ``JitterBuffer``, ``_remove_frame`` (called by ``add`` for every packet), ``_origin``,
  ``_capacity``, ``_packets``, ``_prefetch``, ``_is_video`` and ``remove``, and the ``_data``
  (depayloaded bytes) aiortc's receiver puts on each ``RtpPacket``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ...extras import missing_extra

try:
    import aioice.ice
    from aiortc import (
        MediaStreamTrack,
        RTCDataChannel,
        RTCPeerConnection,
        RTCRtpHeaderExtensionParameters,
        RTCRtpTransceiver,
    )
    from aiortc.contrib.media import MediaRelay, RelayStreamTrack
    from aiortc.jitterbuffer import JitterBuffer, JitterFrame
    from aiortc.mediastreams import MediaStreamError
    from av.frame import Frame
    from av.packet import Packet
except ImportError as exc:  # the optional WebRTC stack is not installed
    raise missing_extra("webrtc", exc) from exc

__all__ = [
    "AIOICE_HOST_ADDRESSES",
    "HostAddressLookup",
    "MarkerJitterBuffer",
    "SourceRelay",
    "end_idle_check_pacing",
    "host_address_lookup",
    "label_sender",
    "mark_unoffered_inactive",
    "move_pending_channel",
    "pace_until_idle",
    "release_complete_frames",
    "repoint_proxy",
    "reset_encoder",
    "retire_proxy",
    "set_header_extension_ids",
    "set_host_address_lookup",
    "set_track_id",
]

HostAddressLookup = Callable[..., list[str]]
"""``(use_ipv4: bool, use_ipv6: bool) -> [address, ...]``, aioice's host-address lookup."""

AIOICE_HOST_ADDRESSES: HostAddressLookup = aioice.ice.get_host_addresses
"""aioice's own lookup, captured before anything replaces it."""


# -- aioice --------------------------------------------------------------------------------------


def host_address_lookup() -> HostAddressLookup:
    """The lookup aioice uses now."""
    lookup: HostAddressLookup = aioice.ice.get_host_addresses
    return lookup


def set_host_address_lookup(lookup: HostAddressLookup | None) -> None:
    """Replace aioice's host-address lookup for every later gathering (``None``: aioice's
    own). aioice resolves the name at gather time, so connections created earlier follow."""
    aioice.ice.get_host_addresses = lookup if lookup is not None else AIOICE_HOST_ADDRESSES


def _ice_connections(pc: RTCPeerConnection) -> list[Any]:
    """The aioice connections of every transport ``pc`` has now (one per BUNDLE group)."""
    dtls: list[Any] = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls.append(pc.sctp.transport)
    seen: dict[int, Any] = {}
    for transport in dtls:
        connection = getattr(transport.transport.iceGatherer, "_connection", None)
        if connection is not None:
            seen.setdefault(id(connection), connection)
    return list(seen.values())


def _left_to_start(pair: Any) -> bool:
    # A waiting pair with a task is the check just started (it turns in-progress when the
    # task runs); only a frozen pair, or a waiting one without a task, needs a pacing step.
    state = pair.state
    if state == aioice.ice.CandidatePair.State.FROZEN:
        return True
    return state == aioice.ice.CandidatePair.State.WAITING and pair.task is None


def end_idle_check_pacing(pc: RTCPeerConnection) -> int:
    """Make the ICE check pacing of ``pc``'s transports stop once it has nothing left to
    start (call after each ``set*Description``, before the connect task runs; idempotent).
    Returns how many connections were changed.

    aioice's ``connect()`` starts one check per pacing step and sleeps 20 ms (RFC 8445's Ta)
    after each, until a step starts nothing. With one candidate pair (every loopback call,
    most calls with one host candidate a side) the check completes in a round trip, but
    ``connect()`` returns only after the sleep behind it: 20 ms on both sides before DTLS can
    start. The step is wrapped so that it reports "nothing left" as soon as the check it
    started was the last one: no pair is frozen or waiting for a check to be started, and no
    more remote candidates can come. aioice's own next step would then start nothing either:
    every later way a pair becomes waiting (a triggered check, a peer-reflexive pair) starts
    its check itself, and pairs only unfreeze from the frozen state. Checks are never started
    faster than before; only the idle sleep after the last one goes."""
    return sum(1 for connection in _ice_connections(pc) if pace_until_idle(connection))


def pace_until_idle(connection: Any) -> bool:
    """``end_idle_check_pacing`` for one aioice ``Connection``; False when it was done
    already."""
    step = connection._check_periodic
    if getattr(step, "_until_idle", False):
        return False

    def paced() -> bool:
        if not step():
            return False
        return (any(_left_to_start(pair) for pair in connection._check_list)
                or bool(connection._remote_candidates_expected()))

    paced._until_idle = True  # type: ignore[attr-defined]
    connection._check_periodic = paced
    return True


# -- video receivers -----------------------------------------------------------------------------


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, which also releases a frame as soon as it is complete.

    aiortc's buffer releases a frame when the first packet of the next frame (another RTP
    timestamp) arrives: every frame, the first one of a call included, waits one frame
    interval (33 ms at 30 fps) for its successor. A video frame ends with the packet whose
    marker bit is set (RFC 3550; VP8 RFC 7741, H.264 RFC 6184; aiortc and browsers set it),
    so when the packets from the buffer's origin to a marker packet are all there and share
    one timestamp, that frame is whole and goes to the decoder at once. Everything else
    (misordering, losses, PLI, capacity) is aiortc's: a frame with a gap is still released
    by aiortc's rule, exactly as before."""

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        frame = super()._remove_frame(sequence_number)
        if frame is None and self._is_video:
            frame = self._complete_frame_at_origin()
        return frame

    def _complete_frame_at_origin(self) -> JitterFrame | None:
        if self._origin is None:
            return None
        timestamp: int | None = None
        packets: list[Any] = []
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None or (timestamp is not None and packet.timestamp != timestamp):
                return None  # a gap, or the previous frame's marker was lost: aiortc's rule
            timestamp = packet.timestamp
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(data=b"".join(p._data for p in packets),
                                   timestamp=timestamp)
        return None


def release_complete_frames(pc: RTCPeerConnection) -> int:
    """Give every video receiver of ``pc`` that has not received a packet yet a
    ``MarkerJitterBuffer`` (call after each ``set*Description``, before the connect task
    runs; idempotent). Returns how many were replaced. Changes only what this process
    receives: nothing on the wire."""
    replaced = 0
    for transceiver in pc.getTransceivers():
        receiver: Any = transceiver.receiver
        buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
        if (type(buffer) is not JitterBuffer or not buffer._is_video
                or buffer._origin is not None):
            continue
        receiver._RTCRtpReceiver__jitter_buffer = MarkerJitterBuffer(
            capacity=buffer.capacity, prefetch=buffer._prefetch, is_video=True)
        replaced += 1
    return replaced


# -- tracks, transceivers and senders --------------------------------------------------------


def set_track_id(track: MediaStreamTrack, track_id: str) -> None:
    """Give a track the id of its sender (``MediaStreamTrack.id`` is read-only), so a
    received track shows the id the remote announced in its msid."""
    track._id = track_id



def mark_unoffered_inactive(pc: RTCPeerConnection) -> None:
    """Before ``setLocalDescription(answer)``: give every transceiver the remote's offer did
    not include an offer direction of ``inactive``, so aiortc can compute its answer direction
    (it is offered in a follow-up negotiation)."""
    for t in pc.getTransceivers():
        if t._offerDirection is None:
            t._offerDirection = "inactive"


def rebundle(pc: RTCPeerConnection, bundle: Sequence[str]) -> int:
    """Right after ``setRemoteDescription`` (before the connect task it schedules runs): put
    every transceiver of the BUNDLE group ``bundle`` (mids, primary first) on the primary
    m-line's transport. Returns how many were moved.

    aiortc's default bundle policy lets a second m-line of a kind share the first one's
    transport before BUNDLE is negotiated, and marks it bundled already. When that first one
    is not the primary m-line (audio, video, video), the description moves it to the primary
    transport, closes the transport it leaves, and skips the second one as bundled: that
    m-line is left on a closed transport and never sends or receives."""
    if len(bundle) < 2:
        return 0
    transceivers = pc.getTransceivers()
    primary = next((t.receiver.transport for t in transceivers if t.mid == bundle[0]), None)
    if primary is None and pc.sctp is not None and pc.sctp.mid == bundle[0]:
        primary = pc.sctp.transport
    if primary is None:
        return 0
    moved = 0
    others = set(bundle[1:])
    for t in transceivers:
        if t.mid in others and t.receiver.transport is not primary:
            t.receiver.setTransport(primary)
            t.sender.setTransport(primary)
            moved += 1
    return moved


def label_sender(transceiver: RTCRtpTransceiver, track_id: str, stream_id: str) -> None:
    """Make the msid of the sender's m-section announce ``stream_id`` and ``track_id`` (aiortc
    otherwise announces its relay proxy's own ids)."""
    sender: Any = transceiver.sender
    sender._track_id = track_id
    sender._stream_id = stream_id


def set_header_extension_ids(pc: RTCPeerConnection, ids: dict[str, int]) -> None:
    """After ``createOffer`` and before ``setLocalDescription``: give every transceiver the
    header-extension ids of the offer we send (``{uri: id}``; extensions it has no id for are
    dropped). aiortc's ``createOffer`` put its own id table back on every transceiver, and
    ``setLocalDescription`` re-registers the live receivers and senders with it: until the
    answer comes, a packet whose extension id means another extension in the negotiated
    table (a browser's abs-send-time, id 2, read as aiortc's audio level) raises in the
    DTLS transport's receive loop and closes the connection."""
    for t in pc.getTransceivers():
        current: list[Any] = t._headerExtensions
        t._headerExtensions = [
            RTCRtpHeaderExtensionParameters(id=ids[e.uri], uri=e.uri)
            for e in current if e.uri in ids
        ]


def reset_encoder(transceiver: RTCRtpTransceiver, proxy: MediaStreamTrack | None) -> None:
    """After ``proxy`` (what the sender reads) was re-pointed at another source: drop a frame
    of the old source still pending in the proxy and make the sender build a fresh encoder.
    The new source's timestamps start afresh, and libvpx refuses a frame whose pts goes
    backwards (the sender's task would die and the track freeze); a new encoder starts with a
    keyframe as well."""
    if isinstance(proxy, RelayStreamTrack) and proxy._new_frame_event is not None:
        proxy._new_frame_event.clear()
    sender: Any = transceiver.sender
    with contextlib.suppress(AttributeError):
        sender._RTCRtpSender__encoder = None


# -- data channels ------------------------------------------------------------------------------


def move_pending_channel(channel: RTCDataChannel, old_pc: RTCPeerConnection,
                         new_pc: RTCPeerConnection) -> bool:
    """Move a local data channel that never opened from ``old_pc`` to ``new_pc``: it opens
    with the new connection's SCTP association. Returns False (the channel stays behind and
    dies with ``old_pc``) when it already opened or had an id, or on any surprise."""
    if channel.readyState != "connecting" or channel.id is not None:
        return False
    old_sctp: Any = old_pc.sctp
    if old_sctp is None:
        return False
    try:
        if new_pc.sctp is None:
            create = getattr(new_pc, "_RTCPeerConnection__createSctpTransport")  # noqa: B009
            create()
        new_sctp: Any = new_pc.sctp
        queue = old_sctp._data_channel_queue
        queued = [item for item in queue if item[0] is channel]
        old_sctp._data_channel_queue = deque(item for item in queue if item[0] is not channel)
        channel.__dict__["_RTCDataChannel__transport"] = new_sctp
        new_sctp._data_channel_queue.extend(queued)
    except Exception:
        return False
    return True


# -- relay proxies ------------------------------------------------------------------------------


class SourceRelay(MediaRelay):
    """Fans one local source track out to one proxy per peer connection, like aiortc's
    ``MediaRelay``, but stops reading a source once its last proxy is retired. aiortc's relay
    reads a live source for ever, which burns CPU after every peer has gone and steals frames
    from anyone else the application lets read that track."""

    def __init__(self) -> None:
        super().__init__()
        self._consumers: dict[MediaStreamTrack, set[RelayStreamTrack]] = {}
        self._readers: dict[MediaStreamTrack, asyncio.Future[None]] = {}

    def subscribe(self, track: MediaStreamTrack, buffered: bool = True) -> MediaStreamTrack:
        self._consumers.setdefault(track, set())
        return RelayStreamTrack(self, track, buffered)

    def _start(self, proxy: RelayStreamTrack) -> None:
        source = proxy._source
        if source is None:
            return
        self._consumers.setdefault(source, set()).add(proxy)
        if source not in self._readers:
            self._readers[source] = asyncio.ensure_future(self._read(source))

    def _stop(self, proxy: RelayStreamTrack) -> None:
        source = proxy._source
        consumers = self._consumers.get(source) if source is not None else None
        if consumers is None:
            return
        consumers.discard(proxy)
        if not consumers:
            del self._consumers[source]  # type: ignore[arg-type]
            reader = self._readers.pop(source, None)  # type: ignore[arg-type]
            if reader is not None:
                reader.cancel()

    def reading(self, source: MediaStreamTrack) -> bool:
        """Whether the relay is reading ``source`` now."""
        return source in self._readers

    async def _read(self, source: MediaStreamTrack) -> None:
        while True:
            frame: Frame | Packet[Any] | None
            try:
                frame = await source.recv()
            except MediaStreamError:
                frame = None
            for proxy in list(self._consumers.get(source, ())):
                if proxy._queue is not None:
                    proxy._queue.put_nowait(frame)
                elif proxy._new_frame_event is not None:
                    proxy._frame = frame
                    proxy._new_frame_event.set()
            if frame is None:
                break
        self._readers.pop(source, None)
        self._consumers.pop(source, None)


def retire_proxy(proxy: MediaStreamTrack | None) -> None:
    """Stop a relay proxy and wake a sender blocked in its ``recv()`` (an unbuffered proxy
    only wakes on the next source frame, which a stopped proxy never gets)."""
    if proxy is None:
        return
    proxy.stop()
    if isinstance(proxy, RelayStreamTrack) and proxy._new_frame_event is not None:
        proxy._frame = None
        proxy._new_frame_event.set()


def repoint_proxy(relay: MediaRelay, proxy: MediaStreamTrack, new: MediaStreamTrack) -> bool:
    """Make a live relay proxy read ``new`` instead of its source, so the sender reading the
    proxy never sees its track end (follow with ``reset_encoder``). Returns False when
    ``proxy`` is not a live relay proxy (the caller replaces it instead)."""
    if not isinstance(proxy, RelayStreamTrack) or proxy.readyState != "live":
        return False
    relay.subscribe(new, buffered=False)  # registers `new` with the relay (proxy unused)
    relay._stop(proxy)
    proxy._source = new
    relay._start(proxy)
    return True
