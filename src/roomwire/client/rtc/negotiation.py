"""``PeerNegotiator``: one remote peer's WebRTC session on aiortc, signalling-agnostic.

The negotiator owns the current ``RTCPeerConnection`` to one remote peer and everything that
keeps it healthy. It knows nothing about WebSockets: the caller passes

* ``send_signal(data) -> Awaitable[None]``: deliver ``data`` to the remote peer (a MeteredPeer
  routes it through ``send``); called in order, one at a time;
* and feeds ``on_remote_signal(data)`` with every ``data`` received from that peer.

What it does (docs/protocol.md, Peer-to-peer signalling; docs/webrtc-notes.md):

* Perfect negotiation with ``polite = local_id < remote_id``, as an explicit single-flight loop
  (debounce, a lock, a dirty flag); the polite side defers the first offer of each connection
  up to ``polite_offer_delay`` waiting for the impolite side's offer.
* Collisions: the impolite side ignores a colliding offer; the polite side (aiortc cannot roll
  back) rebuilds its connection and answers from the fresh one. An offer at ``stable`` carrying
  a different remote ICE ufrag (the remote rebuilt) is answered from a rebuilt connection too;
  so is an answer whose ufrag changed (then a fresh offer is made). Rebuilds are rate-limited.
  After answering from a connection rebuilt for an offer whose sender knew our old ICE
  credentials, our own offer waits for the remote's fresh one (it will rebuild on our
  answer): offering at once kept both sides replacing each other's connection.
* Non-trickle outbound (full SDP, then ``rtc-ice null``); trickled inbound candidates accepted
  with the caps of docs/protocol.md (Signal envelopes); stale answers dropped.
* Our tracks travel only on m-lines of our own offers (``sendonly`` until the remote sends
  there too), attached when the offer is made: a browser's receiver knows a track's id (and
  its SDK finds the label) only on a transceiver our offer created.
* aiortc gaps: every m-line of the BUNDLE group ends up on the primary transport (aiortc
  could leave a second video m-line on a transport it closed); answers reject the m-lines
  the offer rejected (and our offers keep them
  rejected); offers keep negotiated extmap ids (a browser's own ids at first); remote
  tracks are identified by the msid of their m-section (by mid); one relay proxy per peer
  for a shared local track, with the original track id and stream id on the wire;
  "remove" is ``replaceTrack(None)`` + a direction without send + renegotiation.
* ICE failure: the connection is rebuilt on a ladder (immediate, 1, 2, 4, 8, 16, 30, 30, 30 s),
  each attempt probing for "connected"; then one fatal ``RemoteNegotiationErrorEvent``.
* Track metadata: ``__meteredTrackMeta`` for each local track goes out before the track is
  attached (so before the offer), a clear with ``kind``/``streamId`` for a track without
  metadata (it tells a Python remote that we are one); inbound metadata fills a FIFO cache
  consulted when a remote track appears.

Events are the public ``RemotePeer`` events (``remote_events``), delivered synchronously to
the listeners added with ``add_listener``; a ``RemotePeer`` passes the same objects on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ...extras import missing_extra

try:
    from aiortc import (
        MediaStreamTrack,
        RTCConfiguration,
        RTCDataChannel,
        RTCIceServer,
        RTCPeerConnection,
        RTCRtpTransceiver,
        RTCSessionDescription,
    )
    from aiortc.contrib.media import MediaRelay
    from aiortc.mediastreams import MediaStreamError
    from aiortc.sdp import candidate_from_sdp
    from av.frame import Frame
    from av.packet import Packet
except ImportError as exc:  # the optional WebRTC stack is not installed
    raise missing_extra("webrtc", exc) from exc

from .aiortc_compat import (
    SourceRelay,
    end_idle_check_pacing,
    label_sender,
    mark_unoffered_inactive,
    move_pending_channel,
    rebundle,
    release_complete_frames,
    repoint_proxy,
    reset_encoder,
    retire_proxy,
    set_header_extension_ids,
    set_track_id,
)
from .loopback import IceTransportPolicy, make_configuration
from .perfect_negotiation import (
    AnswerAction,
    CandidateAction,
    CandidateView,
    OfferAction,
    OfferView,
    TransceiverView,
    answer_forces_remote_rebuild,
    candidate_in_generation,
    decide_answer,
    decide_candidate,
    decide_offer,
    first_offer_wait,
    impolite_wait,
    is_polite,
    local_track_may_use,
    needs_offer,
    new_mlines_this_offer,
    offer_debounce,
    outbound_still_current,
    remote_defers_first_offer,
    remote_rebuild_hold,
    transceiver_direction,
)
from .remote_events import (
    MediaStream,
    RemoteConnectionResetEvent,
    RemoteDataChannelEvent,
    RemoteNegotiationErrorEvent,
    RemoteStateChangeEvent,
    RemoteStreamAddedEvent,
    RemoteStreamRemovedEvent,
    RemoteTrackMetadataEvent,
    TrackEvent,
)
from .sdp import (
    NO_STREAM,
    ice_ufrag,
    negotiated_extmap_ids,
    parse_sdp,
    pin_extmap_ids,
    reject_answer_mlines,
    reject_mlines,
)
from .signals import (
    CandidateBudget,
    DescriptionSignal,
    IceCandidateInit,
    IceSignal,
    Signal,
    TrackMeta,
    TrackMetadataCache,
    build_description,
    build_end_of_candidates,
    build_track_meta,
    build_track_meta_clear,
    classify,
)

__all__ = [
    "RECOVERY_LADDER",
    "ConnectionResetEvent",
    "DataChannelEvent",
    "IceRecoveryExhaustedError",
    "NegotiationErrorEvent",
    "NegotiationTimings",
    "NegotiatorEvent",
    "PeerNegotiator",
    "PeerState",
    "PeerStateChangeEvent",
    "ReceivedTrack",
    "RemoteTrackEvent",
    "SendSignal",
    "SignallingUnavailableError",
    "SourceRelay",
    "StreamAddedEvent",
    "StreamRemovedEvent",
    "TrackMetadataEvent",
    "default_relay",
]

SendSignal = Callable[[dict[str, Any]], Awaitable[None]]
PeerConnectionFactory = Callable[[RTCConfiguration], RTCPeerConnection]
IceServers = Sequence[RTCIceServer | Mapping[str, Any]]

RECOVERY_LADDER: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0)
_INBOX_CAP = 2048
_OUTBOX_CAP = 2048
_PENDING_CANDIDATES_CAP = 200


class PeerState(StrEnum):
    """The remote peer's connection state, as the SDK shows it (flicker-filtered)."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class NegotiationTimings:
    """Every delay of the engine (seconds), injectable so tests run fast."""

    debounce: float = 0.01
    """Coalesces bursts of changes (add two tracks, create a channel) into one offer; skipped
    before a first-offer wait and before the first offer to a Python peer
    (``perfect_negotiation.offer_debounce``)."""
    polite_offer_delay: float = 2.0
    """How long the polite side waits for the impolite side's offer on a new connection."""
    impolite_offer_delay: float | None = None
    """How long the impolite side waits for the polite side's offer on a new connection
    before offering itself. A browser (official JS SDK) offers at once on
    ``negotiationneeded`` even when polite; when our offer crosses its own, Chromium rolls
    its offer back, and that rollback can leave its connection gathering for ever (no local
    candidates, ICE "new", not even after an ICE restart: only a new connection helps).
    Answering its offer instead avoids the collision. ``None``: a quarter of
    ``polite_offer_delay``, at most 0.5 s (it must stay well below the polite side's wait,
    so a polite Python peer still gets our offer first); 0: offer at once."""

    @property
    def impolite_wait(self) -> float:
        return impolite_wait(self.impolite_offer_delay, self.polite_offer_delay)
    rebuild_interval: float = 2.0
    """Rebuilds forced by the remote (glare, ufrag change) refill one token per interval..."""
    rebuild_burst: int = 2
    """...up to this many tokens (a glare on a live connection needs two rebuilds)."""
    answer_timeout: float = 15.0
    """An offer unanswered for this long counts as a failed connection."""

    recovery_ladder: tuple[float, ...] = RECOVERY_LADDER
    """Delay before each rebuild after an ICE failure (the first is immediate)."""
    recovery_probe: float = 15.0
    """How long each rebuilt connection gets to reach "connected"."""
    close_timeout: float = 2.0
    """Bound on closing an old connection (a wedged DTLS shutdown must not hang us)."""


