"""roomwire's history extension leaves the official clients alone: the official Python
SignallingClient, subscribed to a channel with history next to roomwire's SDK (which opts in),
receives byte for byte the frames it receives from a server without history (docs/protocol.md,
"roomwire extension: history and recovery")."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from conftest import RawClient, RunningServer, start_node
from roomwire.client import SignallingClient

from .conftest import Launch

_RID = re.compile(rb'"requestId":"[^"]*"')


def _payload(wire: bytes) -> bytes:
    """The text payload of a server frame as queued (unmasked, one frame)."""
    n = wire[1] & 0x7F
    return wire[{126: 4, 127: 10}.get(n, 2):]


def record_frames(srv: RunningServer, peer_id: str) -> list[bytes]:
    """Every frame the server queues for ``peer_id``'s socket from now on, request ids
    blanked (the official client's are random UUIDs)."""
    seen: list[bytes] = []
    (link,) = srv.node.hub.peer_links(srv.app_id, peer_id)
    send_wire = link.send_wire

    def on_send_wire(wire: bytes) -> None:
        # Every frame goes through here (``send`` frames its payload and calls it).
        seen.append(_RID.sub(b'"requestId":"-"', _payload(bytes(wire))))
        send_wire(wire)

    link.send_wire = on_send_wire  # type: ignore[method-assign]
    return seen


async def scenario(srv: RunningServer, official: Launch) -> tuple[list[bytes], list[Any]]:
    """The official client and roomwire's SDK share chat/room; a third peer publishes, each
    of the two publishes once. Returns what the official socket got, and roomwire's
    message positions."""
    off = await official(srv.url, tokens=[srv.token("official")], name="official")
    await off.connected()
    seen = record_frames(srv, "official")
    await off.subscribe("chat/room")
    rw = SignallingClient(url=srv.url, token_provider=lambda: srv.token("rw"))
    positions: list[Any] = []
    rw.on("message", lambda e: positions.append(e.position))
    async with rw:
        await rw.subscribe("chat/room")
        await off.next("presence", channel="chat/room")
        pub = await RawClient.connect(srv.token_url("pub"))
        for n in range(3):
            reply = await pub.request({"type": "publish", "channel": "chat/room", "data": n})
            assert reply["type"] == "ack", reply
        await rw.publish("chat/room", {"from": "rw"})
        await off.ok("publish", channel="chat/room", data={"from": "official"})
        for _ in range(4):
            await off.next("message", channel="chat/room")
        await pub.close()
    await off.next("presence", channel="chat/room")  # rw left
    return seen, positions


async def test_the_official_client_gets_the_same_frames_with_history_on(
        tmp_path: Path, official: Launch) -> None:
    before_srv = await start_node(tmp_path / "off")
    try:
        before, plain_positions = await scenario(before_srv, official)
    finally:
        await before_srv.stop()
    after_srv = await start_node(tmp_path / "on",
                                 history=[{"channels": "chat/**", "size": 100, "ttl": 60}])
    try:
        after, positions = await scenario(after_srv, official)
    finally:
        await after_srv.stop()
    # The extension was in use next to it: roomwire's SDK got positions on the second run.
    assert plain_positions == [None] * 4
    assert [p.offset for p in positions] == [1, 2, 3, 5], positions
    assert len(before) == 9, before  # ack, snapshot, joined, 3+1 messages, publish ack, left
    assert after == before
