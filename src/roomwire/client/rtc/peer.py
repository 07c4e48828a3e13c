"""``MeteredPeer``: one signalling connection, one channel, one WebRTC session per remote peer.

The official MeteredPeer API (Metered's JS SDK) the Pythonic way, on asyncio and aiortc. See
``docs/sdk-peer.md`` for the guide. In short::

    async with MeteredPeer(token_provider=mint, url="wss://rt.example.com") as peer:
        peer.on("peer-joined", lambda ev: ev.peer.on("track", on_track))
        peer.add_stream(MediaStream([mic, cam]), {"role": "camera"})
        await peer.join("room-42")
        await peer.send({"text": "hi"})

State machine (every transition emits ``state-change``)::

    idle -> joining -> joined <-> reconnecting
    joining -> idle            (join failed; join may be retried)
    joining/joined/reconnecting -> leaving -> closed   (close())
    idle -> closed             (close() from idle; ``left`` fires as well)
    joining/joined/reconnecting -> closed   (the signalling link gave up: one ``error``)

``left`` fires exactly once, whichever way ``closed`` is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from ...extras import missing_extra

try:
    from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection
except ImportError as exc:  # the optional WebRTC stack is not installed
    raise missing_extra("webrtc", exc) from exc

from ...protocol import FATAL_UNCORRELATED_ERRORS, ErrorCode, ProtocolViolation, limits
from ...protocol.frames import data_size
from ...protocol.validate import validate_channel, validate_peer_id
from ..emitter import EventEmitter, Observable
from ..log import ClientLogger, LoggerLike
from ..signalling.client import SignallingClient, TokenProvider
from ..signalling.errors import (
    AckTimeoutError,
    DisconnectedError,
    InvalidChannelError,
    InvalidDataError,
    InvalidPeerIdError,
    NotConnectedError,
    OversizedError,
    ReservedChannelError,
    ServerRequestError,
)
from ..signalling.events import (
    ConnectedEvent,
    DirectEvent,
    DisconnectedEvent,
    MessageEvent,
    PresenceEntry,
    PresenceEvent,
    ResubscribedEvent,
    ServerErrorEvent,
    TokenProviderErrorEvent,
)
from ..signalling.options import ReconnectOptions
from ..signalling.transport import WebSocketFactory
from ..signalling.url import DEFAULT_URL
from .errors import (
    MeteredPeerBufferFullError,
    MeteredPeerClosedError,
    MeteredPeerFatalError,
    MeteredPeerOversizedError,
    MeteredPeerReplaceTrackError,
    MeteredPeerSendError,
    MeteredPeerStateError,
    ReplaceTrackFailure,
)
from .events import (
    PEER_EVENT_TYPES,
    DataEvent,
    ErrorEvent,
    JoinedEvent,
    LeftEvent,
    MediaStream,
    PeerEventKey,
    PeerJoinedEvent,
    PeerLeftEvent,
    PeerStateEvent,
    RecoveryEvent,
)
from .ice_refresh import refresh_delay
from .loopback import (
    IceTransportPolicy,
    LoopbackMode,
    disable_loopback_candidates,
    enable_loopback_candidates,
)
from .negotiation import NegotiationTimings, PeerNegotiator, SignallingUnavailableError
from .remote_peer import RemotePeer
from .roster import (
    DeadlineAction,
    JoinAction,
    SwapAction,
    on_deadline,
    on_presence_joined,
    plan_reconcile,
    swap_action,
)
from .signals import build_track_meta, has_reserved_key

__all__ = ["DEFAULT_URL", "MAX_PEERS", "MeteredPeer", "MeteredPeerState", "StreamMetadata"]

MAX_PEERS = 256
"""Remote peers kept per channel; presence beyond this is ignored (with a warning)."""
RECONCILE_DEADLINE = 10.0
MAX_RECONCILE_RESUBSCRIBES = 2
SEND_BUFFER_CAP = 256
REJOIN_GRACE = 5.0
"""Seconds a peer missing from the roster after our reconnect is kept (it may be
reconnecting as well) before ``peer-left``."""
_DRAIN = 1.0

StreamMetadata = dict[str, Any]
"""``{"role": "camera" | "screen" | ..., "label": "front cam", ...}``: convention only,
sender-stamped, not signed: use it for UI hints."""

PeerConnectionFactory = Callable[[RTCConfiguration], RTCPeerConnection]



class MeteredPeerState(StrEnum):
    IDLE = "idle"
    JOINING = "joining"
    JOINED = "joined"
    RECONNECTING = "reconnecting"
    LEAVING = "leaving"
    CLOSED = "closed"


_S = MeteredPeerState
_TRANSITIONS: dict[MeteredPeerState, frozenset[MeteredPeerState]] = {
    _S.IDLE: frozenset({_S.JOINING, _S.CLOSED}),
    _S.JOINING: frozenset({_S.JOINED, _S.IDLE, _S.LEAVING, _S.CLOSED}),
    _S.JOINED: frozenset({_S.RECONNECTING, _S.LEAVING, _S.CLOSED}),
    _S.RECONNECTING: frozenset({_S.JOINED, _S.LEAVING, _S.CLOSED}),
    _S.LEAVING: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset(),
}


@dataclass(eq=False)
class _Tracked:
    track: MediaStreamTrack
    stream: MediaStream | None
    metadata: StreamMetadata | None


@dataclass(eq=False)
class _Pending:
    kind: Literal["broadcast", "direct"]
    target: str | None
    data: Any
    future: asyncio.Future[None]


@dataclass(eq=False)
class _Missing:
    """A known peer absent from the roster after our reconnect: it may be reconnecting too
    (a server restart drops everyone). Kept for a grace period before ``peer-left``."""

    remote: RemotePeer
    dropped_at: float
    timer: asyncio.TimerHandle | None = None


@dataclass
class _Reconnect:
    """State of one reconnect cycle (from the drop to ``joined``)."""

    dropped_at: float
    awaiting_snapshot: bool = True
    resubscribes: int = 0
    deadline: asyncio.TimerHandle | None = None
    swaps: set[asyncio.Task[Any]] = field(default_factory=set)


class MeteredPeer(Observable[PeerEventKey]):
    """A peer in one channel: presence, server-routed data, and WebRTC media/data to every
    other peer. Exactly one credential: ``api_key`` or ``token_provider``.

    Options (seconds, not milliseconds): ``url`` (default ``wss://rms.metered.ca``; ``/v1`` is
    appended), ``logger`` (a ``logging.Logger``), ``reconnect`` (True, False or
    ``ReconnectOptions``), ``inactivity_timeout``, ``token_provider_timeout``,
    ``auto_resubscribe``, ``rtc_peer_connection_factory`` (``RTCConfiguration ->
    RTCPeerConnection``), ``web_socket_factory``, ``ice_servers`` (overrides the welcome's
    ``iceServers``), ``ice_transport_policy`` (``"all"``, or ``"relay"``: TURN relay candidates
    only, for networks that must not see the peers' addresses), ``refresh_ice_servers`` (True:
    fetch fresh TURN credentials from a roomwire server before the welcome's expire, for the
    connections rebuilt late in a long session), ``loopback_candidates`` (local development:
    make aioice offer 127.0.0.1, see ``roomwire.client.rtc.loopback``), ``send_buffer_size``
    (sends kept while reconnecting), ``reconcile_timeout`` (seconds to wait for the roster after
    a reconnect, twice re-subscribing, before giving up), ``rejoin_grace`` (how long a peer
    missing from that roster may take to come back as the same ``RemotePeer``) and ``timings``
    (engine delays), ``recover`` (True: broadcasts missed during a reconnect are replayed by a
    roomwire server that keeps history for the channel, reported by the ``recovery`` event).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        token_provider: TokenProvider | None = None,
        url: str = DEFAULT_URL,
        logger: LoggerLike | None = None,
        reconnect: bool | ReconnectOptions = True,
        inactivity_timeout: float = limits.INACTIVITY_TIMEOUT,
        token_provider_timeout: float = limits.TOKEN_PROVIDER_TIMEOUT,
        auto_resubscribe: bool = True,
        rtc_peer_connection_factory: PeerConnectionFactory | None = None,
        web_socket_factory: WebSocketFactory | None = None,
        ice_servers: Sequence[RTCIceServer | Mapping[str, Any]] | None = None,
        ice_transport_policy: IceTransportPolicy = "all",
        refresh_ice_servers: bool = True,
        loopback_candidates: bool | LoopbackMode = False,
        send_buffer_size: int = SEND_BUFFER_CAP,
        reconcile_timeout: float = RECONCILE_DEADLINE,
        rejoin_grace: float = REJOIN_GRACE,
        timings: NegotiationTimings | None = None,
        recover: bool = True,
    ) -> None:
        self._client = SignallingClient(
            url=url, api_key=api_key, token_provider=token_provider, logger=logger,
            reconnect=reconnect, inactivity_timeout=inactivity_timeout,
            token_provider_timeout=token_provider_timeout,
            auto_resubscribe=auto_resubscribe,
            web_socket_factory=web_socket_factory, recover=recover,
        )
        self._auto_resubscribe = bool(auto_resubscribe)
        self._std_log: logging.Logger | logging.LoggerAdapter[Any] = (
            logger if logger is not None else logging.getLogger("roomwire.client.peer"))
        self._log = ClientLogger(self._std_log, self._client._secrets)
        self._pc_factory = rtc_peer_connection_factory
        self._ice_override = list(ice_servers) if ice_servers is not None else None
        if ice_transport_policy not in ("all", "relay"):
            raise ValueError("ice_transport_policy must be 'all' or 'relay'")
        self._ice_policy: IceTransportPolicy = ice_transport_policy
        self._ice_refresh = bool(refresh_ice_servers) and ice_servers is None
        self._ice_timer: asyncio.TimerHandle | None = None
        self._clock_skew = 0.0
        """The server's clock minus ours, from the last welcome (TURN expiries are the
        server's times)."""
        if loopback_candidates is True:
            self._loopback: LoopbackMode | None = "fallback"
        elif loopback_candidates is False:
            self._loopback = None
        elif loopback_candidates in ("fallback", "add", "only"):
            self._loopback = loopback_candidates
        else:
            raise ValueError("loopback_candidates must be a bool or 'fallback'/'add'/'only'")
        self._loopback_on = False
        if send_buffer_size < 0:
            raise ValueError("send_buffer_size must be >= 0")
        self._buffer_cap = send_buffer_size
        self._reconcile_timeout = reconcile_timeout
        self._rejoin_grace = rejoin_grace
        self._missing: dict[str, _Missing] = {}
        self._timings = timings
        self._emitter = EventEmitter(self._log, PEER_EVENT_TYPES)
        self._state = _S.IDLE
        self._channel: str | None = None
        self._include_sender_metadata = False
        self._peers: dict[str, RemotePeer] = {}
        self._tracks: dict[MediaStreamTrack, _Tracked] = {}
        self._buffer: deque[_Pending] = deque()
        self._flushing: asyncio.Task[None] | None = None
        self._reconnect: _Reconnect | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._token_error_sent = False
        self._left_sent = False
        self._close_done: asyncio.Event | None = None
        c = self._client
        c.on(ConnectedEvent, self._on_connected)
        c.on(DisconnectedEvent, self._on_disconnected)
        c.on(PresenceEvent, self._on_presence)
        c.on(MessageEvent, self._on_message)
        c.on(ResubscribedEvent, self._on_resubscribed)
        c.on(DirectEvent, self._on_direct)
        c.on(ServerErrorEvent, self._on_server_error)
        c.on(TokenProviderErrorEvent, self._on_token_error)

    # -- read-only state ---------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``idle``, ``joining``, ``joined``, ``reconnecting``, ``leaving`` or ``closed``."""
        return self._state.value

    @property
    def peer_id(self) -> str | None:
        """Our peer id (None until the first welcome; with a publishable key it changes on
        every reconnect)."""
        return self._client.peer_id if self._state is not _S.CLOSED else self._last_peer_id

    _last_peer_id: str | None = None

    @property
    def channel(self) -> str | None:
        """The joined channel (None until ``join`` starts, and after close)."""
        return self._channel

    @property
    def remote_peers(self) -> list[RemotePeer]:
        """A snapshot of the remote peers."""
        return list(self._peers.values())

    @property
    def signalling(self) -> SignallingClient:
        """The underlying ``SignallingClient`` (its events, e.g. ``going-away``)."""
        return self._client

    def get_remote_peer(self, peer_id: str) -> RemotePeer | None:
        return self._peers.get(peer_id)

    def __repr__(self) -> str:
        return (f"MeteredPeer(state={self.state!r}, peer_id={self.peer_id!r}, "
                f"channel={self._channel!r})")

    # -- events: on/once/off come from Observable ----------------------------------------------

    def _current(self) -> MeteredPeerState:
        return self._state  # a call: the state may change across an await

    def _set_state(self, new: MeteredPeerState) -> None:
        old = self._state
        if new is old:
            return
        if new not in _TRANSITIONS[old]:
            raise RuntimeError(f"illegal MeteredPeer transition {old} -> {new}")
        self._state = new
        self._emitter.emit(PeerStateEvent(old.value, new.value))

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            self._log.exception("background task %s failed", exc, task.get_name())

    # -- join / close ------------------------------------------------------------------------

    async def join(self, channel: str, include_sender_metadata: bool = False) -> None:
        """Connect (if needed) and subscribe to ``channel``; returns once the server acked.
        Peers already in the channel arrive afterwards as ``peer-joined`` events.

        Raises ``MeteredPeerStateError`` (``invalid_state``) unless ``idle``,
        ``MeteredPeerSendError`` (``reserved_channel`` / ``invalid_args``) for a bad channel,
        and the signalling errors of a failed connect or subscribe (the peer goes back to
        ``idle``: join may be retried) or ``MeteredPeerClosedError`` if closed meanwhile."""
        if self._state is not _S.IDLE:
            raise MeteredPeerStateError("invalid_state", "join", self._state.value)
        try:
            channel = validate_channel(channel)
        except ProtocolViolation as exc:
            code = ("reserved_channel" if exc.code == ErrorCode.CHANNEL_RESERVED
                    else "invalid_args")
            raise MeteredPeerSendError(code, exc.message) from None
        self._channel = channel
        self._include_sender_metadata = bool(include_sender_metadata)
        self._set_state(_S.JOINING)
        if self._loopback is not None and not self._loopback_on:
            enable_loopback_candidates(self._loopback)
            self._loopback_on = True
        try:
            if self._client.state in ("idle", "closed"):
                await self._client.connect()
            await self._client.subscribe(channel, self._include_sender_metadata)
        except BaseException as exc:
            if self._current() in (_S.LEAVING, _S.CLOSED):
                raise MeteredPeerClosedError("the peer was closed during join()") from None
            if self._current() is _S.JOINING:
                await self._abort_join()
            if isinstance(exc, InvalidChannelError | ReservedChannelError):
                raise MeteredPeerSendError("invalid_args", exc.message) from None
            raise
        if self._current() is not _S.JOINING:
            raise MeteredPeerClosedError("the peer was closed during join()")
        self._set_state(_S.JOINED)
        peer_id = self._client.peer_id
        assert peer_id is not None
        self._emitter.emit(JoinedEvent(peer_id, channel))

    async def _abort_join(self) -> None:
        with contextlib.suppress(Exception):
            if self._client.state == "connected":
                await self._client.unsubscribe(self._channel or "")
        for remote in list(self._peers.values()):
            self._drop_peer(remote, announce=False)
        self._channel = None
        if self._state is _S.JOINING:
            self._set_state(_S.IDLE)

    async def close(self, reason: str | None = None) -> None:
        """Close every remote peer and the socket; end in ``closed`` (terminal: build a new
        MeteredPeer to join again). Idempotent. ``left`` fires exactly once, also when
        closing from ``idle``. Buffered sends fail with ``MeteredPeerClosedError``."""
        if self._state is _S.CLOSED:
            return
        if self._state is _S.LEAVING:
            done = self._close_done
            current = asyncio.current_task()
            if done is not None and current not in self._tasks:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 5.0)
            return
        self._close_done = asyncio.Event()
        self._last_peer_id = self._client.peer_id
        channel = self._channel
        if self._state is not _S.IDLE:
            self._set_state(_S.LEAVING)
        try:
            await self._teardown(reason or "client closed")
        finally:
            self._finish(channel, reason)
        await self._emitter.drain(_DRAIN)

    async def _teardown(self, reason: str) -> None:
        self._cancel_reconnect()
        self._cancel_ice_refresh()
        for missing in self._missing.values():
            if missing.timer is not None:
                missing.timer.cancel()
        self._missing.clear()
        self._fail_buffer(MeteredPeerClosedError(f"the peer closed ({reason})"))
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        remotes = list(self._peers.values())
        self._peers.clear()
        for remote in remotes:
            remote._mark_closed()
        closers = [r._close() for r in remotes]
        if closers:
            await asyncio.gather(*closers, return_exceptions=True)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=3.0)
        if self._client.state != "idle":
            await self._client.close(reason="client closed")
        self._tracks.clear()
        for remote in remotes:
            await remote._drain(0.5)

    def _finish(self, channel: str | None, reason: str | None) -> None:
        if self._state is not _S.CLOSED:
            self._set_state(_S.CLOSED)
        self._channel = None
        if self._loopback_on:
            self._loopback_on = False
            disable_loopback_candidates()
        if not self._left_sent:
            self._left_sent = True
            self._emitter.emit(LeftEvent(self._last_peer_id, channel, reason))
        if self._close_done is not None:
            self._close_done.set()

    async def _terminate(self, err: MeteredPeerFatalError | None, reason: str) -> None:
        """The signalling link is gone for good (or a reconcile never finished): one
        ``error`` (if any), then closed and one ``left``. No ``leaving`` state."""
        if self._state in (_S.LEAVING, _S.CLOSED):
            return
        self._close_done = asyncio.Event()
        self._last_peer_id = self._client.peer_id
        channel = self._channel
        if err is not None:
            self._emitter.emit(ErrorEvent(err))
        if self._state is _S.IDLE:
            # A failed join left the client connected: it gave up; nothing else to end.
            return
        self._set_state(_S.CLOSED)
        self._left_sent = True  # left fires as the state reaches closed
        self._emitter.emit(LeftEvent(self._last_peer_id, channel, reason))
        try:
            await self._teardown(reason)
        finally:
            self._finish(channel, reason)

    async def __aenter__(self) -> MeteredPeer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- sending -----------------------------------------------------------------------------

    def _check_payload(self, data: Any) -> None:
        try:
            size = data_size(data)
        except (TypeError, ValueError) as exc:
            raise MeteredPeerSendError("invalid_args",
                                       f"data cannot be sent as JSON: {exc}") from None
        cap = self._client.max_message_size
        if size > cap:
            raise MeteredPeerOversizedError(size, cap)

    async def send(self, data: Any) -> None:
        """Broadcast ``data`` (any JSON value) to every peer of the channel (server-routed).
        While ``reconnecting`` it is buffered and sent after the reconcile (this call waits
        for that). Raises ``MeteredPeerSendError`` (``not_joined``, ``invalid_args``),
        ``MeteredPeerOversizedError``, ``MeteredPeerBufferFullError``,
        ``MeteredPeerClosedError`` (closed before a buffered send went out) and the server's
        refusal (``ServerRequestError``)."""
        self._check_payload(data)
        await self._dispatch("broadcast", None, data)

    async def send_to(self, peer_id: str, data: Any) -> None:
        """Send ``data`` to one peer (server-routed); same gates and buffering as ``send``,
        plus ``self_send`` and ``invalid_args`` for a malformed peer id."""
        if not isinstance(peer_id, str):
            raise MeteredPeerSendError("invalid_args", "peer_id must be a string")
        try:
            validate_peer_id(peer_id)
        except ProtocolViolation as exc:
            raise MeteredPeerSendError("invalid_args", exc.message) from None
        if peer_id == self._client.peer_id:
            raise MeteredPeerSendError("self_send", "cannot send_to() yourself")
        self._check_payload(data)
        if has_reserved_key(data):
            self._log.warning("send_to(): the payload uses the reserved key "
                              "'__meteredTrackMeta'; the receiver will treat it as track "
                              "metadata")
        await self._dispatch("direct", peer_id, data)

    async def _dispatch(self, kind: Literal["broadcast", "direct"], target: str | None,
                        data: Any) -> None:
        if self._state is _S.RECONNECTING or (
                self._state is _S.JOINED and (self._buffer or self._flushing is not None)):
            if len(self._buffer) >= self._buffer_cap:
                raise MeteredPeerBufferFullError(self._buffer_cap)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._buffer.append(_Pending(kind, target, data, fut))
            if self._state is _S.JOINED:
                self._start_flush()
            await fut
            return
        if self._state is not _S.JOINED:
            raise MeteredPeerSendError("not_joined",
                                       f"not joined (the peer is {self._state.value})")
        await self._wire_send(kind, target, data)

    async def _wire_send(self, kind: str, target: str | None, data: Any) -> None:
        try:
            if kind == "broadcast":
                assert self._channel is not None
                await self._client.publish(self._channel, data)
            else:
                assert target is not None
                await self._client.send(target, data)
        except OversizedError as exc:
            raise MeteredPeerOversizedError(exc.size, exc.cap) from None
        except (InvalidPeerIdError, InvalidDataError) as exc:
            raise MeteredPeerSendError("invalid_args", exc.message) from None

    def _start_flush(self) -> None:
        if self._flushing is None and self._buffer and self._state is _S.JOINED:
            self._flushing = self._spawn(self._flush(), "flush-sends")

    async def _flush(self) -> None:
        try:
            while self._buffer and self._state is _S.JOINED:
                if self._missing:
                    break  # peers may still be coming back from a reconnect: wait for them
                item = self._buffer[0]
                try:
                    await self._wire_send(item.kind, item.target, item.data)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self._state is not _S.JOINED:
                        break  # dropped again: keep it for the next flush
                    self._buffer.popleft()
                    if not item.future.done():
                        item.future.set_exception(exc)
                    continue
                self._buffer.popleft()
                if not item.future.done():
                    item.future.set_result(None)
        finally:
            self._flushing = None

    def _fail_buffer(self, exc: BaseException) -> None:
        pending, self._buffer = self._buffer, deque()
        for item in pending:
            if not item.future.done():
                item.future.set_exception(exc)
                item.future.exception()  # mark retrieved: the caller may have gone

    # -- local media -------------------------------------------------------------------------

    def _check_media_state(self, method: str) -> None:
        if self._state in (_S.LEAVING, _S.CLOSED):
            raise MeteredPeerStateError("invalid_state", method, self._state.value)

    def _fan_out_now(self) -> bool:
        return self._state is not _S.RECONNECTING

    def add_stream(self, stream: MediaStream, metadata: StreamMetadata | None = None) -> None:
        """Send every track of ``stream`` to every current and future peer, labelled with
        ``metadata`` (shallow-copied per track). Per-track idempotent. All-or-nothing: a
        track attached with another stream raises before anything is added."""
        self._check_media_state("add_stream")
        for track in stream.get_tracks():
            existing = self._tracks.get(track)
            if existing is not None and existing.stream is not stream:
                raise MeteredPeerStateError("track_already_attached", "add_stream", None)
        for track in stream.get_tracks():
            self.add_track(track, stream, metadata)

    def add_track(self, track: MediaStreamTrack, stream: MediaStream | None = None,
                  metadata: StreamMetadata | None = None) -> None:
        """Send ``track`` (in ``stream``, if given) to every current and future peer. Its
        metadata travels before the offer. Idempotent for the same track and stream (the
        first metadata wins); another stream raises ``track_already_attached``. While
        ``reconnecting`` the track is tracked and attached by the reconcile."""
        self._check_media_state("add_track")
        if not isinstance(track, MediaStreamTrack) or track.kind not in ("audio", "video"):
            raise TypeError("add_track() needs an audio or video MediaStreamTrack")
        existing = self._tracks.get(track)
        if existing is not None:
            if existing.stream is not stream:
                raise MeteredPeerStateError("track_already_attached", "add_track", None)
            return
        meta = dict(metadata) if metadata is not None else None
        if meta is not None:
            try:
                size = data_size(build_track_meta(track.id, meta, kind=track.kind,
                                                  stream_id=stream.id if stream else None))
            except (TypeError, ValueError) as exc:
                raise MeteredPeerSendError("invalid_args",
                                           f"metadata cannot be sent as JSON: {exc}") from None
            cap = self._client.max_message_size
            if size > cap:
                raise MeteredPeerOversizedError(size, cap, "track metadata")
        self._tracks[track] = _Tracked(track, stream, meta)
        if self._fan_out_now():
            for remote in list(self._peers.values()):
                self._attach(remote, self._tracks[track])

    def _attach(self, remote: RemotePeer, entry: _Tracked) -> None:
        neg = remote.negotiator
        if neg.closed or entry.track in neg.local_tracks:
            return
        try:
            neg.add_track(entry.track, entry.stream.id if entry.stream else None,
                          entry.metadata)
        except Exception as exc:
            self._log.warning("attaching a track to %s failed: %s", remote.id, exc)

    def remove_stream(self, stream: MediaStream) -> None:
        """Stop sending the stream's tracks (to everyone, and to future peers). Does not stop
        the tracks themselves."""
        self._check_media_state("remove_stream")
        for track in stream.get_tracks():
            entry = self._tracks.get(track)
            if entry is not None and entry.stream is stream:
                self.remove_track(track)

    def remove_track(self, track: MediaStreamTrack) -> None:
        """Stop sending ``track``; remotes see it end (and ``stream-removed`` when it was the
        last of its stream). No-op if not tracked. Does not stop the track."""
        self._check_media_state("remove_track")
        if self._tracks.pop(track, None) is None:
            return
        if self._fan_out_now():
            for remote in list(self._peers.values()):
                if not remote.negotiator.closed:
                    remote.negotiator.remove_track(track)

    def get_stream_metadata(self, stream: MediaStream) -> StreamMetadata | None:
        """The metadata given with a local stream (None if not added, or added without)."""
        for entry in self._tracks.values():
            if entry.stream is stream:
                return entry.metadata
        return None

    def get_track_metadata(self, track: MediaStreamTrack) -> StreamMetadata | None:
        entry = self._tracks.get(track)
        return entry.metadata if entry is not None else None

    @property
    def local_tracks(self) -> list[MediaStreamTrack]:
        return list(self._tracks)

    async def replace_track(self, old: MediaStreamTrack, new: MediaStreamTrack | None) -> None:
        """Swap what every peer receives for ``old`` without renegotiating (same kind).
        ``new=None`` silences the sender and forgets the track. The tracking map follows
        when at least one peer succeeded, or when there are no peers; raises
        ``MeteredPeerReplaceTrackError`` (``succeeded``, ``failed``) otherwise.
        ``MeteredPeerStateError`` while ``reconnecting``, ``leaving`` or ``closed``."""
        if self._state in (_S.RECONNECTING, _S.LEAVING, _S.CLOSED):
            raise MeteredPeerStateError("invalid_state", "replace_track", self._state.value)
        if old is None:
            raise TypeError("old must be a track (use new=None to silence it)")
        entry = self._tracks.get(old)
        if entry is None:
            raise ValueError("replace_track(): old is not an added track")
        if new is not None:
            if new.kind != old.kind:
                raise ValueError("replace_track() cannot change the kind of a track")
            if new is not old and new in self._tracks:
                raise MeteredPeerStateError("track_already_attached", "replace_track", None)
        if new is old:
            return
        succeeded: list[str] = []
        failed: list[ReplaceTrackFailure] = []
        for remote in list(self._peers.values()):
            neg = remote.negotiator
            if neg.closed or old not in neg.local_tracks:
                continue
            try:
                await neg.replace_track(old, new)
            except Exception as exc:
                failed.append(ReplaceTrackFailure(remote.id, exc))
            else:
                succeeded.append(remote.id)
        if succeeded or not failed:
            self._tracks.pop(old, None)
            if new is not None:
                self._tracks[new] = _Tracked(new, entry.stream, entry.metadata)
                if entry.stream is not None:
                    entry.stream.remove_track(old)
                    entry.stream.add_track(new)
        if failed:
            raise MeteredPeerReplaceTrackError(tuple(succeeded), tuple(failed))

    # -- remote peers ------------------------------------------------------------------------

    def _ice_servers(self) -> list[RTCIceServer | Mapping[str, Any]]:
        if self._ice_override is not None:
            return list(self._ice_override)
        return list(self._client.ice_servers or ())

    def _add_peer(self, entry: PresenceEntry) -> RemotePeer | None:
        me = self._client.peer_id
        if entry.peer_id == me or entry.peer_id in self._peers or me is None:
            return None
        if len(self._peers) >= MAX_PEERS:
            self._log.warning("peer cap (%d) reached; ignoring %s", MAX_PEERS, entry.peer_id)
            return None
        remote_id = entry.peer_id

        async def send_signal(data: dict[str, Any]) -> None:
            try:
                await self._client.send(remote_id, data)
            except (NotConnectedError, DisconnectedError) as exc:
                if self._state in (_S.JOINED, _S.RECONNECTING) and self._client.state in (
                        "connecting", "reconnecting"):
                    # The link is down but coming back: the engine holds the signal until
                    # the reconcile resumes it (or replaces the connection).
                    raise SignallingUnavailableError(str(exc)) from exc
                raise

        neg = PeerNegotiator(me, remote_id, send_signal, ice_servers=self._ice_servers(),
                             ice_transport_policy=self._ice_policy,
                             pc_factory=self._pc_factory, timings=self._timings,
                             logger=self._std_log)
        remote = RemotePeer(self.send_to, remote_id, entry.metadata, neg, self._log)
        self._peers[remote_id] = remote
        if self._fan_out_now():
            for tracked in list(self._tracks.values()):
                self._attach(remote, tracked)
        self._emitter.emit(PeerJoinedEvent(remote))
        return remote

    def _drop_peer(self, remote: RemotePeer, *, announce: bool = True) -> None:
        missing = self._missing.get(remote.id)
        if missing is not None and missing.remote is remote:
            del self._missing[remote.id]
            if missing.timer is not None:
                missing.timer.cancel()
            self._start_flush()
        if self._peers.get(remote.id) is remote:
            del self._peers[remote.id]
        remote._mark_closed()
        task = asyncio.get_running_loop().create_task(remote._close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        if announce:
            self._emitter.emit(PeerLeftEvent(remote))

    # -- signalling events -------------------------------------------------------------------

    def _on_connected(self, ev: ConnectedEvent) -> None:
        self._token_error_sent = False
        self._clock_skew = ev.server_time - time.time()
        self._ice_servers_changed()
        if not ev.is_reconnect or self._state is not _S.RECONNECTING:
            return
        rc = self._reconnect
        if rc is None:
            return
        self._arm_deadline(rc)
        if not self._auto_resubscribe and self._channel is not None:
            self._spawn(self._resubscribe(), "resubscribe")

    # -- ICE servers -------------------------------------------------------------------------

    def _ice_servers_changed(self) -> None:
        """A welcome or a refresh brought ICE servers: every engine builds its next connection
        with them (live connections keep theirs), and the next refresh is scheduled."""
        servers = self._ice_servers()
        for remote in self._peers.values():
            remote.negotiator.set_ice_servers(servers)
        self._cancel_ice_refresh()
        if not self._ice_refresh or self._state is _S.CLOSED:
            return
        delay = refresh_delay(self._client.ice_servers, time.time() + self._clock_skew)
        if delay is None:
            return
        self._ice_timer = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._refresh_ice_servers(), "ice-refresh"))

    def _cancel_ice_refresh(self) -> None:
        if self._ice_timer is not None:
            self._ice_timer.cancel()
            self._ice_timer = None

    async def _refresh_ice_servers(self) -> None:
        self._ice_timer = None
        if self._client.state != "connected":
            return  # the next welcome brings fresh servers and schedules again
        try:
            servers = await self._client.fetch_ice_servers()
        except ServerRequestError as exc:
            if exc.code == ErrorCode.UNKNOWN_TYPE:
                self._log.info("the server cannot refresh ICE servers; TURN credentials are "
                               "renewed by reconnects only")
                self._ice_refresh = False
                return
            self._log.warning("refreshing ICE servers failed: %s", exc)
        except (NotConnectedError, DisconnectedError):
            return
        except AckTimeoutError as exc:
            self._log.warning("refreshing ICE servers failed: %s", exc)
        else:
            if servers is None:
                self._log.debug("the server had no ICE servers to refresh")
                return
        self._ice_servers_changed()

    async def _resubscribe(self) -> None:
        if self._channel is None:
            return
        try:
            await self._client.subscribe(self._channel, self._include_sender_metadata)
        except Exception as exc:
            self._log.warning("re-subscribing after a reconnect failed: %s", exc)

    def _on_disconnected(self, ev: DisconnectedEvent) -> None:
        if ev.will_reconnect:
            if self._state in (_S.JOINED, _S.RECONNECTING):
                for remote in self._peers.values():
                    remote.negotiator.hold_reconnecting()
                rc = self._reconnect
                if rc is None:
                    self._reconnect = _Reconnect(time.monotonic())
                else:  # a drop in the middle of a reconcile: wait for a new snapshot
                    self._cancel_deadline(rc)
                    rc.awaiting_snapshot = True
                    rc.resubscribes = 0
                self._set_state(_S.RECONNECTING)
            return
        if self._state in (_S.LEAVING, _S.CLOSED) or ev.cause == "client_closed":
            return
        err = self._fatal_from_disconnect(ev)
        self._spawn(self._terminate(err, ev.reason or f"disconnected (code {ev.code})"),
                    "terminate")

    def _fatal_from_disconnect(self, ev: DisconnectedEvent) -> MeteredPeerFatalError | None:
        cause = ev.cause or "disconnected"
        if cause == "token_provider_failed":
            if self._token_error_sent:
                return None
            return MeteredPeerFatalError("TokenProviderError", ev.reason, close_code=ev.code)
        if cause == "reconnect_exhausted" and ev.code == 4002:
            cause = "token_expired"
        return MeteredPeerFatalError(cause, f"{cause} (code {ev.code}): {ev.reason}",
                                     close_code=ev.code)

    def _on_token_error(self, ev: TokenProviderErrorEvent) -> None:
        if self._state in (_S.LEAVING, _S.CLOSED) or self._token_error_sent:
            return
        self._token_error_sent = True
        self._emitter.emit(ErrorEvent(MeteredPeerFatalError(
            "TokenProviderError",
            f"the token provider failed {ev.consecutive_failures} times: {ev.error.message}")))

    def _on_server_error(self, ev: ServerErrorEvent) -> None:
        if ev.code in FATAL_UNCORRELATED_ERRORS and self._state not in (_S.LEAVING, _S.CLOSED):
            self._emitter.emit(ErrorEvent(MeteredPeerFatalError(
                ev.code, f"server error {ev.code}: {ev.message or ''}".rstrip(": "))))

    def _known_sender(self, sender: str) -> RemotePeer | None:
        if self._state not in (_S.JOINING, _S.JOINED, _S.RECONNECTING):
            return None
        return self._peers.get(sender)

    def _on_message(self, ev: MessageEvent) -> None:
        if ev.channel != self._channel or ev.sender_peer_id == self._client.peer_id:
            return
        if self._known_sender(ev.sender_peer_id) is None:
            self._log.debug("dropped a broadcast from %s (not in presence)", ev.sender_peer_id)
            return
        self._emitter.emit(DataEvent(ev.sender_peer_id, ev.data, "broadcast",
                                     ev.sender_metadata))

    def _on_resubscribed(self, ev: ResubscribedEvent) -> None:
        if ev.channel == self._channel:
            self._emitter.emit(RecoveryEvent(ev.channel, ev.recovered))

    def _on_direct(self, ev: DirectEvent) -> None:
        remote = self._known_sender(ev.sender_peer_id)
        if remote is None:
            self._log.debug("dropped a direct message from %s (not in presence)",
                            ev.sender_peer_id)
            return
        if remote.negotiator.on_remote_signal(ev.data):
            return
        self._emitter.emit(DataEvent(ev.sender_peer_id, ev.data, "direct", ev.sender_metadata))

    def _on_presence(self, ev: PresenceEvent) -> None:
        if ev.channel != self._channel or self._state not in (
                _S.JOINING, _S.JOINED, _S.RECONNECTING):
            return
        rc = self._reconnect
        if self._state is _S.RECONNECTING and rc is not None and rc.awaiting_snapshot:
            if self._client.state != "connected":
                return  # a frame from before the drop; the snapshot comes after
            rc.awaiting_snapshot = False
            self._reconcile(rc, ev)
            return
        for left in ev.left:
            remote = self._peers.get(left.peer_id)
            if remote is not None:
                self._drop_peer(remote)
        for joined in ev.joined:
            existing = self._peers.get(joined.peer_id)
            missing = self._missing.pop(joined.peer_id, None)
            action = on_presence_joined(known=existing is not None, missing=missing is not None,
                                        reconnecting=self._state is _S.RECONNECTING)
            if action is JoinAction.ADD:
                self._add_peer(joined)
            elif existing is not None and missing is not None and action is JoinAction.REJOINED:
                if missing.timer is not None:
                    missing.timer.cancel()
                self._start_flush()
                existing._set_metadata(joined.metadata)
                self._spawn(self._swap(existing, missing.dropped_at), f"swap:{existing.id}")
            elif existing is not None and action is JoinAction.REFRESH:
                existing._set_metadata(joined.metadata)

    # -- reconnect reconcile -----------------------------------------------------------------

    def _arm_deadline(self, rc: _Reconnect) -> None:
        self._cancel_deadline(rc)
        rc.deadline = asyncio.get_running_loop().call_later(
            self._reconcile_timeout, self._on_deadline, rc)

    @staticmethod
    def _cancel_deadline(rc: _Reconnect) -> None:
        if rc.deadline is not None:
            rc.deadline.cancel()
            rc.deadline = None

    def _cancel_reconnect(self) -> None:
        rc, self._reconnect = self._reconnect, None
        if rc is not None:
            self._cancel_deadline(rc)
            for task in rc.swaps:
                task.cancel()

    def _on_deadline(self, rc: _Reconnect) -> None:
        rc.deadline = None
        action = on_deadline(
            current=self._reconnect is rc, reconnecting=self._state is _S.RECONNECTING,
            connected=self._client.state == "connected",
            awaiting_snapshot=rc.awaiting_snapshot, resubscribes=rc.resubscribes,
            max_resubscribes=MAX_RECONCILE_RESUBSCRIBES)
        if action in (DeadlineAction.IGNORE, DeadlineAction.WAIT):
            return
        if action is DeadlineAction.RESUBSCRIBE:
            rc.resubscribes += 1
            self._log.info("no roster after the reconnect; re-subscribing (%d/%d)",
                           rc.resubscribes, MAX_RECONCILE_RESUBSCRIBES)
            self._spawn(self._resubscribe(), "resubscribe")
            self._arm_deadline(rc)
            return
        if action is DeadlineAction.FAIL:
            err = MeteredPeerFatalError(
                "reconcile_timeout",
                f"no roster for the channel within {self._reconcile_timeout * 3:g} s "
                "after the reconnect")
            self._spawn(self._terminate(err, "reconcile timed out"), "terminate")
            return
        # The roster came but a connection swap hangs: finish without it.
        self._log.warning("reconcile swaps did not finish in time; going on")
        for task in rc.swaps:
            task.cancel()
        self._finish_reconcile(rc)

    def _reconcile(self, rc: _Reconnect, ev: PresenceEvent) -> None:
        roster = {e.peer_id: e for e in ev.joined}  # the last entry of a duplicated id wins
        plan = plan_reconcile(self._client.peer_id, self._peers, self._missing,
                              (e.peer_id for e in ev.joined))
        for pid in plan.missing:
            missing = _Missing(self._peers[pid], rc.dropped_at)
            missing.timer = asyncio.get_running_loop().call_later(
                self._rejoin_grace, self._missing_expired, missing)
            self._missing[pid] = missing
        survivors: list[RemotePeer] = []
        for pid in plan.survivors:
            known = self._peers[pid]
            known._set_metadata(roster[pid].metadata)
            survivors.append(known)
        for pid in plan.newcomers:
            self._add_peer(roster[pid])  # attached now (fan-out still deferred)
        self._arm_deadline(rc)
        for remote in survivors:
            task = self._spawn(self._swap(remote, rc.dropped_at), f"swap:{remote.id}")
            rc.swaps.add(task)
            task.add_done_callback(rc.swaps.discard)
        if plan.finished:
            self._finish_reconcile(rc)
        else:
            self._spawn(self._await_swaps(rc), "reconcile")

    def _missing_expired(self, missing: _Missing) -> None:
        missing.timer = None
        if self._missing.get(missing.remote.id) is missing:
            del self._missing[missing.remote.id]
            if self._peers.get(missing.remote.id) is missing.remote:
                self._drop_peer(missing.remote)
        self._start_flush()

    async def _swap(self, remote: RemotePeer, dropped_at: float) -> None:
        """Give a survivor a fresh connection: metadata first, then media, renegotiated."""
        neg = remote.negotiator
        action = swap_action(engine_closed=neg.closed,
                             live=self._state in (_S.RECONNECTING, _S.JOINED),
                             last_rebuild_at=neg.last_rebuild_at, dropped_at=dropped_at)
        if action is SwapAction.SKIP:
            return
        self._sync_local(remote)
        me = self._client.peer_id
        if action is SwapAction.KEEP:
            neg.announce_metadata()
            neg.resync_state()
            return
        try:
            await neg.reset(local_id=me, ice_servers=self._ice_servers())
        except Exception as exc:
            self._log.warning("reconnecting the media of %s failed: %s", remote.id, exc)
            with contextlib.suppress(Exception):
                neg.resync_state()

    def _sync_local(self, remote: RemotePeer) -> None:
        """Make the engine's local tracks match the tracking map (changes made while
        reconnecting)."""
        neg = remote.negotiator
        for track in neg.local_tracks:
            if track not in self._tracks:
                neg.remove_track(track)
        for entry in list(self._tracks.values()):
            self._attach(remote, entry)

    async def _await_swaps(self, rc: _Reconnect) -> None:
        while rc.swaps:
            await asyncio.wait(set(rc.swaps))
        if self._reconnect is rc and not rc.awaiting_snapshot:
            self._finish_reconcile(rc)

    def _finish_reconcile(self, rc: _Reconnect) -> None:
        if self._reconnect is not rc or self._state is not _S.RECONNECTING:
            return
        if self._client.state != "connected":
            return
        self._cancel_deadline(rc)
        self._reconnect = None
        for remote in self._peers.values():
            self._sync_local(remote)
        self._set_state(_S.JOINED)
        self._start_flush()