class SignallingUnavailableError(RuntimeError):
    """Raised by ``send_signal`` when the signalling link is down for now (reconnecting): the
    negotiator keeps the signal, and every later one, and sends them in order once
    ``resume_signals()`` (or ``reset()`` / ``resync_state()``) is called. Signals of a
    connection replaced meanwhile are dropped then."""


class IceRecoveryExhaustedError(RuntimeError):
    """Every rebuild of the recovery ladder failed to reconnect."""

    name = "IceRecoveryExhaustedError"


# -- events ------------------------------------------------------------------------------------

# The engine emits the public ``RemotePeer`` events themselves (``remote_events``): a
# ``RemotePeer`` passes them on unchanged, so a handler on the engine and one on the
# ``RemotePeer`` receive the same object. The engine owns the received ``MediaStream``s for that.

# Earlier names of the same classes, kept importable.
RemoteTrackEvent = TrackEvent
StreamAddedEvent = RemoteStreamAddedEvent
StreamRemovedEvent = RemoteStreamRemovedEvent
TrackMetadataEvent = RemoteTrackMetadataEvent
PeerStateChangeEvent = RemoteStateChangeEvent
ConnectionResetEvent = RemoteConnectionResetEvent
DataChannelEvent = RemoteDataChannelEvent
NegotiationErrorEvent = RemoteNegotiationErrorEvent


NegotiatorEvent = (
    TrackEvent
    | RemoteStreamAddedEvent
    | RemoteStreamRemovedEvent
    | RemoteTrackMetadataEvent
    | RemoteStateChangeEvent
    | RemoteDataChannelEvent
    | RemoteConnectionResetEvent
    | RemoteNegotiationErrorEvent
)
Listener = Callable[[NegotiatorEvent], None]


# -- helpers -----------------------------------------------------------------------------------

_default_relay: MediaRelay | None = None


def default_relay() -> MediaRelay:
    """A process-wide ``SourceRelay``. Every consumer of one source track must use the same
    relay (two relays reading one track split its frames between them)."""
    global _default_relay
    if _default_relay is None:
        _default_relay = SourceRelay()
    return _default_relay


