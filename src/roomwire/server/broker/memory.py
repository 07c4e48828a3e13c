"""The broker of a single node: there is nobody else to tell."""

from __future__ import annotations

from . import Broker, ClusterSink


class MemoryBroker(Broker):
    """Single-node broker. The hub already delivered every event locally, so nothing travels."""

    clustered = False

    async def start(self, sink: ClusterSink) -> None:
        self._sink = sink

    async def stop(self) -> None:
        return None

    def publish(self, app_id: str, channel: str, data: bytes, sender_json: bytes,
                sender_metadata: bytes | None) -> None:
        return None

    def direct(self, app_id: str, peer_id: str, data: bytes, sender_json: bytes,
               sender_metadata: bytes | None, local: int) -> int | None:
        return local if local else None

    def join(self, app_id: str, channel: str, peer_id: str, entry: bytes) -> None:
        return None

    def leave(self, app_id: str, channel: str, peer_id: str, last: bool) -> None:
        return None

    def peer_connected(self, app_id: str, peer_id: str, online: bool) -> None:
        return None
