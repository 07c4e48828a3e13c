"""How a node reaches the rest of the cluster.

The hub routes everything it can locally and tells the broker about each event, so that a
broker can carry it to other nodes; events from other nodes come back to the hub through the
``ClusterSink`` methods. One node needs no carrying: ``MemoryBroker`` (``memory.py``). A cluster
uses Redis (``redis.py``, see docs/cluster.md).

Presence stays consistent across nodes because each node keeps a replica of the remote
members of the channels it serves, fed in order by the broker; the hub counts a peer as present
while any socket of it, on any node, is subscribed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol


class ClusterSink(Protocol):
    """What the hub offers a broker for events that come from other nodes."""

    def deliver_publish(
        self, app_id: str, channel: str, data: bytes, sender_json: bytes,
        sender_metadata: bytes | None,
    ) -> int: ...

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

    def local_state(self) -> tuple[list[tuple[str, str, str, bytes]], list[tuple[str, str]]]:
        """This node's presence ``(app, channel, peer, entry)`` and online peers ``(app, peer)``
        (what a broker announces again after its view of the cluster was lost)."""
        ...

    def local_connections(self) -> dict[str, int]:
        """Open connections per app on this node."""
        ...


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
        sender_metadata: bytes | None,
    ) -> None:
        """A direct message for the sockets of ``peer_id`` on other nodes."""

    @abstractmethod
    def presence(self, app_id: str, channel: str, peer_id: str, entry: bytes,
                 present: bool) -> None:
        """``peer_id`` became present in (or left) ``channel`` on this node."""

    @abstractmethod
    def peer_online_elsewhere(self, app_id: str, peer_id: str) -> bool:
        """Whether some other node holds a socket of ``peer_id`` (for ``peer_not_found``)."""

    @abstractmethod
    def peer_connected(self, app_id: str, peer_id: str, online: bool) -> None:
        """The first socket of ``peer_id`` opened on this node (online) or its last closed."""

    async def kick(self, app_id: str, peer_id: str, code: int, reason: str,
                   scope: tuple[str, ...] | None = None) -> int:
        """Close the sockets of ``peer_id`` on the other nodes and return how many closed
        (``scope`` as in ``ClusterSink.deliver_disconnect``)."""
        return 0

    def connections_elsewhere(self, app_id: str) -> int:
        """Open connections of ``app_id`` on the other nodes (as last reported)."""
        return 0