class _RebuildLimiter:
    """Token bucket for rebuilds forced by the remote peer."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval = interval
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        if self.interval <= 0:
            self.tokens = float(self.burst)
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) / self.interval)
        self.stamp = now

    def wait_time(self) -> float:
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) * self.interval

    async def acquire(self) -> None:
        while (delay := self.wait_time()) > 0:
            await asyncio.sleep(delay)
        self.tokens -= 1


@dataclass(eq=False)
class _LocalTrack:
    source: MediaStreamTrack
    kind: str
    stream_id: str | None
    wire_id: str
    metadata: dict[str, Any] | None
    transceiver: RTCRtpTransceiver | None = None
    proxy: MediaStreamTrack | None = None


class ReceivedTrack(MediaStreamTrack):
    """A track received from the remote peer.

    ``id`` is the sender's track id (the msid of its m-section), ``stream_id`` its msid stream
    id (``None`` without a stream). One object per activation: when the remote stops sending
    (a remove) the track ends, and a later re-send gives a new ``ReceivedTrack``. At most
    ``max_queued_frames`` undelivered frames are kept (the oldest are dropped), so a track
    nobody reads does not grow without bound.
    """

    def __init__(
        self,
        kind: str,
        track_id: str | None = None,
        stream_id: str | None = None,
        mid: str | None = None,
        *,
        max_queued_frames: int = 300,
    ) -> None:
        super().__init__()
        self.kind = kind
        if track_id:
            set_track_id(self, track_id)
        self.stream_id = stream_id
        self.mid = mid
        self.max_queued_frames = max_queued_frames
        self.dropped_frames = 0
        self._frames: asyncio.Queue[Frame | Packet[Any] | None] = asyncio.Queue()
        self._finished = False

    def _push(self, frame: Frame | Packet[Any]) -> None:
        if self._finished:
            return
        while self._frames.qsize() >= self.max_queued_frames:
            self._frames.get_nowait()
            self.dropped_frames += 1
        self._frames.put_nowait(frame)

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._frames.put_nowait(None)

    async def recv(self) -> Frame | Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._frames.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        return frame

    def stop(self) -> None:
        self._finish()
        super().stop()


@dataclass(eq=False)
class _RemoteTrack:
    track: ReceivedTrack
    kind: str
    mid: str | None
    stream_id: str | None
    track_id: str | None
    active: bool = True
    meta_key: str | None = None
    """The id of metadata adopted for this track (see ``_adopt_orphan_metadata``)."""


@dataclass(eq=False)
class _Outbound:
    data: dict[str, Any]
    generation: int | None  # None: send whatever happens (metadata); else only if still current


@dataclass
class _Generation:
    """Per-connection state, replaced wholesale on every rebuild."""

    number: int
    pc: RTCPeerConnection
    remote_ufrag: str | None = None
    offers_sent: int = 0
    remote_offer: asyncio.Event = field(default_factory=asyncio.Event)
    hold_over: asyncio.Event = field(default_factory=asyncio.Event)
    """Ends the first-offer wait: the remote offered, or (impolite side only) it turned out
    to be a Python peer, which defers its own first offer (``remote_defers_first_offer``)."""
    holding_first_offer: bool = False
    """Inside the first-offer wait (``first_offer_wait``), until ``hold_over`` or its end."""
    state_changed: asyncio.Event = field(default_factory=asyncio.Event)
    budget: CandidateBudget = field(default_factory=CandidateBudget)
    pending_candidates: list[IceCandidateInit] = field(default_factory=list)
    own: set[RTCRtpTransceiver] = field(default_factory=set)
    """Transceivers we created (each for one local track); the others the remote's offers
    created, and we only receive on those, except ``borrowed`` ones."""
    borrowed: set[RTCRtpTransceiver] = field(default_factory=set)
    """Transceivers a Python remote's offer created that carried a local track of ours (put
    there by our answer, ``local_track_may_use``)."""
    rejected_mids: set[str] = field(default_factory=set)
    """m-lines the remote rejected (port 0): dead for good, rejected in our offers too."""
    silenced: set[RTCRtpTransceiver] = field(default_factory=set)
    """Ours whose track ``replace_track(old, None)`` forgot: still sending (silence)."""
    remote: dict[RTCRtpTransceiver, _RemoteTrack] = field(default_factory=dict)
    pumps: dict[RTCRtpTransceiver, asyncio.Task[None]] = field(default_factory=dict)
    streams: dict[str, set[_RemoteTrack]] = field(default_factory=dict)
    media_streams: dict[str, MediaStream] = field(default_factory=dict)
    """The ``MediaStream`` objects the events carry (fresh for every connection)."""
    channels: list[RTCDataChannel] = field(default_factory=list)
    ignoring_offer: bool = False
    answer_timer: asyncio.TimerHandle | None = None
    connected: bool = False
    remote_rebuild_expected: bool = False
    """Our answer on this connection went to a remote connection that knew our previous ICE
    credentials: the remote will rebuild and offer afresh (``answer_forces_remote_rebuild``),
    so our own offer waits for that (``remote_rebuild_hold``)."""


# -- the engine --------------------------------------------------------------------------------


class PeerNegotiator:
    """The WebRTC session with one remote peer (see the module docstring).

    Typical use::

        neg = PeerNegotiator(my_id, their_id, send_signal=lambda d: client.send(their_id, d))
        neg.add_listener(on_event)
        neg.add_track(camera, stream_id="cam", metadata={"role": "camera"})
        # for every data received from their_id:
        if neg.on_remote_signal(data): ...  # it was a signal or track metadata
        ...
        await neg.close()

    Use it from the event loop's thread only (every method that changes something schedules
    work on the running loop). Listeners run synchronously and must not block.
    """

    def __init__(
        self,
        local_id: str,
        remote_id: str,
        send_signal: SendSignal,
        *,
        ice_servers: IceServers | None = None,
        ice_transport_policy: IceTransportPolicy = "all",
        relay: MediaRelay | None = None,
        metadata_cache: TrackMetadataCache | None = None,
        pc_factory: PeerConnectionFactory | None = None,
        timings: NegotiationTimings | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        if not local_id or not remote_id:
            raise ValueError("local_id and remote_id must be non-empty")
        self._local_id = local_id
        self.remote_id = remote_id
        self._send_signal = send_signal
        self._ice_servers: list[RTCIceServer | Mapping[str, Any]] = list(ice_servers or ())
        self._ice_policy: IceTransportPolicy = ice_transport_policy
        self._relay = relay or default_relay()
        self.metadata_cache = metadata_cache if metadata_cache is not None else (
            TrackMetadataCache()
        )
        self._pc_factory = pc_factory
        self.timings = timings or NegotiationTimings()
        self._log = logger or logging.getLogger("roomwire.client.negotiation")
        self._listeners: list[Listener] = []
        self._state = PeerState.IDLE
        self._held = False
        self._closed = False
        self._fatal_latched = False
        self._dirty = False
        self._force_offer = False
        self._making_offer = False
        self._op_lock = asyncio.Lock()
        self._local: dict[MediaStreamTrack, _LocalTrack] = {}
        self._limiter = _RebuildLimiter(self.timings.rebuild_interval, self.timings.rebuild_burst)
        self._inbox: deque[Signal | TrackMeta] = deque()
        self._inbox_wakeup = asyncio.Event()
        self._outbox: deque[_Outbound] = deque()
        self._outbox_wakeup = asyncio.Event()
        self._signals_paused = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing_pcs: set[asyncio.Task[None]] = set()
        self._inbox_task: asyncio.Task[None] | None = None
        self._outbox_task: asyncio.Task[None] | None = None
        self._negotiation_task: asyncio.Task[None] | None = None
        self._recovery_task: asyncio.Task[None] | None = None
        self.last_rebuild_at: float | None = None
        """``time.monotonic()`` of the latest connection swap, or None."""
        self._meta_seen: dict[str, None] = {}  # inbound metadata ids, in arrival order
        self._meta_bound: set[str] = set()  # metadata ids that ever labelled a track
        self._remote_defers = False  # the remote is a Python peer (remote_defers_first_offer)
        self._gen = _Generation(0, self._new_pc())

    # -- read-only state ---------------------------------------------------------------------

    @property
    def local_id(self) -> str:
        return self._local_id

    @property
    def polite(self) -> bool:
        """``local_id < remote_id``: the polite side yields in a collision."""
        return is_polite(self._local_id, self.remote_id)

    @property
    def pc(self) -> RTCPeerConnection:
        """The current peer connection (stale after any ``RemoteConnectionResetEvent``)."""
        return self._gen.pc

    @property
    def generation(self) -> int:
        """Bumped on every connection swap."""
        return self._gen.number

    @property
    def state(self) -> PeerState:
        return self._state

    @property
    def holding_first_offer(self) -> bool:
        """The first offer of the current connection is held back, leaving the remote's own
        offer a head start (``polite_offer_delay`` / ``impolite_wait``)."""
        return self._gen.holding_first_offer

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def local_tracks(self) -> list[MediaStreamTrack]:
        """The local source tracks attached (in the order added)."""
        return list(self._local)

    @property
    def remote_tracks(self) -> list[TrackEvent]:
        """The live remote tracks of the current connection, as track events."""
        gen = self._gen
        return [self._track_event(gen, rec) for rec in gen.remote.values() if rec.active]

    # -- listeners ---------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> Listener:
        """Call ``listener(event)`` for every event (synchronously, in order). Returns it."""
        self._listeners.append(listener)
        return listener

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _emit(self, event: NegotiatorEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self._log.exception("negotiator listener failed on %s", event.name)

    def _set_state(self, new: PeerState) -> None:
        old = self._state
        if new is old or old is PeerState.CLOSED:
            return
        self._state = new
        self._emit(RemoteStateChangeEvent(old.value, new.value))

    # -- configuration -------------------------------------------------------------------------

    def set_ice_servers(self, servers: IceServers | None) -> None:
        """ICE servers for connections created from now on (live ones keep theirs)."""
        self._ice_servers = list(servers or ())

    def _new_pc(self) -> RTCPeerConnection:
        config = make_configuration(self._ice_servers, self._ice_policy)
        pc = self._pc_factory(config) if self._pc_factory else RTCPeerConnection(config)

        def on_state() -> None:
            self._on_pc_state(pc)

        def on_datachannel(channel: RTCDataChannel) -> None:
            self._on_remote_channel(pc, channel)

        pc.on("connectionstatechange", on_state)
        pc.on("datachannel", on_datachannel)
        return pc

    # -- tasks ---------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}:{self.remote_id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("negotiator task %s failed", task.get_name(),
                            exc_info=task.exception())

    # -- outbound signals ----------------------------------------------------------------------

    def _enqueue(self, data: dict[str, Any], *, generation: int | None = None) -> None:
        if self._closed:
            return
        if len(self._outbox) >= _OUTBOX_CAP:
            self._log.warning("signal queue to %s full; dropping a signal", self.remote_id)
            return
        self._outbox.append(_Outbound(data, generation))
        self._outbox_wakeup.set()
        if self._outbox_task is None or self._outbox_task.done():
            self._outbox_task = self._spawn(self._outbox_loop(), "signal-out")

    async def _outbox_loop(self) -> None:
        while not self._closed:
            if not self._outbox or self._signals_paused:
                self._outbox_wakeup.clear()
                await self._outbox_wakeup.wait()
                continue
            item = self._outbox.popleft()
            if not outbound_still_current(item.generation, self._gen.number):
                continue  # a description or candidate of a connection that no longer exists
            try:
                await self._send_signal(item.data)
            except asyncio.CancelledError:
                raise
            except SignallingUnavailableError as exc:
                # The link is down: keep this signal (and the ones behind it) for later.
                self._log.debug("holding signals to %s until signalling is back: %s",
                                self.remote_id, exc)
                self._outbox.appendleft(item)
                self._signals_paused = True
            except Exception as exc:
                self._log.warning("sending a signal to %s failed: %s", self.remote_id, exc)

    def pause_signals(self) -> None:
        """Hold outbound signals (the signalling link is down) until ``resume_signals()``."""
        self._signals_paused = True

    def resume_signals(self) -> None:
        """Send the signals held since ``pause_signals()`` (or a ``SignallingUnavailableError``),
        in order; those of a connection replaced meanwhile are dropped."""
        self._signals_paused = False
        self._outbox_wakeup.set()

    # -- inbound signals -----------------------------------------------------------------------

    def on_remote_signal(self, data: object) -> bool:
        """Feed one ``data`` received from the remote peer. Returns True when it was a signal
        or track metadata (consumed here), False for customer data. Also accepts the result
        of ``signals.classify``. Processing is asynchronous and strictly in arrival order."""
        item = data if isinstance(data, DescriptionSignal | IceSignal | TrackMeta) else (
            classify(data)
        )
        if item is None:
            return False
        if self._closed:
            return True
        if len(self._inbox) >= _INBOX_CAP:
            self._log.warning("inbound signal queue from %s full; dropping", self.remote_id)
            return True
        self._inbox.append(item)
        self._inbox_wakeup.set()
        if self._inbox_task is None or self._inbox_task.done():
            self._inbox_task = self._spawn(self._inbox_loop(), "signal-in")
        return True

    async def _inbox_loop(self) -> None:
        while not self._closed:
            if not self._inbox:
                self._inbox_wakeup.clear()
                await self._inbox_wakeup.wait()
                continue
            item = self._inbox.popleft()
            try:
                if isinstance(item, TrackMeta):
                    self._apply_track_meta(item)
                elif isinstance(item, DescriptionSignal):
                    async with self._op_lock:
                        if self._closed:
                            return
                        if item.type == "offer":
                            await self._handle_offer(item.sdp)
                        else:
                            await self._handle_answer(item.sdp)
                else:
                    await self._handle_candidate(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.warning("signal from %s failed: %r", self.remote_id, exc,
                                  exc_info=self._log.isEnabledFor(logging.DEBUG))
                self._emit(RemoteNegotiationErrorEvent(exc, fatal=False))

    def _apply_track_meta(self, meta: TrackMeta) -> None:
        if not self._remote_defers and remote_defers_first_offer(
                meta_kind=meta.kind, meta_stream_id=meta.stream_id):
            self._remote_defers = True
            if not self.polite:  # an impolite first-offer wait in progress ends now
                self._gen.hold_over.set()
        if not meta.is_clear:
            self._meta_seen.pop(meta.track_id, None)
            self._meta_seen[meta.track_id] = None
            while len(self._meta_seen) > self.metadata_cache.capacity:
                del self._meta_seen[next(iter(self._meta_seen))]
        if not self.metadata_cache.apply(meta):
            return
        for rec in self._gen.remote.values():
            if rec.active and meta.track_id in (rec.track_id, rec.track.id, rec.meta_key):
                self._emit(RemoteTrackMetadataEvent(rec.track, self._lookup_metadata(rec)))

    async def _handle_offer(self, sdp: str) -> None:
        gen = self._gen
        pc = gen.pc
        ufrag = ice_ufrag(sdp)
        decision = decide_offer(OfferView(
            polite=self.polite, signaling_state=pc.signalingState,
            connection_state=pc.connectionState, making_offer=self._making_offer,
            known_ufrag=gen.remote_ufrag, offered_ufrag=ufrag))
        if decision.action is OfferAction.IGNORE:
            self._log.debug("ignoring a colliding offer from %s (impolite)", self.remote_id)
            gen.ignoring_offer = True
            return
        if decision.action is OfferAction.REBUILD:
            old_remote_ufrag = gen.remote_ufrag
            await self._limiter.acquire()
            if self._closed:
                return
            await self._rebuild(decision.reason or "remote-offer", negotiate=False)
            gen = self._gen
            pc = gen.pc
            gen.remote_rebuild_expected = answer_forces_remote_rebuild(
                rebuilt=True, old_remote_ufrag=old_remote_ufrag, offered_ufrag=ufrag)
        gen.ignoring_offer = False
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        rebundle(pc, parse_sdp(sdp).bundle)
        end_idle_check_pacing(pc)
        release_complete_frames(pc)
        self._remote_description_applied(gen, ufrag)
        await self._flush_pending_candidates(gen)
        gen.remote_offer.set()
        gen.hold_over.set()
        self._forget_rejected(gen, sdp)
        if self._remote_defers:
            self._attach_to_offer(gen, sdp)
        self._set_directions(gen, sdp)
        answer = await pc.createAnswer()
        mark_unoffered_inactive(pc)
        await pc.setLocalDescription(answer)
        if self._closed or gen is not self._gen:
            return
        local_sdp = reject_answer_mlines(pc.localDescription.sdp, sdp)
        self._enqueue(build_description("answer", local_sdp), generation=gen.number)
        self._enqueue(build_end_of_candidates(), generation=gen.number)
        if self._state is PeerState.IDLE:
            self._set_state(PeerState.CONNECTING)
        if self._needs_offer(gen):
            # Our media left over (all of it toward a browser) goes on m-lines of our own
            # offer: one follow-up offer.
            self._request_negotiation(offer_now=True)

    async def _handle_answer(self, sdp: str) -> None:
        gen = self._gen
        pc = gen.pc
        ufrag = ice_ufrag(sdp)
        decision = decide_answer(pc.signalingState, gen.remote_ufrag, ufrag)
        if decision.action is AnswerAction.DROP:
            self._log.debug("dropping a stale answer from %s", self.remote_id)
            return
        if decision.action is AnswerAction.REBUILD_AND_OFFER:
            await self._limiter.acquire()
            if not self._closed:
                await self._rebuild(decision.reason or "remote-restart", offer_now=True)
            return
        self._cancel_answer_timer(gen)
        # The collision (if any) is over: the remote rolled back and answered our offer. Its
        # candidates from now on belong to this answer (W3C: ignoreOffer is recomputed, false,
        # for every answer).
        gen.ignoring_offer = False
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        rebundle(pc, parse_sdp(sdp).bundle)
        end_idle_check_pacing(pc)
        release_complete_frames(pc)
        self._remote_description_applied(gen, ufrag)
        await self._flush_pending_candidates(gen)
        if self._dirty or any(e.transceiver is None for e in self._local.values()):
            # (tracks left for this next offer: new_mlines_this_offer)
            self._request_negotiation(offer_now=True)

    def _remote_description_applied(self, gen: _Generation, ufrag: str | None) -> None:
        if ufrag != gen.remote_ufrag:
            gen.budget.reset()
        gen.remote_ufrag = ufrag or gen.remote_ufrag
        self._sync_remote_tracks(gen)

    async def _flush_pending_candidates(self, gen: _Generation) -> None:
        """Add the candidates held until a remote description, in order and before the inbox
        moves on: an end-of-candidates right behind them must not overtake them (aioice
        refuses any candidate after end-of-candidates)."""
        pending, gen.pending_candidates = gen.pending_candidates, []
        for cand in pending:
            await self._add_candidate(gen, cand)

    async def _handle_candidate(self, signal: IceSignal) -> None:
        gen = self._gen
        cand = signal.candidate
        # The budget is spent only on a well-formed candidate (the order of the rules).
        within_budget = (not signal.malformed and cand is not None
                         and gen.budget.take(cand))
        action = decide_candidate(CandidateView(
            malformed=signal.malformed, end_of_candidates=cand is None,
            has_remote_description=gen.pc.remoteDescription is not None,
            ignoring_offer=gen.ignoring_offer, within_budget=within_budget,
            held=len(gen.pending_candidates), hold_cap=_PENDING_CANDIDATES_CAP))
        if action is CandidateAction.END:
            with contextlib.suppress(Exception):
                await gen.pc.addIceCandidate(None)
        elif cand is not None and action is CandidateAction.HOLD:
            gen.pending_candidates.append(cand)
        elif cand is not None and action is CandidateAction.APPLY:
            await self._add_candidate(gen, cand)

    async def _add_candidate(self, gen: _Generation, cand: IceCandidateInit) -> None:
        if gen is not self._gen or self._closed:
            return
        if not candidate_in_generation(cand.username_fragment, gen.remote_ufrag):
            return
        try:
            candidate = candidate_from_sdp(cand.sdp_fragment)
        except Exception:
            return  # malformed: dropped silently
        candidate.sdpMid = cand.sdp_mid
        candidate.sdpMLineIndex = cand.sdp_mline_index
        try:
            await gen.pc.addIceCandidate(candidate)
        except Exception as exc:
            self._log.debug("remote candidate from %s refused: %r", self.remote_id, exc)

    # -- negotiation loop ----------------------------------------------------------------------

    def negotiate(self) -> None:
        """Ask for a (re)negotiation; a no-op when nothing needs offering."""
        self._request_negotiation()

    def _request_negotiation(self, *, offer_now: bool = False) -> None:
        if self._closed:
            return
        self._dirty = True
        self._force_offer = self._force_offer or offer_now
        if self._negotiation_task is None or self._negotiation_task.done():
            self._negotiation_task = self._spawn(self._negotiation_loop(), "negotiate")

    async def _negotiation_loop(self) -> None:
        debounce = offer_debounce(
            self.timings.debounce, first_wait=self._first_offer_wait(self._gen),
            first_offer=self._first_offer(self._gen), polite=self.polite,
            remote_defers=self._remote_defers)
        if debounce > 0:
            await asyncio.sleep(debounce)
        while self._dirty and not self._closed:
            gen = self._gen
            hold = remote_rebuild_hold(
                remote_rebuild_expected=gen.remote_rebuild_expected, connected=gen.connected,
                offers_sent=gen.offers_sent, hold=self.timings.answer_timeout)
            if hold > 0:
                await self._hold_for_remote_rebuild(gen, hold)
                if gen is not self._gen:
                    continue  # the remote's fresh offer replaced it: offer on the new one
                gen.remote_rebuild_expected = False  # waited once; offer after all
            wait = self._first_offer_wait(gen)
            if wait > 0:
                # The first offer of a connection: give the remote's own offer (if it makes
                # one) a head start, so the two do not collide.
                gen.holding_first_offer = True
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gen.hold_over.wait(), wait)
                finally:
                    gen.holding_first_offer = False
                if gen is not self._gen:
                    continue
            async with self._op_lock:
                if self._closed or gen is not self._gen:
                    continue
                if gen.pc.signalingState != "stable":
                    return  # an exchange is in flight; its answer re-runs the loop
                if self._held:
                    # Signalling is down: no offer now. One made now would go out the moment
                    # the link is back, right when a browser that saw us leave and come back
                    # makes its own: a collision its SDK reports as an error. resync_state()
                    # runs this loop again, with the usual wait for the remote's offer.
                    return
                self._dirty = False
                self._force_offer = False
                if self._needs_offer(gen):
                    await self._make_offer(gen)

    def _first_offer_wait(self, gen: _Generation) -> float:
        return first_offer_wait(
            polite=self.polite, polite_delay=self.timings.polite_offer_delay,
            impolite_delay=self.timings.impolite_wait, force_offer=self._force_offer,
            offers_sent=gen.offers_sent, remote_offer_seen=gen.remote_offer.is_set(),
            has_something=self._has_something_to_negotiate(gen),
            remote_defers=self._remote_defers)

    @staticmethod
    def _first_offer(gen: _Generation) -> bool:
        return not gen.offers_sent and not gen.remote_offer.is_set()

    async def _hold_for_remote_rebuild(self, gen: _Generation, timeout: float) -> None:
        """Wait until ``gen`` is replaced or connected, or ``timeout`` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while gen is self._gen and not self._closed and not gen.connected:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            gen.state_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gen.state_changed.wait(), remaining)

    def _has_something_to_negotiate(self, gen: _Generation) -> bool:
        return (bool(self._local) or bool(gen.pc.getTransceivers())
                or gen.pc.sctp is not None)

    def _needs_offer(self, gen: _Generation) -> bool:
        pc = gen.pc
        sctp = pc.sctp
        self._set_directions(gen)
        views = (TransceiverView(t.stopped, t.mid, t.direction, t.currentDirection)
                 for t in pc.getTransceivers())
        unattached = sum(1 for e in self._local.values() if e.transceiver is None)
        return needs_offer(views, has_sctp=sctp is not None,
                           sctp_mid=sctp.mid if sctp is not None else None,
                           unattached_tracks=unattached)

    def _forget_rejected(self, gen: _Generation, offer_sdp: str) -> None:
        """The remote rejected m-lines (a browser's ``transceiver.stop()``; Chromium may have
        put its own track on one of ours): a local track that was on one moves to a fresh
        m-line in our next offer."""
        rejected = {s.mid for s in parse_sdp(offer_sdp).sections
                    if s.rejected and s.mid is not None}
        if not rejected - gen.rejected_mids:
            return
        gen.rejected_mids |= rejected
        for entry in self._local.values():
            t = entry.transceiver
            if t is not None and t.mid in rejected:
                t.sender.replaceTrack(None)
                retire_proxy(entry.proxy)
                entry.proxy = None
                entry.transceiver = None
        gen.silenced = {t for t in gen.silenced if t.mid not in rejected}

    def _set_directions(self, gen: _Generation, remote_offer: str | None = None) -> None:
        """Give every transceiver the direction of ``transceiver_direction``; what the remote
        sends is read from ``remote_offer`` (being answered) or its last description."""
        remote = remote_offer
        if remote is None and gen.pc.remoteDescription is not None:
            remote = gen.pc.remoteDescription.sdp
        info = parse_sdp(remote) if remote is not None else None
        carrying = {e.transceiver for e in self._local.values()} | gen.silenced
        for t in gen.pc.getTransceivers():
            if t.stopped:
                continue
            if t.mid is not None and t.mid in gen.rejected_mids:
                t.direction = "inactive"
                continue
            section = info.section(t.mid) if info is not None and t.mid is not None else None
            t.direction = transceiver_direction(
                created_by_remote=t not in gen.own,
                local_sends=t in carrying,
                remote_sends=section is not None and section.sends,
                remote_is_python=self._remote_defers)

    async def _make_offer(self, gen: _Generation) -> None:
        pc = gen.pc
        self._making_offer = True
        try:
            # Our tracks get their transceivers now, in our own offer: never earlier, or
            # a remote offer arriving first would have aiortc put them on the remote's
            # m-lines.
            pending = [e for e in self._local.values() if e.transceiver is None]
            negotiated_kinds = {t.kind for t in pc.getTransceivers()
                                if t.currentDirection is not None and not t.stopped}
            first_mlines = not pc.getTransceivers()
            for i in new_mlines_this_offer([e.kind for e in pending], negotiated_kinds,
                                           first_mlines=first_mlines):
                self._attach(pending[i])
            self._set_directions(gen)
            offer = await pc.createOffer()
            # Negotiated ids stay; new ones are a browser's own (sdp.BROWSER_EXTMAP_IDS).
            negotiated = [d.sdp for d in (pc.remoteDescription, pc.localDescription) if d]
            sdp = reject_mlines(pin_extmap_ids(offer.sdp, negotiated), gen.rejected_mids)
            set_header_extension_ids(pc, negotiated_extmap_ids([sdp]))
            await pc.setLocalDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if self._closed or gen is not self._gen:
                return
            # aiortc rewrites ports when it adds candidates: reject again what must stay so.
            sent = reject_mlines(pc.localDescription.sdp, gen.rejected_mids)
            self._enqueue(build_description("offer", sent),
                          generation=gen.number)
            self._enqueue(build_end_of_candidates(), generation=gen.number)
            gen.offers_sent += 1
            if self._state is PeerState.IDLE:
                self._set_state(PeerState.CONNECTING)
            self._arm_answer_timer(gen)
        except Exception as exc:
            self._log.warning("offer to %s failed: %r", self.remote_id, exc)
            self._emit(RemoteNegotiationErrorEvent(exc, fatal=False))
        finally:
            self._making_offer = False

    def _arm_answer_timer(self, gen: _Generation) -> None:
        self._cancel_answer_timer(gen)
        loop = asyncio.get_running_loop()
        gen.answer_timer = loop.call_later(self.timings.answer_timeout,
                                           self._on_answer_timeout, gen)

    def _cancel_answer_timer(self, gen: _Generation) -> None:
        if gen.answer_timer is not None:
            gen.answer_timer.cancel()
            gen.answer_timer = None

    def _on_answer_timeout(self, gen: _Generation) -> None:
        gen.answer_timer = None
        if gen is self._gen and not self._closed and gen.pc.signalingState == "have-local-offer":
            self._log.info("no answer from %s; rebuilding the connection", self.remote_id)
            self._start_recovery("answer-timeout", gen)

    # -- connection state, recovery ------------------------------------------------------------

    def _on_pc_state(self, pc: RTCPeerConnection) -> None:
        gen = self._gen
        if pc is not gen.pc or self._closed:
            return
        gen.state_changed.set()
        state = pc.connectionState
        if state == "connected":
            gen.connected = True
            self._fatal_latched = False
            if not self._held:
                self._set_state(PeerState.CONNECTED)
        elif state in ("failed", "closed"):
            if self._state is PeerState.CONNECTED:
                self._set_state(PeerState.RECONNECTING)
            self._start_recovery("ice-" + state, gen)
        elif state in ("new", "connecting") and self._state is PeerState.IDLE:
            self._set_state(PeerState.CONNECTING)

    def _start_recovery(self, reason: str, failed: _Generation) -> None:
        if self._closed or self._fatal_latched:
            return  # after the ladder is exhausted, only a reset or a remote offer helps
        if self._recovery_task is not None and not self._recovery_task.done():
            return
        self._recovery_task = self._spawn(self._recover(reason, failed), "ice-recovery")

    async def _wait_for_pc(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the current connection to be connected; returns early
        with False when it fails."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._closed:
            gen = self._gen
            state = gen.pc.connectionState
            if state == "connected":
                return True
            if state in ("failed", "closed"):
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            gen.state_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gen.state_changed.wait(), min(remaining, 0.5))
        return False

    async def _recover(self, reason: str, failed: _Generation) -> None:
        """The rebuild ladder. ``failed`` is the connection that failed; a rebuild that
        happened meanwhile for another reason (a remote offer) is probed, not replaced."""
        for attempt, delay in enumerate(self.timings.recovery_ladder, start=1):
            if delay > 0 and await self._wait_for_pc(delay):
                return  # fixed meanwhile (the remote rebuilt and we answered)
            async with self._op_lock:
                if self._closed:
                    return
                current = self._gen
                if current.pc.connectionState == "connected":
                    return
                if current is failed or current.pc.connectionState in ("failed", "closed"):
                    self._log.info("rebuilding the connection to %s (%s, attempt %d)",
                                   self.remote_id, reason, attempt)
                    await self._rebuild(reason)
            if await self._wait_for_pc(self.timings.recovery_probe):
                return
            failed = self._gen  # this one did not make it in time either
        if not self._closed and not self._fatal_latched:
            self._fatal_latched = True
            err = IceRecoveryExhaustedError(
                f"could not reconnect to {self.remote_id} after "
                f"{len(self.timings.recovery_ladder)} rebuilds"
            )
            self._emit(RemoteNegotiationErrorEvent(err, fatal=True))

    # -- rebuild -------------------------------------------------------------------------------

    async def _rebuild(self, reason: str, *, negotiate: bool = True,
                       offer_now: bool = False, announce: bool = True) -> None:
        """Swap in a fresh peer connection (caller holds the op lock). ``announce``: re-send
        every local track's metadata first, ahead of the new connection's descriptions: the
        remote may have lost it (a browser app whose SDK saw us leave and come back keeps
        no metadata of ours, and looks a label up when the track arrives)."""
        old = self._gen
        self._cancel_answer_timer(old)
        new = _Generation(old.number + 1, self._new_pc())
        self._gen = new
        old.state_changed.set()  # wakes a wait on the old connection (it is replaced)
        self.last_rebuild_at = time.monotonic()
        # Remote tracks of the old connection end; no stream-removed for them.
        self._end_generation(old)
        for entry in self._local.values():
            retire_proxy(entry.proxy)
            entry.proxy = None
            entry.transceiver = None  # attached again in the next offer (or answer)
        if announce:
            self.announce_metadata()
        for channel in old.channels:
            if self._migrate_channel(channel, old.pc, new.pc):
                new.channels.append(channel)
        if self._state is PeerState.CONNECTED:
            self._set_state(PeerState.RECONNECTING)
        self._emit(RemoteConnectionResetEvent(new.pc, old.pc, reason))
        self._close_pc_later(old.pc)
        if negotiate:
            self._request_negotiation(offer_now=offer_now)

    @staticmethod
    def _end_generation(gen: _Generation) -> None:
        for task in gen.pumps.values():
            task.cancel()
        for rec in gen.remote.values():
            if rec.active:
                rec.active = False
                rec.track._finish()

    def _migrate_channel(self, channel: RTCDataChannel, old_pc: RTCPeerConnection,
                         new_pc: RTCPeerConnection) -> bool:
        """Move a local channel that never opened to the new connection; otherwise it is left
        to die with the old connection."""
        moved = move_pending_channel(channel, old_pc, new_pc)
        if not moved and channel.readyState == "connecting" and channel.id is None:
            self._log.debug("could not move data channel %r", channel.label)
        return moved

    def _close_pc_later(self, pc: RTCPeerConnection) -> None:
        async def close() -> None:
            try:
                await asyncio.wait_for(asyncio.shield(pc.close()), self.timings.close_timeout)
            except TimeoutError:
                self._log.warning("closing an old connection to %s timed out", self.remote_id)
            except Exception as exc:
                self._log.debug("closing an old connection failed: %r", exc)

        task = asyncio.get_running_loop().create_task(close())
        self._closing_pcs.add(task)
        task.add_done_callback(self._closing_pcs.discard)

    async def reset(
        self,
        *,
        local_id: str | None = None,
        ice_servers: IceServers | None = None,
        resend_metadata: bool = True,
        offer_now: bool | None = None,
    ) -> None:
        """Swap in a fresh connection now (a signalling reconcile: the remote may have lost
        its side). Metadata of every local track is re-sent first, then the tracks are
        re-attached and renegotiated. ``local_id`` updates our id (it can change on a
        reconnect), which may flip politeness. ``offer_now`` defaults to "impolite offers
        at once, polite waits for the remote's offer a little"."""
        if self._closed:
            raise RuntimeError("negotiator is closed")
        if local_id:
            self._local_id = local_id
        if ice_servers is not None:
            self.set_ice_servers(ice_servers)
        self._held = False
        self._fatal_latched = False
        async with self._op_lock:
            if self._closed:
                return
            await self._rebuild("reset", offer_now=bool(offer_now), announce=resend_metadata)
            self.resume_signals()  # held signals of the old connection are dropped

    def hold_reconnecting(self) -> None:
        """Show ``reconnecting`` (the signalling link dropped) until ``reset()`` or
        ``resync_state()``; outbound signals are held until then."""
        if self._closed:
            return
        self._held = True
        self.pause_signals()
        self._set_state(PeerState.RECONNECTING)

    def resync_state(self) -> None:
        """Release ``hold_reconnecting()`` (and the signals held meanwhile) and show the
        connection's real state."""
        self._held = False
        self.resume_signals()
        if self._gen.pc.connectionState == "connected":
            self._set_state(PeerState.CONNECTED)
        if self._dirty:
            self._request_negotiation()

    # -- local media ---------------------------------------------------------------------------

    def add_track(
        self,
        track: MediaStreamTrack,
        stream_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Send ``track`` to the remote peer (through a relay proxy of its own) with the
        original ``track.id`` and ``stream_id`` in the msid. Its metadata, if any, is sent
        first. Idempotent for the same track and stream; a different stream raises
        ``ValueError``."""
        self._check_open()
        if track.kind not in ("audio", "video"):
            raise ValueError(f"cannot send a {track.kind!r} track")
        if stream_id is not None and (not stream_id or stream_id == NO_STREAM
                                      or any(c.isspace() for c in stream_id)):
            raise ValueError("stream_id must be a non-empty token without spaces, not '-'")
        existing = self._local.get(track)
        if existing is not None:
            if existing.stream_id != stream_id:
                raise ValueError("track already attached with another stream")
            return
        entry = _LocalTrack(track, track.kind, stream_id, track.id,
                            dict(metadata) if metadata is not None else None)
        self._local[track] = entry
        self._send_metadata(entry)
        self._request_negotiation()  # the next offer attaches it

    def _send_metadata(self, entry: _LocalTrack) -> None:
        if entry.metadata is not None:
            self._enqueue(build_track_meta(entry.wire_id, entry.metadata, kind=entry.kind,
                                           stream_id=entry.stream_id))
        else:
            # A track without metadata still tells a Python remote that we are a Python
            # peer, which never offers first when polite: without it an impolite remote
            # would hold its first offer for a browser's (impolite_offer_delay), and answer
            # ours without its tracks. A clear is a no-op for every SDK (there is nothing
            # to clear); only its kind/streamId say who sent it.
            self._enqueue(build_track_meta_clear(entry.wire_id, kind=entry.kind,
                                                 stream_id=entry.stream_id))

    def announce_metadata(self) -> None:
        """(Re-)send the metadata of every local track."""
        for entry in self._local.values():
            self._send_metadata(entry)

    def _attach(self, entry: _LocalTrack) -> None:
        """Put a local track on a transceiver (caller: ``_make_offer``, under the op lock)."""
        gen = self._gen
        proxy = self._relay.subscribe(entry.source, buffered=False)
        transceiver = next((
            t for t in gen.pc.getTransceivers()
            if t.kind == entry.kind and t.sender.track is None
            and local_track_may_use(created_by_remote=t not in gen.own,
                                    has_carried_a_track=t in gen.own or t in gen.borrowed,
                                    stopped=t.stopped)
        ), None)
        if transceiver is not None:
            transceiver.sender.replaceTrack(proxy)
        else:
            transceiver = gen.pc.addTransceiver(proxy, direction="sendonly")
            gen.own.add(transceiver)
        self._label_sender(transceiver, entry)
        entry.transceiver = transceiver
        entry.proxy = proxy

    def _attach_to_offer(self, gen: _Generation, offer_sdp: str) -> None:
        """Put local tracks without a transceiver on the m-lines of a Python remote's offer
        (caller: ``_handle_offer``, before the answer): one round carries both sides' media."""
        info = parse_sdp(offer_sdp)
        for entry in self._local.values():
            if entry.transceiver is not None:
                continue
            for t in gen.pc.getTransceivers():
                section = info.section(t.mid) if t.mid is not None else None
                if (t.kind != entry.kind or t.sender.track is not None or section is None
                        or t.mid in gen.rejected_mids):
                    continue
                if not local_track_may_use(
                        created_by_remote=t not in gen.own,
                        has_carried_a_track=t in gen.own or t in gen.borrowed,
                        stopped=t.stopped, answering_python=True,
                        remote_receives=section.receives):
                    continue
                entry.proxy = self._relay.subscribe(entry.source, buffered=False)
                t.sender.replaceTrack(entry.proxy)
                gen.borrowed.add(t)
                self._label_sender(t, entry)
                entry.transceiver = t
                break

    @staticmethod
    def _label_sender(transceiver: RTCRtpTransceiver, entry: _LocalTrack) -> None:
        # The msid must carry the customer's ids, not those of the relay proxy.
        label_sender(transceiver, entry.wire_id, entry.stream_id or NO_STREAM)

    def remove_track(self, track: MediaStreamTrack) -> bool:
        """Stop sending ``track``: ``replaceTrack(None)``, a direction without send, a
        metadata "clear", and a renegotiation (the remote sees the track end). Returns False
        when the track was not attached."""
        entry = self._local.pop(track, None)
        if entry is None or self._closed:
            return False
        if entry.metadata is not None:
            self._enqueue(build_track_meta_clear(entry.wire_id))
        transceiver = entry.transceiver
        if transceiver is not None:
            transceiver.sender.replaceTrack(None)  # the direction follows at the next offer
        retire_proxy(entry.proxy)
        entry.proxy = None
        self._request_negotiation()
        return True

    async def replace_track(self, old: MediaStreamTrack,
                            new: MediaStreamTrack | None) -> None:
        """Swap what a sender sends, without renegotiating: the relay proxy the sender reads
        is re-pointed at ``new`` (so the sender never sees its track end, and the msid stays
        what the remote already knows). ``new=None`` silences the sender and forgets the
        track. The metadata is re-keyed (clear the old id, then set the new one).
        Raises ``KeyError`` when ``old`` is not attached, ``ValueError`` on a kind change."""
        self._check_open()
        entry = self._local.get(old)
        if entry is None:
            raise KeyError("track is not attached to this peer")
        if new is not None and new.kind != entry.kind:
            raise ValueError("replace_track cannot change the kind of a track")
        if new is not None and new is not old and new in self._local:
            raise ValueError("the new track is already attached to this peer")
        if new is old:
            return
        del self._local[old]
        if entry.metadata is not None:
            self._enqueue(build_track_meta_clear(entry.wire_id))
        transceiver = entry.transceiver
        if new is None:
            if transceiver is not None:
                transceiver.sender.replaceTrack(None)
                self._label_sender(transceiver, entry)
                self._gen.silenced.add(transceiver)
            retire_proxy(entry.proxy)
            entry.proxy = None
            return
        entry.source = new
        entry.wire_id = new.id  # the id of this track on the next connections
        self._local[new] = entry
        self._send_metadata(entry)
        proxy = entry.proxy
        if proxy is not None and repoint_proxy(self._relay, proxy, new):
            if transceiver is not None:
                reset_encoder(transceiver, proxy)
        elif transceiver is not None:
            retire_proxy(proxy)
            entry.proxy = self._relay.subscribe(new, buffered=False)
            transceiver.sender.replaceTrack(entry.proxy)
        if transceiver is not None and transceiver.mid is None:
            self._label_sender(transceiver, entry)  # not announced yet: use the new id

    def create_data_channel(
        self,
        label: str,
        *,
        ordered: bool = True,
        max_packet_life_time: int | None = None,
        max_retransmits: int | None = None,
        protocol: str = "",
        negotiated: bool = False,
        id: int | None = None,
    ) -> RTCDataChannel:
        """A data channel on the current connection; negotiates when needed. A
        ``RemoteDataChannelEvent(local=True)`` fires when it opens. It dies with the connection
        (re-create it after ``RemoteConnectionResetEvent``), except that a channel not open yet
        when a collision rebuilds the connection is moved to the new one."""
        self._check_open()
        gen = self._gen
        channel = gen.pc.createDataChannel(
            label, maxPacketLifeTime=max_packet_life_time, maxRetransmits=max_retransmits,
            ordered=ordered, protocol=protocol, negotiated=negotiated, id=id,
        )
        gen.channels.append(channel)

        def on_open() -> None:
            if channel in self._gen.channels and not self._closed:
                self._emit(RemoteDataChannelEvent(channel, local=True))

        channel.on("open", on_open)
        self._request_negotiation()
        return channel

    def _on_remote_channel(self, pc: RTCPeerConnection, channel: RTCDataChannel) -> None:
        if pc is self._gen.pc and not self._closed:
            self._emit(RemoteDataChannelEvent(channel, local=False))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("negotiator is closed")

    # -- remote tracks -------------------------------------------------------------------------

    def _lookup_metadata(self, rec: _RemoteTrack) -> dict[str, Any] | None:
        found = self.metadata_cache.lookup(msid_track_id=rec.track_id, track_id=rec.track.id,
                                           stream_id=rec.stream_id, kind=rec.kind)
        if found is None and rec.meta_key is not None:
            found = self.metadata_cache.get(rec.meta_key)
        return found

    def _adopt_orphan_metadata(self, info: Any, added: list[_RemoteTrack]) -> None:
        """Label new tracks whose msid names no metadata entry with an "orphan" entry.

        A browser that ``addTrack``s onto a transceiver the remote's offer created (Chromium
        reuses one that never sent) announces that transceiver's own sender id in the msid,
        not ``track.id``; the official JS SDK keys its ``__meteredTrackMeta`` by ``track.id``,
        so the ids never meet. An orphan is a metadata entry that no m-section of the remote
        description announces and that never labelled a track. A track without metadata
        adopts the oldest orphan compatible with it (same kind and stream when the entry says
        so) only when every such orphan carries the same metadata (never a guess between two
        labels)."""
        for rec in added:
            if rec.track_id:
                for key in (rec.track_id, rec.track.id):
                    if self.metadata_cache.get(key) is not None:
                        self._meta_bound.add(key)
        missing = [r for r in added if self._lookup_metadata(r) is None]
        if not missing:
            return
        announced = {s.track_id for s in info.sections if s.track_id}
        for rec in missing:
            candidates = []
            for key in self._meta_seen:
                entry = self.metadata_cache.entry(key)
                if (entry is None or entry.metadata is None or key in announced
                        or key in self._meta_bound):
                    continue
                if entry.kind not in (None, rec.kind):
                    continue
                if entry.stream_id is not None and entry.stream_id != rec.stream_id:
                    continue
                candidates.append(entry)
            if candidates and all(c.metadata == candidates[0].metadata for c in candidates):
                rec.meta_key = candidates[0].track_id
                self._meta_bound.add(rec.meta_key)

    def resolve_metadata(self, track: MediaStreamTrack) -> dict[str, Any] | None:
        """The metadata for a remote track of the current connection, or None."""
        for rec in self._gen.remote.values():
            if rec.track is track:
                return self._lookup_metadata(rec)
        return None

    def _track_event(self, gen: _Generation, rec: _RemoteTrack) -> TrackEvent:
        stream = gen.media_streams.get(rec.stream_id) if rec.stream_id is not None else None
        return TrackEvent(rec.track, (stream,) if stream is not None else (),
                          self._lookup_metadata(rec), rec.kind)

    @staticmethod
    def _media_stream(gen: _Generation, stream_id: str) -> MediaStream:
        stream = gen.media_streams.get(stream_id)
        if stream is None:
            stream = gen.media_streams[stream_id] = MediaStream(id=stream_id)
        return stream

    def _sync_remote_tracks(self, gen: _Generation) -> None:
        """Reconcile remote tracks with the remote description just applied: an m-section the
        remote now sends on gives a track event, one it stopped sending on ends its track."""
        remote = gen.pc.remoteDescription
        if remote is None:
            return
        info = parse_sdp(remote.sdp)
        added: list[_RemoteTrack] = []
        ended: list[_RemoteTrack] = []
        for t in gen.pc.getTransceivers():
            if t.mid is None:
                continue
            section = info.section(t.mid)
            if section is None or section.kind not in ("audio", "video"):
                continue
            rec = gen.remote.get(t)
            if not section.sends:
                if rec is not None and rec.active:
                    rec.active = False
                    ended.append(rec)
                continue
            if rec is not None and rec.active:
                if (section.stream_id, section.track_id) == (rec.stream_id, rec.track_id):
                    continue
                rec.active = False  # same m-section, another track: end the old one
                ended.append(rec)
            source = t.receiver.track
            if source is None:
                continue
            track = ReceivedTrack(t.kind, section.track_id or source.id, section.stream_id,
                                  t.mid)
            rec = _RemoteTrack(track, t.kind, t.mid, section.stream_id, section.track_id)
            gen.remote[t] = rec
            added.append(rec)
            if t not in gen.pumps:
                gen.pumps[t] = self._spawn(self._pump(gen, t, source), "pump")
        self._adopt_orphan_metadata(info, added)
        self._announce_remote_changes(gen, added, ended)

    def _announce_remote_changes(self, gen: _Generation, added: list[_RemoteTrack],
                                 ended: list[_RemoteTrack]) -> None:
        removed_streams: list[str] = []
        for rec in ended:
            rec.track._finish()
            sid = rec.stream_id
            if sid is not None and sid in gen.media_streams:
                gen.media_streams[sid].remove_track(rec.track)
            members = gen.streams.get(sid) if sid is not None else None
            if sid is not None and members is not None:
                members.discard(rec)
                if not members:
                    del gen.streams[sid]
                    removed_streams.append(sid)
        for rec in added:
            if rec.stream_id is not None:
                self._media_stream(gen, rec.stream_id).add_track(rec.track)
            self._emit(self._track_event(gen, rec))
        new_streams: dict[str, list[_RemoteTrack]] = {}
        for rec in added:
            if rec.stream_id is None:
                continue
            members = gen.streams.get(rec.stream_id)
            if members is not None:
                members.add(rec)
            else:
                new_streams.setdefault(rec.stream_id, []).append(rec)
        for stream_id in removed_streams:
            if stream_id not in new_streams:
                gone = gen.media_streams.pop(stream_id, None) or MediaStream(id=stream_id)
                self._emit(RemoteStreamRemovedEvent(gone))
        for stream_id, recs in new_streams.items():
            gen.streams[stream_id] = set(recs)
            if stream_id in removed_streams:
                continue  # the stream lives on with a new track (no removed/added pair)
            metadata = next((m for m in map(self._lookup_metadata, recs) if m is not None),
                            None)
            self._emit(RemoteStreamAddedEvent(self._media_stream(gen, stream_id), metadata))

    async def _pump(self, gen: _Generation, t: RTCRtpTransceiver,
                    source: MediaStreamTrack) -> None:
        """Move decoded frames from aiortc's receiver track to the current ReceivedTrack."""
        while True:
            try:
                frame = await source.recv()
            except MediaStreamError:
                break
            rec = gen.remote.get(t)
            if rec is not None and rec.active:
                rec.track._push(frame)
        rec = gen.remote.get(t)
        if rec is not None and rec.active:
            rec.active = False
            rec.track._finish()

    # -- shutdown ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection (bounded by ``close_timeout``) and stop everything.
        Idempotent. Remote tracks end; ``state-change`` to ``closed`` fires once."""
        if self._closed:
            return
        self._set_state(PeerState.CLOSED)
        self._closed = True
        gen = self._gen
        self._cancel_answer_timer(gen)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for entry in self._local.values():
            retire_proxy(entry.proxy)
            entry.proxy = None
        self._end_generation(gen)
        self._inbox.clear()
        self._outbox.clear()
        try:
            await asyncio.wait_for(asyncio.shield(gen.pc.close()), self.timings.close_timeout)
        except TimeoutError:
            self._log.warning("closing the connection to %s timed out", self.remote_id)
        except Exception as exc:
            self._log.debug("closing the connection failed: %r", exc)
        if self._closing_pcs:
            await asyncio.wait(list(self._closing_pcs), timeout=self.timings.close_timeout)
        self._listeners.clear()
