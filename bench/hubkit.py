"""Stand-ins for measuring the hub in process, without sockets (bench/history_cost.py and
its cluster half, bench/history_cluster.py).

Imports nothing beyond what every roomwire tree has, so that ``history_cost.py`` still runs
its baseline against an older tree (``PYTHONPATH=<old>/src``).
"""

from __future__ import annotations

from roomwire.protocol import frames


class FakeLink:
    """A subscriber whose sends only keep a reference to the last frame: what is left of a
    delivery is the hub's own work."""

    app_id = "app"
    receives_presence = False
    peer_metadata = None

    def __init__(self, n: int) -> None:
        self.peer_id = f"p{n}"
        self.peer_json = frames.encode_json(self.peer_id)
        self.presence_entry = frames.presence_entry(self.peer_json, None)
        self.last: bytes = b""

    def send(self, payload: bytes) -> None:
        self.last = payload

    def send_wire(self, wire: bytes) -> None:
        self.last = wire

    def close(self, code: int, reason: str) -> None:
        pass
