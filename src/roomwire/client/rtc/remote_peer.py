"""``RemotePeer``: another peer of the channel, as a ``MeteredPeer`` sees it.

One object per remote peer for as long as it stays in the channel, across signalling
reconnects: the WebRTC session underneath (a ``PeerNegotiator``) swaps its
``RTCPeerConnection`` when needed, so ``remote.pc`` must be re-read after every
``connection-reset``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ...extras import missing_extra

try:
    from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection
except ImportError as exc:  # the optional WebRTC stack is not installed
    raise missing_extra("webrtc", exc) from exc

from ..emitter import EventEmitter, Observable
from ..log import ClientLogger
from .errors import MeteredPeerStateError
from .negotiation import NegotiatorEvent, PeerNegotiator, PeerState
from .remote_events import REMOTE_PEER_EVENT_TYPES, PeerEventKey, RemoteStateChangeEvent

__all__ = ["RemotePeer", "SendTo"]

SendTo = Callable[[str, Any], Awaitable[None]]
"""``send_to(peer_id, data)``: the owner's server-routed direct send, with all its gates."""


class RemotePeer(Observable[PeerEventKey]):
    """A remote peer: ``id``, ``metadata`` (its JWT ``peerMetadata`` from presence, refreshed
    on every reconcile), ``state`` (``idle``/``connecting``/``connected``/``reconnecting``/
    ``closed``), ``pc`` (the current RTCPeerConnection) and ``polite``.

    Events: ``track``, ``stream-added``, ``stream-removed``, ``state-change``,
    ``connection-reset``, plus ``datachannel``, ``negotiation-error`` and
    ``track-metadata`` (``on``/``once``/``off``, from ``Observable``). Built by
    ``MeteredPeer`` only.
    """

    def __init__(self, send_to: SendTo, peer_id: str, metadata: dict[str, Any] | None,
                 negotiator: PeerNegotiator, log: ClientLogger) -> None:
        # A callable, not the MeteredPeer: a RemotePeer needs one thing of its owner.
        self._send_to = send_to
        self._id = peer_id
        self._metadata = metadata
        self._neg = negotiator
        self._log = log
        self._emitter = EventEmitter(log, REMOTE_PEER_EVENT_TYPES)
        self._state = negotiator.state
        self._closed = False
        negotiator.add_listener(self._on_engine_event)

    # -- read-only -------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def metadata(self) -> dict[str, Any] | None:
        return self._metadata

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def pc(self) -> RTCPeerConnection:
        """The current peer connection; stale after a ``connection-reset``."""
        return self._neg.pc

    @property
    def polite(self) -> bool:
        return self._neg.polite

    @property
    def negotiator(self) -> PeerNegotiator:
        """The WebRTC engine underneath (advanced use)."""
        return self._neg

    @property
    def remote_tracks(self) -> list[MediaStreamTrack]:
        """The live remote tracks of the current connection."""
        return [e.track for e in self._neg.remote_tracks]

    def __repr__(self) -> str:
        return f"RemotePeer(id={self._id!r}, state={self.state!r})"

    # -- actions ---------------------------------------------------------------------------------

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
        """A P2P data channel on the current connection (negotiated for you). It dies with
        the connection: re-create it after ``connection-reset``."""
        if self._closed:
            raise MeteredPeerStateError("invalid_state", "create_data_channel", "closed")
        return self._neg.create_data_channel(
            label, ordered=ordered, max_packet_life_time=max_packet_life_time,
            max_retransmits=max_retransmits, protocol=protocol, negotiated=negotiated, id=id)

    async def send(self, data: Any) -> None:
        """``MeteredPeer.send_to(self.id, data)``, with every gate of it; refused once this
        remote peer is closed (its id may be reused by someone else)."""
        if self._closed:
            raise MeteredPeerStateError("invalid_state", "send", "closed")
        await self._send_to(self._id, data)

    # -- internals (MeteredPeer) -----------------------------------------------------------------

    def _set_metadata(self, metadata: dict[str, Any] | None) -> None:
        self._metadata = metadata

    def _mark_closed(self) -> None:
        """Closed now (state-change fires synchronously); the connection closes later."""
        if self._closed:
            return
        self._closed = True
        old, self._state = self._state, PeerState.CLOSED
        if old is not PeerState.CLOSED:
            self._emitter.emit(RemoteStateChangeEvent(old.value, PeerState.CLOSED.value))

    async def _close(self) -> None:
        self._mark_closed()
        await self._neg.close()

    async def _drain(self, timeout: float) -> None:
        await self._emitter.drain(timeout)
        self._emitter.clear()

    def _on_engine_event(self, event: NegotiatorEvent) -> None:
        # The engine's events are this object's events: passed on as they are.
        if self._closed:
            return
        if isinstance(event, RemoteStateChangeEvent):
            if event.to == PeerState.CLOSED:
                self._mark_closed()  # one closed transition, whoever closes first
                return
            self._state = PeerState(event.to)
        self._emitter.emit(event)
