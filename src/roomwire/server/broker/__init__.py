"""How a node reaches the rest of the cluster.

The hub routes everything it can locally and tells the broker about each event, so that a
broker can carry it to other nodes; events from other nodes come back to the hub through the
``ClusterSink`` methods. One node needs no carrying: ``MemoryBroker`` (``memory.py``). A cluster
uses Redis (``redis.py``, see docs/cluster.md).

In a cluster, presence is cluster-wide state in Redis; a node follows (``routing.ChannelView``)
only the channels it holds local members of, and hears only the messages of those channels and
of the peers it holds sockets of.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol


class ClusterSink(Protocol):
    """What the hub offers a broker for events that come from other nodes."""

    def deliver_publish(
        self, app_id: str, channel: str, data: bytes, sender_json: bytes,
        sender_metadata: bytes | None,
    ) -> int: ...

    def deliver_posted(
        self, app_id: str, channel: str, data: bytes, sender_json: bytes,
        sender_metadata: bytes | None, offset: int, epoch: str, own: int,
    ) -> int:
        """A publish on a channel with history, with its position, from any node. ``own``:
        -1 when another node published it; else this node did, and ``own`` is the token of
        the publishing socket (0: none) that must not get it back."""
        ...

    def deliver_pattern_publish(
        self, app_id: str, channel: str, data: bytes, sender_json: bytes,
        sender_metadata: bytes | None,
    ) -> int:
        """A publish of another node, for this node's pattern subscribers (``follow_app``)."""
        ...

    def deliver_direct(
        self, app_id: str, peer_id: str, data: bytes, sender_json: bytes,
        sender_metadata: bytes | None,
    ) -> int: ...

    def remote_presence(
        self, app_id: str, channel: str, peer_id: str, entry: bytes, present: bool
    ) -> None: ...

    def deliver_disconnect(self, app_id: str, peer_id: str, code: int, reason: str,
                           scope: tuple[str, ...] | None = None) -> int:
        """Close the local sockets of ``peer_id`` (a kick that came from another node);
        ``scope``: only those whose channel scope these patterns cover."""
        ...

    def local_connections(self) -> dict[str, int]:
        """Open connections per app on this node."""
        ...


class PresenceObserver(Protocol):
    """Told of cluster-wide presence transitions, by the node whose Redis script made each
    one (so each is told once in the whole cluster): the webhook service."""

    def joined(self, app_id: str, channel: str, peer_id: str, entry: bytes, members: int,
               first: bool) -> None: ...

    def left(self, app_id: str, channel: str, peer_id: str, entry: bytes, members: int,
             last: bool) -> None: ...


#: Called by a broker when it loses (False) or regains (True) the cluster backplane.
HealthListener = Callable[[bool], None]


class Broker(ABC):
    """Carries a node's events to the other nodes of a cluster."""

    #: Whether other nodes exist; the hub skips remote bookkeeping when False.
    clustered: bool = False
    #: Whether the backplane is reachable; a node accepts sockets only while True.
    healthy: bool = True
    #: Set by the node: told when ``healthy`` changes.
    health_listener: HealthListener | None = None
    #: Set by the node while webhooks are configured (cluster brokers report to it).
    observer: PresenceObserver | None = None

    @abstractmethod
    async def start(self, sink: ClusterSink) -> None:
        """Begin carrying events; remote events are handed to ``sink``."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop carrying events and release connections."""

    @abstractmethod
    def publish(
        self, app_id: str, channel: str, data: bytes, sender_json: bytes,
        sender_metadata: bytes | None,
    ) -> None:
        """A message published on this node, for subscribers on other nodes."""

    @abstractmethod
    def direct(
        self, app_id: str, peer_id: str, data: bytes, sender_json: bytes,
        sender_metadata: bytes | None, local: int,
    ) -> int | asyncio.Future[int | None] | None:
        """A direct message that reached ``local`` sockets here, for the peer's sockets
        elsewhere. Returns what ``Hub.direct`` returns: the count, None for
        ``peer_not_found``, or a future of either while the other nodes are asked."""

    def presence(self, app_id: str, channel: str, peer_id: str, entry: bytes,
                 present: bool) -> None:
        """Single node: ``peer_id`` became present in (or left) ``channel``. Nothing to carry;
        a cluster broker gets ``join``/``leave`` instead."""
        return None

    @abstractmethod
    def join(self, app_id: str, channel: str, peer_id: str, entry: bytes,
             ) -> asyncio.Future[None] | None:
        """This node's first socket of ``peer_id`` subscribes to ``channel``. A future while
        the join is not yet part of this node's view of the channel."""

    @abstractmethod
    def leave(self, app_id: str, channel: str, peer_id: str, last: bool) -> None:
        """This node's last socket of ``peer_id`` left ``channel`` (``last``: the node now
        holds no member of it)."""

    @abstractmethod
    def peer_connected(self, app_id: str, peer_id: str, online: bool,
                       ) -> asyncio.Future[None] | None:
        """The first socket of ``peer_id`` opened on this node (online) or its last closed.
        A future while the node cannot yet receive the peer's direct messages."""

    def peer_route(self, app_id: str, peer_id: str) -> asyncio.Future[None] | None:
        """The pending future of ``peer_connected`` for ``peer_id``, if any."""
        return None

    def follow_app(self, app_id: str, following: bool) -> asyncio.Future[None] | None:
        """This node holds pattern subscriptions of ``app_id`` (or no longer does): receive
        every publish of the app from the other nodes (``deliver_pattern_publish``). A future
        until the other nodes' publishes are sure to arrive."""
        return None

    async def members(self, app_id: str, channel: str) -> list[bytes]:
        """Presence entries of the channel's members on every node."""
        return []

    async def kick(self, app_id: str, peer_id: str, code: int, reason: str,
                   scope: tuple[str, ...] | None = None) -> int:
        """Close the sockets of ``peer_id`` on the other nodes and return how many closed
        (``scope`` as in ``ClusterSink.deliver_disconnect``)."""
        return 0

    def connections_elsewhere(self, app_id: str) -> int:
        """Open connections of ``app_id`` on the other nodes (as last reported)."""
        return 0
